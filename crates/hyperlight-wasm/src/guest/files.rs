//! The file system a sandbox grants: preopened directories, served on the
//! host, one WASI call per out-call.
//!
//! Confinement is cap-std's: every path is resolved beneath the directory
//! descriptor it is relative to (with `openat2(RESOLVE_BENEATH)` where the
//! kernel has it), so neither `..`, nor an absolute path, nor a symlink
//! pointing out, nor a rename racing the lookup reaches outside a preopened
//! directory. Nothing here sanitises paths. Files are opened through the
//! directory and then used as plain descriptors.
//!
//! A read-only preopen (and everything opened beneath it) refuses every
//! mutation with `ENOTCAPABLE`. Open descriptors and the size a write may
//! grow a file to are bounded (see [`crate::WasiConfig`]).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use cap_std::fs::{Dir, OpenOptions};
use hyperlight_wasm_protocol::message::{Dirent, Filestat, FsCall, FsReply};

use crate::sandbox::{DirAccess, WasiConfig};

// WASI errno values.
const EBADF: u16 = 8;
const EFBIG: u16 = 22;
const EINVAL: u16 = 28;
const EIO: u16 = 29;
const EISDIR: u16 = 31;
const EMFILE: u16 = 33;
const ENOTDIR: u16 = 54;
const ENOTSUP: u16 = 58;
const ESPIPE: u16 = 70;
const ENOTCAPABLE: u16 = 76;

// WASI filetypes.
const DIRECTORY: u8 = 3;
const REGULAR_FILE: u8 = 4;
const SYMBOLIC_LINK: u8 = 7;

// WASI `oflags` and `fdflags`.
const O_CREAT: u16 = 1;
const O_DIRECTORY: u16 = 2;
const O_EXCL: u16 = 4;
const O_TRUNC: u16 = 8;
const FDFLAG_APPEND: u16 = 1;

/// WASI's `fd_write` right.
const RIGHT_FD_WRITE: u64 = 1 << 6;
/// Every right WASI preview 1 defines.
const ALL_RIGHTS: u64 = (1 << 30) - 1;
/// The rights that change nothing: read, seek, tell, advise, open, readdir,
/// readlink, the two filestat gets, poll.
const READ_RIGHTS: u64 = (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 5)
    | (1 << 7)
    | (1 << 13)
    | (1 << 14)
    | (1 << 15)
    | (1 << 18)
    | (1 << 21)
    | (1 << 27);

/// The first descriptor after stdio.
const FIRST_FD: u32 = 3;

#[derive(Debug)]
enum Handle {
    Dir {
        dir: Dir,
        /// For a preopen, the name the module sees.
        preopen: Option<String>,
    },
    File {
        file: std::fs::File,
        append: bool,
    },
}

#[derive(Debug)]
struct Entry {
    handle: Handle,
    access: DirAccess,
}

/// The descriptors of one sandbox beyond stdio.
#[derive(Debug, Default)]
pub(crate) struct FileTable {
    entries: BTreeMap<u32, Entry>,
    max_open: usize,
    max_file_size: u64,
}

/// A failure, as the WASI errno the module gets.
type Errno = u16;

impl FileTable {
    /// The preopened directories of `config`, at descriptors 3, 4, ...
    ///
    /// # Errors
    ///
    /// When a host directory cannot be opened.
    pub(crate) fn new(
        config: &WasiConfig,
    ) -> Result<FileTable, (std::path::PathBuf, std::io::Error)> {
        let mut entries = BTreeMap::new();
        for (fd, preopen) in (FIRST_FD..).zip(&config.preopens) {
            let dir = Dir::open_ambient_dir(&preopen.host, cap_std::ambient_authority())
                .map_err(|e| (preopen.host.clone(), e))?;
            entries.insert(
                fd,
                Entry {
                    handle: Handle::Dir {
                        dir,
                        preopen: Some(preopen.guest.clone()),
                    },
                    access: preopen.access,
                },
            );
        }
        Ok(FileTable {
            entries,
            max_open: config.max_open_files,
            max_file_size: config.max_file_size,
        })
    }

    /// Serves one call; `max_reply` is what the reply may carry.
    pub(crate) fn serve(&mut self, call: FsCall, max_reply: usize) -> FsReply {
        match self.serve_inner(call, max_reply) {
            Ok(reply) => reply,
            Err(errno) => FsReply::Errno(errno),
        }
    }

    fn entry(&self, fd: u32) -> Result<&Entry, Errno> {
        self.entries.get(&fd).ok_or(EBADF)
    }

