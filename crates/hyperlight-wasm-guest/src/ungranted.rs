//! The rest of WASI preview 1: every function a module may import from
//! `wasi_snapshot_preview1` that the sandbox serves no capability for (no
//! files, no directories, no sockets). Each answers with the errno WASI
//! specifies for what the module asked, never a trap:
//!
//! - a descriptor that does not exist (anything but 0, 1, 2): `EBADF`;
//! - stdin, stdout, stderr (character devices whose only rights are
//!   `fd_read` or `fd_write`): `ESPIPE` for positioned I/O, `ENOTDIR` for
//!   directory operations, `ENOTSOCK` for socket operations, `ENOTCAPABLE`
//!   for every other right they do not have;
//! - `proc_raise`, which WASI deprecated and nothing implements: `ENOSYS`.
//!
//! The functions the sandbox does serve are in [`crate::imports`].

use wasmtime::{Caller, Linker};

use crate::runtime::Limits;

/// WASI's module name.
const WASI: &str = "wasi_snapshot_preview1";

// WASI errno values.
pub const ESUCCESS: i32 = 0;
pub const EBADF: i32 = 8;
pub const EFAULT: i32 = 21;
pub const ENOSYS: i32 = 52;
pub const ENOTDIR: i32 = 54;
pub const ENOTSOCK: i32 = 57;
pub const ESPIPE: i32 = 70;
pub const ENOTCAPABLE: i32 = 76;

/// Whether `fd` is stdin, stdout or stderr, the only descriptors there are.
pub fn is_stdio(fd: i32) -> bool {
    (0..=2).contains(&fd)
}

/// `EBADF` for a descriptor that does not exist, else `on_stdio`.
pub fn on_fd(fd: i32, on_stdio: i32) -> i32 {
    if is_stdio(fd) { on_stdio } else { EBADF }
}

/// WASI filetype `character_device`.
const CHARACTER_DEVICE: u8 = 2;

