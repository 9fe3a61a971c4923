//! What a module may import: the host functions registered for the sandbox
//! (module `env`, by name) and WASI preview 1 (module
//! `wasi_snapshot_preview1`): here the functions the sandbox serves
//! (stdio, clocks, random, args and environment, exit), in
//! [`crate::ungranted`] every other one, answering with WASI's errno.
//! Anything else fails the load with an error naming it.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use hyperlight_wasm_protocol::message::{
    ErrorCode, GuestError, HostFunctionSignature, OutCall, OutCallReply, Value, ValueType,
};
use wasmtime::{
    Caller, Engine, Extern, ExternType, FuncType, Linker, Memory, Module, Store, Val, ValType,
};

use crate::abi::{self, Fault, ModuleMemory};
use crate::host;
use crate::runtime::Limits;

/// The WASI module name.
const WASI: &str = "wasi_snapshot_preview1";

use crate::ungranted::{EBADF, EFAULT, EINVAL, ENOTCAPABLE, ESPIPE, ESUCCESS, is_stdio};

/// WASI `proc_exit`: ends the call; the host reports the exit code.
#[derive(Debug)]
pub struct Exit(pub i32);

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the module exited with code {}", self.0)
    }
}

impl core::error::Error for Exit {}

fn error(code: ErrorCode, message: fmt::Arguments<'_>) -> GuestError {
    GuestError {
        code,
        message: format!("{message}"),
    }
}

/// The module's memory and allocator, seen from inside an import.
fn caller_memory(caller: &mut Caller<'_, Limits>) -> ModuleMemory {
    let names = caller.data().abi.clone();
    let exports = ModuleMemory::exports(&names).map(|name| caller.get_export(name));
    ModuleMemory::new(&*caller, &names, exports, host::transfer_limit())
}

/// The module's memory (the export its ABI names), for WASI.
pub(crate) fn memory_of(caller: &mut Caller<'_, Limits>) -> Option<Memory> {
    let name = caller.data().abi.memory.clone();
    caller.get_export(&name).and_then(Extern::into_memory)
}

/// Asks the host for something on behalf of an import.
pub fn ask_host(call: &OutCall) -> wasmtime::Result<OutCallReply> {
    host::out_call(call).map_err(|e| {
        let code = match e {
            host::OutCallError::Send(_) => ErrorCode::Other,
            host::OutCallError::Reply(_) => ErrorCode::BadRequest,
        };
        Fault::new(code, format_args!("{e}")).into()
    })
}

/// Builds the linker for a module: host functions and WASI.
pub fn linker(
    engine: &Engine,
    host_functions: &[HostFunctionSignature],
) -> wasmtime::Result<Linker<Limits>> {
    let mut linker = Linker::new(engine);
    for sig in host_functions {
        define_host_function(&mut linker, engine, sig)?;
    }
    define_wasi(&mut linker)?;
    crate::ungranted::define(&mut linker)?;
    crate::fs_paths::define(&mut linker)?;
    Ok(linker)
}

/// Checks every import of `module` against what `linker` provides, with
/// errors that name the import.
pub fn check_imports(
    module: &Module,
    linker: &Linker<Limits>,
    store: &mut Store<Limits>,
) -> Result<(), GuestError> {
    for import in module.imports() {
        let name = format!("{}::{}", import.module(), import.name());
        let Some(provided) = linker.get_by_import(&mut *store, &import) else {
            let hint = match import.module() {
                "env" => "; register a host function of that name",
                WASI => "",
                _ => "; register a host function of that name with register_in",
            };
            return Err(error(
                ErrorCode::UnknownImport,
                format_args!(
                    "the module imports `{name}`, which this sandbox does not provide{hint}"
                ),
            ));
        };
        match (import.ty(), provided) {
            (ExternType::Func(wanted), Extern::Func(func)) => {
                let have = func.ty(&*store);
                let wanted_params: Vec<ValType> = wanted.params().collect();
                let wanted_results: Vec<ValType> = wanted.results().collect();
                let have_params: Vec<ValType> = have.params().collect();
                let have_results: Vec<ValType> = have.results().collect();
                let same = |a: &[ValType], b: &[ValType]| {
                    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| abi::same_type(x, y))
                };
                if !same(&wanted_params, &have_params) || !same(&wanted_results, &have_results) {
                    return Err(error(
                        ErrorCode::ImportTypeMismatch,
                        format_args!(
                            "the module imports `{name}` as {} -> {}, but the sandbox provides it as {} -> {}",
                            abi::type_list(&wanted_params),
                            abi::type_list(&wanted_results),
                            abi::type_list(&have_params),
                            abi::type_list(&have_results),
                        ),
                    ));
                }
            }
            _ => {
                return Err(error(
                    ErrorCode::ImportTypeMismatch,
                    format_args!("the module imports `{name}` as something other than a function"),
                ));
            }
        }
    }
    Ok(())
}

