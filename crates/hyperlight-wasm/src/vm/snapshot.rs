//! Snapshots of a VM (guest memory and vCPU state), and putting a VM back to
//! one.
//!
//! A snapshot's memory is a sealed memfd: an immutable image that any number
//! of VMs can map copy-on-write. The post-runtime and post-load states are
//! snapshots shared by every sandbox of the same configuration (see
//! [`super::images`]), so a new sandbox maps one instead of booting its guest
//! or loading its module again, and only the pages it writes become its own.
//!
//! Two ways back to a snapshot, both done by the host without trusting the
//! guest:
//! - [`Vm::adopt`] maps the snapshot's image over guest memory: it copies
//!   nothing and drops every private page (the guest pays a fault the next
//!   time it touches one). Used to start from a shared image and to unload a
//!   module.
//! - [`Vm::restore`] copies back only the pages that can differ from the
//!   snapshot (the [`super::tracking::Tracker`] knows which) and keeps them mapped, so the
//!   cost of a per-call reset grows with the pages the call wrote, not with
//!   the size of guest memory.
//!
//! The vCPU's part is a [`VcpuState`].

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Vm;
use super::error::VmError;
use super::layout::Sizes;
use super::mapping::Mapping;
use super::memory::PAGE;
use super::timing::{Part, time};
use super::tracking::{Hot, PageSet};
use super::vcpu_state::VcpuState;

/// The state of a VM at one moment.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The VM whose private snapshot this is; `None` for a shared image,
    /// which any VM with the same region sizes may use.
    owner: Option<u64>,
    /// Unique, for telling snapshots apart.
    id: u64,
    /// The sealed memfd holding guest memory (holes read as zeros).
    file: OwnedFd,
    /// A read-only shared mapping of `file`, for copying pages back. Only
    /// the pages in `pages` are ever read through it (reading a hole would
    /// allocate a page in the image).
    view: Mapping,
    /// The region sizes of the VM it was taken of: only a VM laid out the
    /// same way can use it.
    sizes: Sizes,
    /// The pages `file` holds; every other page is zero.
    pub(crate) pages: PageSet,
    /// Where a VM maps `file` (first page, pages): the runs of `pages`,
    /// with short gaps merged. Elsewhere it maps zeroed anonymous memory, so
    /// that a guest touching a page the image does not hold never makes the
    /// (shared) image allocate it.
    runs: Vec<(usize, usize)>,
    /// The vCPU.
    vcpu: VcpuState,
}

impl Snapshot {
    /// Bytes of guest memory the snapshot holds.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.pages.len() * PAGE
    }

    /// Unique among the process's snapshots.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The image, for mapping.
    pub(crate) fn file(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The bytes of page `page`, or `None` if the snapshot has it as zeros.
    fn page(&self, page: usize) -> Option<&[u8]> {
        if !self.pages.contains(page) || (page + 1) * PAGE > self.view.len() {
            return None;
        }
        // SAFETY: the page lies inside the mapping (checked above), which is
        // readable, immutable (sealed: F_SEAL_WRITE) and lives as long as
        // `self`.
        Some(unsafe { std::slice::from_raw_parts(self.view.ptr().as_ptr().add(page * PAGE), PAGE) })
    }
}

static NEXT_SNAPSHOT: AtomicU64 = AtomicU64::new(1);

/// Gaps between the image's pages of at most this many pages (2 MiB) are
/// mapped from the image too: each mapping costs ~10 µs here (KVM
/// invalidates the range), and each such gap can cost the shared image at
/// most this many zero pages. The big holes (the unused heap, most of the
/// stack and of the buffers) stay anonymous. The default configuration's
/// images map in 3 runs.
const MAX_MERGED_GAP: usize = 512;

/// The runs of consecutive pages in `pages` (first page, pages), with gaps
/// of up to [`MAX_MERGED_GAP`] pages merged.
fn runs(pages: &PageSet) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for page in pages.iter() {
        match runs.last_mut() {
            Some((first, len)) if page <= *first + *len + MAX_MERGED_GAP => {
                *len = page + 1 - *first;
            }
            _ => runs.push((page, 1)),
        }
    }
    runs
}

