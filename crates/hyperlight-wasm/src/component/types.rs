//! WIT types as the host knows them: read from the component when it is
//! compiled, listed by `exports()`, and used to check every value that
//! crosses the boundary, both ways.

use std::fmt;

use hyperlight_wasm_protocol::component::{MAX_DEPTH, ResourceHandle, Val};
use wasmtime::component::types as wt;

/// A WIT value type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Type {
    /// `bool`.
    Bool,
    /// `s8`.
    S8,
    /// `u8`.
    U8,
    /// `s16`.
    S16,
    /// `u16`.
    U16,
    /// `s32`.
    S32,
    /// `u32`.
    U32,
    /// `s64`.
    S64,
    /// `u64`.
    U64,
    /// `f32`.
    Float32,
    /// `f64`.
    Float64,
    /// `char`.
    Char,
    /// `string`.
    String,
    /// `list<T>`.
    List(Box<Type>),
    /// `record { name: T, ... }`, fields in order.
    Record(Vec<(String, Type)>),
    /// `tuple<T, ...>`.
    Tuple(Vec<Type>),
    /// `variant { case(T), ... }`, cases in order.
    Variant(Vec<(String, Option<Type>)>),
    /// `enum { case, ... }`.
    Enum(Vec<String>),
    /// `option<T>`.
    Option(Box<Type>),
    /// `result<T, E>`; either side may have no type.
    Result {
        /// The `ok` payload's type.
        ok: Option<Box<Type>>,
        /// The `err` payload's type.
        err: Option<Box<Type>>,
    },
    /// `flags { name, ... }`.
    Flags(Vec<String>),
    /// `own<R>`: a resource handed over (by the component, when it returns
    /// one; back to it, when passed), by the resource's name (`counter`, or
    /// `my:app/api#counter` for an interface's).
    Own(String),
    /// `borrow<R>`: a resource lent to the component for the call.
    Borrow(String),
    /// A type whose values hyperlight-wasm does not carry yet (streams,
    /// futures), by its WIT keyword. A function that takes or returns one
    /// cannot be called.
    Unsupported(&'static str),
}

/// A function's type: named parameters and results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncType {
    /// Parameters, by name, in order.
    pub params: Vec<(String, Type)>,
    /// Results (the component model has at most one).
    pub results: Vec<Type>,
}

/// A function a component exports: `name` at the world level, or
/// `interface#name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentFunction {
    /// The name [`crate::LoadedComponentSandbox::call`] takes.
    pub name: String,
    /// Its type.
    pub ty: FuncType,
}

/// A function a component imports: `interface` is empty for a function the
/// world imports directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ComponentImportedFunction {
    pub(crate) interface: String,
    pub(crate) name: String,
    pub(crate) ty: FuncType,
}

/// The most type nodes the host reads from one component: type definitions
/// may share parts, so a small component can describe very large trees.
const MAX_TYPE_NODES: usize = 250_000;

/// The most bytes of names (fields, cases, flags) the host copies out of
/// one component's types: a type used many times is copied every time.
const MAX_TYPE_NAME_BYTES: usize = 16 << 20;

/// Converts wasmtime's types into ours, counting nodes and name bytes
/// against a budget.
pub(crate) struct Reader {
    left: usize,
    name_bytes_left: usize,
    /// The resource types the component exports, and their names.
    resources: Vec<(wt::ResourceType, String)>,
}

impl Reader {
    pub(crate) fn new() -> Reader {
        Reader {
            left: MAX_TYPE_NODES,
            name_bytes_left: MAX_TYPE_NAME_BYTES,
            resources: Vec::new(),
        }
    }

    /// Names a resource type the component exports (`counter`, or
    /// `interface#counter`).
    pub(crate) fn resource(&mut self, ty: wt::ResourceType, name: String) -> Result<(), String> {
        let name = self.name(&name)?;
        self.resources.push((ty, name));
        Ok(())
    }

    fn resource_name(&mut self, ty: &wt::ResourceType) -> Result<String, String> {
        let name = self
            .resources
            .iter()
            .find(|(known, _)| known == ty)
            .map_or("resource", |(_, name)| name.as_str())
            .to_owned();
        self.name(&name)
    }

