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

#[derive(Debug, Default)]
struct Images {
    entries: HashMap<ImageKey, (Arc<Snapshot>, u64)>,
    bytes: usize,
    clock: u64,
}

fn images() -> MutexGuard<'static, Images> {
    static IMAGES: OnceLock<Mutex<Images>> = OnceLock::new();
    IMAGES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The image for `key`, if there is one.
pub(crate) fn get(key: &ImageKey) -> Option<Arc<Snapshot>> {
    let mut images = images();
    images.clock += 1;
    let now = images.clock;
    let (image, used) = images.entries.get_mut(key)?;
    *used = now;
    Some(Arc::clone(image))
}

/// Keeps `image` as the image for `key` (evicting the least recently used
/// images if the cache is full). An image that alone exceeds the byte limit
/// is not kept.
pub(crate) fn insert(key: ImageKey, image: Arc<Snapshot>) {
    let size = image.memory_bytes();
    if size > MAX_BYTES {
        return;
    }
    let mut evicted = Vec::new();
    {
        let mut images = images();
        images.clock += 1;
        let now = images.clock;
        if let Some((old, _)) = images.entries.insert(key, (image, now)) {
            images.bytes -= old.memory_bytes();
            evicted.push(old);
        }
        images.bytes += size;
        while images.entries.len() > MAX_IMAGES || images.bytes > MAX_BYTES {
            let Some(oldest) = images
                .entries
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((old, _)) = images.entries.remove(&oldest) {
                images.bytes -= old.memory_bytes();
                evicted.push(old);
            }
        }
    }
    // Unmapping happens outside the lock.
    drop(evicted);
}

/// Empties the process's cache of shared sandbox images (the states after
/// `load_runtime` and after `load_module`), freeing their memory once no
/// sandbox uses them. The next sandbox of each configuration boots its guest
/// and loads its module again, and takes new images.
pub fn clear() {
    let evicted: Vec<_> = {
        let mut images = images();
        images.bytes = 0;
        images.entries.drain().collect()
    };
    drop(evicted);
}
