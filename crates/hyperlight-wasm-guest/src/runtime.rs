//! The Wasm side of the guest: the engine, the loaded module, and the handler
//! for each [`Request`].

use alloc::alloc::{Layout, alloc, dealloc};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use hyperlight_wasm_protocol::boot::BootInfo;
use hyperlight_wasm_protocol::engine;
use hyperlight_wasm_protocol::message::{
    ErrorCode, GuestError, OutCall, OutCallReply, Request, Response, Value, ValueType,
};
use wasmtime::{
    Engine, ExternType, Func, Instance, Linker, Module, Store, Trap, Val, ValType, WasmBacktrace,
};

use crate::host;
use crate::platform;

/// Stack the guest keeps for itself below wasm code: wasmtime's own frames
/// around a call and the host-call path.
const NATIVE_STACK_RESERVE: u64 = 64 * 1024;

/// Alignment of the buffer a precompiled module is deserialized in place from
/// (its ELF sections must keep their alignment).
const ARTIFACT_ALIGN: usize = 4096;

/// Builds a [`Response::Failed`].
pub fn failed(code: ErrorCode, message: fmt::Arguments<'_>) -> Response {
    Response::Failed(error(code, message))
}

fn error(code: ErrorCode, message: fmt::Arguments<'_>) -> GuestError {
    GuestError {
        code,
        message: format!("{message}"),
    }
}

/// The engine and, between a load and an unload, one module.
pub struct Runtime {
    engine: Engine,
    loaded: Option<Loaded>,
}

/// A module and its instance. Fields drop in order: the store and the module
/// before the artifact memory their code lives in.
struct Loaded {
    store: Store<()>,
    instance: Instance,
    _module: Module,
    _artifact: Artifact,
}

impl Runtime {
    /// Creates the engine with the configuration the host compiles with.
    pub fn new(info: &BootInfo) -> wasmtime::Result<Runtime> {
        let mut config = engine::shared_config();
        let max_wasm_stack = info
            .stack
            .size
            .saturating_sub(NATIVE_STACK_RESERVE)
            .max(4096);
        config
            .with_custom_code_memory(Some(Arc::new(platform::CodeMemory)))
            .max_wasm_stack(max_wasm_stack as usize);
        // SAFETY: x86_64-unknown-none is a soft-float target, but wasmtime's
        // code and our calls into it only pass floats through wasmtime's own
        // trampolines, which use the hardware ABI on both sides; the answers
        // of detect_host_feature come from cpuid and are therefore true.
        unsafe {
            config.x86_float_abi_ok(true);
            config.detect_host_feature(platform::detect_host_feature);
        }
        Ok(Runtime {
            engine: Engine::new(&config)?,
            loaded: None,
        })
    }

