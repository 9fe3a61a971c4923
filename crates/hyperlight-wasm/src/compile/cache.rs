//! Where compiled modules are kept: in memory (always), and in a directory
//! on disk when the application sets one.
//!
//! The disk cache is storage other parties might reach, and what it holds
//! is code the guest runs, so nothing in it is trusted blindly:
//! - the directory (and every directory above it) is checked the way ssh
//!   checks its files: the cache directory and its subdirectories must be
//!   owned by the current user and not writable by group or others; the
//!   directories above must be owned by the user or root and not writable by
//!   group or others unless they are sticky (like `/tmp`);
//! - entries are opened without following symlinks, must be regular files,
//!   and their size is checked before anything is read;
//! - every entry carries a SHA-256 of its contents (a torn or corrupt entry
//!   is a miss, and is rewritten);
//! - an entry the guest rejects is dropped and rebuilt (see
//!   [`super::forget`]);
//! - the directory is bounded in bytes: after every write, the least
//!   recently used entries go until the total fits.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::Compiled;
use crate::error::{Error, Result};

/// How many bytes of compiled code the in-memory cache keeps.
const MEMORY_CACHE_BYTES: usize = 256 << 20;

/// The default bound of the disk cache: 1 GiB.
pub const DEFAULT_DISK_CACHE_BYTES: u64 = 1 << 30;

/// Marks a cache file and its format version.
const CACHE_MAGIC: &[u8; 8] = b"HLWCACH2";

/// Compiled modules by the SHA-256 of their source, up to
/// [`MEMORY_CACHE_BYTES`]; the oldest entries go first.
#[derive(Default)]
struct MemoryCache {
    entries: HashMap<[u8; 32], Arc<Compiled>>,
    order: VecDeque<[u8; 32]>,
    bytes: usize,
}

