//! Components: linking a component's imports to host functions, calling its
//! exports with dynamic values, and converting values between wasmtime's
//! `component::Val` and the protocol's flat form.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use alloc::collections::BTreeMap;
use hyperlight_wasm_protocol::component::{self as wire_vals, ComponentImport, Node};
use hyperlight_wasm_protocol::message::{ErrorCode, OutCall, OutCallReply};
use wasmtime::component::{Component, Func, Instance, Linker, ResourceAny, Type, Val};
use wasmtime::{Engine, Store};

use crate::abi::Fault;
use crate::imports::ask_host;
use crate::runtime::Limits;

/// A component's linker: the WASI 0.2 interfaces it imports (served in the
/// guest, [`crate::wasi_p2`]) and every host function the host registered,
/// each a call to the host.
pub fn linker(
    engine: &Engine,
    component: &Component,
    imports: &[ComponentImport],
) -> wasmtime::Result<Linker<Limits>> {
    let mut linker = Linker::new(engine);
    crate::wasi_p2::define(&mut linker, engine, component)?;
    for import in imports {
        let interface = import.interface.clone();
        let name = import.name.clone();
        let call = move |_: wasmtime::StoreContextMut<'_, Limits>,
                         _: wasmtime::component::types::ComponentFunc,
                         params: &[Val],
                         results: &mut [Val]| {
            call_host(&interface, &name, params, results)
        };
        if import.interface.is_empty() {
            linker.root().func_new(&import.name, call)?;
        } else {
            linker
                .instance(&import.interface)?
                .func_new(&import.name, call)?;
        }
    }
    Ok(linker)
}

fn call_host(
    interface: &str,
    name: &str,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let what = || match interface {
        "" => String::from(name),
        _ => format!("{interface}#{name}"),
    };
    let args = to_protocol(params, None)?;
    let args = wire_vals::flatten(&args).map_err(|e| {
        Fault::new(
            ErrorCode::Other,
            format_args!("the arguments of `{}`: {e}", what()),
        )
    })?;
    let reply = ask_host(&OutCall::CallComponentHost {
        interface: String::from(interface),
        function: String::from(name),
        args,
    })?;
    let nodes = match reply {
        OutCallReply::ComponentReturned(nodes) => nodes,
        OutCallReply::Failed(message) => {
            return Err(
                Fault::new(ErrorCode::HostFunctionFailed, format_args!("{message}")).into(),
            );
        }
        other => {
            return Err(Fault::new(
                ErrorCode::BadRequest,
                format_args!("host function `{}` answered {other:?}", what()),
            )
            .into());
        }
    };
    let vals = wire_vals::unflatten_exact(nodes, results.len()).map_err(|e| {
        Fault::new(
            ErrorCode::BadRequest,
            format_args!("the results of `{}`: {e}", what()),
        )
    })?;
    for (slot, val) in results.iter_mut().zip(vals) {
        *slot = from_protocol(val, None)?;
    }
    Ok(())
}

/// The most resources a component may have handed to the host at once.
use hyperlight_wasm_protocol::component::MAX_HELD_RESOURCES as MAX_RESOURCES;

/// The resources a component's exports returned, held for the host, which
/// names them by number. Numbers are never reused while the state lasts.
#[derive(Default)]
pub struct Resources {
    held: BTreeMap<u64, ResourceAny>,
    next: u64,
}

impl Resources {
    fn hold(&mut self, resource: ResourceAny) -> wasmtime::Result<u64> {
        if self.held.len() >= MAX_RESOURCES {
            return Err(Fault::new(
                ErrorCode::TrapOther,
                format_args!(
                    "the component handed out {MAX_RESOURCES} resources the host holds, the \
                     most a sandbox allows; drop some"
                ),
            )
            .into());
        }
        let id = self.next;
        self.next += 1;
        self.held.insert(id, resource);
        Ok(id)
    }

    fn get(&self, id: u64) -> Result<ResourceAny, Fault> {
        self.held.get(&id).copied().ok_or_else(|| {
            Fault::new(
                ErrorCode::BadRequest,
                format_args!("the component holds no resource {id} for the host"),
            )
        })
    }
}

/// A loaded component and its instance. Fields drop in order: the store and
/// the component before the artifact memory their code lives in.
pub struct LoadedComponent {
    pub store: Store<Limits>,
    pub instance: Instance,
    /// Kept alive while its instance runs.
    pub _component: Component,
    /// What its exports handed out.
    pub resources: Resources,
}