    /// Handles one request from the host.
    pub fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::LoadModule { artifact_len } => {
                self.load(artifact_len).map(|()| Response::ModuleLoaded)
            }
            Request::Call {
                function,
                args,
                returns,
            } => self.call(&function, args, returns).map(Response::Returned),
            Request::UnloadModule => match self.loaded.take() {
                Some(_) => Ok(Response::ModuleUnloaded),
                None => Err(error(
                    ErrorCode::NoModuleLoaded,
                    format_args!("no module is loaded"),
                )),
            },
        };
        result.unwrap_or_else(Response::Failed)
    }

    fn load(&mut self, artifact_len: u64) -> Result<(), GuestError> {
        if self.loaded.is_some() {
            return Err(error(
                ErrorCode::ModuleAlreadyLoaded,
                format_args!("a module is already loaded"),
            ));
        }
        let artifact = Artifact::new(artifact_len)?;
        let reply = host::out_call(&OutCall::ArtifactBuffer {
            addr: artifact.ptr.as_ptr() as u64,
            len: artifact_len,
        })
        .map_err(|e| error(ErrorCode::BadRequest, format_args!("{e}")))?;
        match reply {
            OutCallReply::Done => {}
        }
        // SAFETY: the bytes were produced by the host's wasmtime (the same
        // version and configuration, checked by deserialize). Even if they
        // were not, whatever code they contain runs inside this VM only. The
        // artifact memory lives in `Loaded` next to the module and outlives
        // it, and nothing writes to it after this point.
        let module = unsafe { Module::deserialize_raw(&self.engine, artifact.as_non_null_slice()) }
            .map_err(|e| error(ErrorCode::IncompatibleArtifact, format_args!("{e:#}")))?;
        if let Some(import) = module.imports().next() {
            let kind = match import.ty() {
                ExternType::Func(_) => "function",
                ExternType::Global(_) => "global",
                ExternType::Table(_) => "table",
                ExternType::Memory(_) => "memory",
                _ => "item",
            };
            return Err(error(
                ErrorCode::UnknownImport,
                format_args!(
                    "the module imports {kind} `{}::{}`, which this sandbox does not provide",
                    import.module(),
                    import.name()
                ),
            ));
        }
        let linker = Linker::new(&self.engine);
        let mut store = Store::new(&self.engine, ());
        let instance = linker.instantiate(&mut store, &module).map_err(|e| {
            from_wasmtime(
                ErrorCode::InstantiationFailed,
                "instantiating the module",
                &e,
            )
        })?;
        self.loaded = Some(Loaded {
            store,
            instance,
            _module: module,
            _artifact: artifact,
        });
        Ok(())
    }

    fn call(
        &mut self,
        name: &str,
        args: Vec<Value>,
        returns: ValueType,
    ) -> Result<Value, GuestError> {
        let loaded = self.loaded.as_mut().ok_or_else(|| {
            error(
                ErrorCode::NoModuleLoaded,
                format_args!("no module is loaded"),
            )
        })?;
        let func = loaded
            .instance
            .get_func(&mut loaded.store, name)
            .ok_or_else(|| {
                error(
                    ErrorCode::FunctionNotFound,
                    format_args!("the module exports no function named `{name}`"),
                )
            })?;
        let ty = func.ty(&loaded.store);
        let params: Vec<ValType> = ty.params().collect();
        if params.len() != args.len() {
            return Err(error(
                ErrorCode::ParameterCountMismatch,
                format_args!(
                    "`{name}` takes {} argument(s) but the call passed {}",
                    params.len(),
                    args.len()
                ),
            ));
        }
        let wasm_args = args
            .iter()
            .zip(&params)
            .enumerate()
            .map(|(i, (value, ty))| {
                to_wasm(value, ty).ok_or_else(|| parameter_mismatch(name, i, value.ty(), ty))
            })
            .collect::<Result<Vec<Val>, GuestError>>()?;
        let results: Vec<ValType> = ty.results().collect();
        check_returns(name, &results, returns)?;
        let mut out: Vec<Val> = results.iter().map(|_| Val::I32(0)).collect();
        call_func(&func, &mut loaded.store, &wasm_args, &mut out)
            .map_err(|e| from_wasmtime(ErrorCode::Other, &format!("calling `{name}`"), &e))?;
        Ok(from_wasm(out.first(), returns))
    }
}

fn call_func(
    func: &Func,
    store: &mut Store<()>,
    args: &[Val],
    out: &mut [Val],
) -> wasmtime::Result<()> {
    func.call(store, args, out)
}

fn parameter_mismatch(name: &str, index: usize, given: ValueType, ty: &ValType) -> GuestError {
    error(
        ErrorCode::ParameterTypeMismatch,
        format_args!(
            "argument {index} is {given} but parameter {index} of `{name}` has wasm type {ty}"
        ),
    )
}

/// Converts an argument to the wasm value the parameter needs, if it fits.
fn to_wasm(value: &Value, ty: &ValType) -> Option<Val> {
    Some(match (value, ty) {
        (Value::I32(v), ValType::I32) => Val::I32(*v),
        (Value::U32(v), ValType::I32) => Val::I32(*v as i32),
        (Value::Bool(v), ValType::I32) => Val::I32(i32::from(*v)),
        (Value::I64(v), ValType::I64) => Val::I64(*v),
        (Value::U64(v), ValType::I64) => Val::I64(*v as i64),
        (Value::F32(v), ValType::F32) => Val::F32(v.to_bits()),
        (Value::F64(v), ValType::F64) => Val::F64(v.to_bits()),
        _ => return None,
    })
}