fn memory_cache() -> std::sync::MutexGuard<'static, MemoryCache> {
    static CACHE: OnceLock<Mutex<MemoryCache>> = OnceLock::new();
    CACHE
        .get_or_init(|| Mutex::new(MemoryCache::default()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

pub(super) fn memory_get(key: &[u8; 32]) -> Option<Arc<Compiled>> {
    memory_cache().entries.get(key).cloned()
}

pub(super) fn memory_insert(key: [u8; 32], compiled: Arc<Compiled>) {
    let size = compiled.artifact_len();
    let mut cache = memory_cache();
    if size > MEMORY_CACHE_BYTES || cache.entries.contains_key(&key) {
        return;
    }
    while cache.bytes + size > MEMORY_CACHE_BYTES {
        let Some(oldest) = cache.order.pop_front() else {
            break;
        };
        if let Some(old) = cache.entries.remove(&oldest) {
            cache.bytes -= old.artifact_len();
        }
    }
    cache.bytes += size;
    cache.order.push_back(key);
    cache.entries.insert(key, compiled);
}

pub(super) fn memory_remove(key: &[u8; 32]) {
    let mut cache = memory_cache();
    if let Some(old) = cache.entries.remove(key) {
        cache.bytes -= old.artifact_len();
        cache.order.retain(|k| k != key);
    }
}

/// The disk cache's settings.
#[derive(Debug, Clone)]
pub(super) struct DiskCache {
    root: PathBuf,
    max_bytes: u64,
}

static DISK: RwLock<Option<DiskCache>> = RwLock::new(None);
static DISK_MAX_BYTES: RwLock<u64> = RwLock::new(DEFAULT_DISK_CACHE_BYTES);

pub(super) fn disk() -> Option<DiskCache> {
    DISK.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// See [`crate::set_module_cache_dir`].
pub(super) fn set_dir(dir: Option<PathBuf>) -> Result<()> {
    let Some(root) = dir else {
        *DISK.write().unwrap_or_else(|e| e.into_inner()) = None;
        return Ok(());
    };
    let fail = |reason: String| Error::ModuleCacheDir {
        path: root.clone(),
        reason,
    };
    if !root.is_absolute() {
        return Err(fail(String::from("the path must be absolute")));
    }
    match std::fs::symlink_metadata(&root) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(|e| fail(format!("cannot be created: {e}")))?;
        }
        Err(e) => return Err(fail(format!("cannot be examined: {e}"))),
    }
    check_tree(&root).map_err(fail)?;
    let max_bytes = *DISK_MAX_BYTES.read().unwrap_or_else(|e| e.into_inner());
    *DISK.write().unwrap_or_else(|e| e.into_inner()) = Some(DiskCache { root, max_bytes });
    Ok(())
}

/// See [`crate::set_module_cache_max_bytes`].
pub(super) fn set_max_bytes(bytes: u64) {
    *DISK_MAX_BYTES.write().unwrap_or_else(|e| e.into_inner()) = bytes;
    if let Some(disk) = DISK.write().unwrap_or_else(|e| e.into_inner()).as_mut() {
        disk.max_bytes = bytes;
    }
}

/// The current user.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks `dir` (ours: owned by us, private) and every directory above it
/// (owned by us or root, not writable by others unless sticky).
fn check_tree(dir: &Path) -> Result<(), String> {
    check_own_dir(dir)?;
    let mut parent = dir.parent();
    while let Some(p) = parent {
        let meta =
            std::fs::metadata(p).map_err(|e| format!("{} cannot be examined: {e}", p.display()))?;
        let mode = meta.permissions().mode();
        let owner_ok = meta.uid() == euid() || meta.uid() == 0;
        let sticky = mode & 0o1000 != 0;
        if !owner_ok || (mode & 0o022 != 0 && !sticky) {
            return Err(format!(
                "{} (above it) is owned by uid {} with mode {:o}: others could replace the \
                 cache directory",
                p.display(),
                meta.uid(),
                mode & 0o7777
            ));
        }
        parent = p.parent();
    }
    Ok(())
}

/// Checks a directory of the cache itself: a real directory (not a
/// symlink), owned by the current user, not writable by group or others.
fn check_own_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot be examined: {e}"))?;
    if meta.file_type().is_symlink() {
        return Err(format!("{} is a symbolic link", dir.display()));
    }
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != euid() {
        return Err(format!(
            "{} is owned by uid {}, not by this user (uid {})",
            dir.display(),
            meta.uid(),
            euid()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} has mode {:o}: it must not be writable by group or others",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

impl DiskCache {
    /// The subdirectory for `namespace` (created if needed), checked.
    fn namespace_dir(&self, namespace: &str, create: bool) -> Result<PathBuf, String> {
        check_tree(&self.root)?;
        let dir = self.root.join(namespace);
        if create && std::fs::symlink_metadata(&dir).is_err() {
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
        }
        check_own_dir(&dir)?;
        Ok(dir)
    }

    /// Reads the entry `name` of `namespace`: `None` for a missing, unsafe,
    /// oversized, corrupt or truncated entry.
    pub(super) fn read(&self, namespace: &str, name: &str) -> Option<Vec<u8>> {
        let dir = self.namespace_dir(namespace, false).ok()?;
        let path = dir.join(name);
        let mut file = open_entry(&path).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() > self.max_bytes {
            return None;
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).ok()?);
        // A file that grew since the check is cut at its checked size (and
        // then fails its checksum).
        (&mut file).take(meta.len()).read_to_end(&mut bytes).ok()?;
        let rest = bytes.strip_prefix(CACHE_MAGIC.as_slice())?;
        let (checksum, payload) = rest.split_at_checked(32)?;
        if Sha256::digest(payload).as_slice() != checksum {
            return None;
        }
        // Recently used: eviction goes by modification time.
        let _ = file.set_modified(SystemTime::now());
        Some(payload.to_vec())
    }

    /// Writes an entry atomically (a new private file, then rename), then
    /// evicts the least recently used entries beyond the bound. Errors are
    /// returned for the caller to ignore: a cache that cannot be written is
    /// only a missed speed-up.
    pub(super) fn write(&self, namespace: &str, name: &str, payload: &[u8]) -> Result<(), String> {
        let size = (CACHE_MAGIC.len() + 32 + payload.len()) as u64;
        if size > self.max_bytes {
            return Err(String::from("the entry is larger than the whole cache"));
        }
        let dir = self.namespace_dir(namespace, true)?;
        let unique = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let temporary = dir.join(format!(".{name}.{}.{unique}.tmp", std::process::id()));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&temporary)?;
            file.write_all(CACHE_MAGIC)?;
            file.write_all(&Sha256::digest(payload))?;
            file.write_all(payload)?;
            std::fs::rename(&temporary, dir.join(name))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(format!("cannot write {}: {e}", dir.join(name).display()));
        }
        self.evict();
        Ok(())
    }

    /// Removes an entry (one the guest rejected).
    pub(super) fn remove(&self, namespace: &str, name: &str) {
        if let Ok(dir) = self.namespace_dir(namespace, false) {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }

    /// Deletes the least recently used entries (of every namespace) until
    /// the cache holds at most `max_bytes`.
    fn evict(&self) {
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        let Ok(namespaces) = std::fs::read_dir(&self.root) else {
            return;
        };
        for namespace in namespaces.flatten() {
            let dir = namespace.path();
            if check_own_dir(&dir).is_err() {
                continue;
            }
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            for file in files.flatten() {
                let Ok(meta) = std::fs::symlink_metadata(file.path()) else {
                    continue;
                };
                if meta.is_file() {
                    let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    entries.push((used, meta.len(), file.path()));
                }
            }
        }
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

/// Opens a cache entry for reading without following a symlink and without
/// blocking on a FIFO someone put there.
fn open_entry(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh private directory for one test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hyperlight-wasm-cache-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        dir
    }

    fn cache(root: &Path, max_bytes: u64) -> DiskCache {
        DiskCache {
            root: root.to_owned(),
            max_bytes,
        }
    }

    #[test]
    fn entries_round_trip_and_corrupt_ones_are_misses() {
        let root = temp_dir("roundtrip");
        let disk = cache(&root, 1 << 20);
        disk.write("ns", "a", b"payload").unwrap();
        assert_eq!(disk.read("ns", "a").unwrap(), b"payload");
        let path = root.join("ns/a");
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(disk.read("ns", "a").is_none());
        std::fs::write(&path, b"HLWCACH2short").unwrap();
        assert!(disk.read("ns", "a").is_none());
        assert!(disk.read("ns", "missing").is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn symlinks_fifos_and_oversized_entries_are_not_read() {
        let root = temp_dir("hostile");
        let disk = cache(&root, 4096);
        disk.write("ns", "real", b"secret").unwrap();
        // A symlink to a valid entry: not followed.
        std::os::unix::fs::symlink(root.join("ns/real"), root.join("ns/link")).unwrap();
        assert!(disk.read("ns", "link").is_none());
        // A FIFO: not read, and the read does not block.
        let fifo = std::ffi::CString::new(root.join("ns/fifo").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(disk.read("ns", "fifo").is_none());
        // A file larger than the bound: refused before it is read.
        let mut big = CACHE_MAGIC.to_vec();
        big.extend(Sha256::digest(vec![0u8; 5000]));
        big.extend(vec![0u8; 5000]);
        std::fs::write(root.join("ns/big"), &big).unwrap();
        assert!(disk.read("ns", "big").is_none());
        assert!(cache(&root, 1 << 20).read("ns", "big").is_some());
        // A namespace that is a symlink is refused too.
        std::os::unix::fs::symlink(root.join("ns"), root.join("ns2")).unwrap();
        assert!(disk.read("ns2", "real").is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn directories_others_can_write_are_refused() {
        let root = temp_dir("perms");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = set_dir(Some(root.clone())).unwrap_err();
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
        assert!(disk().is_none_or(|d| d.root != root));
        // The cache does not use it either, even if set earlier.
        let disk = cache(&root, 1 << 20);
        assert!(disk.write("ns", "a", b"x").is_err());
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        disk.write("ns", "a", b"x").unwrap();
        std::fs::set_permissions(root.join("ns"), std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(disk.read("ns", "a").is_none());
        // A relative path or a file is refused.
        assert!(set_dir(Some(PathBuf::from("relative/dir"))).is_err());
        std::fs::write(root.join("file"), b"").unwrap();
        assert!(set_dir(Some(root.join("file"))).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_cache_stays_within_its_bound_dropping_the_least_recently_used() {
        let root = temp_dir("evict");
        let entry = |n: u8| vec![n; 1000];
        let disk = cache(&root, 3 * 1100);
        for n in 0..3 {
            disk.write("ns", &format!("e{n}"), &entry(n)).unwrap();
            // Distinct modification times, oldest first.
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + u64::from(n));
            File::options()
                .write(true)
                .open(root.join(format!("ns/e{n}")))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        // Reading e0 makes it the most recently used.
        assert!(disk.read("ns", "e0").is_some());
        disk.write("ns", "e3", &entry(3)).unwrap();
        let names: Vec<String> = std::fs::read_dir(root.join("ns"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(!names.contains(&String::from("e1")), "{names:?}");
        let total: u64 = std::fs::read_dir(root.join("ns"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 3 * 1100);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