/// Defines every preview-1 function that [`crate::imports`] does not.
pub fn define(linker: &mut Linker<Limits>) -> wasmtime::Result<()> {
    // Rights stdio lacks.
    linker.func_wrap(WASI, "fd_advise", |fd: i32, _: i64, _: i64, _: i32| {
        on_fd(fd, ENOTCAPABLE)
    })?;
    linker.func_wrap(WASI, "fd_allocate", |fd: i32, _: i64, _: i64| {
        on_fd(fd, ENOTCAPABLE)
    })?;
    linker.func_wrap(WASI, "fd_datasync", |fd: i32| on_fd(fd, ENOTCAPABLE))?;
    linker.func_wrap(WASI, "fd_sync", |fd: i32| on_fd(fd, ENOTCAPABLE))?;
    linker.func_wrap(WASI, "fd_filestat_set_size", |fd: i32, _: i64| {
        on_fd(fd, ENOTCAPABLE)
    })?;
    linker.func_wrap(
        WASI,
        "fd_filestat_set_times",
        |fd: i32, _: i64, _: i64, _: i32| on_fd(fd, ENOTCAPABLE),
    )?;
    linker.func_wrap(
        WASI,
        "fd_fdstat_set_rights",
        |fd: i32, base: i64, inheriting: i64| {
            if !is_stdio(fd) {
                return EBADF;
            }
            // Rights can only be dropped; stdio has one right and keeps it
            // unless asked for none (which is allowed, and then not kept:
            // the sandbox does not narrow stdio further).
            let held: i64 = if fd == 0 { 1 << 1 } else { 1 << 6 };
            if base & !held != 0 || inheriting & !held != 0 {
                ENOTCAPABLE
            } else {
                ESUCCESS
            }
        },
    )?;
    linker.func_wrap(WASI, "fd_renumber", |fd: i32, to: i32| {
        if is_stdio(fd) && is_stdio(to) {
            ENOTCAPABLE
        } else {
            EBADF
        }
    })?;
    linker.func_wrap(
        WASI,
        "fd_filestat_get",
        |mut caller: Caller<'_, Limits>, fd: i32, buf: i32| -> i32 {
            if !is_stdio(fd) {
                return EBADF;
            }
            // filestat: dev, ino, filetype (u8 at 16), nlink, size, atim,
            // mtim, ctim: a character device with nothing else known.
            let mut stat = [0u8; 64];
            stat[16] = CHARACTER_DEVICE;
            match crate::imports::write_at(&mut caller, buf, &stat) {
                Ok(()) => ESUCCESS,
                Err(e) => e,
            }
        },
    )?;
    // Positioned I/O on a stream.
    linker.func_wrap(
        WASI,
        "fd_pread",
        |fd: i32, _: i32, _: i32, _: i64, _: i32| on_fd(fd, ESPIPE),
    )?;
    linker.func_wrap(
        WASI,
        "fd_pwrite",
        |fd: i32, _: i32, _: i32, _: i64, _: i32| on_fd(fd, ESPIPE),
    )?;
    linker.func_wrap(WASI, "fd_tell", |fd: i32, _: i32| on_fd(fd, ESPIPE))?;
    // Directory operations: no descriptor is a directory.
    linker.func_wrap(
        WASI,
        "fd_readdir",
        |fd: i32, _: i32, _: i32, _: i64, _: i32| on_fd(fd, ENOTDIR),
    )?;
    linker.func_wrap(WASI, "path_create_directory", |fd: i32, _: i32, _: i32| {
        on_fd(fd, ENOTDIR)
    })?;
    linker.func_wrap(
        WASI,
        "path_filestat_get",
        |fd: i32, _: i32, _: i32, _: i32, _: i32| on_fd(fd, ENOTDIR),
    )?;
    linker.func_wrap(
        WASI,
        "path_filestat_set_times",
        |fd: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32| on_fd(fd, ENOTDIR),
    )?;
    linker.func_wrap(
        WASI,
        "path_link",
        |old_fd: i32, _: i32, _: i32, _: i32, new_fd: i32, _: i32, _: i32| {
            both_dirs(old_fd, new_fd)
        },
    )?;
    linker.func_wrap(
        WASI,
        "path_open",
        |fd: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| {
            on_fd(fd, ENOTDIR)
        },
    )?;
    linker.func_wrap(
        WASI,
        "path_readlink",
        |fd: i32, _: i32, _: i32, _: i32, _: i32, _: i32| on_fd(fd, ENOTDIR),
    )?;
    linker.func_wrap(WASI, "path_remove_directory", |fd: i32, _: i32, _: i32| {
        on_fd(fd, ENOTDIR)
    })?;
    linker.func_wrap(
        WASI,
        "path_rename",
        |fd: i32, _: i32, _: i32, new_fd: i32, _: i32, _: i32| both_dirs(fd, new_fd),
    )?;
    linker.func_wrap(
        WASI,
        "path_symlink",
        |_: i32, _: i32, fd: i32, _: i32, _: i32| on_fd(fd, ENOTDIR),
    )?;
    linker.func_wrap(WASI, "path_unlink_file", |fd: i32, _: i32, _: i32| {
        on_fd(fd, ENOTDIR)
    })?;
    // Sockets: none.
    linker.func_wrap(WASI, "sock_accept", |fd: i32, _: i32, _: i32| {
        on_fd(fd, ENOTSOCK)
    })?;
    linker.func_wrap(
        WASI,
        "sock_recv",
        |fd: i32, _: i32, _: i32, _: i32, _: i32, _: i32| on_fd(fd, ENOTSOCK),
    )?;
    linker.func_wrap(
        WASI,
        "sock_send",
        |fd: i32, _: i32, _: i32, _: i32, _: i32| on_fd(fd, ENOTSOCK),
    )?;
    linker.func_wrap(WASI, "sock_shutdown", |fd: i32, _: i32| on_fd(fd, ENOTSOCK))?;
    linker.func_wrap(WASI, "proc_raise", |_: i32| ENOSYS)?;
    Ok(())
}

/// For operations on two directory descriptors: `EBADF` if either does not
/// exist, else `ENOTDIR` (stdio is no directory).
fn both_dirs(a: i32, b: i32) -> i32 {
    if is_stdio(a) && is_stdio(b) {
        ENOTDIR
    } else {
        EBADF
    }
}