impl LoadedComponent {
    /// Calls the export `name` (`func` or `interface#func`).
    pub fn call(&mut self, name: &str, args: Vec<Node>) -> Result<Vec<Node>, CallFailure> {
        let func = self.func(name).ok_or_else(|| {
            CallFailure::Fault(Fault::new(
                ErrorCode::FunctionNotFound,
                format_args!("the component exports no function named `{name}`"),
            ))
        })?;
        let args = wire_vals::unflatten(args).map_err(|e| {
            CallFailure::Fault(Fault::new(
                ErrorCode::BadRequest,
                format_args!("the arguments: {e}"),
            ))
        })?;
        let ty = func.ty(&self.store);
        // Resources passed as `own` go back to the component: the host no
        // longer holds them.
        let mut given = Vec::new();
        for (arg, (_, param)) in args.iter().zip(ty.params()) {
            owned_ids(arg, &param, &mut given);
        }
        let args: Vec<Val> = args
            .into_iter()
            .map(|arg| from_protocol(arg, Some(&self.resources)))
            .collect::<wasmtime::Result<_>>()
            .map_err(|e| CallFailure::Fault(as_fault(e)))?;
        for id in given {
            self.resources.held.remove(&id);
        }
        if ty.params().len() != args.len() {
            return Err(CallFailure::Fault(Fault::new(
                ErrorCode::ParameterCountMismatch,
                format_args!(
                    "`{name}` takes {} argument(s), {} given",
                    ty.params().len(),
                    args.len()
                ),
            )));
        }
        let mut results: Vec<Val> = (0..ty.results().len()).map(|_| Val::Bool(false)).collect();
        func.call(&mut self.store, &args, &mut results)
            .map_err(CallFailure::Wasmtime)?;
        let results = to_protocol(&results, Some(&mut self.resources))
            .map_err(|e| CallFailure::Fault(as_fault(e)))?;
        wire_vals::flatten(&results).map_err(|e| {
            CallFailure::Fault(Fault::new(
                ErrorCode::Other,
                format_args!("the results of `{name}`: {e}"),
            ))
        })
    }

    /// Drops resource `id` the host held (running the component's
    /// destructor, which may trap).
    pub fn drop_resource(&mut self, id: u64) -> Result<(), CallFailure> {
        let resource = self.resources.get(id).map_err(CallFailure::Fault)?;
        self.resources.held.remove(&id);
        resource
            .resource_drop(&mut self.store)
            .map_err(CallFailure::Wasmtime)
    }

    fn func(&mut self, name: &str) -> Option<Func> {
        match name.split_once('#') {
            Some((interface, function)) => {
                let interface = self
                    .instance
                    .get_export_index(&mut self.store, None, interface)?;
                let function =
                    self.instance
                        .get_export_index(&mut self.store, Some(&interface), function)?;
                self.instance.get_func(&mut self.store, function)
            }
            None => self.instance.get_func(&mut self.store, name),
        }
    }
}

fn as_fault(e: wasmtime::Error) -> Fault {
    match e.downcast::<Fault>() {
        Ok(fault) => fault,
        Err(e) => Fault::new(ErrorCode::Other, format_args!("{e:?}")),
    }
}

/// The resources `val` (of type `ty`) passes as `own`.
fn owned_ids(val: &wire_vals::Val, ty: &Type, out: &mut Vec<u64>) {
    use wire_vals::Val as P;
    match (val, ty) {
        (P::Resource(handle), Type::Own(_)) => out.push(handle.id()),
        (P::List(items), Type::List(list)) => {
            let element = list.ty();
            for item in items {
                owned_ids(item, &element, out);
            }
        }
        (P::Tuple(items), Type::Tuple(tuple)) => {
            for (item, ty) in items.iter().zip(tuple.types()) {
                owned_ids(item, &ty, out);
            }
        }
        (P::Record(fields), Type::Record(record)) => {
            for ((_, item), field) in fields.iter().zip(record.fields()) {
                owned_ids(item, &field.ty, out);
            }
        }
        (P::Variant(case, Some(payload)), Type::Variant(variant)) => {
            if let Some(ty) = variant
                .cases()
                .find(|c| c.name == case.as_str())
                .and_then(|c| c.ty)
            {
                owned_ids(payload, &ty, out);
            }
        }
        (P::Option(Some(payload)), Type::Option(option)) => owned_ids(payload, &option.ty(), out),
        (P::Result(result), Type::Result(types)) => {
            let (payload, ty) = match result {
                Ok(payload) => (payload, types.ok()),
                Err(payload) => (payload, types.err()),
            };
            if let (Some(payload), Some(ty)) = (payload, ty) {
                owned_ids(payload, &ty, out);
            }
        }
        _ => {}
    }
}

/// Why a component call failed: a fault of ours, or wasmtime's error (a
/// trap, the module's exit, a host function's failure).
pub enum CallFailure {
    Fault(Fault),
    Wasmtime(wasmtime::Error),
}

/// wasmtime's values as the protocol's; values the protocol cannot carry
/// (streams, futures) are an error, and so are resources unless `held`
/// takes them (what an export returns).
fn to_protocol(
    vals: &[Val],
    mut held: Option<&mut Resources>,
) -> wasmtime::Result<Vec<wire_vals::Val>> {
    vals.iter()
        .map(|v| to_protocol_one(v, held.as_deref_mut()))
        .collect()
}