/// Whom a new snapshot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// Only the VM it was taken of may go back to it (a user's snapshot).
    Private,
    /// Any VM with the same region sizes may start from it (an image of a
    /// state every sandbox of a configuration reaches the same way).
    Shared,
}

/// Creates an empty memfd of `size` bytes that can be sealed.
fn create_image_file(size: usize) -> Result<OwnedFd, VmError> {
    // SAFETY: the name is a NUL-terminated string; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"hyperlight-wasm-snapshot".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(VmError::last_os("create a snapshot image (memfd_create)"));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(size).map_err(|_| VmError::Os {
        operation: "size a snapshot image",
        source: std::io::Error::other("guest memory is larger than a file can be"),
    })?;
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::ftruncate(file.as_raw_fd(), len) } != 0 {
        return Err(VmError::last_os("size a snapshot image (ftruncate)"));
    }
    Ok(file)
}

/// Seals `file` against every change and maps it read-only.
fn seal_and_view(file: &OwnedFd, size: usize) -> Result<Mapping, VmError> {
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(VmError::last_os("seal a snapshot image (F_ADD_SEALS)"));
    }
    Mapping::read_only(file.as_fd(), size)
}

impl Vm {
    /// Takes a snapshot of guest memory and the vCPU; the VM's memory matches
    /// it afterwards.
    pub(crate) fn snapshot(&mut self, sharing: Sharing) -> Result<Arc<Snapshot>, VmError> {
        // Snapshots are taken at an `out`: finish it first, so that the
        // saved RIP is past it on every KVM.
        self.complete_pending_exit()?;
        self.tracker
            .collect(&self.vm, &mut self.memory, Hot::Keep)?;
        // The vCPU first: nothing to undo if KVM fails here.
        #[cfg(test)]
        if self.fail_register_reads {
            return Err(VmError::Kvm {
                operation: "KVM_GET_REGS",
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        let vcpu = VcpuState::capture(&self.vcpu, self.caps)?;
        let pages = self.tracker.snapshot_pages();
        let size = self.memory.byte_len();
        let file = create_image_file(size)?;
        self.memory
            .copy_pages_to(file.as_fd(), pages.iter())
            .map_err(|source| VmError::Os {
                operation: "write a snapshot image",
                source,
            })?;
        let view = seal_and_view(&file, size)?;
        let snapshot = Arc::new(Snapshot {
            owner: (sharing == Sharing::Private).then_some(self.id),
            id: NEXT_SNAPSHOT.fetch_add(1, Ordering::Relaxed),
            file,
            view,
            sizes: self.sizes,
            runs: runs(&pages),
            pages,
            vcpu,
        });
        self.tracker.taken(&snapshot);
        Ok(snapshot)
    }

    /// Whether this VM may go back to `snapshot`.
    fn check_compatible(&self, snapshot: &Snapshot) -> Result<(), VmError> {
        let owner_ok = snapshot.owner.is_none_or(|owner| owner == self.id);
        if !owner_ok
            || snapshot.sizes != self.sizes
            || snapshot.view.len() as u64 != self.memory.size()
            || snapshot.vcpu.uses_xsave() != self.caps.use_xsave
        {
            return Err(VmError::SnapshotMismatch);
        }
        Ok(())
    }

    /// Maps `snapshot`'s image over guest memory and sets the vCPU to its
    /// state. Copies nothing: every page the VM had written is dropped, and
    /// the guest sees the image again.
    pub(crate) fn adopt(&mut self, snapshot: &Arc<Snapshot>) -> Result<(), VmError> {
        self.check_compatible(snapshot)?;
        self.new_state_epoch();
        self.drain_pending_emulation()?;
        self.tracker.forget_for(&self.vm, &mut self.memory)?;
        self.memory.map_image(snapshot.file(), &snapshot.runs)?;
        snapshot.vcpu.apply(&self.vcpu, &self.run, self.caps)?;
        self.tracker.adopted(snapshot);
        Ok(())
    }

    /// Puts guest memory and the vCPU back to `snapshot`, copying back only
    /// the pages that can differ from it.
    pub(crate) fn restore(&mut self, snapshot: &Arc<Snapshot>) -> Result<(), VmError> {
        self.check_compatible(snapshot)?;
        self.new_state_epoch();
        let Some(base) = self.tracker.base().cloned() else {
            // Memory never matched a snapshot: nothing tells which pages
            // differ, so start over from the image.
            return self.adopt(snapshot);
        };
        time(Part::Drain, || self.drain_pending_emulation())?;
        time(Part::DirtyLog, || {
            self.tracker.collect(&self.vm, &mut self.memory, Hot::Grow)
        })?;
        time(Part::PageCopies, || {
            for page in self.tracker.differing_from(&base, snapshot).iter() {
                match snapshot.page(page) {
                    Some(bytes) => {
                        self.memory.write_untracked((page * PAGE) as u64, bytes)?;
                    }
                    None => self.memory.zero_page_untracked(page)?,
                }
            }
            Ok::<(), VmError>(())
        })?;
        snapshot.vcpu.apply(&self.vcpu, &self.run, self.caps)?;
        time(Part::Bookkeeping, || self.tracker.restored(snapshot));
        Ok(())
    }

    /// Completes what KVM left pending at the last exit, if that exit could
    /// leave emulation pending (string or multi-byte I/O, `in`, MMIO): KVM
    /// would otherwise finish it on the next entry, after the registers a
    /// reset set, and write guest memory or registers from the old call into
    /// the new one. Done with `immediate_exit`, so no guest code runs; what
    /// it writes to memory is in the dirty log.
    fn drain_pending_emulation(&mut self) -> Result<(), VmError> {
        if self.pending_emulation {
            self.complete_pending_exit()?;
            self.pending_emulation = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hyperlight_wasm_protocol::boot::IMAGE_BASE;
    use hyperlight_wasm_protocol::port::Port;

    use super::*;
    use crate::vm::GuestExit;
    use crate::vm::error::{GuestFault, RunError};
    use crate::vm::testing::RawGuest;

    /// Counts in RBX, copies it to XMM0, clears FS (which some KVMs do not
    /// report back) and sets MXCSR to round toward zero, then exits; loops.
    fn counting_guest() -> RawGuest {
        let body: &[&[u8]] = &[
            &[0x48, 0xff, 0xc3],                         // inc rbx
            &[0x66, 0x48, 0x0f, 0x6e, 0xc3],             // movq xmm0, rbx
            &[0x31, 0xc0, 0x8e, 0xe0],                   // xor eax, eax; mov fs, eax
            &[0xc7, 0x44, 0x24, 0xf8, 0x80, 0x7f, 0, 0], // mov dword [rsp - 8], 0x7f80
            &[0x0f, 0xae, 0x54, 0x24, 0xf8],             // ldmxcsr [rsp - 8]
            &[0xe6, Port::Done as u8],                   // out Done, al
        ];
        let body = body.concat();
        let back = -(body.len() as i8 + 2) as u8;
        RawGuest::new().code(&body).code(&[0xeb, back]) // jmp to the start
    }

    /// XSAVE area offsets (standard format).
    const MXCSR: usize = 24;
    const XMM0: usize = 160;
    const XSTATE_BV: usize = 512;
    const YMM1_HIGH: usize = 576 + 16;

    fn xsave_bytes(vm: &Vm) -> Vec<u8> {
        let xsave = vm.vcpu.get_xsave().unwrap();
        xsave.region.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// RIP, RBX, FS, XMM0, MXCSR (after completing any pending exit).
    fn state(vm: &mut Vm) -> (u64, u64, u16, [u8; 16], u32) {
        vm.complete_pending_exit().unwrap();
        let regs = vm.vcpu.get_regs().unwrap();
        let sregs = vm.vcpu.get_sregs().unwrap();
        let (xmm0, mxcsr) = if vm.caps.use_xsave {
            let x = xsave_bytes(vm);
            let mut xmm0 = [0u8; 16];
            xmm0.copy_from_slice(&x[XMM0..XMM0 + 16]);
            let mxcsr = u32::from_le_bytes([x[MXCSR], x[MXCSR + 1], x[MXCSR + 2], x[MXCSR + 3]]);
            (xmm0, mxcsr)
        } else {
            let fpu = vm.vcpu.get_fpu().unwrap();
            (fpu.xmm[0], fpu.mxcsr)
        };
        (regs.rip, regs.rbx, sregs.fs.selector, xmm0, mxcsr)
    }

    #[test]
    fn a_snapshot_that_fails_leaks_no_mapping() {
        if !crate::vm::testing::in_child_process(
            "vm::snapshot::tests::a_snapshot_that_fails_leaks_no_mapping",
        ) {
            return;
        }
        use crate::vm::testing::snapshot_mappings;
        let mut vm = RawGuest::new().spin().vm();
        let before = snapshot_mappings();
        let kept = vm.snapshot(Sharing::Private).unwrap();
        assert_eq!(snapshot_mappings(), before + 1);
        vm.fail_register_reads = true;
        for _ in 0..10 {
            assert!(matches!(
                vm.snapshot(Sharing::Private),
                Err(VmError::Kvm { .. })
            ));
        }
        assert_eq!(snapshot_mappings(), before + 1);
        // The VM holds the last snapshot it took too.
        drop(vm);
        drop(kept);
        assert_eq!(snapshot_mappings(), before);
    }

    #[test]
    fn string_io_left_pending_does_not_reach_past_a_restore() {
        let target = crate::vm::testing::layout().heap.addr + 0x5000;
        let guest = RawGuest::new()
            .code(&[0xb0, 0xaa, 0xe6, Port::Done as u8]) // mov al, 0xaa; out Done, al
            .mov_rax(target)
            .code(&[0x48, 0x89, 0xc7]) // mov rdi, rax
            .code(&[0x48, 0xc7, 0xc1, 4, 0, 0, 0]) // mov rcx, 4
            .code(&[0x66, 0xba, Port::Done as u8, 0]) // mov dx, Done
            .code(&[0xf3, 0x6c]) // rep insb: KVM finishes it on the next entry
            .out(Port::Abort as u8);
        let mut vm = guest.vm();
        let start = vm.snapshot(Sharing::Private).unwrap();
        for _ in 0..3 {
            assert_eq!(vm.run().unwrap(), GuestExit::Done);
            match vm.run() {
                Err(RunError::Fault(GuestFault::UnexpectedExit { exit, .. })) => {
                    assert!(exit.contains("in from"), "{exit}")
                }
                other => panic!("{other:?}"),
            }
            vm.restore(&start).unwrap();
            // Whatever KVM had left to do was done before the copy-back:
            // the guest starts over, and the bytes the `ins` would have
            // stored are not there.
            assert_eq!(state(&mut vm).0, IMAGE_BASE);
            assert_eq!(vm.memory.read_u64(target).unwrap(), 0);
        }
    }

    /// Bytes the file of `snapshot` has allocated.
    fn allocated(snapshot: &Snapshot) -> u64 {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: fstat fills `stat` for a descriptor we hold.
        let rc = unsafe { libc::fstat(snapshot.file().as_raw_fd(), stat.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: fstat succeeded, so `stat` is initialised.
        unsafe { stat.assume_init() }.st_blocks as u64 * 512
    }

    #[test]
    fn a_guest_touching_what_an_image_does_not_hold_does_not_grow_it() {
        let far = crate::vm::testing::layout().heap.addr + 0x10_0000;
        let mut vm = RawGuest::new()
            .mov_rax(far)
            .code(&[0x48, 0xc7, 0xc1, 64, 0, 0, 0]) // mov rcx, 64
            .code(&[0x8a, 0x10]) // loop: mov dl, [rax]
            .code(&[0x48, 0x05, 0x00, 0x10, 0x00, 0x00]) // add rax, 0x1000
            .code(&[0x48, 0xff, 0xc9]) // dec rcx
            .code(&[0x75, 0xf3]) // jnz loop
            .code(&[0x88, 0x10]) // mov [rax], dl: and one write
            .out(Port::Done as u8)
            .vm();
        let image = vm.snapshot(Sharing::Shared).unwrap();
        let before = allocated(&image);
        assert!(before > 0);
        vm.adopt(&image).unwrap();
        assert_eq!(vm.run().unwrap(), GuestExit::Done);
        assert_eq!(allocated(&image), before);
        assert_eq!(image.runs, runs(&image.pages));
        assert!(!image.runs.is_empty());
    }

    #[test]
    fn runs_merge_short_gaps_only() {
        let mut pages = PageSet::new(4096);
        for page in [3, 4, 5, 7, 600, 601, 1113, 1700] {
            pages.insert(page);
        }
        // 7 -> 600: a gap of 592 pages; 601 -> 1113: 511; 1113 -> 1700: 586.
        assert_eq!(runs(&pages), vec![(3, 5), (600, 514), (1700, 1)]);
        assert_eq!(runs(&PageSet::new(64)), Vec::new());
    }

    #[test]
    fn restore_resets_the_avx_upper_halves() {
        let mut vm = RawGuest::new()
            .code(&[0xc5, 0xf5, 0x76, 0xc9]) // vpcmpeqd ymm1, ymm1, ymm1 (all ones)
            .out(Port::Done as u8)
            .vm();
        if !vm.caps.use_xsave {
            return; // KVM_SET_FPU cannot reach YMM; this KVM has no XSAVE.
        }
        let start = vm.snapshot(Sharing::Private).unwrap();
        match vm.run() {
            Ok(GuestExit::Done) => {}
            // No AVX in the guest (CR4.OSXSAVE is off on KVMs that honour
            // it): there is no upper half to carry anything.
            Err(RunError::Fault(GuestFault::Exception(e))) if e.vector == 6 => return,
            other => panic!("{other:?}"),
        }
        vm.complete_pending_exit().unwrap();
        let used = xsave_bytes(&vm);
        assert_ne!(used[XSTATE_BV] & 4, 0, "AVX state in use");
        assert_eq!(&used[YMM1_HIGH..YMM1_HIGH + 16], &[0xff; 16]);
        vm.restore(&start).unwrap();
        vm.complete_pending_exit().unwrap();
        let reset = xsave_bytes(&vm);
        let high_is_zero = reset[YMM1_HIGH..YMM1_HIGH + 16].iter().all(|b| *b == 0);
        assert!(
            reset[XSTATE_BV] & 4 == 0 || high_is_zero,
            "YMM1's upper half survived"
        );
    }

    #[test]
    fn restore_resets_every_register_the_guest_changed() {
        for sync_regs in [true, false] {
            let mut vm = counting_guest().vm();
            vm.caps.sync_regs &= sync_regs;
            let start = vm.snapshot(Sharing::Private).unwrap();
            let initial = state(&mut vm);
            assert_eq!(initial.0, IMAGE_BASE);
            assert_eq!((initial.1, initial.3), (0, [0; 16]));
            assert_ne!(initial.2, 0, "FS holds the user data selector");
            assert_eq!(initial.4, 0x1f80, "MXCSR starts at its reset value");
            for _ in 0..2 {
                assert_eq!(vm.run().unwrap(), GuestExit::Done);
            }
            let mut xmm = [0u8; 16];
            xmm[0] = 2;
            let (_, rbx, _, xmm0, mxcsr) = state(&mut vm);
            assert_eq!((rbx, xmm0), (2, xmm));
            if vm.caps.use_xsave {
                // KVM_SET_FPU ignores MXCSR: only XSAVE can reset it.
                assert_eq!(mxcsr, 0x7f80);
            }
            // Without XSAVE, KVM_SET_FPU leaves MXCSR as it is.
            let use_xsave = vm.caps.use_xsave;
            let comparable = |(rip, rbx, fs, xmm0, mxcsr): (u64, u64, u16, [u8; 16], u32)| {
                (rip, rbx, fs, xmm0, Some(mxcsr).filter(|_| use_xsave))
            };
            vm.restore(&start).unwrap();
            let restored = state(&mut vm);
            assert_eq!(
                comparable(restored),
                comparable(initial),
                "sync_regs: {sync_regs}"
            );
            // And the guest goes on from there.
            assert_eq!(vm.run().unwrap(), GuestExit::Done);
            assert_eq!(state(&mut vm).1, 1);
            // Adopting does the same.
            vm.adopt(&start).unwrap();
            let adopted = state(&mut vm);
            assert_eq!(
                comparable(adopted),
                comparable(initial),
                "sync_regs: {sync_regs}"
            );
        }
    }
}