    /// Copies a name, counting it against the budget.
    fn name(&mut self, name: &str) -> Result<String, String> {
        self.name_bytes_left = self
            .name_bytes_left
            .checked_sub(name.len())
            .ok_or_else(|| {
                format!(
                    "its types name more than {MAX_TYPE_NAME_BYTES} bytes of fields and cases, \
                     more than the host reads"
                )
            })?;
        Ok(name.to_owned())
    }

    pub(crate) fn func(&mut self, func: &wt::ComponentFunc) -> Result<FuncType, String> {
        let params = func
            .params()
            .map(|(name, ty)| Ok((self.name(name)?, self.ty(&ty, 0)?)))
            .collect::<Result<_, String>>()?;
        let results = func
            .results()
            .map(|ty| self.ty(&ty, 0))
            .collect::<Result<_, String>>()?;
        Ok(FuncType { params, results })
    }

    fn ty(&mut self, ty: &wt::Type, depth: usize) -> Result<Type, String> {
        if depth > MAX_DEPTH {
            return Err(format!("its types nest more than {MAX_DEPTH} levels deep"));
        }
        self.left = self.left.checked_sub(1).ok_or_else(|| {
            format!(
                "its types describe more than {MAX_TYPE_NODES} values, more than the host reads"
            )
        })?;
        Ok(match ty {
            wt::Type::Bool => Type::Bool,
            wt::Type::S8 => Type::S8,
            wt::Type::U8 => Type::U8,
            wt::Type::S16 => Type::S16,
            wt::Type::U16 => Type::U16,
            wt::Type::S32 => Type::S32,
            wt::Type::U32 => Type::U32,
            wt::Type::S64 => Type::S64,
            wt::Type::U64 => Type::U64,
            wt::Type::Float32 => Type::Float32,
            wt::Type::Float64 => Type::Float64,
            wt::Type::Char => Type::Char,
            wt::Type::String => Type::String,
            wt::Type::List(list) => Type::List(Box::new(self.ty(&list.ty(), depth + 1)?)),
            wt::Type::Record(record) => Type::Record(
                record
                    .fields()
                    .map(|field| Ok((self.name(field.name)?, self.ty(&field.ty, depth + 1)?)))
                    .collect::<Result<_, String>>()?,
            ),
            wt::Type::Tuple(tuple) => Type::Tuple(
                tuple
                    .types()
                    .map(|ty| self.ty(&ty, depth + 1))
                    .collect::<Result<_, String>>()?,
            ),
            wt::Type::Variant(variant) => Type::Variant(
                variant
                    .cases()
                    .map(|case| {
                        let name = self.name(case.name)?;
                        let ty = case.ty.map(|t| self.ty(&t, depth + 1)).transpose()?;
                        Ok((name, ty))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            wt::Type::Enum(e) => Type::Enum(
                e.names()
                    .map(|n| self.name(n))
                    .collect::<Result<_, String>>()?,
            ),
            wt::Type::Option(option) => Type::Option(Box::new(self.ty(&option.ty(), depth + 1)?)),
            wt::Type::Result(result) => Type::Result {
                ok: result
                    .ok()
                    .map(|t| self.ty(&t, depth + 1).map(Box::new))
                    .transpose()?,
                err: result
                    .err()
                    .map(|t| self.ty(&t, depth + 1).map(Box::new))
                    .transpose()?,
            },
            wt::Type::Flags(flags) => Type::Flags(
                flags
                    .names()
                    .map(|n| self.name(n))
                    .collect::<Result<_, String>>()?,
            ),
            wt::Type::Own(resource) => Type::Own(self.resource_name(resource)?),
            wt::Type::Borrow(resource) => Type::Borrow(self.resource_name(resource)?),
            wt::Type::Future(_) => Type::Unsupported("future"),
            wt::Type::Stream(_) => Type::Unsupported("stream"),
            wt::Type::ErrorContext => Type::Unsupported("error-context"),
            wt::Type::Map(_) => Type::Unsupported("map"),
            wt::Type::FixedLengthList(_) => Type::Unsupported("fixed-length list"),
        })
    }
}

impl Type {
    /// The type as WIT writes it, cut short after a few hundred bytes (for
    /// messages: a type can be very large).
    pub fn short(&self) -> String {
        const LIMIT: usize = 200;
        struct Bounded(String);
        impl fmt::Write for Bounded {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let room = LIMIT.saturating_sub(self.0.len());
                if s.len() <= room {
                    self.0.push_str(s);
                    return Ok(());
                }
                let mut cut = room;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                self.0.push_str(&s[..cut]);
                Err(fmt::Error)
            }
        }
        let mut text = Bounded(String::new());
        if fmt::write(&mut text, format_args!("{self}")).is_err() {
            text.0.push_str("...");
        }
        text.0
    }

    /// The kind of value of this type that cannot cross the boundary yet,
    /// if the type holds one anywhere (resources, streams, futures).
    pub(crate) fn unsupported(&self) -> Option<&'static str> {
        match self {
            Type::Unsupported(kind) => Some(kind),
            Type::List(t) | Type::Option(t) => t.unsupported(),
            Type::Tuple(types) => types.iter().find_map(Type::unsupported),
            Type::Record(fields) => fields.iter().find_map(|(_, t)| t.unsupported()),
            Type::Variant(cases) => cases
                .iter()
                .find_map(|(_, t)| t.as_ref().and_then(Type::unsupported)),
            Type::Result { ok, err } => ok
                .as_deref()
                .and_then(Type::unsupported)
                .or_else(|| err.as_deref().and_then(Type::unsupported)),
            _ => None,
        }
    }

    /// Whether a value of this type can hold a resource.
    pub(crate) fn holds_resources(&self) -> bool {
        match self {
            Type::Own(_) | Type::Borrow(_) => true,
            Type::List(t) | Type::Option(t) => t.holds_resources(),
            Type::Tuple(types) => types.iter().any(Type::holds_resources),
            Type::Record(fields) => fields.iter().any(|(_, t)| t.holds_resources()),
            Type::Variant(cases) => cases
                .iter()
                .any(|(_, t)| t.as_ref().is_some_and(Type::holds_resources)),
            Type::Result { ok, err } => {
                ok.as_deref().is_some_and(Type::holds_resources)
                    || err.as_deref().is_some_and(Type::holds_resources)
            }
            _ => false,
        }
    }

    /// The resource handles in `val` (a value of this type, checked), with
    /// the name of each one's resource and whether it is passed `own`.
    pub(crate) fn handles<'t>(&'t self, val: &Val, out: &mut Vec<Handle<'t>>) {
        match (self, val) {
            (Type::Own(name), Val::Resource(handle)) => out.push(Handle {
                handle: *handle,
                resource: name,
                own: true,
            }),
            (Type::Borrow(name), Val::Resource(handle)) => out.push(Handle {
                handle: *handle,
                resource: name,
                own: false,
            }),
            (Type::List(element), Val::List(items)) => {
                for item in items {
                    element.handles(item, out);
                }
            }
            (Type::Tuple(types), Val::Tuple(items)) => {
                for (ty, item) in types.iter().zip(items) {
                    ty.handles(item, out);
                }
            }
            (Type::Record(fields), Val::Record(values)) => {
                for ((_, ty), (_, value)) in fields.iter().zip(values) {
                    ty.handles(value, out);
                }
            }
            (Type::Variant(cases), Val::Variant(case, Some(payload))) => {
                if let Some((_, Some(ty))) = cases.iter().find(|(name, _)| name == case) {
                    ty.handles(payload, out);
                }
            }
            (Type::Option(inner), Val::Option(Some(value))) => inner.handles(value, out),
            (Type::Result { ok, err }, Val::Result(result)) => {
                let (ty, payload) = match result {
                    Ok(payload) => (ok, payload),
                    Err(payload) => (err, payload),
                };
                if let (Some(ty), Some(payload)) = (ty, payload) {
                    ty.handles(payload, out);
                }
            }
            _ => {}
        }
    }

