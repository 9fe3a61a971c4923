//! The rest of WASI preview 1: the functions the sandbox implements for no
//! descriptor (sockets, times, links, allocation), and the errno values.
//! Each answers with the errno WASI specifies for what the module asked,
//! never a trap:
//!
//! - a descriptor that does not exist: `EBADF`; one the host serves (a
//!   file or directory): `ENOTSUP`, or `ENOTSOCK` for socket operations;
//! - stdin, stdout, stderr (character devices whose only rights are
//!   `fd_read` or `fd_write`): `ESPIPE` for positioned I/O, `ENOTDIR` for
//!   directory operations, `ENOTSOCK` for socket operations, `ENOTCAPABLE`
//!   for every other right they do not have;
//! - `proc_raise`, which WASI deprecated and nothing implements: `ENOSYS`.
//!
//! The functions the sandbox does serve are in [`crate::imports`].

use wasmtime::Linker;

use crate::runtime::Limits;

/// WASI's module name.
const WASI: &str = "wasi_snapshot_preview1";

// WASI errno values.
pub const ESUCCESS: i32 = 0;
pub const EBADF: i32 = 8;
pub const EFAULT: i32 = 21;
pub const EINVAL: i32 = 28;
pub const ENOSYS: i32 = 52;
pub const ENOTDIR: i32 = 54;
pub const ENOTSOCK: i32 = 57;
pub const ENOTSUP: i32 = 58;
pub const ESPIPE: i32 = 70;
pub const ENOTCAPABLE: i32 = 76;

/// Whether `fd` is stdin, stdout or stderr (the guest's own; every other
/// descriptor is the host's).
pub fn is_stdio(fd: i32) -> bool {
    (0..=2).contains(&fd)
}

/// What a function the sandbox does not implement answers for `fd`:
/// `on_stdio` for stdio, `on_host` for a descriptor the host serves,
/// `EBADF` for one that does not exist.
fn on_any(fd: i32, on_stdio: i32, on_host: i32) -> wasmtime::Result<i32> {
    if is_stdio(fd) {
        Ok(on_stdio)
    } else if crate::fs::exists(fd)? {
        Ok(on_host)
    } else {
        Ok(EBADF)
    }
}

/// Defines the preview-1 functions that neither [`crate::imports`] nor
/// [`crate::fs`] does.
pub fn define(linker: &mut Linker<Limits>) -> wasmtime::Result<()> {
    // Advice is only advice.
    linker.func_wrap(WASI, "fd_advise", |fd: i32, _: i64, _: i64, _: i32| {
        on_any(fd, ENOTCAPABLE, ESUCCESS)
    })?;
    linker.func_wrap(WASI, "fd_allocate", |fd: i32, _: i64, _: i64| {
        on_any(fd, ENOTCAPABLE, ENOTSUP)
    })?;
    linker.func_wrap(
        WASI,
        "fd_filestat_set_times",
        |fd: i32, _: i64, _: i64, _: i32| on_any(fd, ENOTCAPABLE, ENOTSUP),
    )?;
    linker.func_wrap(
        WASI,
        "fd_fdstat_set_rights",
        |fd: i32, base: i64, inheriting: i64| -> wasmtime::Result<i32> {
            if !is_stdio(fd) {
                // Rights can only be dropped, and the host checks each
                // operation anyway: dropping is accepted (and not kept).
                return on_any(fd, ESUCCESS, ESUCCESS);
            }
            // stdio has one right and keeps it unless asked for none (which
            // is allowed, and then not kept).
            let held: i64 = if fd == 0 { 1 << 1 } else { 1 << 6 };
            Ok(if base & !held != 0 || inheriting & !held != 0 {
                ENOTCAPABLE
            } else {
                ESUCCESS
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_renumber",
        |fd: i32, to: i32| -> wasmtime::Result<i32> {
            if is_stdio(fd) && is_stdio(to) {
                return Ok(ENOTCAPABLE);
            }
            let exists =
                |fd| -> wasmtime::Result<bool> { Ok(is_stdio(fd) || crate::fs::exists(fd)?) };
            Ok(if exists(fd)? && exists(to)? {
                ENOTSUP
            } else {
                EBADF
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "path_filestat_set_times",
        |fd: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32| on_any(fd, ENOTDIR, ENOTSUP),
    )?;
    linker.func_wrap(
        WASI,
        "path_link",
        |old_fd: i32,
         _: i32,
         _: i32,
         _: i32,
         new_fd: i32,
         _: i32,
         _: i32|
         -> wasmtime::Result<i32> {
            if is_stdio(old_fd) && is_stdio(new_fd) {
                return Ok(ENOTDIR);
            }
            on_any(old_fd, EBADF, ENOTSUP)
        },
    )?;
    // Sockets: none.
    linker.func_wrap(WASI, "sock_accept", |fd: i32, _: i32, _: i32| {
        on_any(fd, ENOTSOCK, ENOTSOCK)
    })?;
    linker.func_wrap(
        WASI,
        "sock_recv",
        |fd: i32, _: i32, _: i32, _: i32, _: i32, _: i32| on_any(fd, ENOTSOCK, ENOTSOCK),
    )?;
    linker.func_wrap(
        WASI,
        "sock_send",
        |fd: i32, _: i32, _: i32, _: i32, _: i32| on_any(fd, ENOTSOCK, ENOTSOCK),
    )?;
    linker.func_wrap(WASI, "sock_shutdown", |fd: i32, _: i32| {
        on_any(fd, ENOTSOCK, ENOTSOCK)
    })?;
    linker.func_wrap(WASI, "proc_raise", |_: i32| ENOSYS)?;
    Ok(())
}