/// Checks that the function's results can be returned as `returns`.
fn check_returns(name: &str, results: &[ValType], returns: ValueType) -> Result<(), GuestError> {
    let fits = matches!(
        (results, returns),
        ([], ValueType::Void)
            | (
                [ValType::I32],
                ValueType::I32 | ValueType::U32 | ValueType::Bool
            )
            | ([ValType::I64], ValueType::I64 | ValueType::U64)
            | ([ValType::F32], ValueType::F32)
            | ([ValType::F64], ValueType::F64)
    );
    if fits {
        return Ok(());
    }
    let wasm: Vec<String> = results.iter().map(|t| format!("{t}")).collect();
    Err(error(
        ErrorCode::ReturnTypeMismatch,
        format_args!(
            "`{name}` returns [{}], which cannot be returned as {returns}",
            wasm.join(", ")
        ),
    ))
}

/// Converts the wasm result to the requested type ([`check_returns`] has
/// checked that they fit).
fn from_wasm(result: Option<&Val>, returns: ValueType) -> Value {
    match (result, returns) {
        (Some(Val::I32(v)), ValueType::I32) => Value::I32(*v),
        (Some(Val::I32(v)), ValueType::U32) => Value::U32(*v as u32),
        (Some(Val::I32(v)), ValueType::Bool) => Value::Bool(*v != 0),
        (Some(Val::I64(v)), ValueType::I64) => Value::I64(*v),
        (Some(Val::I64(v)), ValueType::U64) => Value::U64(*v as u64),
        (Some(Val::F32(v)), ValueType::F32) => Value::F32(f32::from_bits(*v)),
        (Some(Val::F64(v)), ValueType::F64) => Value::F64(f64::from_bits(*v)),
        _ => Value::Void,
    }
}

/// Turns a wasmtime error into a [`GuestError`], naming the trap if it was one.
fn from_wasmtime(otherwise: ErrorCode, doing: &str, e: &wasmtime::Error) -> GuestError {
    match (e.downcast_ref::<Trap>(), e.downcast_ref::<WasmBacktrace>()) {
        (Some(trap), Some(backtrace)) => {
            error(trap_code(*trap), format_args!("{trap}\n{backtrace}"))
        }
        (Some(trap), None) => error(trap_code(*trap), format_args!("{trap}")),
        (None, _) if platform::allocation_failed() => {
            error(ErrorCode::OutOfMemory, format_args!("{doing}: {e:?}"))
        }
        (None, _) => error(otherwise, format_args!("{doing}: {e:?}")),
    }
}

fn trap_code(trap: Trap) -> ErrorCode {
    match trap {
        Trap::UnreachableCodeReached => ErrorCode::TrapUnreachable,
        Trap::IntegerDivisionByZero => ErrorCode::TrapIntegerDivisionByZero,
        Trap::IntegerOverflow => ErrorCode::TrapIntegerOverflow,
        Trap::BadConversionToInteger => ErrorCode::TrapBadConversionToInteger,
        Trap::MemoryOutOfBounds => ErrorCode::TrapMemoryOutOfBounds,
        Trap::TableOutOfBounds => ErrorCode::TrapTableOutOfBounds,
        Trap::IndirectCallToNull => ErrorCode::TrapIndirectCallToNull,
        Trap::BadSignature => ErrorCode::TrapBadSignature,
        Trap::StackOverflow => ErrorCode::TrapStackOverflow,
        Trap::HeapMisaligned => ErrorCode::TrapHeapMisaligned,
        _ => ErrorCode::TrapOther,
    }
}

/// The heap buffer a precompiled module lives in, page-aligned.
struct Artifact {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

impl Artifact {
    fn new(len: u64) -> Result<Artifact, GuestError> {
        let too_large = || {
            error(
                ErrorCode::OutOfMemory,
                format_args!("no room in the guest heap for a module of {len} bytes"),
            )
        };
        let len = usize::try_from(len).map_err(|_| too_large())?;
        let layout =
            Layout::from_size_align(len.max(1), ARTIFACT_ALIGN).map_err(|_| too_large())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc(layout) }).ok_or_else(too_large)?;
        Ok(Artifact { ptr, len, layout })
    }

    fn as_non_null_slice(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }
}

impl Drop for Artifact {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