    fn dir(&self, fd: u32) -> Result<(&Dir, DirAccess), Errno> {
        match self.entry(fd)? {
            Entry {
                handle: Handle::Dir { dir, .. },
                access,
            } => Ok((dir, *access)),
            _ => Err(ENOTDIR),
        }
    }

    fn writable_dir(&self, fd: u32) -> Result<&Dir, Errno> {
        match self.dir(fd)? {
            (dir, DirAccess::ReadWrite) => Ok(dir),
            _ => Err(ENOTCAPABLE),
        }
    }

    fn file(&mut self, fd: u32) -> Result<(&mut std::fs::File, DirAccess, bool), Errno> {
        match self.entries.get_mut(&fd) {
            Some(Entry {
                handle: Handle::File { file, append },
                access,
            }) => Ok((file, *access, *append)),
            Some(_) => Err(EISDIR),
            None => Err(EBADF),
        }
    }

    fn serve_inner(&mut self, call: FsCall, max_reply: usize) -> Result<FsReply, Errno> {
        match call {
            FsCall::PrestatGet { fd } => match &self.entry(fd)?.handle {
                Handle::Dir {
                    preopen: Some(name),
                    ..
                } => Ok(FsReply::Prestat {
                    name_len: u32::try_from(name.len()).map_err(|_| EINVAL)?,
                }),
                _ => Err(EBADF),
            },
            FsCall::PrestatDirName { fd } => match &self.entry(fd)?.handle {
                Handle::Dir {
                    preopen: Some(name),
                    ..
                } => Ok(FsReply::Name(name.clone())),
                _ => Err(EBADF),
            },
            FsCall::FdstatGet { fd } => {
                let entry = self.entry(fd)?;
                let rights = match entry.access {
                    DirAccess::ReadOnly => READ_RIGHTS,
                    DirAccess::ReadWrite => ALL_RIGHTS,
                };
                let (filetype, flags) = match &entry.handle {
                    Handle::Dir { .. } => (DIRECTORY, 0),
                    Handle::File { append, .. } => {
                        (REGULAR_FILE, if *append { FDFLAG_APPEND } else { 0 })
                    }
                };
                Ok(FsReply::Fdstat {
                    filetype,
                    flags,
                    rights_base: rights,
                    rights_inheriting: rights,
                })
            }
            FsCall::FilestatGet { fd } => {
                let metadata = match &self.entry(fd)?.handle {
                    Handle::Dir { dir, .. } => dir.dir_metadata().map_err(errno)?,
                    Handle::File { file, .. } => {
                        cap_std::fs::Metadata::from_file(file).map_err(errno)?
                    }
                };
                Ok(FsReply::Filestat(cap_stat(&metadata)))
            }
            FsCall::PathFilestatGet { fd, follow, path } => {
                let (dir, _) = self.dir(fd)?;
                let metadata = if follow {
                    dir.metadata(&path)
                } else {
                    dir.symlink_metadata(&path)
                }
                .map_err(errno)?;
                Ok(FsReply::Filestat(cap_stat(&metadata)))
            }
            FsCall::Open {
                fd,
                follow: _,
                path,
                oflags,
                rights,
                fdflags,
            } => self.open(fd, &path, oflags, rights, fdflags),
            FsCall::Close { fd } => {
                // Preopens can be closed too (WASI allows it).
                self.entries.remove(&fd).map(|_| FsReply::Done).ok_or(EBADF)
            }
            FsCall::Read { fd, max, offset } => {
                let (file, _, _) = self.file(fd)?;
                let mut bytes = vec![0u8; (max as usize).min(max_reply)];
                let n = match offset {
                    Some(at) => file.read_at(&mut bytes, at),
                    None => file.read(&mut bytes),
                }
                .map_err(errno)?;
                bytes.truncate(n);
                Ok(FsReply::Bytes(bytes))
            }
            FsCall::Write { fd, bytes, offset } => {
                let max_size = self.max_file_size;
                let (file, access, append) = self.file(fd)?;
                if access == DirAccess::ReadOnly {
                    return Err(ENOTCAPABLE);
                }
                let start = match (offset, append) {
                    (Some(at), _) => at,
                    (None, true) => file.metadata().map_err(errno)?.len(),
                    (None, false) => file.stream_position().map_err(errno)?,
                };
                if start.saturating_add(bytes.len() as u64) > max_size {
                    return Err(EFBIG);
                }
                match offset {
                    Some(at) => file.write_all_at(&bytes, at),
                    None => file.write_all(&bytes),
                }
                .map_err(errno)?;
                Ok(FsReply::Count(
                    u32::try_from(bytes.len()).map_err(|_| EINVAL)?,
                ))
            }
            FsCall::Seek { fd, offset, whence } => {
                let (file, _, _) = self
                    .file(fd)
                    .map_err(|e| if e == EISDIR { ESPIPE } else { e })?;
                let to = match whence {
                    0 => SeekFrom::Start(u64::try_from(offset).map_err(|_| EINVAL)?),
                    1 => SeekFrom::Current(offset),
                    2 => SeekFrom::End(offset),
                    _ => return Err(EINVAL),
                };
                Ok(FsReply::Offset(file.seek(to).map_err(errno)?))
            }
            FsCall::Readdir { fd, cookie, max } => {
                let (dir, _) = self.dir(fd)?;
                let mut names = vec![
                    (String::from("."), DIRECTORY, 0),
                    (String::from(".."), DIRECTORY, 0),
                ];
                let mut listed = Vec::new();
                for entry in dir.entries().map_err(errno)? {
                    let entry = entry.map_err(errno)?;
                    let Ok(name) = entry.file_name().into_string() else {
                        // WASI names are UTF-8: skip what cannot be one.
                        continue;
                    };
                    let filetype = match entry.file_type() {
                        Ok(t) if t.is_dir() => DIRECTORY,
                        Ok(t) if t.is_symlink() => SYMBOLIC_LINK,
                        Ok(t) if t.is_file() => REGULAR_FILE,
                        _ => 0,
                    };
                    listed.push((name, filetype, 0u64));
                }
                // A stable order, so that cookies mean the same entry.
                listed.sort();
                names.extend(listed);
                let budget = (max as usize).min(max_reply);
                let mut out = Vec::new();
                let mut used = 0;
                let start = usize::try_from(cookie).unwrap_or(usize::MAX);
                for (i, (name, filetype, ino)) in names.into_iter().enumerate().skip(start) {
                    let dirent = Dirent {
                        next: i as u64 + 1,
                        ino,
                        filetype,
                        name,
                    };
                    if !out.is_empty() && used + dirent.wasi_len() > budget {
                        break;
                    }
                    used += dirent.wasi_len();
                    out.push(dirent);
                }
                Ok(FsReply::Dirents(out))
            }
            FsCall::CreateDirectory { fd, path } => {
                self.writable_dir(fd)?.create_dir(&path).map_err(errno)?;
                Ok(FsReply::Done)
            }
            FsCall::RemoveDirectory { fd, path } => {
                self.writable_dir(fd)?.remove_dir(&path).map_err(errno)?;
                Ok(FsReply::Done)
            }
            FsCall::UnlinkFile { fd, path } => {
                self.writable_dir(fd)?.remove_file(&path).map_err(errno)?;
                Ok(FsReply::Done)
            }
            FsCall::Rename {
                fd,
                old,
                new_fd,
                new,
            } => {
                let from = self.writable_dir(fd)?;
                let to = self.writable_dir(new_fd)?;
                from.rename(&old, to, &new).map_err(errno)?;
                Ok(FsReply::Done)
            }
            FsCall::Readlink { fd, path } => {
                let (dir, _) = self.dir(fd)?;
                let target = dir.read_link(&path).map_err(errno)?;
                target
                    .into_os_string()
                    .into_string()
                    .map(FsReply::Name)
                    .map_err(|_| EINVAL)
            }
            FsCall::Symlink { old, fd, new } => {
                self.writable_dir(fd)?.symlink(&old, &new).map_err(errno)?;
                Ok(FsReply::Done)
            }
            FsCall::SetSize { fd, size } => {
                let max_size = self.max_file_size;
                let (file, access, _) = self.file(fd)?;
                if access == DirAccess::ReadOnly {
                    return Err(ENOTCAPABLE);
                }
                if size > max_size {
                    return Err(EFBIG);
                }
                file.set_len(size).map_err(errno)?;
                Ok(FsReply::Done)
            }
            FsCall::Sync { fd } => {
                let (file, _, _) = self.file(fd)?;
                file.sync_all().map_err(errno)?;
                Ok(FsReply::Done)
            }
        }
    }

