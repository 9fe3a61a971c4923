//! The Wasm side of the guest: the engine, the loaded module, and the handler
//! for each [`Request`].

use alloc::alloc::{Layout, alloc, dealloc};
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use hyperlight_wasm_protocol::boot::BootInfo;
use hyperlight_wasm_protocol::engine;
use hyperlight_wasm_protocol::message::{
    ComponentImport, ErrorCode, GuestError, HostFunctionSignature, ModuleAbi, Node, OutCall,
    OutCallReply, Request, Response, Value, ValueType,
};
use wasmtime::{Engine, Instance, Module, Store, Trap, Val, ValType, WasmBacktrace};

use crate::abi::{self, Fault, ModuleMemory};
use crate::component::{CallFailure, LoadedComponent};
use crate::imports::{self, Exit};
use crate::{host, platform};

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

/// Why a request failed: an error to report, or the module's `proc_exit`.
enum Failure {
    Error(GuestError),
    Exit(i32),
}

impl From<GuestError> for Failure {
    fn from(e: GuestError) -> Failure {
        Failure::Error(e)
    }
}

impl From<Fault> for Failure {
    fn from(f: Fault) -> Failure {
        Failure::Error(GuestError {
            code: f.code,
            message: f.message,
        })
    }
}

/// The engine and, once loaded, one module. (Unloading is the host's job:
/// it restores the VM to its state before the load.)
pub struct Runtime {
    engine: Engine,
    loaded: Option<Loaded>,
    component: Option<ComponentLoaded>,
    /// The most linear memory a module may have: the heap.
    max_memory: usize,
}

/// The store's limits. As the spec says, a `memory.grow` that cannot be
/// satisfied returns -1 to the module and the call goes on: past the
/// module's declared maximum (wasmtime checks that), past the guest heap
/// (the limit here), or when the heap has no room left (the allocation
/// fails). Running out of heap anywhere else stays an error.
pub struct Limits {
    max_memory: usize,
    /// The exports strings and buffers go through (imports find the
    /// module's memory by it).
    pub abi: ModuleAbi,
    /// A component's WASI 0.2 resources.
    pub wasi: crate::wasi_p2::Table,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_memory)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The allocation that failed was the growth itself, which the
        // module sees as -1: it is not a failure of anything else.
        platform::forget_allocation_failure();
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A table entry takes a pointer or more of heap.
        Ok(desired.saturating_mul(16) <= self.max_memory)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        platform::forget_allocation_failure();
        Ok(())
    }
}

/// A module and its instance. Fields drop in order: the store and the module
/// before the artifact memory their code lives in.
struct Loaded {
    store: Store<Limits>,
    instance: Instance,
    memory: ModuleMemory,
    _module: Module,
    _artifact: Artifact,
}

