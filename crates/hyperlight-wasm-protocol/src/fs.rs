//! The WASI file-system calls the guest forwards to the host
//! ([`crate::message::OutCall::Fs`]) and the host's answers. Re-exported from
//! [`crate::message`].

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// A WASI file-system call, as the guest forwards it. Descriptors are the
/// module's; paths are relative to the directory descriptor given, and the
/// host confines them to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "the fields are the parameters of the WASI function each variant names"
)]
pub enum FsCall {
    /// `fd_prestat_get`.
    PrestatGet { fd: u32 },
    /// `fd_prestat_dir_name`.
    PrestatDirName { fd: u32 },
    /// `fd_fdstat_get`.
    FdstatGet { fd: u32 },
    /// `fd_filestat_get`.
    FilestatGet { fd: u32 },
    /// `path_filestat_get`.
    PathFilestatGet { fd: u32, follow: bool, path: String },
    /// `path_open`.
    Open {
        fd: u32,
        follow: bool,
        path: String,
        /// WASI `oflags`: creat 1, directory 2, excl 4, trunc 8.
        oflags: u16,
        /// WASI `rights` asked for (`fs_rights_base`).
        rights: u64,
        /// WASI `fdflags`: append 1, dsync 2, nonblock 4, rsync 8, sync 16.
        fdflags: u16,
    },
    /// `fd_close`.
    Close { fd: u32 },
    /// `fd_read` (`offset: None`) or `fd_pread`: at most `max` bytes.
    Read {
        fd: u32,
        max: u32,
        offset: Option<u64>,
    },
    /// `fd_write` or `fd_pwrite`.
    Write {
        fd: u32,
        bytes: Vec<u8>,
        offset: Option<u64>,
    },
    /// `fd_seek` (`whence`: set 0, cur 1, end 2); `fd_tell` is a seek of 0
    /// from the current position.
    Seek { fd: u32, offset: i64, whence: u8 },
    /// `fd_readdir`: entries from `cookie` on, at most `max` bytes of them
    /// as WASI lays them out.
    Readdir { fd: u32, cookie: u64, max: u32 },
    /// `path_create_directory`.
    CreateDirectory { fd: u32, path: String },
    /// `path_remove_directory`.
    RemoveDirectory { fd: u32, path: String },
    /// `path_unlink_file`.
    UnlinkFile { fd: u32, path: String },
    /// `path_rename`.
    Rename {
        fd: u32,
        old: String,
        new_fd: u32,
        new: String,
    },
    /// `path_readlink`.
    Readlink { fd: u32, path: String },
    /// `path_symlink`: a link at `new` in `fd` whose target is `old`.
    Symlink { old: String, fd: u32, new: String },
    /// `fd_filestat_set_size`.
    SetSize { fd: u32, size: u64 },
    /// `fd_sync` or `fd_datasync`.
    Sync { fd: u32 },
}

/// The host's answer to an [`FsCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "the fields are those of the WASI structure each variant names"
)]
pub enum FsReply {
    /// Done.
    Done,
    /// A preopened directory, and the length of its name.
    Prestat { name_len: u32 },
    /// A name or a link's target.
    Name(String),
    /// What `fd_fdstat_get` reports.
    Fdstat {
        filetype: u8,
        flags: u16,
        rights_base: u64,
        rights_inheriting: u64,
    },
    /// What `fd_filestat_get` and `path_filestat_get` report.
    Filestat(Filestat),
    /// A new descriptor.
    Fd(u32),
    /// Bytes read (fewer than asked at the end of the file).
    Bytes(Vec<u8>),
    /// Bytes written.
    Count(u32),
    /// A file offset.
    Offset(u64),
    /// Directory entries, whole, as many as fit the bytes asked for (at
    /// least one while any are left; none at the end).
    Dirents(Vec<Dirent>),
    /// A WASI errno.
    Errno(u16),
}

/// WASI's `filestat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Filestat {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// WASI filetype (3 directory, 4 regular file, 7 symbolic link).
    pub filetype: u8,
    /// Hard links.
    pub nlink: u64,
    /// Size in bytes.
    pub size: u64,
    /// Last access, ns since the Unix epoch.
    pub atim: u64,
    /// Last modification.
    pub mtim: u64,
    /// Last status change.
    pub ctim: u64,
}

/// One directory entry of `fd_readdir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirent {
    /// The cookie of the entry after it.
    pub next: u64,
    /// Inode.
    pub ino: u64,
    /// WASI filetype.
    pub filetype: u8,
    /// The entry's name.
    pub name: String,
}

impl Dirent {
    /// Bytes of WASI's layout of it: a 24-byte header, then the name.
    pub fn wasi_len(&self) -> usize {
        24 + self.name.len()
    }

    /// WASI's layout of it.
    pub fn to_wasi(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.wasi_len());
        bytes.extend_from_slice(&self.next.to_le_bytes());
        bytes.extend_from_slice(&self.ino.to_le_bytes());
        let len = u32::try_from(self.name.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.push(self.filetype);
        bytes.extend_from_slice(&[0; 3]);
        bytes.extend_from_slice(self.name.as_bytes());
        bytes
    }
}
