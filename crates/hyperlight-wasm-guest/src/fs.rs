//! WASI's file-system functions on the descriptors the host serves (every
//! descriptor but stdio: preopened directories and what is opened beneath
//! them). Each call is one out-call ([`OutCall::Fs`]); the guest only moves
//! bytes between the module's memory and the messages, and splits reads
//! and writes larger than a message into several. Stdio keeps its own
//! answers (see [`crate::ungranted`]).

use alloc::string::String;
use alloc::vec::Vec;

use hyperlight_wasm_protocol::message::{ErrorCode, FsCall, FsReply, OutCall, OutCallReply};
use wasmtime::Caller;

use crate::abi::Fault;
use crate::host;
use crate::imports::{ask_host, memory_of, write_at};
use crate::runtime::Limits;
use crate::ungranted::{EBADF, EFAULT, EINVAL, ESUCCESS, is_stdio};

const EILSEQ: i32 = 25;
const ENAMETOOLONG: i32 = 37;

/// The answer a function gives, or its errno.
pub(crate) type Answer<T> = Result<T, i32>;

/// Asks the host; `Err` carries the errno it answered.
pub(crate) fn host(call: FsCall) -> wasmtime::Result<Answer<FsReply>> {
    match ask_host(&OutCall::Fs(call))? {
        OutCallReply::Fs(FsReply::Errno(errno)) => Ok(Err(i32::from(errno))),
        OutCallReply::Fs(reply) => Ok(Ok(reply)),
        other => Err(Fault::new(
            ErrorCode::BadRequest,
            format_args!("file-system answer {other:?}"),
        )
        .into()),
    }
}

/// The host answered something else than the call asks for.
pub(crate) fn wrong(reply: &FsReply) -> wasmtime::Error {
    Fault::new(
        ErrorCode::BadRequest,
        format_args!("unexpected file-system answer {reply:?}"),
    )
    .into()
}

pub(crate) fn fd_of(fd: i32) -> u32 {
    fd.cast_unsigned()
}

/// The path of `len` bytes at `ptr`.
pub(crate) fn path(caller: &mut Caller<'_, Limits>, ptr: i32, len: i32) -> Answer<String> {
    let memory = memory_of(caller).ok_or(EFAULT)?;
    let (start, len) = (ptr.cast_unsigned() as usize, len.cast_unsigned() as usize);
    if len > host::transfer_limit() {
        return Err(ENAMETOOLONG);
    }
    let bytes = memory
        .data(&*caller)
        .get(start..)
        .and_then(|tail| tail.get(..len))
        .ok_or(EFAULT)?;
    core::str::from_utf8(bytes)
        .map(String::from)
        .map_err(|_| EILSEQ)
}

/// The (pointer, length) pairs of `count` iovecs at `iovs`, checked against
/// memory.
pub(crate) fn iovecs(
    caller: &mut Caller<'_, Limits>,
    iovs: i32,
    count: i32,
) -> Answer<Vec<(usize, usize)>> {
    let memory = memory_of(caller).ok_or(EFAULT)?;
    let data = memory.data(&*caller);
    let mut out = Vec::new();
    for i in 0..count.cast_unsigned() as usize {
        let at = i
            .checked_mul(8)
            .and_then(|o| o.checked_add(iovs.cast_unsigned() as usize));
        let pair = at
            .and_then(|at| data.get(at..at.checked_add(8)?))
            .ok_or(EFAULT)?;
        let ptr = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]) as usize;
        let len = u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]) as usize;
        if ptr.checked_add(len).is_none_or(|end| end > data.len()) {
            return Err(EFAULT);
        }
        out.push((ptr, len));
    }
    Ok(out)
}

pub(crate) fn done(result: Result<(), i32>) -> i32 {
    match result {
        Ok(()) => ESUCCESS,
        Err(e) => e,
    }
}

/// Runs `f`, turning an errno into the function's result.
pub(crate) fn answer(f: impl FnOnce() -> wasmtime::Result<Answer<()>>) -> wasmtime::Result<i32> {
    Ok(done(f()?))
}

