//! Component-model values: the tree callers build ([`Val`], shaped like
//! wasmtime's `component::Val`) and the flat form it crosses the boundary in
//! ([`Node`]).
//!
//! A value travels as its nodes in pre-order: a compound node says how many
//! values follow it, and they follow. The flat form has no recursion on the
//! wire, so decoding a hostile message cannot exhaust the host's stack;
//! [`unflatten`] rebuilds trees no deeper than [`MAX_DEPTH`] and checks that
//! every node is accounted for.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// How deeply values (and the types they are checked against) may nest:
/// the depth wasmtime's validator allows component types.
pub const MAX_DEPTH: usize = 100;

/// A component-model value of any WIT type but streams and futures (which
/// are not supported yet).
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// `bool`.
    Bool(bool),
    /// `s8`.
    S8(i8),
    /// `u8`.
    U8(u8),
    /// `s16`.
    S16(i16),
    /// `u16`.
    U16(u16),
    /// `s32`.
    S32(i32),
    /// `u32`.
    U32(u32),
    /// `s64`.
    S64(i64),
    /// `u64`.
    U64(u64),
    /// `f32` (its bits travel unchanged).
    Float32(f32),
    /// `f64` (its bits travel unchanged).
    Float64(f64),
    /// `char`: a Unicode scalar value.
    Char(char),
    /// `string`.
    String(String),
    /// `list<T>`: every element of the list's element type.
    List(Vec<Val>),
    /// `record { ... }`: every field, by name, in the record type's order.
    Record(Vec<(String, Val)>),
    /// `tuple<...>`.
    Tuple(Vec<Val>),
    /// `variant { ... }`: a case name and its payload, if the case has one.
    Variant(String, Option<Box<Val>>),
    /// `enum { ... }`: a case name.
    Enum(String),
    /// `option<T>`.
    Option(Option<Box<Val>>),
    /// `result<T, E>`: the payload of `ok` or `err`, if that side has a type.
    Result(Result<Option<Box<Val>>, Option<Box<Val>>>),
    /// `flags { ... }`: the names of the flags that are set.
    Flags(Vec<String>),
    /// `own<R>` or `borrow<R>`: a resource the component made, held by the
    /// sandbox; the handle names it.
    Resource(ResourceHandle),
}

/// The most resources a sandbox holds for the host at once (what a
/// component's exports returned and the host has not given back or
/// dropped).
pub const MAX_HELD_RESOURCES: usize = 4096;

/// A resource a component made, as the sandbox that holds it handed it out.
///
/// The component's resources stay inside the sandbox: the host holds only
/// this handle, and passes it back (`own` gives the resource back to the
/// component, `borrow` lends it) or drops it
/// (`LoadedComponentSandbox::drop_resource`). A handle is valid in the sandbox
/// that returned it, until the sandbox's state is reset (after every call
/// with fresh state per call; after a `restore` or a failed call in
/// persistent mode): use resources in persistent mode. Any other handle is
/// refused before the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceHandle {
    id: u64,
    epoch: u64,
}

impl ResourceHandle {
    /// The handle of resource `id` of the sandbox state `epoch` (the host
    /// makes these; made-up ones are refused).
    #[doc(hidden)]
    pub fn new(id: u64, epoch: u64) -> ResourceHandle {
        ResourceHandle { id, epoch }
    }

    /// The guest's number for the resource.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The sandbox state it belongs to.
    #[doc(hidden)]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// One node of a flattened [`Val`]: a leaf, or a compound value and how
/// many values follow it (its children).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Node {
    /// `bool`.
    Bool(bool),
    /// `s8`.
    S8(i8),
    /// `u8`.
    U8(u8),
    /// `s16`.
    S16(i16),
    /// `u16`.
    U16(u16),
    /// `s32`.
    S32(i32),
    /// `u32`.
    U32(u32),
    /// `s64`.
    S64(i64),
    /// `u64`.
    U64(u64),
    /// `f32`.
    Float32(f32),
    /// `f64`.
    Float64(f64),
    /// `char`.
    Char(char),
    /// `string`.
    String(String),
    /// A list of this many elements, which follow.
    List(u32),
    /// A record with these fields, whose values follow in this order.
    Record(Vec<String>),
    /// A tuple of this many values, which follow.
    Tuple(u32),
    /// A variant case, and whether its payload follows.
    Variant(String, bool),
    /// An enum case.
    Enum(String),
    /// `none` (`false`) or `some` (`true`: the value follows).
    Option(bool),
    /// `ok` (`true`) or `err`, and whether its payload follows.
    Result {
        /// Whether it is `ok`.
        ok: bool,
        /// Whether a payload follows.
        payload: bool,
    },
    /// The flags that are set.
    Flags(Vec<String>),
    /// A resource, by the guest's number for it.
    Resource(u64),
}