/// Defines `<module>::<name>`, which forwards the call to the host.
fn define_host_function(
    linker: &mut Linker<Limits>,
    engine: &Engine,
    sig: &HostFunctionSignature,
) -> wasmtime::Result<()> {
    let params: Vec<ValType> = sig
        .params
        .iter()
        .flat_map(|t| abi::wasm_types(*t))
        .collect();
    let results = abi::wasm_result(sig.returns);
    let ty = FuncType::new(engine, params, results);
    let sig = sig.clone();
    linker.func_new(
        &sig.module.clone(),
        &sig.name.clone(),
        ty,
        move |mut caller, wasm_args, results| {
            let memory = caller_memory(&mut caller);
            let name = &sig.name;
            let mut args = Vec::with_capacity(sig.params.len());
            // wasmtime checked the values against the function type, which was
            // built from the signature: they are there, of these types.
            let mut next = 0;
            let mut take = || {
                next += 1;
                wasm_args.get(next - 1).cloned().unwrap_or(Val::I32(0))
            };
            for (i, ty) in sig.params.iter().enumerate() {
                let what = || format!("argument {i} of host function `{name}`");
                let value = match ty {
                    ValueType::String => {
                        let ptr = take().i32().unwrap_or(0);
                        Value::String(memory.read_string(&caller, ptr, &what())?)
                    }
                    ValueType::Bytes => {
                        let ptr = take().i32().unwrap_or(0);
                        let len = take().i32().unwrap_or(0);
                        Value::Bytes(memory.read_bytes(&caller, ptr, len, &what())?)
                    }
                    scalar => abi::scalar_from_wasm(&take(), *scalar).ok_or_else(|| {
                        Fault::new(
                            ErrorCode::Other,
                            format_args!("{} has the wrong wasm type", what()),
                        )
                    })?,
                };
                args.push(value);
            }
            let reply = ask_host(&OutCall::CallHost {
                module: sig.module.clone(),
                function: name.clone(),
                args,
            })?;
            let value = match reply {
                OutCallReply::Returned(value) if value.ty() == sig.returns => value,
                OutCallReply::Failed(message) => {
                    return Err(Fault::new(
                        ErrorCode::HostFunctionFailed,
                        format_args!("{message}"),
                    )
                    .into());
                }
                other => {
                    return Err(Fault::new(
                        ErrorCode::BadRequest,
                        format_args!("host function `{name}` answered {other:?}"),
                    )
                    .into());
                }
            };
            let what = format!("the result of host function `{name}`");
            match value {
                Value::Void => {}
                Value::String(s) => {
                    results[0] =
                        Val::I32(memory.alloc_write(&mut caller, s.as_bytes(), true, &what)?);
                }
                Value::Bytes(bytes) => {
                    let mut buf = Vec::with_capacity(bytes.len() + 4);
                    // At most the input buffer's size (256 MiB): it fits.
                    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                    buf.extend_from_slice(&len.to_le_bytes());
                    buf.extend_from_slice(&bytes);
                    results[0] = Val::I32(memory.alloc_write(&mut caller, &buf, false, &what)?);
                }
                scalar => {
                    results[0] = abi::scalar_to_wasm(&scalar).ok_or_else(|| {
                        Fault::new(ErrorCode::Other, format_args!("{what} has no wasm form"))
                    })?;
                }
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// Writes `bytes` at guest address `at`, or reports EFAULT.
pub fn write_at(caller: &mut Caller<'_, Limits>, at: i32, bytes: &[u8]) -> Result<(), i32> {
    let memory = memory_of(caller).ok_or(EFAULT)?;
    memory
        .write(&mut *caller, at.cast_unsigned() as usize, bytes)
        .map_err(|_| EFAULT)
}

fn errno(result: Result<(), i32>) -> i32 {
    match result {
        Ok(()) => ESUCCESS,
        Err(e) => e,
    }
}

/// Defines the WASI preview1 subset.
fn define_wasi(linker: &mut Linker<Limits>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut caller: Caller<'_, Limits>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         nwritten: i32|
         -> wasmtime::Result<i32> {
            if fd == 0 {
                // stdin has no fd_write right.
                return Ok(ENOTCAPABLE);
            }
            if fd != 1 && fd != 2 {
                return crate::fs::write(&mut caller, fd, iovs, iovs_len, None, nwritten);
            }
            let bytes = match crate::fs::gather(&mut caller, iovs, iovs_len) {
                Ok(bytes) => bytes,
                Err(e) => return Ok(e),
            };
            // WASI's count is 32 bits: saturate (a wasm32 module cannot use more).
            let written = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            print(&bytes, fd == 2)?;
            Ok(errno(write_at(
                &mut caller,
                nwritten,
                &written.to_le_bytes(),
            )))
        },
    )?;
    linker.func_wrap(WASI, "fd_close", |fd: i32| -> wasmtime::Result<i32> {
        if is_stdio(fd) {
            Ok(ESUCCESS)
        } else {
            crate::fs::close(fd)
        }
    })?;
    linker.func_wrap(
        WASI,
        "fd_seek",
        |mut caller: Caller<'_, Limits>,
         fd: i32,
         offset: i64,
         whence: i32,
         new: i32|
         -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                return Ok(ESPIPE);
            }
            crate::fs::seek(&mut caller, fd, offset, whence, new)
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_fdstat_get",
        |mut caller: Caller<'_, Limits>, fd: i32, stat: i32| -> wasmtime::Result<i32> {
            if !is_stdio(fd) {
                return crate::fs::fdstat(&mut caller, fd, stat);
            }
            // fdstat: filetype (character device), flags, rights base and
            // inheriting: fd_read or fd_write only.
            let mut bytes = [0u8; 24];
            bytes[0] = 2;
            let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 };
            bytes[8..16].copy_from_slice(&rights.to_le_bytes());
            Ok(errno(write_at(&mut caller, stat, &bytes)))
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_fdstat_set_flags",
        |fd: i32, _flags: i32| -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                Ok(ENOTCAPABLE)
            } else if crate::fs::exists(fd)? {
                Ok(crate::ungranted::ENOTSUP)
            } else {
                Ok(EBADF)
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_prestat_get",
        |mut caller: Caller<'_, Limits>, fd: i32, buf: i32| -> wasmtime::Result<i32> {
            crate::fs::prestat_get(&mut caller, fd, buf)
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_prestat_dir_name",
        |mut caller: Caller<'_, Limits>, fd: i32, path: i32, len: i32| -> wasmtime::Result<i32> {
            crate::fs::prestat_dir_name(&mut caller, fd, path, len)
        },
    )?;
    crate::config::define(linker)?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut caller: Caller<'_, Limits>,
         id: i32,
         _precision: i64,
         time: i32|
         -> wasmtime::Result<i32> {
            let realtime = match id {
                0 => true,
                1..=3 => false,
                _ => return Ok(EINVAL),
            };
            let ns = match ask_host(&OutCall::Clock { realtime })? {
                OutCallReply::Time(ns) => ns,
                other => {
                    return Err(Fault::new(
                        ErrorCode::BadRequest,
                        format_args!("clock answer {other:?}"),
                    )
                    .into());
                }
            };
            Ok(errno(write_at(&mut caller, time, &ns.to_le_bytes())))
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_res_get",
        |mut caller: Caller<'_, Limits>, id: i32, res: i32| -> i32 {
            if !(0..=3).contains(&id) {
                return EINVAL;
            }
            errno(write_at(&mut caller, res, &1000u64.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        WASI,
        "random_get",
        |mut caller: Caller<'_, Limits>, buf: i32, len: i32| -> wasmtime::Result<i32> {
            let (mut at, mut left) = (buf.cast_unsigned() as usize, len.cast_unsigned() as usize);
            while left > 0 {
                let chunk = u32::try_from(left.min(host::transfer_limit())).unwrap_or(u32::MAX);
                let bytes = match ask_host(&OutCall::Random { len: chunk })? {
                    OutCallReply::Random(bytes) if bytes.len() == chunk as usize => bytes,
                    other => {
                        return Err(Fault::new(
                            ErrorCode::BadRequest,
                            format_args!("random answer {other:?}"),
                        )
                        .into());
                    }
                };
                // `at` started as a u32 and stays below the end of the
                // buffer the module named.
                let Ok(addr) = u32::try_from(at) else {
                    return Ok(EFAULT);
                };
                if let Err(e) = write_at(&mut caller, addr.cast_signed(), &bytes) {
                    return Ok(e);
                }
                at += bytes.len();
                left -= bytes.len();
            }
            Ok(ESUCCESS)
        },
    )?;
    linker.func_wrap(WASI, "proc_exit", |code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(Exit(code)))
    })?;
    linker.func_wrap(WASI, "sched_yield", || -> i32 { ESUCCESS })?;
    linker.func_wrap(
        WASI,
        "poll_oneoff",
        |mut caller: Caller<'_, Limits>,
         subscriptions: i32,
         events: i32,
         count: i32,
         nevents: i32|
         -> wasmtime::Result<i32> {
            crate::poll::poll_oneoff(&mut caller, subscriptions, events, count, nevents)
        },
    )?;
    Ok(())
}

/// Sends text the module wrote to stdout or stderr to the host's print
/// function, in pieces that fit the output buffer. Invalid UTF-8 is
/// replaced with U+FFFD: printing is diagnostics, not data.
pub(crate) fn print(bytes: &[u8], stderr: bool) -> wasmtime::Result<()> {
    let text = String::from_utf8_lossy(bytes);
    let mut rest: &str = &text;
    let limit = host::transfer_limit().max(4);
    while !rest.is_empty() {
        let mut cut = rest.len().min(limit);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        match ask_host(&OutCall::Print {
            text: piece.to_owned(),
            stderr,
        })? {
            OutCallReply::Done => {}
            OutCallReply::Failed(message) => {
                return Err(
                    Fault::new(ErrorCode::HostFunctionFailed, format_args!("{message}")).into(),
                );
            }
            other => {
                return Err(Fault::new(
                    ErrorCode::BadRequest,
                    format_args!("print answer {other:?}"),
                )
                .into());
            }
        }
        rest = tail;
    }
    Ok(())
}