    fn open(
        &mut self,
        fd: u32,
        path: &str,
        oflags: u16,
        rights: u64,
        fdflags: u16,
    ) -> Result<FsReply, Errno> {
        let (dir, access) = self.dir(fd)?;
        let is_dir = oflags & O_DIRECTORY != 0
            || (oflags & O_CREAT == 0 && dir.metadata(path).is_ok_and(|m| m.is_dir()));
        // The write right means nothing for a directory (what changes one
        // is checked per operation); for a file it, creating, truncating
        // and appending are writes.
        let writes = oflags & (O_CREAT | O_TRUNC) != 0
            || (!is_dir && (rights & RIGHT_FD_WRITE != 0 || fdflags & FDFLAG_APPEND != 0));
        if writes && access == DirAccess::ReadOnly {
            return Err(ENOTCAPABLE);
        }
        if self.entries.len() >= self.max_open {
            return Err(EMFILE);
        }
        let handle = if is_dir {
            if oflags & (O_CREAT | O_TRUNC) != 0 {
                return Err(EISDIR);
            }
            Handle::Dir {
                dir: dir.open_dir(path).map_err(errno)?,
                preopen: None,
            }
        } else {
            let mut options = OpenOptions::new();
            options.read(true);
            if writes {
                options.write(true);
            }
            if oflags & O_CREAT != 0 && oflags & O_EXCL != 0 {
                options.create_new(true);
            } else if oflags & O_CREAT != 0 {
                options.create(true);
            }
            if oflags & O_TRUNC != 0 {
                options.truncate(true);
            }
            if fdflags & FDFLAG_APPEND != 0 {
                // Every write at the end, whatever the position: the OS
                // does it (O_APPEND).
                options.append(true);
            }
            let file = dir.open_with(path, &options).map_err(errno)?;
            Handle::File {
                file: file.into_std(),
                append: fdflags & FDFLAG_APPEND != 0,
            }
        };
        let new_fd = (FIRST_FD..)
            .find(|fd| !self.entries.contains_key(fd))
            .ok_or(EMFILE)?;
        self.entries.insert(new_fd, Entry { handle, access });
        Ok(FsReply::Fd(new_fd))
    }
}