/// `fd_read` and `fd_pread` on a host descriptor: as much as one request
/// brings (a short read, as POSIX allows), scattered over the iovecs.
pub fn read(
    caller: &mut Caller<'_, Limits>,
    fd: i32,
    iovs: i32,
    count: i32,
    offset: Option<u64>,
    nread: i32,
) -> wasmtime::Result<i32> {
    answer(|| {
        let buffers = match iovecs(caller, iovs, count) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let room: usize = buffers.iter().map(|(_, len)| len).sum();
        let max = u32::try_from(room.min(host::transfer_limit())).unwrap_or(u32::MAX);
        let bytes = match host(FsCall::Read {
            fd: fd_of(fd),
            max,
            offset,
        })? {
            Ok(FsReply::Bytes(bytes)) if bytes.len() <= max as usize => bytes,
            Ok(other) => return Err(wrong(&other)),
            Err(e) => return Ok(Err(e)),
        };
        Ok(scatter(caller, &buffers, &bytes, nread))
    })
}

/// The bytes of the `count` iovecs at `iovs`, in order: what a write
/// writes.
pub(crate) fn gather(caller: &mut Caller<'_, Limits>, iovs: i32, count: i32) -> Answer<Vec<u8>> {
    let buffers = iovecs(caller, iovs, count)?;
    let memory = memory_of(caller).ok_or(EFAULT)?;
    let data = memory.data(&*caller);
    let mut bytes = Vec::new();
    for (ptr, len) in buffers {
        // `iovecs` checked each range against memory.
        bytes.extend_from_slice(&data[ptr..ptr + len]);
    }
    Ok(bytes)
}

/// Spreads `bytes` over `buffers` (checked iovecs) in order and stores how
/// many there were at `nread`: the end of every read.
pub(crate) fn scatter(
    caller: &mut Caller<'_, Limits>,
    buffers: &[(usize, usize)],
    bytes: &[u8],
    nread: i32,
) -> Answer<()> {
    let memory = memory_of(caller).ok_or(EFAULT)?;
    let mut rest = bytes;
    for &(ptr, len) in buffers {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        memory.write(&mut *caller, ptr, piece).map_err(|_| EFAULT)?;
        rest = tail;
    }
    let n = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    write_at(caller, nread, &n.to_le_bytes())
}

/// `fd_write` and `fd_pwrite` on a host descriptor: every byte of the
/// iovecs, in as many requests as the messages need.
pub fn write(
    caller: &mut Caller<'_, Limits>,
    fd: i32,
    iovs: i32,
    count: i32,
    offset: Option<u64>,
    nwritten: i32,
) -> wasmtime::Result<i32> {
    answer(|| {
        let bytes = match gather(caller, iovs, count) {
            Ok(bytes) => bytes,
            Err(e) => return Ok(Err(e)),
        };
        let mut written = 0usize;
        // An empty write is still one request: it reports a bad descriptor.
        let pieces: Vec<&[u8]> = if bytes.is_empty() {
            alloc::vec![&[][..]]
        } else {
            bytes.chunks(host::transfer_limit().max(1)).collect()
        };
        for piece in pieces {
            let at = offset.map(|o| o + written as u64);
            match host(FsCall::Write {
                fd: fd_of(fd),
                bytes: piece.to_vec(),
                offset: at,
            })? {
                Ok(FsReply::Count(n)) if n as usize == piece.len() => written += piece.len(),
                Ok(other) => return Err(wrong(&other)),
                // What was written before the failure stays written: report
                // it, as a short write, unless nothing was.
                Err(e) if written == 0 => return Ok(Err(e)),
                Err(_) => break,
            }
        }
        let n = u32::try_from(written).unwrap_or(u32::MAX);
        Ok(write_at(caller, nwritten, &n.to_le_bytes()))
    })
}

/// A call answered with `Done`.
pub(crate) fn simple(call: FsCall) -> wasmtime::Result<i32> {
    answer(|| match host(call)? {
        Ok(FsReply::Done) => Ok(Ok(())),
        Ok(other) => Err(wrong(&other)),
        Err(e) => Ok(Err(e)),
    })
}

/// Whether the host has descriptor `fd`.
pub fn exists(fd: i32) -> wasmtime::Result<bool> {
    Ok(host(FsCall::FdstatGet { fd: fd_of(fd) })?.is_ok())
}

