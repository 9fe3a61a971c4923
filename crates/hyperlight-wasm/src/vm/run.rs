//! The vCPU's `kvm_run` page and `KVM_RUN`, through raw pointers only.
//!
//! Other threads write `kvm_run.immediate_exit` while a call runs (to stop
//! it: see [`super::interrupt`]). kvm-ioctls reads and writes `kvm_run`
//! through a `&mut kvm_run` (in `VcpuFd::run`, `sync_regs_mut`, ...), and a
//! `&mut` while another thread writes any byte of the struct is a data race
//! in Rust's rules. So the VMM never uses those: [`KvmRun`] takes the
//! page's address once, when the vCPU is created, and from then on every
//! access is a raw read or write of one field (`immediate_exit` atomically).

use std::os::fd::AsRawFd;
use std::ptr::{NonNull, addr_of, addr_of_mut};
use std::sync::atomic::AtomicU8;

use kvm_bindings::{
    KVM_EXIT_IO, KVM_EXIT_IO_OUT, KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN, kvm_run, kvm_sync_regs,
};
use kvm_ioctls::VcpuFd;

use super::Exit;

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: libc::c_ulong = 0xae80;

/// A vCPU's `kvm_run` mapping (owned by its `VcpuFd`, which must outlive
/// this).
#[derive(Debug)]
pub(crate) struct KvmRun {
    run: NonNull<kvm_run>,
    /// Bytes mapped (`KVM_GET_VCPU_MMAP_SIZE`).
    size: usize,
}

// SAFETY: the pointer is to the vCPU's mapping, which lives as long as the
// VcpuFd next to this in `Vm` (or `RawVm`); accesses follow the rules in
// the module documentation whatever thread makes them.
unsafe impl Send for KvmRun {}

impl KvmRun {
    /// Takes `vcpu`'s `kvm_run` page, `size` bytes long. No other thread
    /// knows the vCPU yet, so the `&mut` that kvm-ioctls hands out here is
    /// the only reference, and it ends at once.
    pub(crate) fn new(vcpu: &mut VcpuFd, size: usize) -> KvmRun {
        let run = NonNull::from(vcpu.get_kvm_run());
        KvmRun { run, size }
    }

    /// `immediate_exit`, for atomic access from any thread.
    pub(crate) fn immediate_exit(&self) -> *mut u8 {
        // SAFETY: a field address inside the mapping; no reference made.
        unsafe { addr_of_mut!((*self.run.as_ptr()).immediate_exit) }
    }

    /// Sets `immediate_exit` (from the vCPU thread).
    pub(crate) fn set_immediate_exit(&self, set: bool) {
        // SAFETY: the byte lies in the live mapping, and every access to it
        // is atomic.
        unsafe { AtomicU8::from_ptr(self.immediate_exit()) }
            .store(u8::from(set), std::sync::atomic::Ordering::SeqCst);
    }

    /// Runs the vCPU until its next exit: `Ok` when KVM_RUN returned an
    /// exit, the errno otherwise (`EINTR` when a signal or `immediate_exit`
    /// stopped it).
    pub(crate) fn enter(&self, vcpu: &VcpuFd) -> Result<(), i32> {
        // SAFETY: KVM_RUN on our own vCPU fd takes no argument; KVM writes
        // only the kvm_run page, which we only ever access through raw
        // pointers.
        let rc = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_RUN, 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO))
        }
    }

    /// The exit KVM_RUN last returned with, copied out.
    pub(crate) fn exit(&self) -> Exit {
        let run = self.run.as_ptr();
        // SAFETY: plain reads of fields inside the live mapping, through raw
        // pointers (no reference to the struct is made); KVM does not write
        // them while the vCPU is stopped, and other threads only write
        // `immediate_exit`.
        unsafe {
            match addr_of!((*run).exit_reason).read() {
                KVM_EXIT_IO => {
                    let io = addr_of!((*run).__bindgen_anon_1.io).read();
                    if u32::from(io.direction) != KVM_EXIT_IO_OUT {
                        return Exit::In { port: io.port };
                    }
                    let len = usize::from(io.size) * io.count as usize;
                    let byte = usize::try_from(io.data_offset)
                        .ok()
                        .filter(|offset| len > 0 && *offset < self.size)
                        .map(|offset| run.cast::<u8>().add(offset).read());
                    Exit::Out {
                        port: io.port,
                        byte,
                        len,
                    }
                }
                KVM_EXIT_MMIO => Exit::Mmio {
                    gpa: addr_of!((*run).__bindgen_anon_1.mmio.phys_addr).read(),
                },
                KVM_EXIT_SHUTDOWN => Exit::Shutdown,
                other => Exit::Other(format!("KVM exit reason {other}")),
            }
        }
    }

    /// The registers of `kvm_run` that KVM applies at the next entry
    /// (`kvm_dirty_regs`).
    pub(crate) fn dirty_regs(&self) -> u64 {
        // SAFETY: as in `exit`.
        unsafe { addr_of!((*self.run.as_ptr()).kvm_dirty_regs).read() }
    }

    pub(crate) fn set_dirty_regs(&self, bits: u64) {
        // SAFETY: a plain write of a field of the live mapping; only the
        // vCPU thread writes it, while the vCPU is stopped.
        unsafe { addr_of_mut!((*self.run.as_ptr()).kvm_dirty_regs).write(bits) }
    }

    /// The synced registers (`kvm_run.s.regs`).
    pub(crate) fn sync_regs(&self) -> kvm_sync_regs {
        // SAFETY: as in `exit`; the union's `regs` member lies inside the
        // mapping (KVM_GET_VCPU_MMAP_SIZE covers all of `kvm_run`).
        unsafe { addr_of!((*self.run.as_ptr()).s.regs).read() }
    }

    pub(crate) fn set_sync_regs(&self, regs: &kvm_sync_regs) {
        // SAFETY: as in `set_dirty_regs`.
        unsafe { addr_of_mut!((*self.run.as_ptr()).s.regs).write(*regs) }
    }
}