/// Why nodes do not make values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlatError {
    /// The nodes end before the values they announce.
    #[error("the values end early: a compound value announces more values than follow")]
    Truncated,
    /// Nodes are left over after the values.
    #[error("{0} node(s) are left over after the values")]
    Trailing(usize),
    /// The values nest more deeply than [`MAX_DEPTH`].
    #[error("the values nest more than {MAX_DEPTH} levels deep")]
    TooDeep,
    /// A list or tuple has more elements than a node can count.
    #[error("a list of {0} elements is longer than the boundary carries")]
    TooLong(usize),
}

/// Flattens `vals` into their nodes, in pre-order.
///
/// # Errors
///
/// [`FlatError::TooDeep`] for values nested more than [`MAX_DEPTH`] levels.
pub fn flatten(vals: &[Val]) -> Result<Vec<Node>, FlatError> {
    let mut nodes = Vec::with_capacity(vals.len());
    for val in vals {
        flatten_into(val, 0, &mut nodes)?;
    }
    Ok(nodes)
}

/// A length as the `u32` a node carries.
fn count(len: usize) -> Result<u32, FlatError> {
    u32::try_from(len).map_err(|_| FlatError::TooLong(len))
}

fn flatten_into(val: &Val, depth: usize, out: &mut Vec<Node>) -> Result<(), FlatError> {
    if depth > MAX_DEPTH {
        return Err(FlatError::TooDeep);
    }
    let child = |val: &Val, out: &mut Vec<Node>| flatten_into(val, depth + 1, out);
    match val {
        Val::Bool(v) => out.push(Node::Bool(*v)),
        Val::S8(v) => out.push(Node::S8(*v)),
        Val::U8(v) => out.push(Node::U8(*v)),
        Val::S16(v) => out.push(Node::S16(*v)),
        Val::U16(v) => out.push(Node::U16(*v)),
        Val::S32(v) => out.push(Node::S32(*v)),
        Val::U32(v) => out.push(Node::U32(*v)),
        Val::S64(v) => out.push(Node::S64(*v)),
        Val::U64(v) => out.push(Node::U64(*v)),
        Val::Float32(v) => out.push(Node::Float32(*v)),
        Val::Float64(v) => out.push(Node::Float64(*v)),
        Val::Char(v) => out.push(Node::Char(*v)),
        Val::String(v) => out.push(Node::String(v.clone())),
        Val::Enum(v) => out.push(Node::Enum(v.clone())),
        Val::Flags(v) => out.push(Node::Flags(v.clone())),
        Val::Resource(handle) => out.push(Node::Resource(handle.id)),
        Val::List(items) | Val::Tuple(items) => {
            out.push(match val {
                Val::List(_) => Node::List(count(items.len())?),
                _ => Node::Tuple(count(items.len())?),
            });
            for item in items {
                child(item, out)?;
            }
        }
        Val::Record(fields) => {
            out.push(Node::Record(
                fields.iter().map(|(name, _)| name.clone()).collect(),
            ));
            for (_, value) in fields {
                child(value, out)?;
            }
        }
        Val::Variant(case, payload) => {
            out.push(Node::Variant(case.clone(), payload.is_some()));
            if let Some(payload) = payload {
                child(payload, out)?;
            }
        }
        Val::Option(value) => {
            out.push(Node::Option(value.is_some()));
            if let Some(value) = value {
                child(value, out)?;
            }
        }
        Val::Result(result) => {
            let (ok, payload) = match result {
                Ok(payload) => (true, payload),
                Err(payload) => (false, payload),
            };
            out.push(Node::Result {
                ok,
                payload: payload.is_some(),
            });
            if let Some(payload) = payload {
                child(payload, out)?;
            }
        }
    }
    Ok(())
}