/// A component and the artifact memory its code lives in (dropped last).
struct ComponentLoaded {
    loaded: LoadedComponent,
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
            .max_wasm_stack(crate::usize_from(max_wasm_stack));
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
            component: None,
            max_memory: usize::try_from(info.heap.size).unwrap_or(usize::MAX),
        })
    }

    /// Handles one request from the host.
    pub fn handle(&mut self, request: Request) -> Response {
        // An allocation failure is judged per request (a persistent
        // sandbox keeps its memory across requests).
        platform::forget_allocation_failure();
        let result = match request {
            Request::LoadModule {
                artifact_len,
                host_functions,
                abi,
            } => self
                .load(artifact_len, &host_functions, abi)
                .map(|()| Response::ModuleLoaded),
            Request::ReadMemory { offset, len } => self
                .read_memory(offset, len)
                .map(|bytes| Response::Returned(Value::Bytes(bytes))),
            Request::WriteMemory { offset, bytes } => self
                .write_memory(offset, &bytes)
                .map(|()| Response::Returned(Value::Void)),
            Request::Call {
                function,
                args,
                returns,
            } => self.call(&function, args, returns).map(Response::Returned),
            Request::LoadComponent {
                artifact_len,
                imports,
            } => self
                .load_component(artifact_len, &imports)
                .map(|()| Response::ModuleLoaded),
            Request::CallComponent { function, args } => self
                .call_component(&function, args)
                .map(Response::ComponentReturned),
            Request::DropResource { id } => self
                .drop_resource(id)
                .map(|()| Response::ComponentReturned(Vec::new())),
        };
        match result {
            Ok(response) => response,
            Err(Failure::Error(e)) => Response::Failed(e),
            Err(Failure::Exit(code)) => Response::Exited { code },
        }
    }

    fn load(
        &mut self,
        artifact_len: u64,
        host_functions: &[HostFunctionSignature],
        abi: ModuleAbi,
    ) -> Result<(), Failure> {
        let artifact = self.fetch_artifact(artifact_len)?;
        // SAFETY: the bytes were produced by the host's wasmtime (the same
        // version and configuration, checked by deserialize). Even if they
        // were not, whatever code they contain runs inside this VM only. The
        // artifact memory lives in `Loaded` next to the module and outlives
        // it, and nothing writes to it after this point.
        let module = unsafe { Module::deserialize_raw(&self.engine, artifact.as_non_null_slice()) }
            .map_err(|e| error(ErrorCode::IncompatibleArtifact, format_args!("{e:#}")))?;
        let linker = imports::linker(&self.engine, host_functions).map_err(|e| {
            error(
                ErrorCode::Other,
                format_args!("cannot set up imports: {e:?}"),
            )
        })?;
        let mut store = Store::new(
            &self.engine,
            Limits {
                max_memory: self.max_memory,
                abi,
                wasi: Default::default(),
            },
        );
        store.limiter(|limits| limits);
        imports::check_imports(&module, &linker, &mut store)?;
        let instance = linker.instantiate(&mut store, &module).map_err(|e| {
            from_wasmtime(
                ErrorCode::InstantiationFailed,
                "instantiating the module",
                &e,
            )
        })?;
        // WASI reactors (C and Rust libraries built for wasm32-wasi) expect
        // `_initialize` to run once before any other export.
        if let Some(init) = instance.get_func(&mut store, "_initialize") {
            let init = init.typed::<(), ()>(&store).map_err(|e| {
                error(
                    ErrorCode::InstantiationFailed,
                    format_args!("the module exports `_initialize` with an unexpected type: {e}"),
                )
            })?;
            init.call(&mut store, ()).map_err(|e| {
                from_wasmtime(ErrorCode::InstantiationFailed, "running `_initialize`", &e)
            })?;
        }
        let names = store.data().abi.clone();
        let exports =
            ModuleMemory::exports(&names).map(|name| instance.get_export(&mut store, name));
        let memory = ModuleMemory::new(&store, &names, exports, host::transfer_limit());
        self.loaded = Some(Loaded {
            store,
            instance,
            memory,
            _module: module,
            _artifact: artifact,
        });
        Ok(())
    }

    /// Refuses a second load, then has the host copy an artifact of `len`
    /// bytes into a buffer of the heap.
    fn fetch_artifact(&self, len: u64) -> Result<Artifact, Failure> {
        if self.loaded.is_some() || self.component.is_some() {
            return Err(error(
                ErrorCode::ModuleAlreadyLoaded,
                format_args!("a module or component is already loaded"),
            )
            .into());
        }
        let artifact = Artifact::new(len)?;
        let reply = host::out_call(&OutCall::ArtifactBuffer {
            addr: artifact.ptr.as_ptr() as u64,
            len,
        })
        .map_err(|e| error(ErrorCode::BadRequest, format_args!("{e}")))?;
        if reply != OutCallReply::Done {
            return Err(error(
                ErrorCode::BadRequest,
                format_args!("the host answered {reply:?} to the artifact buffer"),
            )
            .into());
        }
        Ok(artifact)
    }

    fn load_component(
        &mut self,
        artifact_len: u64,
        imports: &[ComponentImport],
    ) -> Result<(), Failure> {
        let artifact = self.fetch_artifact(artifact_len)?;
        // SAFETY: as for modules in `load`: the host's wasmtime produced the
        // bytes (deserialize checks version and configuration), whatever
        // they contain runs inside this VM only, and the artifact memory
        // lives in `ComponentLoaded` next to the component and outlives it.
        let component = unsafe {
            wasmtime::component::Component::deserialize_raw(
                &self.engine,
                artifact.as_non_null_slice(),
            )
        }
        .map_err(|e| error(ErrorCode::IncompatibleArtifact, format_args!("{e:#}")))?;
        let linker = crate::component::linker(&self.engine, &component, imports).map_err(|e| {
            error(
                ErrorCode::Other,
                format_args!("cannot set up imports: {e:?}"),
            )
        })?;
        let mut store = Store::new(
            &self.engine,
            Limits {
                max_memory: self.max_memory,
                abi: ModuleAbi::default(),
                wasi: Default::default(),
            },
        );
        store.limiter(|limits| limits);
        let instance = linker.instantiate(&mut store, &component).map_err(|e| {
            from_wasmtime(
                ErrorCode::InstantiationFailed,
                "instantiating the component",
                &e,
            )
        })?;
        self.component = Some(ComponentLoaded {
            loaded: LoadedComponent {
                store,
                instance,
                _component: component,
                resources: Default::default(),
            },
            _artifact: artifact,
        });
        Ok(())
    }

    fn call_component(&mut self, name: &str, args: Vec<Node>) -> Result<Vec<Node>, Failure> {
        let loaded = self.component.as_mut().ok_or_else(|| {
            error(
                ErrorCode::NoModuleLoaded,
                format_args!("no component is loaded"),
            )
        })?;
        loaded.loaded.call(name, args).map_err(|e| match e {
            CallFailure::Fault(fault) => fault.into(),
            // The canonical ABI's checks of what the component hands over
            // (pointers out of its memory, strings that are not UTF-8,
            // invalid discriminants) are traps in the component model.
            CallFailure::Wasmtime(e) => {
                from_wasmtime(ErrorCode::TrapOther, &format!("calling `{name}`"), &e)
            }
        })
    }

    fn drop_resource(&mut self, id: u64) -> Result<(), Failure> {
        let loaded = self.component.as_mut().ok_or_else(|| {
            error(
                ErrorCode::NoModuleLoaded,
                format_args!("no component is loaded"),
            )
        })?;
        loaded.loaded.drop_resource(id).map_err(|e| match e {
            CallFailure::Fault(fault) => fault.into(),
            CallFailure::Wasmtime(e) => {
                from_wasmtime(ErrorCode::TrapOther, "dropping a resource", &e)
            }
        })
    }

    /// The loaded module, or the error for a request that needs one.
    fn loaded(&mut self) -> Result<&mut Loaded, GuestError> {
        self.loaded.as_mut().ok_or_else(|| {
            error(
                ErrorCode::NoModuleLoaded,
                format_args!("no module is loaded"),
            )
        })
    }

    /// `len` bytes at `offset` of the module's memory.
    fn read_memory(&mut self, offset: u32, len: u32) -> Result<Vec<u8>, Failure> {
        let loaded = self.loaded()?;
        let memory = loaded.memory.memory("reading the module's memory")?;
        let start = offset as usize;
        memory
            .data(&loaded.store)
            .get(start..)
            .and_then(|tail| tail.get(..len as usize))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| out_of_memory_range(offset, len, memory.data_size(&loaded.store)))
    }

    /// Writes `bytes` at `offset` of the module's memory.
    fn write_memory(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Failure> {
        let loaded = self.loaded()?;
        let memory = loaded.memory.memory("writing the module's memory")?;
        let size = memory.data_size(&loaded.store);
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        memory
            .write(&mut loaded.store, offset as usize, bytes)
            .map_err(|_| out_of_memory_range(offset, len, size))
    }

    fn call(&mut self, name: &str, args: Vec<Value>, returns: ValueType) -> Result<Value, Failure> {
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
        let results: Vec<ValType> = ty.results().collect();
        check_params(name, &args, &params)?;
        check_returns(name, &results, returns)?;

        // Strings and buffers go into memory from the module's malloc; the
        // runtime frees them with the module's free after the call.
        let mut wasm_args = Vec::with_capacity(params.len());
        let mut allocations = Vec::new();
        for (i, arg) in args.iter().enumerate() {
            let what = format!("passing argument {i} ({}) to `{name}`", arg.ty());
            match arg {
                Value::String(s) => {
                    let ptr = loaded
                        .memory
                        .alloc_write(&mut loaded.store, s.as_bytes(), true, &what)
                        .map_err(|e| from_wasmtime(ErrorCode::Other, &what, &e))?;
                    allocations.push(ptr);
                    wasm_args.push(Val::I32(ptr));
                }
                Value::Bytes(b) => {
                    let ptr = loaded
                        .memory
                        .alloc_write(&mut loaded.store, b, false, &what)
                        .map_err(|e| from_wasmtime(ErrorCode::Other, &what, &e))?;
                    allocations.push(ptr);
                    wasm_args.push(Val::I32(ptr));
                    // At most the input buffer's size (256 MiB): it fits.
                    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
                    wasm_args.push(Val::I32(len.cast_signed()));
                }
                scalar => wasm_args.extend(abi::scalar_to_wasm(scalar)),
            }
        }
        let mut out: Vec<Val> = results.iter().map(|_| Val::I32(0)).collect();
        let called = func.call(&mut loaded.store, &wasm_args, &mut out);
        for ptr in allocations {
            // Freeing can trap too; the call's own outcome comes first.
            if let Err(e) = loaded.memory.free(&mut loaded.store, ptr)
                && called.is_ok()
            {
                return Err(from_wasmtime(
                    ErrorCode::Other,
                    &format!("freeing the arguments of `{name}`"),
                    &e,
                ));
            }
        }
        called.map_err(|e| from_wasmtime(ErrorCode::Other, &format!("calling `{name}`"), &e))?;

        let result = out.first();
        let what = format!("the result of `{name}`");
        let value = match (returns, result) {
            (ValueType::Void, _) => Value::Void,
            (ValueType::String, Some(Val::I32(ptr))) => {
                let s = loaded.memory.read_string(&loaded.store, *ptr, &what)?;
                loaded
                    .memory
                    .free(&mut loaded.store, *ptr)
                    .map_err(|e| from_wasmtime(ErrorCode::Other, &what, &e))?;
                Value::String(s)
            }
            (ValueType::Bytes, Some(Val::I32(ptr))) => {
                let b = loaded
                    .memory
                    .read_len_prefixed(&loaded.store, *ptr, &what)?;
                loaded
                    .memory
                    .free(&mut loaded.store, *ptr)
                    .map_err(|e| from_wasmtime(ErrorCode::Other, &what, &e))?;
                Value::Bytes(b)
            }
            (ty, Some(val)) => abi::scalar_from_wasm(val, ty).ok_or_else(|| {
                error(
                    ErrorCode::ReturnTypeMismatch,
                    format_args!("{what} is not a {ty}"),
                )
            })?,
            (ty, None) => {
                return Err(error(
                    ErrorCode::ReturnTypeMismatch,
                    format_args!("{what} is missing, expected {ty}"),
                )
                .into());
            }
        };
        Ok(value)
    }
}

