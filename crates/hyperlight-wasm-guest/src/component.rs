//! Components: linking a component's imports to host functions, calling its
//! exports with dynamic values, and converting values between wasmtime's
//! `component::Val` and the protocol's flat form.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hyperlight_wasm_protocol::component::{self as wire_vals, ComponentImport, Node};
use hyperlight_wasm_protocol::message::{ErrorCode, OutCall, OutCallReply};
use wasmtime::component::{Component, Func, Instance, Linker, Val};
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
    let args = to_protocol(params)?;
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
        *slot = from_protocol(val);
    }
    Ok(())
}

/// A loaded component and its instance. Fields drop in order: the store and
/// the component before the artifact memory their code lives in.
pub struct LoadedComponent {
    pub store: Store<Limits>,
    pub instance: Instance,
    /// Kept alive while its instance runs.
    pub _component: Component,
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
        let args: Vec<Val> = args.into_iter().map(from_protocol).collect();
        let ty = func.ty(&self.store);
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
        let results = to_protocol(&results).map_err(|e| {
            CallFailure::Fault(match e.downcast::<Fault>() {
                Ok(fault) => fault,
                Err(e) => Fault::new(ErrorCode::Other, format_args!("{e:?}")),
            })
        })?;
        wire_vals::flatten(&results).map_err(|e| {
            CallFailure::Fault(Fault::new(
                ErrorCode::Other,
                format_args!("the results of `{name}`: {e}"),
            ))
        })
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

/// Why a component call failed: a fault of ours, or wasmtime's error (a
/// trap, the module's exit, a host function's failure).
pub enum CallFailure {
    Fault(Fault),
    Wasmtime(wasmtime::Error),
}

/// wasmtime's values as the protocol's; values the protocol cannot carry
/// (resources, streams, futures) are an error.
fn to_protocol(vals: &[Val]) -> wasmtime::Result<Vec<wire_vals::Val>> {
    vals.iter().map(to_protocol_one).collect()
}

fn to_protocol_one(val: &Val) -> wasmtime::Result<wire_vals::Val> {
    use wire_vals::Val as P;
    let boxed = |v: &Option<Box<Val>>| -> wasmtime::Result<Option<Box<P>>> {
        v.as_deref()
            .map(|v| to_protocol_one(v).map(Box::new))
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
        Val::List(v) => P::List(to_protocol(v)?),
        Val::Tuple(v) => P::Tuple(to_protocol(v)?),
        Val::Record(fields) => P::Record(
            fields
                .iter()
                .map(|(name, v)| Ok((name.clone(), to_protocol_one(v)?)))
                .collect::<wasmtime::Result<_>>()?,
        ),
        Val::Variant(case, payload) => P::Variant(case.clone(), boxed(payload)?),
        Val::Enum(case) => P::Enum(case.clone()),
        Val::Option(v) => P::Option(boxed(v)?),
        Val::Result(Ok(v)) => P::Result(Ok(boxed(v)?)),
        Val::Result(Err(v)) => P::Result(Err(boxed(v)?)),
        Val::Flags(names) => P::Flags(names.clone()),
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
        Val::Resource(_) => "resource",
        Val::Future(_) => "future",
        Val::Stream(_) => "stream",
        Val::ErrorContext(_) => "error-context",
        Val::Map(_) => "map",
        Val::FixedLengthList(_) => "fixed-length list",
        _ => "value",
    }
}

fn from_protocol(val: wire_vals::Val) -> Val {
    use wire_vals::Val as P;
    let boxed = |v: Option<Box<P>>| v.map(|v| Box::new(from_protocol(*v)));
    match val {
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
        P::List(v) => Val::List(v.into_iter().map(from_protocol).collect()),
        P::Tuple(v) => Val::Tuple(v.into_iter().map(from_protocol).collect()),
        P::Record(fields) => Val::Record(
            fields
                .into_iter()
                .map(|(name, v)| (name, from_protocol(v)))
                .collect(),
        ),
        P::Variant(case, payload) => Val::Variant(case, boxed(payload)),
        P::Enum(case) => Val::Enum(case),
        P::Option(v) => Val::Option(boxed(v)),
        P::Result(Ok(v)) => Val::Result(Ok(boxed(v))),
        P::Result(Err(v)) => Val::Result(Err(boxed(v))),
        P::Flags(names) => Val::Flags(names),
    }
}