    /// Checks that `val` is a value of this type; the error says where and
    /// why it is not. (Whether a resource handle is live is checked by the
    /// sandbox that holds the resources.)
    pub fn check(&self, val: &Val) -> Result<(), String> {
        let found = |what: &str| Err(format!("expected {}, found {what}", self.short()));
        match (self, val) {
            (Type::Bool, Val::Bool(_))
            | (Type::S8, Val::S8(_))
            | (Type::U8, Val::U8(_))
            | (Type::S16, Val::S16(_))
            | (Type::U16, Val::U16(_))
            | (Type::S32, Val::S32(_))
            | (Type::U32, Val::U32(_))
            | (Type::S64, Val::S64(_))
            | (Type::U64, Val::U64(_))
            | (Type::Float32, Val::Float32(_))
            | (Type::Float64, Val::Float64(_))
            | (Type::Char, Val::Char(_))
            | (Type::String, Val::String(_)) => Ok(()),
            (Type::List(element), Val::List(items)) => {
                for (i, item) in items.iter().enumerate() {
                    element
                        .check(item)
                        .map_err(|e| format!("element {i}: {e}"))?;
                }
                Ok(())
            }
            (Type::Tuple(types), Val::Tuple(items)) => {
                if types.len() != items.len() {
                    return found(&format!("a tuple of {} values", items.len()));
                }
                for (i, (ty, item)) in types.iter().zip(items).enumerate() {
                    ty.check(item)
                        .map_err(|e| format!("tuple value {i}: {e}"))?;
                }
                Ok(())
            }
            (Type::Record(fields), Val::Record(values)) => {
                if fields.len() != values.len()
                    || fields.iter().zip(values).any(|((a, _), (b, _))| a != b)
                {
                    let names: Vec<&str> = values.iter().map(|(name, _)| name.as_str()).collect();
                    return found(&format!("a record with fields [{}]", names.join(", ")));
                }
                for ((name, ty), (_, value)) in fields.iter().zip(values) {
                    ty.check(value)
                        .map_err(|e| format!("field `{name}`: {e}"))?;
                }
                Ok(())
            }
            (Type::Variant(cases), Val::Variant(case, payload)) => {
                let Some((_, ty)) = cases.iter().find(|(name, _)| name == case) else {
                    return found(&format!("case `{case}`"));
                };
                match (ty, payload) {
                    (None, None) => Ok(()),
                    (Some(ty), Some(payload)) => {
                        ty.check(payload).map_err(|e| format!("case `{case}`: {e}"))
                    }
                    (None, Some(_)) => found(&format!("case `{case}` with a payload")),
                    (Some(_), None) => found(&format!("case `{case}` without its payload")),
                }
            }
            (Type::Enum(names), Val::Enum(case)) => match names.contains(case) {
                true => Ok(()),
                false => found(&format!("case `{case}`")),
            },
            (Type::Option(inner), Val::Option(value)) => match value {
                None => Ok(()),
                Some(value) => inner.check(value).map_err(|e| format!("some: {e}")),
            },
            (Type::Result { ok, err }, Val::Result(result)) => {
                let (side, ty, payload) = match result {
                    Ok(payload) => ("ok", ok, payload),
                    Err(payload) => ("err", err, payload),
                };
                match (ty, payload) {
                    (None, None) => Ok(()),
                    (Some(ty), Some(payload)) => {
                        ty.check(payload).map_err(|e| format!("{side}: {e}"))
                    }
                    (None, Some(_)) => found(&format!("{side} with a payload")),
                    (Some(_), None) => found(&format!("{side} without its payload")),
                }
            }
            (Type::Flags(names), Val::Flags(set)) => {
                for (i, flag) in set.iter().enumerate() {
                    if !names.contains(flag) {
                        return found(&format!("flag `{flag}`"));
                    }
                    if set[..i].contains(flag) {
                        return found(&format!("flag `{flag}` twice"));
                    }
                }
                Ok(())
            }
            (Type::Own(_) | Type::Borrow(_), Val::Resource(_)) => Ok(()),
            (Type::Unsupported(kind), _) => Err(format!(
                "values of type {kind} cannot cross the boundary yet"
            )),
            (_, val) => found(kind_of(val)),
        }
    }
}