/// Rebuilds the values `nodes` hold (all of them, exactly).
///
/// What it allocates is bounded by the nodes it is given, whatever counts
/// they claim; its recursion by [`MAX_DEPTH`].
///
/// # Errors
///
/// A [`FlatError`] when the nodes do not make whole values, leave nodes
/// over, or nest too deeply.
pub fn unflatten(nodes: Vec<Node>) -> Result<Vec<Val>, FlatError> {
    let mut iter = nodes.into_iter();
    let mut vals = Vec::new();
    while iter.len() > 0 {
        vals.push(take(&mut iter, 0)?);
    }
    Ok(vals)
}

/// Rebuilds exactly `n` values from `nodes`.
///
/// # Errors
///
/// As [`unflatten`], and [`FlatError::Truncated`] or [`FlatError::Trailing`]
/// when the nodes hold another number of values.
pub fn unflatten_exact(nodes: Vec<Node>, n: usize) -> Result<Vec<Val>, FlatError> {
    let mut iter = nodes.into_iter();
    let mut vals = Vec::with_capacity(n.min(iter.len()).min(RESERVE));
    for _ in 0..n {
        vals.push(take(&mut iter, 0)?);
    }
    match iter.len() {
        0 => Ok(vals),
        left => Err(FlatError::Trailing(left)),
    }
}

/// The most elements reserved for a list before they are decoded.
const RESERVE: usize = 1024;

fn take(nodes: &mut alloc::vec::IntoIter<Node>, depth: usize) -> Result<Val, FlatError> {
    if depth > MAX_DEPTH {
        return Err(FlatError::TooDeep);
    }
    let node = nodes.next().ok_or(FlatError::Truncated)?;
    let children = |n: u32, nodes: &mut alloc::vec::IntoIter<Node>| {
        // Never more room than there are nodes left, and little up front:
        // nested lists that each claim every node left must not multiply
        // what is reserved.
        let mut items = Vec::with_capacity((n as usize).min(nodes.len()).min(RESERVE));
        for _ in 0..n {
            items.push(take(nodes, depth + 1)?);
        }
        Ok::<_, FlatError>(items)
    };
    Ok(match node {
        Node::Bool(v) => Val::Bool(v),
        Node::S8(v) => Val::S8(v),
        Node::U8(v) => Val::U8(v),
        Node::S16(v) => Val::S16(v),
        Node::U16(v) => Val::U16(v),
        Node::S32(v) => Val::S32(v),
        Node::U32(v) => Val::U32(v),
        Node::S64(v) => Val::S64(v),
        Node::U64(v) => Val::U64(v),
        Node::Float32(v) => Val::Float32(v),
        Node::Float64(v) => Val::Float64(v),
        Node::Char(v) => Val::Char(v),
        Node::String(v) => Val::String(v),
        Node::Enum(v) => Val::Enum(v),
        Node::Flags(v) => Val::Flags(v),
        // The host stamps its own epoch on what the guest returns.
        Node::Resource(id) => Val::Resource(ResourceHandle::new(id, 0)),
        Node::List(n) => Val::List(children(n, nodes)?),
        Node::Tuple(n) => Val::Tuple(children(n, nodes)?),
        Node::Record(names) => {
            let values = children(count(names.len())?, nodes)?;
            Val::Record(names.into_iter().zip(values).collect())
        }
        Node::Variant(case, payload) => {
            let payload = match payload {
                true => Some(Box::new(take(nodes, depth + 1)?)),
                false => None,
            };
            Val::Variant(case, payload)
        }
        Node::Option(some) => Val::Option(match some {
            true => Some(Box::new(take(nodes, depth + 1)?)),
            false => None,
        }),
        Node::Result { ok, payload } => {
            let payload = match payload {
                true => Some(Box::new(take(nodes, depth + 1)?)),
                false => None,
            };
            Val::Result(if ok { Ok(payload) } else { Err(payload) })
        }
    })
}

