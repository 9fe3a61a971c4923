//! Which pages of guest memory changed, and since when: the bookkeeping
//! that lets a reset copy back only what a call wrote.
//!
//! KVM's dirty log (enabled on the memory slot) records every page the
//! guest wrote, [`GuestMemory`] every page the host wrote. The
//! [`Tracker`] keeps, across reads of both:
//! - `touched`: every page written since memory was mapped (from `backing`,
//!   or zeros): what a new snapshot must hold;
//! - `since_base`: pages written since memory last matched `base` (the
//!   snapshot taken or restored last): what a restore must copy back;
//! - `hot`: pages left writable (see below).
//!
//! Dirty logging works by write-protecting pages: after each read of the
//! log, the guest's next write to a page costs a fault (~3 µs on our KVM),
//! and most calls write the same few pages (stack, buffers, the runtime's
//! own state). Where KVM lets us choose which pages to protect again
//! (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`), the pages a per-call reset finds
//! dirty stay writable, up to [`MAX_HOT_PAGES`]: their dirty bits are never
//! cleared, so every read of the log reports them and every reset copies
//! them back (~0.3 µs a page). The guest cannot keep anything in them.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use kvm_bindings::{kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1};
use kvm_ioctls::VmFd;

use super::error::VmError;
use super::memory::GuestMemory;
use super::snapshot::Snapshot;

/// Pages a VM leaves writable (and copies back at every reset), at most.
pub(crate) const MAX_HOT_PAGES: usize = 32;

/// `KVM_CLEAR_DIRTY_LOG`: `_IOWR(KVMIO, 0xc0, struct kvm_clear_dirty_log)`.
const KVM_CLEAR_DIRTY_LOG: libc::c_ulong = (3 << 30)
    | ((std::mem::size_of::<kvm_clear_dirty_log>() as libc::c_ulong) << 16)
    | (0xae << 8)
    | 0xc0;

/// A bitmap with one bit per guest page.
#[derive(Debug, Clone, Default)]
pub(crate) struct PageSet {
    words: Vec<u64>,
}

impl PageSet {
    pub(crate) fn new(pages: usize) -> PageSet {
        PageSet {
            words: vec![0; pages.div_ceil(64)],
        }
    }

    pub(crate) fn union_words(&mut self, words: &[u64]) {
        for (mine, theirs) in self.words.iter_mut().zip(words) {
            *mine |= *theirs;
        }
    }

    pub(crate) fn insert(&mut self, page: usize) {
        if let Some(word) = self.words.get_mut(page / 64) {
            *word |= 1 << (page % 64);
        }
    }

    pub(crate) fn union(&mut self, other: &PageSet) {
        self.union_words(&other.words);
    }

    pub(crate) fn contains(&self, page: usize) -> bool {
        self.words
            .get(page / 64)
            .is_some_and(|word| word & (1 << (page % 64)) != 0)
    }

    pub(crate) fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        pages_in(&self.words)
    }

    pub(crate) fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }
}

/// The pages set in a bitmap of one bit per page (64 pages per word).
fn pages_in(words: &[u64]) -> impl Iterator<Item = usize> + '_ {
    words.iter().enumerate().flat_map(|(i, word)| {
        let mut bits = *word;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let bit = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i * 64 + bit)
        })
    })
}

/// What a read of the dirty log does with the hot pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hot {
    /// Pages found dirty may become hot (a per-call reset).
    Grow,
    /// The hot pages stay as they are.
    Keep,
    /// No page stays hot: every page is protected again (memory is being
    /// replaced).
    Drop,
}

/// The pages of one VM that changed; see the module documentation.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Whether KVM write-protects pages for the dirty log only when asked.
    manual_protect: bool,
    hot: PageSet,
    /// The image guest memory is mapped from (`None`: anonymous memory that
    /// started all zeros).
    backing: Option<Arc<Snapshot>>,
    touched: PageSet,
    since_base: PageSet,
    /// The snapshot memory matched when it was last taken or restored.
    base: Option<Arc<Snapshot>>,
}

impl Tracker {
    /// A tracker for `pages` pages of zeroed memory.
    pub(crate) fn new(pages: usize, manual_protect: bool) -> Tracker {
        Tracker {
            manual_protect,
            hot: PageSet::new(pages),
            backing: None,
            touched: PageSet::new(pages),
            since_base: PageSet::new(pages),
            base: None,
        }
    }

    /// The snapshot memory matches, unless it changed since.
    pub(crate) fn base(&self) -> Option<&Arc<Snapshot>> {
        self.base.as_ref()
    }

    /// Collects the pages written since the last collection (by the guest,
    /// from KVM's dirty log, and by the host).
    pub(crate) fn collect(
        &mut self,
        vm: &VmFd,
        memory: &mut GuestMemory,
        hot: Hot,
    ) -> Result<(), VmError> {
        let guest = self.take_guest_dirty_log(vm, memory, hot)?;
        let host = memory.take_host_dirty();
        for words in [&guest, &host] {
            self.since_base.union_words(words);
            self.touched.union_words(words);
        }
        Ok(())
    }

    /// The pages a snapshot taken now must hold: those memory was mapped
    /// from, and those written since.
    pub(crate) fn snapshot_pages(&self) -> PageSet {
        let mut pages = self.touched.clone();
        if let Some(backing) = &self.backing {
            pages.union(&backing.pages);
        }
        pages
    }