/// Checks the arguments against the function's wasm parameters (a `String`
/// takes one `i32`, a `Vec<u8>` two).
/// The error for an access of `len` bytes at `offset` past the end of a
/// memory of `size` bytes.
fn out_of_memory_range(offset: u32, len: u32, size: usize) -> Failure {
    error(
        ErrorCode::BadGuestPointer,
        format_args!(
            "{len} bytes at offset {offset:#x} lie outside the module's memory of {size:#x} bytes"
        ),
    )
    .into()
}

fn check_params(name: &str, args: &[Value], params: &[ValType]) -> Result<(), GuestError> {
    let wanted: usize = args.iter().map(|a| a.ty().wasm_params().len()).sum();
    if wanted != params.len() {
        return Err(error(
            ErrorCode::ParameterCountMismatch,
            format_args!(
                "`{name}` takes {} wasm parameter(s) {} but the {} argument(s) passed make {wanted} \
                 (a String is one i32, a Vec<u8> two)",
                params.len(),
                abi::type_list(params),
                args.len(),
            ),
        ));
    }
    let mut at = 0;
    for (i, arg) in args.iter().enumerate() {
        let types = abi::wasm_types(arg.ty());
        let slots = &params[at..at + types.len()];
        if !types.iter().zip(slots).all(|(a, b)| abi::same_type(a, b)) {
            return Err(error(
                ErrorCode::ParameterTypeMismatch,
                format_args!(
                    "argument {i} is {} (wasm {}) but `{name}` takes {} there",
                    arg.ty(),
                    abi::type_list(&types),
                    abi::type_list(slots)
                ),
            ));
        }
        at += types.len();
    }
    Ok(())
}