/// A host error as the WASI errno the module gets. cap-std reports a path
/// that would lead outside its directory as `PermissionDenied` without an
/// OS code: that is `ENOTCAPABLE`.
fn errno(e: std::io::Error) -> Errno {
    let Some(code) = e.raw_os_error() else {
        return match e.kind() {
            std::io::ErrorKind::PermissionDenied => ENOTCAPABLE,
            std::io::ErrorKind::NotFound => 44,
            std::io::ErrorKind::InvalidInput => EINVAL,
            std::io::ErrorKind::Unsupported => ENOTSUP,
            _ => EIO,
        };
    };
    match code {
        libc::EPERM => 63,
        libc::ENOENT => 44,
        libc::EIO => EIO,
        libc::EBADF => EBADF,
        libc::EACCES => 2,
        libc::EEXIST => 20,
        libc::EXDEV => 75,
        libc::ENOTDIR => ENOTDIR,
        libc::EISDIR => EISDIR,
        libc::EINVAL => EINVAL,
        libc::EMFILE => EMFILE,
        libc::EFBIG => EFBIG,
        libc::ENOSPC => 51,
        libc::ESPIPE => ESPIPE,
        libc::EROFS => 69,
        libc::EMLINK => 34,
        libc::ENAMETOOLONG => 37,
        libc::ENOTEMPTY => 55,
        libc::ELOOP => 32,
        libc::ENOTSUP => ENOTSUP,
        _ => EIO,
    }
}

fn filetype(is_dir: bool, is_symlink: bool, is_file: bool) -> u8 {
    if is_dir {
        DIRECTORY
    } else if is_symlink {
        SYMBOLIC_LINK
    } else if is_file {
        REGULAR_FILE
    } else {
        0
    }
}

/// Nanoseconds from seconds and nanoseconds since the epoch (0 before it).
fn ns(secs: i64, nsec: i64) -> u64 {
    u64::try_from(secs)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(nsec).unwrap_or(0))
}

/// WASI's filestat of `m` (of a directory or a file).
fn cap_stat(m: &cap_std::fs::Metadata) -> Filestat {
    use cap_std::fs::MetadataExt as _;
    let t = m.file_type();
    Filestat {
        dev: m.dev(),
        ino: m.ino(),
        filetype: filetype(t.is_dir(), t.is_symlink(), t.is_file()),
        nlink: m.nlink(),
        size: m.len(),
        atim: ns(m.atime(), m.atime_nsec()),
        mtim: ns(m.mtime(), m.mtime_nsec()),
        ctim: ns(m.ctime(), m.ctime_nsec()),
    }
}