/// What kind of value `val` is, for messages.
fn kind_of(val: &Val) -> &'static str {
    match val {
        Val::Bool(_) => "a bool",
        Val::S8(_) => "an s8",
        Val::U8(_) => "a u8",
        Val::S16(_) => "an s16",
        Val::U16(_) => "a u16",
        Val::S32(_) => "an s32",
        Val::U32(_) => "a u32",
        Val::S64(_) => "an s64",
        Val::U64(_) => "a u64",
        Val::Float32(_) => "an f32",
        Val::Float64(_) => "an f64",
        Val::Char(_) => "a char",
        Val::String(_) => "a string",
        Val::List(_) => "a list",
        Val::Record(_) => "a record",
        Val::Tuple(_) => "a tuple",
        Val::Variant(..) => "a variant",
        Val::Enum(_) => "an enum",
        Val::Option(_) => "an option",
        Val::Result(_) => "a result",
        Val::Flags(_) => "flags",
        Val::Resource(_) => "a resource",
    }
}

/// A resource handle in a value, as [`Type::handles`] finds it.
pub(crate) struct Handle<'t> {
    pub(crate) handle: ResourceHandle,
    /// The resource's name.
    pub(crate) resource: &'t str,
    /// Passed `own` (else `borrow`).
    pub(crate) own: bool,
}

