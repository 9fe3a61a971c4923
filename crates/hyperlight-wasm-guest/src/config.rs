//! What the host grants a WASI module of its own configuration: the
//! argument list, the environment, and stdin. Each WASI call asks the host
//! (one out-call), so nothing of the configuration lives in the guest's
//! state: a shared image holds none of it.

use alloc::string::String;
use alloc::vec::Vec;

use hyperlight_wasm_protocol::message::{ErrorCode, OutCall, OutCallReply};
use wasmtime::{Caller, Linker};

use crate::abi::Fault;
use crate::host;
use crate::imports::{ask_host, write_at};
use crate::runtime::Limits;
use crate::ungranted::{EFAULT, ENOTCAPABLE, ESUCCESS};

const WASI: &str = "wasi_snapshot_preview1";

/// Defines `args_*`, `environ_*` and `fd_read`.
pub fn define(linker: &mut Linker<Limits>) -> wasmtime::Result<()> {
    for (list, sizes, call) in [
        ("environ_get", "environ_sizes_get", OutCall::Environ),
        ("args_get", "args_sizes_get", OutCall::Args),
    ] {
        let asked = call.clone();
        linker.func_wrap(
            WASI,
            sizes,
            move |mut caller: Caller<'_, Limits>, count: i32, size: i32| -> wasmtime::Result<i32> {
                let strings = strings(&asked)?;
                // Each string and its NUL; the host bounded the list by the
                // input buffer, so both counts fit 32 bits.
                let bytes: usize = strings.iter().map(|s| s.len() + 1).sum();
                let n = u32::try_from(strings.len()).unwrap_or(u32::MAX);
                let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
                Ok(
                    match write_at(&mut caller, count, &n.to_le_bytes())
                        .and_then(|()| write_at(&mut caller, size, &bytes.to_le_bytes()))
                    {
                        Ok(()) => ESUCCESS,
                        Err(e) => e,
                    },
                )
            },
        )?;
        linker.func_wrap(
            WASI,
            list,
            move |mut caller: Caller<'_, Limits>, ptrs: i32, buf: i32| -> wasmtime::Result<i32> {
                let strings = strings(&call)?;
                let mut at = buf.cast_unsigned();
                for (i, s) in strings.iter().enumerate() {
                    let slot = u32::try_from(i)
                        .ok()
                        .and_then(|i| i.checked_mul(4))
                        .and_then(|o| o.checked_add(ptrs.cast_unsigned()));
                    let Some(slot) = slot else {
                        return Ok(EFAULT);
                    };
                    let mut text = Vec::with_capacity(s.len() + 1);
                    text.extend_from_slice(s.as_bytes());
                    text.push(0);
                    if let Err(e) = write_at(&mut caller, slot.cast_signed(), &at.to_le_bytes())
                        .and_then(|()| write_at(&mut caller, at.cast_signed(), &text))
                    {
                        return Ok(e);
                    }
                    let Some(next) = u32::try_from(text.len())
                        .ok()
                        .and_then(|len| at.checked_add(len))
                    else {
                        return Ok(EFAULT);
                    };
                    at = next;
                }
                Ok(ESUCCESS)
            },
        )?;
    }
    linker.func_wrap(
        WASI,
        "fd_read",
        |mut caller: Caller<'_, Limits>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         nread: i32|
         -> wasmtime::Result<i32> {
            // stdout and stderr have no fd_read right.
            if fd == 1 || fd == 2 {
                return Ok(ENOTCAPABLE);
            }
            if fd != 0 {
                return crate::fs::read(&mut caller, fd, iovs, iovs_len, None, nread);
            }
            read_stdin(&mut caller, iovs, iovs_len, nread)
        },
    )?;
    Ok(())
}

/// The host's answer to `call` (a list of strings).
/// The strings the host answers `call` with (arguments, environment).
pub(crate) fn strings(call: &OutCall) -> wasmtime::Result<Vec<String>> {
    match ask_host(call)? {
        OutCallReply::Strings(strings) => Ok(strings),
        other => Err(Fault::new(
            ErrorCode::BadRequest,
            format_args!("answer {other:?} to {call:?}"),
        )
        .into()),
    }
}

/// Reads stdin into the iovecs at `iovs`: as much as the first request
/// brings (at most what they hold and what one message carries), as a
/// short read; 0 at the end of stdin.
fn read_stdin(
    caller: &mut Caller<'_, Limits>,
    iovs: i32,
    iovs_len: i32,
    nread: i32,
) -> wasmtime::Result<i32> {
    let buffers = match crate::fs::iovecs(caller, iovs, iovs_len) {
        Ok(buffers) => buffers,
        Err(e) => return Ok(e),
    };
    let room: usize = buffers.iter().map(|(_, len)| len).sum();
    let max = u32::try_from(room.min(host::transfer_limit())).unwrap_or(u32::MAX);
    let bytes = if max == 0 {
        Vec::new()
    } else {
        match ask_host(&OutCall::ReadStdin { max })? {
            OutCallReply::Bytes(bytes) if bytes.len() <= max as usize => bytes,
            other => {
                return Err(Fault::new(
                    ErrorCode::BadRequest,
                    format_args!("stdin answer of the wrong size: {other:?}"),
                )
                .into());
            }
        }
    };
    Ok(match crate::fs::scatter(caller, &buffers, &bytes, nread) {
        Ok(()) => ESUCCESS,
        Err(e) => e,
    })
}