pub fn close(fd: i32) -> wasmtime::Result<i32> {
    simple(FsCall::Close { fd: fd_of(fd) })
}

pub fn seek(
    caller: &mut Caller<'_, Limits>,
    fd: i32,
    offset: i64,
    whence: i32,
    to: i32,
) -> wasmtime::Result<i32> {
    answer(|| {
        let Ok(whence) = u8::try_from(whence) else {
            return Ok(Err(EINVAL));
        };
        match host(FsCall::Seek {
            fd: fd_of(fd),
            offset,
            whence,
        })? {
            Ok(FsReply::Offset(at)) => Ok(write_at(caller, to, &at.to_le_bytes())),
            Ok(other) => Err(wrong(&other)),
            Err(e) => Ok(Err(e)),
        }
    })
}

pub fn fdstat(caller: &mut Caller<'_, Limits>, fd: i32, buf: i32) -> wasmtime::Result<i32> {
    answer(|| match host(FsCall::FdstatGet { fd: fd_of(fd) })? {
        Ok(FsReply::Fdstat {
            filetype,
            flags,
            rights_base,
            rights_inheriting,
        }) => {
            let mut bytes = [0u8; 24];
            bytes[0] = filetype;
            bytes[2..4].copy_from_slice(&flags.to_le_bytes());
            bytes[8..16].copy_from_slice(&rights_base.to_le_bytes());
            bytes[16..24].copy_from_slice(&rights_inheriting.to_le_bytes());
            Ok(write_at(caller, buf, &bytes))
        }
        Ok(other) => Err(wrong(&other)),
        Err(e) => Ok(Err(e)),
    })
}

pub fn prestat_get(caller: &mut Caller<'_, Limits>, fd: i32, buf: i32) -> wasmtime::Result<i32> {
    if is_stdio(fd) {
        return Ok(EBADF);
    }
    answer(|| match host(FsCall::PrestatGet { fd: fd_of(fd) })? {
        Ok(FsReply::Prestat { name_len }) => {
            // prestat: tag 0 (a directory), then the name's length.
            let mut bytes = [0u8; 8];
            bytes[4..8].copy_from_slice(&name_len.to_le_bytes());
            Ok(write_at(caller, buf, &bytes))
        }
        Ok(other) => Err(wrong(&other)),
        Err(e) => Ok(Err(e)),
    })
}

pub fn prestat_dir_name(
    caller: &mut Caller<'_, Limits>,
    fd: i32,
    buf: i32,
    len: i32,
) -> wasmtime::Result<i32> {
    if is_stdio(fd) {
        return Ok(EBADF);
    }
    answer(|| match host(FsCall::PrestatDirName { fd: fd_of(fd) })? {
        Ok(FsReply::Name(name)) => {
            if name.len() > len.cast_unsigned() as usize {
                return Ok(Err(ENAMETOOLONG));
            }
            Ok(write_at(caller, buf, name.as_bytes()))
        }
        Ok(other) => Err(wrong(&other)),
        Err(e) => Ok(Err(e)),
    })
}

pub(crate) fn filestat_bytes(stat: &hyperlight_wasm_protocol::message::Filestat) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&stat.dev.to_le_bytes());
    b[8..16].copy_from_slice(&stat.ino.to_le_bytes());
    b[16] = stat.filetype;
    b[24..32].copy_from_slice(&stat.nlink.to_le_bytes());
    b[32..40].copy_from_slice(&stat.size.to_le_bytes());
    b[40..48].copy_from_slice(&stat.atim.to_le_bytes());
    b[48..56].copy_from_slice(&stat.mtim.to_le_bytes());
    b[56..64].copy_from_slice(&stat.ctim.to_le_bytes());
    b
}

pub(crate) fn filestat(
    caller: &mut Caller<'_, Limits>,
    call: FsCall,
    buf: i32,
) -> wasmtime::Result<i32> {
    answer(|| match host(call)? {
        Ok(FsReply::Filestat(stat)) => Ok(write_at(caller, buf, &filestat_bytes(&stat))),
        Ok(other) => Err(wrong(&other)),
        Err(e) => Ok(Err(e)),
    })
}