impl FuncType {
    /// Checks `args` against the parameters.
    pub(crate) fn check_params(&self, args: &[Val]) -> Result<(), ParamError> {
        if args.len() != self.params.len() {
            return Err(ParamError::Count(format!(
                "it takes {} argument(s), {} given",
                self.params.len(),
                args.len()
            )));
        }
        for (i, ((name, ty), arg)) in self.params.iter().zip(args).enumerate() {
            ty.check(arg)
                .map_err(|e| ParamError::Type(format!("argument {i} (`{name}`): {e}")))?;
        }
        Ok(())
    }

    /// Checks `results` against the result types.
    pub(crate) fn check_results(&self, results: &[Val]) -> Result<(), String> {
        if results.len() != self.results.len() {
            return Err(format!(
                "{} result(s) where the function returns {}",
                results.len(),
                self.results.len()
            ));
        }
        for (ty, result) in self.results.iter().zip(results) {
            ty.check(result)?;
        }
        Ok(())
    }
}

/// Why arguments do not fit a function.
pub(crate) enum ParamError {
    Count(String),
    Type(String),
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T>(
            f: &mut fmt::Formatter<'_>,
            items: &[T],
            mut each: impl FnMut(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
        ) -> fmt::Result {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                each(f, item)?;
            }
            Ok(())
        }
        match self {
            Type::Bool => f.write_str("bool"),
            Type::S8 => f.write_str("s8"),
            Type::U8 => f.write_str("u8"),
            Type::S16 => f.write_str("s16"),
            Type::U16 => f.write_str("u16"),
            Type::S32 => f.write_str("s32"),
            Type::U32 => f.write_str("u32"),
            Type::S64 => f.write_str("s64"),
            Type::U64 => f.write_str("u64"),
            Type::Float32 => f.write_str("f32"),
            Type::Float64 => f.write_str("f64"),
            Type::Char => f.write_str("char"),
            Type::String => f.write_str("string"),
            Type::List(t) => write!(f, "list<{t}>"),
            Type::Option(t) => write!(f, "option<{t}>"),
            Type::Tuple(types) => {
                f.write_str("tuple<")?;
                list(f, types, |f, t| write!(f, "{t}"))?;
                f.write_str(">")
            }
            Type::Record(fields) => {
                f.write_str("record { ")?;
                list(f, fields, |f, (name, t)| write!(f, "{name}: {t}"))?;
                f.write_str(" }")
            }
            Type::Variant(cases) => {
                f.write_str("variant { ")?;
                list(f, cases, |f, (name, t)| match t {
                    Some(t) => write!(f, "{name}({t})"),
                    None => f.write_str(name),
                })?;
                f.write_str(" }")
            }
            Type::Enum(names) => {
                f.write_str("enum { ")?;
                list(f, names, |f, n| f.write_str(n))?;
                f.write_str(" }")
            }
            Type::Flags(names) => {
                f.write_str("flags { ")?;
                list(f, names, |f, n| f.write_str(n))?;
                f.write_str(" }")
            }
            Type::Result { ok, err } => match (ok, err) {
                (None, None) => f.write_str("result"),
                (Some(ok), None) => write!(f, "result<{ok}>"),
                (None, Some(err)) => write!(f, "result<_, {err}>"),
                (Some(ok), Some(err)) => write!(f, "result<{ok}, {err}>"),
            },
            Type::Own(name) => f.write_str(name),
            Type::Borrow(name) => write!(f, "borrow<{name}>"),
            Type::Unsupported(kind) => f.write_str(kind),
        }
    }
}

impl fmt::Display for ComponentFunction {
    /// As WIT writes it: `add: func(a: u32, b: u32) -> u32`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: func(", self.name)?;
        for (i, (name, ty)) in self.ty.params.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}: {ty}")?;
        }
        f.write_str(")")?;
        if let [result] = self.ty.results.as_slice() {
            write!(f, " -> {result}")?;
        }
        Ok(())
    }
}