/// Checks that the function's results can be returned as `returns`.
fn check_returns(name: &str, results: &[ValType], returns: ValueType) -> Result<(), GuestError> {
    let wanted = abi::wasm_result(returns);
    if wanted.len() == results.len()
        && wanted
            .iter()
            .zip(results)
            .all(|(a, b)| abi::same_type(a, b))
    {
        return Ok(());
    }
    Err(error(
        ErrorCode::ReturnTypeMismatch,
        format_args!(
            "`{name}` returns {}, which cannot be returned as {returns} (wasm {})",
            abi::type_list(results),
            abi::type_list(&wanted)
        ),
    ))
}

/// Turns a wasmtime error into a [`Failure`]: the module's exit, a fault of
/// ours, a trap (named), or `otherwise`.
fn from_wasmtime(otherwise: ErrorCode, doing: &str, e: &wasmtime::Error) -> Failure {
    if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
        return Failure::Exit(*code);
    }
    if let Some(fault) = e.downcast_ref::<Fault>() {
        return error(fault.code, format_args!("{}", fault.message)).into();
    }
    let e = match (e.downcast_ref::<Trap>(), e.downcast_ref::<WasmBacktrace>()) {
        (Some(trap), Some(backtrace)) => {
            error(trap_code(*trap), format_args!("{trap}\n{backtrace}"))
        }
        (Some(trap), None) => error(trap_code(*trap), format_args!("{trap}")),
        (None, _) if platform::allocation_failed() => {
            error(ErrorCode::OutOfMemory, format_args!("{doing}: {e:?}"))
        }
        (None, _) => error(otherwise, format_args!("{doing}: {e:?}")),
    };
    e.into()
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
