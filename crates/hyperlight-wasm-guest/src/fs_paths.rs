//! The linker definitions of [`crate::fs`]: which WASI function goes to
//! which host call, with stdio's own answers, and `fd_readdir`'s filling of
//! the module's buffer.

use alloc::string::String;
use alloc::vec::Vec;

use hyperlight_wasm_protocol::message::{FsCall, FsReply};
use wasmtime::{Caller, Linker};

use crate::fs::{
    answer, done, exists, fd_of, filestat, filestat_bytes, host, path, read, seek, simple, write,
    wrong,
};
use crate::host;
use crate::imports::write_at;
use crate::runtime::Limits;
use crate::ungranted::{EBADF, ENOTCAPABLE, ENOTDIR, ESPIPE, is_stdio};

const WASI: &str = "wasi_snapshot_preview1";

/// Defines the functions whose descriptors may be the host's.
pub fn define(linker: &mut Linker<Limits>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WASI,
        "fd_filestat_get",
        |mut caller: Caller<'_, Limits>, fd: i32, buf: i32| -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                // A character device with nothing else known.
                let stat = hyperlight_wasm_protocol::message::Filestat {
                    filetype: 2,
                    ..Default::default()
                };
                return Ok(done(write_at(&mut caller, buf, &filestat_bytes(&stat))));
            }
            filestat(&mut caller, FsCall::FilestatGet { fd: fd_of(fd) }, buf)
        },
    )?;
    linker.func_wrap(
        WASI,
        "path_filestat_get",
        |mut caller: Caller<'_, Limits>,
         fd: i32,
         flags: i32,
         p: i32,
         len: i32,
         buf: i32|
         -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                return Ok(ENOTDIR);
            }
            let path = match path(&mut caller, p, len) {
                Ok(path) => path,
                Err(e) => return Ok(e),
            };
            let call = FsCall::PathFilestatGet {
                fd: fd_of(fd),
                follow: flags & 1 != 0,
                path,
            };
            filestat(&mut caller, call, buf)
        },
    )?;
    linker.func_wrap(
        WASI,
        "path_open",
        |mut caller: Caller<'_, Limits>,
         fd: i32,
         dirflags: i32,
         p: i32,
         len: i32,
         oflags: i32,
         rights: i64,
         _inheriting: i64,
         fdflags: i32,
         opened: i32|
         -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                return Ok(ENOTDIR);
            }
            let path = match path(&mut caller, p, len) {
                Ok(path) => path,
                Err(e) => return Ok(e),
            };
            let call = FsCall::Open {
                fd: fd_of(fd),
                follow: dirflags & 1 != 0,
                path,
                oflags: u16::try_from(oflags & 0xffff).unwrap_or(0),
                rights: rights.cast_unsigned(),
                fdflags: u16::try_from(fdflags & 0xffff).unwrap_or(0),
            };
            answer(|| match host(call)? {
                Ok(FsReply::Fd(new)) => Ok(write_at(&mut caller, opened, &new.to_le_bytes())),
                Ok(other) => Err(wrong(&other)),
                Err(e) => Ok(Err(e)),
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_pread",
        |mut caller: Caller<'_, Limits>,
         fd: i32,
         iovs: i32,
         count: i32,
         offset: i64,
         nread: i32|
         -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                return Ok(ESPIPE);
            }
            read(
                &mut caller,
                fd,
                iovs,
                count,
                Some(offset.cast_unsigned()),
                nread,
            )
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_pwrite",
        |mut caller: Caller<'_, Limits>,
         fd: i32,
         iovs: i32,
         count: i32,
         offset: i64,
         nwritten: i32|
         -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                return Ok(ESPIPE);
            }
            write(
                &mut caller,
                fd,
                iovs,
                count,
                Some(offset.cast_unsigned()),
                nwritten,
            )
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_tell",
        |mut caller: Caller<'_, Limits>, fd: i32, to: i32| -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                return Ok(ESPIPE);
            }
            seek(&mut caller, fd, 0, 1, to)
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_readdir",
        |mut caller: Caller<'_, Limits>,
         fd: i32,
         buf: i32,
         buf_len: i32,
         cookie: i64,
         used: i32|
         -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                return Ok(ENOTDIR);
            }
            readdir(&mut caller, fd, buf, buf_len, cookie.cast_unsigned(), used)
        },
    )?;
    for (name, make) in [
        (
            "path_create_directory",
            (|fd, path| FsCall::CreateDirectory { fd, path }) as fn(u32, String) -> FsCall,
        ),
        ("path_remove_directory", |fd, path| {
            FsCall::RemoveDirectory { fd, path }
        }),
        ("path_unlink_file", |fd, path| FsCall::UnlinkFile {
            fd,
            path,
        }),
    ] {
        linker.func_wrap(
            WASI,
            name,
            move |mut caller: Caller<'_, Limits>,
                  fd: i32,
                  p: i32,
                  len: i32|
                  -> wasmtime::Result<i32> {
                if is_stdio(fd) {
                    return Ok(ENOTDIR);
                }
                match path(&mut caller, p, len) {
                    Ok(path) => simple(make(fd_of(fd), path)),
                    Err(e) => Ok(e),
                }
            },
        )?;
    }
    linker.func_wrap(
        WASI,
        "path_rename",
        |mut caller: Caller<'_, Limits>,
         fd: i32,
         old: i32,
         old_len: i32,
         new_fd: i32,
         new: i32,
         new_len: i32|
         -> wasmtime::Result<i32> {
            if is_stdio(fd) || is_stdio(new_fd) {
                return Ok(if is_stdio(fd) && is_stdio(new_fd) {
                    ENOTDIR
                } else {
                    EBADF
                });
            }
            let (old, new) = match (
                path(&mut caller, old, old_len),
                path(&mut caller, new, new_len),
            ) {
                (Ok(old), Ok(new)) => (old, new),
                (Err(e), _) | (_, Err(e)) => return Ok(e),
            };
            simple(FsCall::Rename {
                fd: fd_of(fd),
                old,
                new_fd: fd_of(new_fd),
                new,
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "path_readlink",
        |mut caller: Caller<'_, Limits>,
         fd: i32,
         p: i32,
         len: i32,
         buf: i32,
         buf_len: i32,
         used: i32|
         -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                return Ok(ENOTDIR);
            }
            let path = match path(&mut caller, p, len) {
                Ok(path) => path,
                Err(e) => return Ok(e),
            };
            answer(|| {
                match host(FsCall::Readlink {
                    fd: fd_of(fd),
                    path,
                })? {
                    Ok(FsReply::Name(target)) => {
                        // Truncated to the buffer, as readlink(2) does.
                        let n = target.len().min(buf_len.cast_unsigned() as usize);
                        let count = u32::try_from(n).unwrap_or(u32::MAX);
                        Ok(write_at(&mut caller, buf, &target.as_bytes()[..n])
                            .and_then(|()| write_at(&mut caller, used, &count.to_le_bytes())))
                    }
                    Ok(other) => Err(wrong(&other)),
                    Err(e) => Ok(Err(e)),
                }
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "path_symlink",
        |mut caller: Caller<'_, Limits>,
         old: i32,
         old_len: i32,
         fd: i32,
         new: i32,
         new_len: i32|
         -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                return Ok(ENOTDIR);
            }
            let (old, new) = match (
                path(&mut caller, old, old_len),
                path(&mut caller, new, new_len),
            ) {
                (Ok(old), Ok(new)) => (old, new),
                (Err(e), _) | (_, Err(e)) => return Ok(e),
            };
            simple(FsCall::Symlink {
                old,
                fd: fd_of(fd),
                new,
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_filestat_set_size",
        |fd: i32, size: i64| -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                return Ok(ENOTCAPABLE);
            }
            simple(FsCall::SetSize {
                fd: fd_of(fd),
                size: size.cast_unsigned(),
            })
        },
    )?;
    for name in ["fd_sync", "fd_datasync"] {
        linker.func_wrap(WASI, name, |fd: i32| -> wasmtime::Result<i32> {
            if is_stdio(fd) {
                return Ok(ENOTCAPABLE);
            }
            simple(FsCall::Sync { fd: fd_of(fd) })
        })?;
    }
    Ok(())
}

/// `fd_readdir`: whole entries from `cookie` on, in as many requests as
/// the buffer holds; the last one cut at the buffer's end, as WASI says
/// (the module then asks again from that entry's cookie).
fn readdir(
    caller: &mut Caller<'_, Limits>,
    fd: i32,
    buf: i32,
    buf_len: i32,
    mut cookie: u64,
    used: i32,
) -> wasmtime::Result<i32> {
    let capacity = buf_len.cast_unsigned() as usize;
    // An empty buffer asks nothing of the directory, but the descriptor
    // must still be one.
    if capacity == 0 && !exists(fd)? {
        return Ok(EBADF);
    }
    let mut out = Vec::new();
    'fill: while out.len() < capacity {
        let room = capacity - out.len();
        let max = u32::try_from(room.min(host::transfer_limit())).unwrap_or(u32::MAX);
        let entries = match host(FsCall::Readdir {
            fd: fd_of(fd),
            cookie,
            max,
        })? {
            Ok(FsReply::Dirents(entries)) => entries,
            Ok(other) => return Err(wrong(&other)),
            Err(e) if out.is_empty() => return Ok(e),
            Err(_) => break,
        };
        if entries.is_empty() {
            break;
        }
        for entry in entries {
            let bytes = entry.to_wasi();
            let left = capacity - out.len();
            if bytes.len() > left {
                out.extend_from_slice(&bytes[..left]);
                break 'fill;
            }
            out.extend_from_slice(&bytes);
            cookie = entry.next;
        }
    }
    let n = u32::try_from(out.len()).unwrap_or(u32::MAX);
    Ok(done(
        write_at(caller, buf, &out).and_then(|()| write_at(caller, used, &n.to_le_bytes())),
    ))
}