fn to_protocol_one(
    val: &Val,
    mut held: Option<&mut Resources>,
) -> wasmtime::Result<wire_vals::Val> {
    use wire_vals::Val as P;
    let boxed =
        |v: &Option<Box<Val>>, held: Option<&mut Resources>| -> wasmtime::Result<Option<Box<P>>> {
            v.as_deref()
                .map(|v| to_protocol_one(v, held).map(Box::new))
                .transpose()
        };
    Ok(match val {
        Val::Bool(v) => P::Bool(*v),
        Val::S8(v) => P::S8(*v),
        Val::U8(v) => P::U8(*v),
        Val::S16(v) => P::S16(*v),
        Val::U16(v) => P::U16(*v),
        Val::S32(v) => P::S32(*v),
        Val::U32(v) => P::U32(*v),
        Val::S64(v) => P::S64(*v),
        Val::U64(v) => P::U64(*v),
        Val::Float32(v) => P::Float32(*v),
        Val::Float64(v) => P::Float64(*v),
        Val::Char(v) => P::Char(*v),
        Val::String(v) => P::String(v.clone()),
        Val::List(v) => P::List(to_protocol(v, held)?),
        Val::Tuple(v) => P::Tuple(to_protocol(v, held)?),
        Val::Record(fields) => P::Record(
            fields
                .iter()
                .map(|(name, v)| Ok((name.clone(), to_protocol_one(v, held.as_deref_mut())?)))
                .collect::<wasmtime::Result<_>>()?,
        ),
        Val::Variant(case, payload) => P::Variant(case.clone(), boxed(payload, held)?),
        Val::Enum(case) => P::Enum(case.clone()),
        Val::Option(v) => P::Option(boxed(v, held)?),
        Val::Result(Ok(v)) => P::Result(Ok(boxed(v, held)?)),
        Val::Result(Err(v)) => P::Result(Err(boxed(v, held)?)),
        Val::Flags(names) => P::Flags(names.clone()),
        Val::Resource(resource) => match held {
            Some(held) if resource.owned() => {
                P::Resource(wire_vals::ResourceHandle::new(held.hold(*resource)?, 0))
            }
            Some(_) => {
                return Err(Fault::new(
                    ErrorCode::Other,
                    format_args!("the component returned a borrowed resource"),
                )
                .into());
            }
            None => {
                return Err(Fault::new(
                    ErrorCode::Other,
                    format_args!("a resource cannot be passed to a host function yet"),
                )
                .into());
            }
        },
        other => {
            return Err(Fault::new(
                ErrorCode::Other,
                format_args!(
                    "a value of a kind hyperlight-wasm does not carry yet: {}",
                    kind(other)
                ),
            )
            .into());
        }
    })
}

fn kind(val: &Val) -> &'static str {
    match val {
        Val::Future(_) => "future",
        Val::Stream(_) => "stream",
        Val::ErrorContext(_) => "error-context",
        Val::Map(_) => "map",
        Val::FixedLengthList(_) => "fixed-length list",
        _ => "value",
    }
}

/// The protocol's values as wasmtime's; resources are those `held` holds
/// (none when it is `None`: a host function's results).
fn from_protocol(val: wire_vals::Val, held: Option<&Resources>) -> wasmtime::Result<Val> {
    use wire_vals::Val as P;
    let boxed = |v: Option<Box<P>>| -> wasmtime::Result<Option<Box<Val>>> {
        v.map(|v| from_protocol(*v, held).map(Box::new)).transpose()
    };
    let list = |v: Vec<P>| -> wasmtime::Result<Vec<Val>> {
        v.into_iter().map(|v| from_protocol(v, held)).collect()
    };
    Ok(match val {
        P::Bool(v) => Val::Bool(v),
        P::S8(v) => Val::S8(v),
        P::U8(v) => Val::U8(v),
        P::S16(v) => Val::S16(v),
        P::U16(v) => Val::U16(v),
        P::S32(v) => Val::S32(v),
        P::U32(v) => Val::U32(v),
        P::S64(v) => Val::S64(v),
        P::U64(v) => Val::U64(v),
        P::Float32(v) => Val::Float32(v),
        P::Float64(v) => Val::Float64(v),
        P::Char(v) => Val::Char(v),
        P::String(v) => Val::String(v),
        P::List(v) => Val::List(list(v)?),
        P::Tuple(v) => Val::Tuple(list(v)?),
        P::Record(fields) => Val::Record(
            fields
                .into_iter()
                .map(|(name, v)| Ok((name, from_protocol(v, held)?)))
                .collect::<wasmtime::Result<_>>()?,
        ),
        P::Variant(case, payload) => Val::Variant(case, boxed(payload)?),
        P::Enum(case) => Val::Enum(case),
        P::Option(v) => Val::Option(boxed(v)?),
        P::Result(Ok(v)) => Val::Result(Ok(boxed(v)?)),
        P::Result(Err(v)) => Val::Result(Err(boxed(v)?)),
        P::Flags(names) => Val::Flags(names),
        P::Resource(handle) => match held {
            Some(held) => Val::Resource(held.get(handle.id())?),
            None => {
                return Err(Fault::new(
                    ErrorCode::BadRequest,
                    format_args!("a resource where the component imports none"),
                )
                .into());
            }
        },
    })
}
