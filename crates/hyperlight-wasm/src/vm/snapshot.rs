//! Snapshots of a VM (guest memory and vCPU state) and restoring them.
//!
//! The host never trusts the guest to clean up after itself: it restores
//! state from a snapshot it took, by copying memory back and setting every
//! register the guest can change.
//!
//! What to copy back: KVM's dirty log (enabled on the memory slot) records
//! every page the guest wrote, the memory wrapper every page the host wrote.
//! The VM tracks the snapshot its memory last matched (its *base*) and which
//! pages changed since; restoring the base copies back only those pages, so
//! the cost of a reset grows with the pages a call touched, not with the size
//! of guest memory. Pages that were never written since the VM started are
//! still zero and need no copy; a snapshot holds a copy of every other page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs, kvm_vcpu_events};

use super::Vm;
use super::memory::PAGE;
use crate::error::{Error, Result};

/// The state of a VM at one moment.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Which VM it belongs to.
    vm_id: u64,
    /// Unique, for telling snapshots apart.
    id: u64,
    /// Every page that was not all zeros (or rather: ever written), by
    /// page index.
    pages: BTreeMap<usize, Box<[u8]>>,
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: kvm_fpu,
    events: kvm_vcpu_events,
}

impl Snapshot {
    /// Bytes of guest memory the snapshot holds.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.pages.len() * PAGE
    }
}

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

    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, word)| {
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

    pub(crate) fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }
}

static NEXT_SNAPSHOT: AtomicU64 = AtomicU64::new(1);

impl Vm {
    /// Collects the pages written since the last collection (by the guest,
    /// from KVM's dirty log, and by the host) into `since_base` and
    /// `touched`.
    fn collect_dirty(&mut self) -> Result<()> {
        let guest = self
            .vm
            .get_dirty_log(0, self.memory.size() as usize)
            .map_err(|source| Error::Kvm {
                operation: "KVM_GET_DIRTY_LOG",
                source,
            })?;
        let host = self.memory.take_host_dirty();
        for words in [&guest, &host] {
            self.since_base.union_words(words);
            self.touched.union_words(words);
        }
        Ok(())
    }

    /// Takes a snapshot of guest memory and the vCPU; the VM's memory matches
    /// it afterwards.
    pub(crate) fn snapshot(&mut self) -> Result<Arc<Snapshot>> {
        // Snapshots are taken at an `out`: finish it first, so that the
        // saved RIP is past it on every KVM.
        self.complete_pending_exit()?;
        self.collect_dirty()?;
        let mut pages = BTreeMap::new();
        for page in self.touched.iter() {
            let bytes = self
                .memory
                .read_vec((page * PAGE) as u64, PAGE)
                .map_err(|e| Error::UnexpectedExit {
                    exit: format!("snapshot of page {page}: {e}"),
                    rip: 0,
                })?;
            pages.insert(page, bytes.into_boxed_slice());
        }
        let kvm = |operation| move |source| Error::Kvm { operation, source };
        let snapshot = Arc::new(Snapshot {
            vm_id: self.id,
            id: NEXT_SNAPSHOT.fetch_add(1, Ordering::Relaxed),
            pages,
            regs: self.vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: self.vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            fpu: self.vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?,
            events: self
                .vcpu
                .get_vcpu_events()
                .map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
        });
        self.since_base.clear();
        self.base = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }

    /// Puts guest memory and the vCPU back to `snapshot`, which must have
    /// been taken of this VM.
    pub(crate) fn restore(&mut self, snapshot: &Arc<Snapshot>) -> Result<()> {
        if snapshot.vm_id != self.id {
            return Err(Error::SnapshotMismatch);
        }
        self.collect_dirty()?;
        // Pages that can differ from `snapshot`: those written since the
        // base, and, if the base is another snapshot, every page either of
        // the two holds.
        let mut pages = std::mem::take(&mut self.since_base);
        if let Some(base) = &self.base
            && base.id != snapshot.id
        {
            base.pages.keys().for_each(|p| pages.insert(*p));
            snapshot.pages.keys().for_each(|p| pages.insert(*p));
        }
        for page in pages.iter() {
            let result = match snapshot.pages.get(&page) {
                Some(bytes) => self
                    .memory
                    .write_untracked((page * PAGE) as u64, bytes)
                    .map(|_| ()),
                None => self.memory.zero_page_untracked(page),
            };
            result.map_err(|e| Error::UnexpectedExit {
                exit: format!("restore of page {page}: {e}"),
                rip: 0,
            })?;
        }
        pages.clear();
        self.since_base = pages;
        let kvm = |operation| move |source| Error::Kvm { operation, source };
        self.vcpu
            .set_regs(&snapshot.regs)
            .map_err(kvm("KVM_SET_REGS"))?;
        self.vcpu
            .set_sregs(&snapshot.sregs)
            .map_err(kvm("KVM_SET_SREGS"))?;
        self.vcpu
            .set_fpu(&snapshot.fpu)
            .map_err(kvm("KVM_SET_FPU"))?;
        self.vcpu
            .set_vcpu_events(&snapshot.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        self.base = Some(Arc::clone(snapshot));
        Ok(())
    }
}