    /// Memory now matches `snapshot`, just taken.
    pub(crate) fn taken(&mut self, snapshot: &Arc<Snapshot>) {
        self.since_base.clear();
        self.base = Some(Arc::clone(snapshot));
    }

    /// Before memory is replaced by `image`'s mapping: forgets every page
    /// written so far (none of it will be in memory) and protects every
    /// page again.
    pub(crate) fn forget_for(
        &mut self,
        vm: &VmFd,
        memory: &mut GuestMemory,
    ) -> Result<(), VmError> {
        // Until the new mapping is done, memory matches no snapshot.
        self.base = None;
        self.take_guest_dirty_log(vm, memory, Hot::Drop)?;
        memory.take_host_dirty();
        Ok(())
    }

    /// Memory is now `image`'s mapping.
    pub(crate) fn adopted(&mut self, image: &Arc<Snapshot>) {
        self.touched.clear();
        self.since_base.clear();
        self.backing = Some(Arc::clone(image));
        self.base = Some(Arc::clone(image));
    }

    /// The pages that can differ from `target`, given the base memory
    /// matched last: those written since the base, and, if the base is
    /// another snapshot, every page either of the two holds. They stay
    /// recorded until [`Tracker::restored`] (if the copy fails, a superset
    /// of the differing pages is still right).
    pub(crate) fn differing_from(&mut self, base: &Snapshot, target: &Snapshot) -> &PageSet {
        if base.id() != target.id() {
            self.since_base.union(&base.pages);
            self.since_base.union(&target.pages);
        }
        &self.since_base
    }

    /// The pages [`Tracker::differing_from`] named were copied back: memory
    /// matches `target`.
    pub(crate) fn restored(&mut self, target: &Arc<Snapshot>) {
        // Those pages now differ from the image memory was mapped from (a
        // later snapshot must include them).
        self.touched.union(&self.since_base);
        self.since_base.clear();
        self.base = Some(Arc::clone(target));
    }

    /// Reads KVM's dirty log (a bitmap of the pages the guest wrote) and
    /// write-protects those pages again, except the hot ones.
    fn take_guest_dirty_log(
        &mut self,
        vm: &VmFd,
        memory: &GuestMemory,
        hot: Hot,
    ) -> Result<Vec<u64>, VmError> {
        let dirty = vm
            .get_dirty_log(0, memory.byte_len())
            .map_err(VmError::kvm("KVM_GET_DIRTY_LOG"))?;
        if !self.manual_protect {
            // KVM protected every page it reported already.
            return Ok(dirty);
        }
        match hot {
            Hot::Drop => self.hot.clear(),
            Hot::Keep => {}
            Hot::Grow => {
                let room = MAX_HOT_PAGES.saturating_sub(self.hot.len());
                let new: Vec<usize> = pages_in(&dirty)
                    .filter(|page| !self.hot.contains(*page))
                    .take(room)
                    .collect();
                for page in new {
                    self.hot.insert(page);
                }
            }
        }
        let mut clear = dirty.clone();
        for (word, hot) in clear.iter_mut().zip(&self.hot.words) {
            *word &= !hot;
        }
        if clear.iter().any(|w| *w != 0) {
            clear_dirty_log(vm, memory.pages(), &mut clear)?;
        }
        Ok(dirty)
    }
}

/// Clears the dirty bits of (and write-protects again) the pages set in
/// `bitmap`, of a memory slot of `pages` pages.
fn clear_dirty_log(vm: &VmFd, pages: usize, bitmap: &mut [u64]) -> Result<(), VmError> {
    let pages = u32::try_from(pages)
        .map_err(|_| VmError::Internal(String::from("guest memory has too many pages")))?;
    if bitmap.len() * 64 < pages as usize {
        return Err(VmError::Internal(String::from(
            "dirty bitmap shorter than the memory slot",
        )));
    }
    let mut request = kvm_clear_dirty_log {
        slot: 0,
        // The whole slot, from its first page: KVM's alignment rules
        // (multiples of 64 pages, or up to the slot's end) hold.
        num_pages: pages,
        first_page: 0,
        __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
            dirty_bitmap: bitmap.as_mut_ptr().cast(),
        },
    };
    // SAFETY: KVM_CLEAR_DIRTY_LOG on our VM's fd with a request that names
    // slot 0 and a bitmap of at least `pages` bits (checked above) that
    // lives across the call; KVM only reads the bitmap.
    let rc = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_CLEAR_DIRTY_LOG, &mut request) };
    if rc != 0 {
        return Err(VmError::Kvm {
            operation: "KVM_CLEAR_DIRTY_LOG",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sets_hold_what_was_inserted() {
        let mut set = PageSet::new(130);
        for page in [0, 63, 64, 129, 500] {
            set.insert(page);
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 63, 64, 129]);
        assert_eq!(set.len(), 4);
        assert!(set.contains(129) && !set.contains(1) && !set.contains(500));
        let mut other = PageSet::new(130);
        other.insert(5);
        set.union(&other);
        assert!(set.contains(5));
        set.clear();
        assert_eq!(set.len(), 0);
    }
}