/// A function a component may import, by interface and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentImport {
    /// The interface (`my:pkg/iface`), or empty for a function the world
    /// imports directly.
    pub interface: String,
    /// The function's name.
    pub name: String,
}

/// The WASI 0.2 interfaces the guest serves itself (without the version),
/// under the sandbox's `WasiConfig` like WASI preview 1. A component's
/// imports of these are not host functions: the host does not ask for
/// them to be registered.
pub const WASI_P2_INTERFACES: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/preopens",
    "wasi:filesystem/types",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:random/random",
];

/// The WASI 0.2 interface an import name (`wasi:cli/stdout@0.2.6`) is, if
/// the guest serves it: any 0.2 version (0.2.0 and later are compatible).
pub fn wasi_p2_interface(import: &str) -> Option<&'static str> {
    let (interface, version) = import.split_once('@')?;
    let minor = version.strip_prefix("0.2.")?;
    let is_patch = !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit());
    if !is_patch {
        return None;
    }
    WASI_P2_INTERFACES
        .iter()
        .copied()
        .find(|known| *known == interface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasi_p2_interfaces_by_version() {
        assert_eq!(
            wasi_p2_interface("wasi:cli/stdout@0.2.6"),
            Some("wasi:cli/stdout")
        );
        assert_eq!(
            wasi_p2_interface("wasi:io/streams@0.2.0"),
            Some("wasi:io/streams")
        );
        for not in [
            "wasi:cli/stdout",
            "wasi:cli/stdout@0.3.0",
            "wasi:cli/stdout@0.2.",
            "wasi:cli/stdout@0.2.1-rc",
            "wasi:http/types@0.2.0",
            "my:app/api@0.2.0",
        ] {
            assert_eq!(wasi_p2_interface(not), None, "{not}");
        }
    }

    fn sample() -> Vec<Val> {
        vec![
            Val::U32(7),
            Val::List(vec![Val::String("a".into()), Val::String("b".into())]),
            Val::Record(vec![
                ("x".into(), Val::Float64(1.5)),
                ("y".into(), Val::Option(Some(Box::new(Val::Char('é'))))),
            ]),
            Val::Result(Err(Some(Box::new(Val::Enum("nope".into()))))),
            Val::Variant("v".into(), None),
            Val::Tuple(vec![]),
            Val::Flags(vec!["a".into()]),
            Val::Result(Ok(None)),
        ]
    }

    #[test]
    fn values_survive_the_flat_form() {
        let vals = sample();
        let nodes = flatten(&vals).unwrap();
        assert_eq!(unflatten(nodes.clone()).unwrap(), vals);
        assert_eq!(unflatten_exact(nodes, vals.len()).unwrap(), vals);
    }

    #[test]
    fn counts_that_lie_are_errors() {
        assert_eq!(
            unflatten(vec![Node::List(3), Node::U8(1)]),
            Err(FlatError::Truncated)
        );
        assert_eq!(
            unflatten(vec![Node::List(u32::MAX)]),
            Err(FlatError::Truncated)
        );
        assert_eq!(
            unflatten_exact(vec![Node::U8(1), Node::U8(2)], 1),
            Err(FlatError::Trailing(1))
        );
        assert_eq!(
            unflatten(vec![
                Node::Record(vec!["a".into(), "b".into()]),
                Node::U8(1)
            ]),
            Err(FlatError::Truncated)
        );
    }

    #[test]
    fn nesting_is_bounded_both_ways() {
        let deep = vec![Node::Option(true); 100_000];
        assert_eq!(unflatten(deep), Err(FlatError::TooDeep));
        let mut val = Val::U8(0);
        for _ in 0..=MAX_DEPTH {
            val = Val::Option(Some(Box::new(val)));
        }
        assert_eq!(flatten(&[val]), Err(FlatError::TooDeep));
    }
}
