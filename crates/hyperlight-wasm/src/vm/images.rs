//! The process-wide cache of shared images: the state right after
//! `load_runtime`, one per configuration, and the state right after
//! `load_module`, one per (configuration, module, host function signatures).
//!
//! A sandbox whose state has an image here maps it ([`super::Vm::adopt`])
//! instead of booting its guest or loading its module again: that copies
//! nothing, and the pages stay shared until the sandbox writes them.
//!
//! Only states every sandbox reaches the same way are shared: a load during
//! which the guest asked the host anything (a host function, a print, the
//! clock, random bytes) is not, since another sandbox could get other
//! answers. The cache is bounded in entries and in bytes; the least recently
//! used image goes first (sandboxes that use it keep it alive).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::layout::Sizes;
use super::snapshot::Snapshot;

/// Images kept, at most.
const MAX_IMAGES: usize = 64;
/// Bytes of guest memory the images hold, at most.
const MAX_BYTES: usize = 1 << 30;

/// What an image is the state of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ImageKey {
    /// The configuration's region sizes.
    pub sizes: Sizes,
    /// `None` for the post-runtime state, else a hash of the module and of
    /// the host functions it was linked against.
    pub module: Option<[u8; 32]>,
}

/// A bounded LRU map of shared values by key, each with its size in bytes.
#[derive(Debug)]
struct Lru<T> {
    entries: HashMap<ImageKey, Entry<T>>,
    bytes: usize,
    clock: u64,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct Entry<T> {
    value: Arc<T>,
    size: usize,
    used: u64,
}

impl<T> Lru<T> {
    fn new(max_entries: usize, max_bytes: usize) -> Lru<T> {
        Lru {
            entries: HashMap::new(),
            bytes: 0,
            clock: 0,
            max_entries,
            max_bytes,
        }
    }

    fn get(&mut self, key: &ImageKey) -> Option<Arc<T>> {
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        entry.used = self.clock;
        Some(Arc::clone(&entry.value))
    }

    /// Keeps `value` (of `size` bytes) under `key`, evicting the least
    /// recently used entries while over a limit; returns what it evicted
    /// (for the caller to drop outside its lock). A value that alone
    /// exceeds the byte limit is not kept.
    fn insert(&mut self, key: ImageKey, value: Arc<T>, size: usize) -> Vec<Arc<T>> {
        let mut evicted = Vec::new();
        if size > self.max_bytes {
            evicted.push(value);
            return evicted;
        }
        self.clock += 1;
        let entry = Entry {
            value,
            size,
            used: self.clock,
        };
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.size;
            evicted.push(old.value);
        }
        self.bytes += size;
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, entry)| entry.used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(old) = self.entries.remove(&oldest) {
                self.bytes -= old.size;
                evicted.push(old.value);
            }
        }
        evicted
    }

    fn clear(&mut self) -> Vec<Arc<T>> {
        self.bytes = 0;
        self.entries.drain().map(|(_, entry)| entry.value).collect()
    }
}

fn images() -> MutexGuard<'static, Lru<Snapshot>> {
    static IMAGES: OnceLock<Mutex<Lru<Snapshot>>> = OnceLock::new();
    IMAGES
        .get_or_init(|| Mutex::new(Lru::new(MAX_IMAGES, MAX_BYTES)))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The image for `key`, if there is one.
pub(crate) fn get(key: &ImageKey) -> Option<Arc<Snapshot>> {
    images().get(key)
}

/// Keeps `image` as the image for `key` (evicting the least recently used
/// images if the cache is full). An image that alone exceeds the byte limit
/// is not kept.
pub(crate) fn insert(key: ImageKey, image: Arc<Snapshot>) {
    let size = image.memory_bytes();
    let evicted = images().insert(key, image, size);
    // Unmapping happens outside the lock.
    drop(evicted);
}

/// Empties the process's cache of shared sandbox images (the states after
/// `load_runtime` and after `load_module`), freeing their memory once no
/// sandbox uses them. The next sandbox of each configuration boots its guest
/// and loads its module again, and takes new images.
pub fn clear() {
    let evicted = images().clear();
    drop(evicted);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ImageKey {
        ImageKey {
            sizes: crate::vm::testing::SIZES,
            module: Some([n; 32]),
        }
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let mut lru = Lru::new(2, 1000);
        assert!(lru.insert(key(1), Arc::new(1), 10).is_empty());
        assert!(lru.insert(key(2), Arc::new(2), 10).is_empty());
        // Using 1 makes 2 the oldest.
        assert_eq!(lru.get(&key(1)).as_deref(), Some(&1));
        let evicted = lru.insert(key(3), Arc::new(3), 10);
        assert_eq!(evicted.iter().map(|v| **v).collect::<Vec<_>>(), [2]);
        assert!(lru.get(&key(2)).is_none());
        assert!(lru.get(&key(1)).is_some() && lru.get(&key(3)).is_some());
    }

    #[test]
    fn bytes_are_bounded_and_replacements_counted_once() {
        let mut lru = Lru::new(10, 100);
        lru.insert(key(1), Arc::new(1), 60);
        // Replacing an entry gives its bytes back.
        let evicted = lru.insert(key(1), Arc::new(11), 60);
        assert_eq!((evicted.len(), lru.bytes), (1, 60));
        // Over the byte limit: the older entry goes, the new one stays.
        let evicted = lru.insert(key(2), Arc::new(2), 50);
        assert_eq!(evicted.iter().map(|v| **v).collect::<Vec<_>>(), [11]);
        assert_eq!(lru.bytes, 50);
        // Too large on its own: not kept, nothing else evicted.
        let evicted = lru.insert(key(3), Arc::new(3), 101);
        assert_eq!(evicted.iter().map(|v| **v).collect::<Vec<_>>(), [3]);
        assert!(lru.get(&key(2)).is_some() && lru.get(&key(3)).is_none());
        assert_eq!(lru.clear().len(), 1);
        assert_eq!(lru.bytes, 0);
    }
}
