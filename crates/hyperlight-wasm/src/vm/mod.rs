//! The VMM: one KVM virtual machine with one vCPU per sandbox, no devices,
//! no interrupts, no operating system.
//!
//! - [`kvm`]: the process-wide `/dev/kvm` handle and its checks.
//! - [`layout`]: where everything lives in guest memory.
//! - [`memory`]: guest RAM and the only code that touches it.
//! - [`elf`]: the embedded guest image, checked.
//! - [`boot`]: page tables, GDT, TSS, IDT, exception stubs, initial registers.
//! - this file: creating the VM and the run loop, which turns every VM exit
//!   into either one of the protocol's three exits ([`GuestExit`]) or a typed
//!   error that says what the guest did.

pub(crate) mod boot;
pub(crate) mod elf;
pub(crate) mod error;
pub(crate) mod exits;
pub(crate) mod images;
pub(crate) mod interrupt;
mod kvm;
pub(crate) mod layout;
#[cfg(any(test, feature = "__limits"))]
#[cfg_attr(
    not(feature = "__limits"),
    allow(dead_code, reason = "only its own tests use it without the feature")
)]
pub mod limits;
mod mapping;
pub(crate) mod memory;
pub(crate) mod reaper;
mod run;
pub(crate) mod snapshot;
#[cfg(any(test, feature = "__fuzz"))]
pub(crate) mod testing;
pub(crate) mod timing;
pub(crate) mod tracking;
mod vcpu_state;
mod watchdog;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyperlight_wasm_protocol::boot::Region;
use kvm_bindings::{
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
    KVM_MEM_LOG_DIRTY_PAGES, Msrs, kvm_enable_cap, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, VcpuFd, VmFd};

use self::elf::GuestImage;
use self::error::{GuestFault, RunError, VmError};
use self::exits::ExitContext;
pub(crate) use self::exits::{Exit, GuestExit};
use self::images::ImageKey;
use self::interrupt::{InterruptHandle, Interrupts};
pub use self::kvm::is_hypervisor_present;
pub(crate) use self::kvm::{host_has_feature, kvm as kvm_handle};
use self::layout::{Layout, Sizes};
use self::memory::GuestMemory;
use self::run::KvmRun;
use self::tracking::Tracker;
use self::vcpu_state::VcpuCaps;

/// Where KVM may put the three pages it needs for real-mode emulation on
/// Intel hosts (above any guest memory we map).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// IA32_MTRR_DEF_TYPE: MTRRs enabled, default type write-back. Without it
/// guest memory is uncached on some (nested) KVMs and code runs ~1000x slower.
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

/// Limits on guest calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallLimits {
    /// How long one request may run.
    pub time_limit: Duration,
    /// How long [`InterruptHandle::kill`] waits for a call to stop.
    pub cancel_wait: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            time_limit: Duration::from_secs(1),
            cancel_wait: Duration::from_millis(100),
        }
    }
}

static NEXT_VM: AtomicU64 = AtomicU64::new(1);

/// One micro-VM: its vCPU, its VM and its memory. Fields drop in order: the
/// KVM objects before the memory KVM maps.
#[derive(Debug)]
pub(crate) struct Vm {
    interrupts: Interrupts,
    /// The vCPU's `kvm_run` page (mapped by `vcpu`), only ever accessed
    /// through raw pointers.
    run: KvmRun,
    vcpu: VcpuFd,
    vm: VmFd,
    memory: GuestMemory,
    sizes: Sizes,
    layout: Layout,
    /// Whether the VM runs the embedded guest (test VMs run raw images):
    /// only then are its states shared as images, and guest addresses named
    /// with the embedded guest's symbols.
    embedded_guest: bool,
    /// Identifies the VM (snapshots belong to one).
    id: u64,
    /// How the vCPU's state is read and written.
    caps: VcpuCaps,
    /// Which pages changed since when (see [`tracking`]).
    tracker: Tracker,
    /// Guest entries (`KVM_RUN`s) that ran guest code, for tests that count
    /// exits.
    entries: u64,
    /// Whether the last exit may have left KVM emulation to finish on the
    /// next entry (see `Vm::drain_pending_emulation`).
    pending_emulation: bool,
    /// Names the guest's state: a new number, unique in the process, each
    /// time memory and vCPU go back to a snapshot (see [`Vm::state_epoch`]).
    state_epoch: u64,
    /// Makes the next snapshots fail reading the vCPU (tests of the error
    /// paths).
    #[cfg(test)]
    pub(crate) fail_register_reads: bool,
}

impl Vm {
    /// Creates a VM for the embedded guest with zeroed memory and a vCPU in
    /// its reset state: ready for [`Vm::boot`] or [`Vm::adopt`]. Writes no
    /// guest memory, so it costs no more than KVM's own VM, vCPU and memory
    /// slot.
    pub(crate) fn new(sizes: &Sizes, limits: CallLimits) -> Result<Vm, VmError> {
        let handle = kvm::kvm()?;
        let layout = Layout::new(sizes)?;
        let memory = GuestMemory::new(layout.memory_size())?;

        let vm = create_vm(&handle.kvm)?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(VmError::kvm("KVM_SET_TSS_ADDR"))?;
        // Before the memory slot exists. Without it, every read of the
        // dirty log write-protects every page it reports.
        let manual_protect = handle.manual_dirty_log_protect
            && vm
                .enable_cap(&kvm_enable_cap {
                    cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                    args: [u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE), 0, 0, 0],
                    ..Default::default()
                })
                .is_ok();
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: memory.size(),
            userspace_addr: memory.host_address(),
            // KVM records the pages the guest writes, for snapshots.
            flags: KVM_MEM_LOG_DIRTY_PAGES,
        };
        // SAFETY: the region is our own mapping of exactly that size; it
        // outlives the VM (Vm drops its VmFd before its GuestMemory), stays
        // at that address (GuestMemory only ever replaces it in place) and
        // is not registered twice.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(VmError::kvm("KVM_SET_USER_MEMORY_REGION"))?;

        // KVM_GET/SET_XSAVE copy the VM's XSAVE size (KVM_CAP_XSAVE2, 0 on
        // kernels before it); the `kvm_xsave` we pass holds 4096 bytes.
        let xsave_size = vm.check_extension_int(Cap::Xsave2);
        let use_xsave = vm.check_extension(Cap::Xsave) && (0..=4096).contains(&xsave_size);
        let mut vcpu = vm.create_vcpu(0).map_err(VmError::kvm("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(&handle.cpuid)
            .map_err(VmError::kvm("KVM_SET_CPUID2"))?;
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            data: MTRR_ENABLE_WRITE_BACK,
            ..Default::default()
        }])
        .map_err(|e| VmError::Internal(format!("cannot build the MSR list for the vCPU: {e:?}")))?;
        let written = vcpu.set_msrs(&msrs).map_err(VmError::kvm("KVM_SET_MSRS"))?;
        if written != 1 {
            return Err(VmError::Unavailable {
                reason: String::from("KVM refused to set the MTRR default type"),
                source: None,
            });
        }

        let mmap_size = handle
            .kvm
            .get_vcpu_mmap_size()
            .map_err(VmError::kvm("KVM_GET_VCPU_MMAP_SIZE"))?;
        let run = KvmRun::new(&mut vcpu, mmap_size);
        let interrupts =
            Interrupts::new(run.immediate_exit(), limits.time_limit, limits.cancel_wait)?;
        let pages = memory.pages();
        Ok(Vm {
            interrupts,
            run,
            vcpu,
            vm,
            memory,
            sizes: *sizes,
            layout,
            embedded_guest: true,
            id: NEXT_VM.fetch_add(1, Ordering::Relaxed),
            caps: VcpuCaps {
                sync_regs: handle.sync_regs,
                use_xsave,
            },
            tracker: Tracker::new(pages, manual_protect),
            entries: 0,
            pending_emulation: false,
            state_epoch: next_state_epoch(),
            #[cfg(test)]
            fail_register_reads: false,
        })
    }

    /// Creates a VM running `image` (a test guest), stopped at its entry
    /// point.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn with_image(
        sizes: &Sizes,
        limits: CallLimits,
        image: &GuestImage<'_>,
    ) -> Result<Vm, VmError> {
        let mut vm = Vm::new(sizes, limits)?;
        vm.embedded_guest = false;
        vm.boot(image)?;
        Ok(vm)
    }

    /// Writes everything `image` needs into guest memory (page tables, GDT,
    /// TSS, IDT, the image itself) and points the vCPU at its entry point,
    /// in 64-bit mode at CPL3.
    pub(crate) fn boot(&mut self, image: &GuestImage<'_>) -> Result<(), VmError> {
        let pml4 =
            boot::write_guest_memory(&mut self.memory, &self.layout, image).map_err(|e| {
                VmError::Layout {
                    setting: "guest memory",
                    value: self.layout.memory_size(),
                    reason: format!("cannot be laid out: {e}"),
                }
            })?;
        let sregs = self
            .vcpu
            .get_sregs()
            .map_err(VmError::kvm("KVM_GET_SREGS"))?;
        self.vcpu
            .set_sregs(&boot::initial_sregs(sregs, pml4))
            .map_err(VmError::kvm("KVM_SET_SREGS"))?;
        self.vcpu
            .set_regs(&boot::initial_regs(image.entry, self.layout.stack))
            .map_err(VmError::kvm("KVM_SET_REGS"))?;
        Ok(())
    }

    /// [`Vm::boot`] with the embedded guest.
    pub(crate) fn boot_embedded(&mut self) -> Result<(), VmError> {
        let image = elf::embedded_guest().map_err(|e| VmError::GuestImage(e.to_string()))?;
        self.boot(image)
    }

    /// The key under which the state this VM reaches after loading
    /// `module` (`None`: after booting) can be shared with other VMs; `None`
    /// for VMs that do not run the embedded guest.
    pub(crate) fn image_key(&self, module: Option<[u8; 32]>) -> Option<ImageKey> {
        self.embedded_guest.then_some(ImageKey {
            sizes: self.sizes,
            module,
        })
    }

    /// The number of the guest's current state: it changes (to a number no
    /// VM of this process had) whenever the state is put back to a
    /// snapshot, so that what the host holds of the state before (the
    /// handles of a component's resources) can be told stale.
    pub(crate) fn state_epoch(&self) -> u64 {
        self.state_epoch
    }

    /// Starts a new state epoch (a restore or adoption is under way).
    pub(crate) fn new_state_epoch(&mut self) {
        self.state_epoch = next_state_epoch();
    }

    /// Guest entries so far (each ends in one exit).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Whether the VM runs the embedded guest, which [`Vm::boot_embedded`]
    /// writes (other VMs were given their image at creation).
    pub(crate) fn runs_embedded_guest(&self) -> bool {
        self.embedded_guest
    }

    /// Completes the exit the vCPU is stopped at, without running guest
    /// code: KVM finishes an `out` (moves RIP past it) only when `KVM_RUN`
    /// is entered again, and guest state is consistent only after that.
    /// Entering with `immediate_exit` set does exactly that and returns.
    /// Registers set through the `kvm_run` page are applied by that entry
    /// too.
    pub(crate) fn complete_pending_exit(&mut self) -> Result<(), VmError> {
        self.run.set_immediate_exit(true);
        let result = self.run.enter(&self.vcpu);
        self.run.set_immediate_exit(false);
        match result {
            Err(libc::EINTR | libc::EAGAIN) => {
                vcpu_state::apply_pending_registers(&self.vcpu, &self.run)
            }
            Err(errno) => Err(VmError::Kvm {
                operation: "KVM_RUN (completing the last exit)",
                source: std::io::Error::from_raw_os_error(errno),
            }),
            // KVM had more of the last exit's emulation to do than one
            // entry finishes (a long string I/O the guest started): the
            // guest's doing, reported as its fault.
            Ok(()) => Err(VmError::Guest(GuestFault::UnexpectedExit {
                exit: format!(
                    "{:?} while completing the last exit (string I/O the protocol does not use)",
                    self.run.exit()
                ),
                rip: self.vcpu.get_regs().map(|regs| regs.rip).unwrap_or(0),
            })),
        }
    }

    /// Guest memory.
    /// The vCPU, for tests that break its state on purpose.
    #[cfg(test)]
    pub(crate) fn vcpu(&self) -> &VcpuFd {
        &self.vcpu
    }

    pub(crate) fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Guest memory, for writing (the vCPU is not running).
    pub(crate) fn memory_mut(&mut self) -> &mut GuestMemory {
        &mut self.memory
    }

    /// Where the regions are.
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A handle that stops the call running on this VM from other threads.
    pub(crate) fn interrupt_handle(&self) -> InterruptHandle {
        self.interrupts.handle()
    }

    /// Marks the start of a guest request (its time limit starts now).
    ///
    /// # Errors
    ///
    /// When the time limit cannot be armed (the watchdog thread cannot
    /// start) or KVM refuses the signal mask; the request must not run.
    pub(crate) fn begin_call(&mut self) -> Result<(), VmError> {
        self.interrupts.begin(&self.vcpu)
    }

    /// Marks the end of a guest request.
    pub(crate) fn end_call(&mut self) {
        self.interrupts.end();
    }

    /// Runs the vCPU until the guest exits through one of the protocol's
    /// ports. Every other exit is a [`RunError::Fault`], and a cancelled
    /// call [`RunError::Cancelled`].
    pub(crate) fn run(&mut self) -> Result<GuestExit, RunError> {
        let exit = loop {
            self.interrupts.check()?;
            self.interrupts.set_in_guest(true);
            self.entries += 1;
            let result = timing::time(timing::Part::Run, || self.run.enter(&self.vcpu));
            self.interrupts.set_in_guest(false);
            match result {
                Ok(()) => break self.run.exit(),
                // A signal or `immediate_exit` interrupted KVM_RUN: the loop
                // checks whether the call must stop before going on.
                Err(libc::EINTR | libc::EAGAIN) => {
                    self.interrupts.consume_pending_kicks();
                    continue;
                }
                Err(errno) => {
                    return Err(VmError::Kvm {
                        operation: "KVM_RUN",
                        source: std::io::Error::from_raw_os_error(errno),
                    }
                    .into());
                }
            }
        };
        self.pending_emulation = exit.may_leave_emulation_pending();
        exits::classify(exit, self)
    }

    /// One `KVM_RUN` as it is, for the benchmarks' raw guests: the exit,
    /// or `None` when a signal interrupted it.
    #[cfg(any(test, feature = "__limits"))]
    pub(crate) fn enter_raw(&mut self) -> Result<Option<Exit>, VmError> {
        match self.run.enter(&self.vcpu) {
            Ok(()) => Ok(Some(self.run.exit())),
            Err(libc::EINTR | libc::EAGAIN) => Ok(None),
            Err(errno) => Err(VmError::Kvm {
                operation: "KVM_RUN",
                source: std::io::Error::from_raw_os_error(errno),
            }),
        }
    }
}

impl ExitContext for Vm {
    fn regs(&self) -> Result<kvm_regs, VmError> {
        self.vcpu.get_regs().map_err(VmError::kvm("KVM_GET_REGS"))
    }

    fn sregs(&self) -> Result<kvm_sregs, VmError> {
        self.vcpu.get_sregs().map_err(VmError::kvm("KVM_GET_SREGS"))
    }

    fn read(&self, addr: u64, out: &mut [u8]) -> bool {
        self.memory.read(addr, out).is_ok()
    }

    fn stack_guard(&self) -> Region {
        self.layout.stack_guard
    }

    fn symbol(&self, rip: u64) -> Option<String> {
        self.embedded_guest
            .then(|| elf::guest_symbol(rip))
            .flatten()
    }
}

/// `KVM_CREATE_VM`, retried when a signal interrupts it (the kernel can
/// return EINTR while it waits for other VMs to be torn down).
fn create_vm(kvm: &kvm_ioctls::Kvm) -> Result<VmFd, VmError> {
    loop {
        match kvm.create_vm() {
            Ok(vm) => return Ok(vm),
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(VmError::kvm("KVM_CREATE_VM")(e)),
        }
    }
}

/// A state epoch no VM of this process had (from 1; 0 is never one).
fn next_state_epoch() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use hyperlight_wasm_protocol::boot::IMAGE_BASE;

    use hyperlight_wasm_protocol::port::Port;

    use super::testing::{RawGuest, layout};
    use super::*;
    use crate::error::{FaultCause, GuestException};
    use crate::vm::layout::{BOOT_INFO, GDT};

    /// Runs a raw guest and returns the exception it raised.
    fn exception(guest: RawGuest) -> GuestException {
        match guest.vm().run() {
            Err(RunError::Fault(GuestFault::Exception(e))) => e,
            other => panic!("expected a guest exception, got {other:?}"),
        }
    }

    #[test]
    fn protocol_exits_are_reported_and_the_guest_resumes_after_each() {
        let mut vm = RawGuest::new()
            .out(Port::Done as u8)
            .out(Port::OutCall as u8)
            .out(Port::Abort as u8)
            .vm();
        assert_eq!(vm.run().unwrap(), GuestExit::Done);
        assert_eq!(vm.run().unwrap(), GuestExit::OutCall);
        assert_eq!(vm.run().unwrap(), GuestExit::Abort);
    }

    #[test]
    fn hlt_is_a_privileged_instruction() {
        let e = exception(RawGuest::new().code(&[0xf4]));
        assert_eq!((e.vector, e.rip), (13, IMAGE_BASE));
        assert_eq!(e.cause, FaultCause::PrivilegedInstruction);
        assert_eq!(e.error_code, Some(0));
    }

    #[test]
    fn ud2_is_an_invalid_opcode() {
        let e = exception(RawGuest::new().code(&[0x90, 0x0f, 0x0b]));
        assert_eq!((e.vector, e.rip, e.error_code), (6, IMAGE_BASE + 1, None));
        assert_eq!(e.cause, FaultCause::Other);
        assert!(e.to_string().contains("#UD"), "{e}");
    }

    #[test]
    fn ports_outside_the_protocol_and_in_are_refused() {
        for code in [
            &[0xb0, 0x00, 0xe6, 0x80][..],              // out 0x80, al
            &[0xb0, 0x00, 0xe6, Port::Exception as u8], // the stubs' port
            &[0xe4, 0x80],                              // in al, 0x80
            &[0x66, 0xba, 0x00, 0x10, 0xee],            // out 0x1000, al (beyond the bitmap)
        ] {
            let e = exception(RawGuest::new().code(code));
            assert_eq!(e.vector, 13, "{code:x?}");
            assert_eq!(e.cause, FaultCause::PrivilegedInstruction, "{code:x?}");
        }
    }

    #[test]
    fn in_from_a_protocol_port_is_an_unexpected_exit() {
        // The I/O bitmap cannot tell `in` from `out`: KVM sees the `in`.
        let mut vm = RawGuest::new().code(&[0xe4, Port::Done as u8]).vm();
        match vm.run() {
            Err(RunError::Fault(GuestFault::UnexpectedExit { exit, rip })) => {
                assert_eq!(rip, IMAGE_BASE);
                assert!(exit.contains("in from I/O port 0x10"), "{exit}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn int3_is_reported_as_an_exception() {
        // The gates are DPL0, so `int3` from CPL3 should raise #GP; some
        // KVMs deliver #BP anyway. Either way the host gets a report.
        let e = exception(RawGuest::new().code(&[0xcc]));
        assert!(matches!(e.vector, 3 | 13), "{e}");
    }

    #[test]
    fn a_null_pointer_read_is_a_page_fault() {
        let e = exception(RawGuest::new().mov_rax(0).code(&[0x8a, 0x00])); // mov al, [rax]
        assert_eq!(e.vector, 14);
        assert_eq!(e.fault_address, Some(0));
        assert_eq!(e.cause, FaultCause::NullPointer);
    }

    #[test]
    fn a_jump_to_null_is_a_page_fault() {
        let e = exception(RawGuest::new().mov_rax(0).code(&[0xff, 0xe0])); // jmp rax
        assert_eq!((e.vector, e.rip, e.cause), (14, 0, FaultCause::NullPointer));
    }

    #[test]
    fn a_write_below_the_stack_is_a_stack_overflow() {
        let guard = layout().stack_guard;
        let e = exception(RawGuest::new().mov_rax(guard.end() - 8).code(&[0x88, 0x00]));
        assert_eq!(e.cause, FaultCause::StackOverflow);
        assert_eq!(e.fault_address, Some(guard.end() - 8));
        // A real overflow: push until it faults.
        let e = exception(RawGuest::new().code(&[0x50, 0xeb, 0xfd])); // push rax; jmp back
        assert_eq!(e.cause, FaultCause::StackOverflow);
    }

    #[test]
    fn protected_and_unmapped_memory_fault() {
        // Writing the read-only BootInfo page.
        let e = exception(RawGuest::new().mov_rax(BOOT_INFO).code(&[0x88, 0x00]));
        assert_eq!(e.cause, FaultCause::ProtectionViolation);
        // Reading the supervisor-only GDT.
        let e = exception(RawGuest::new().mov_rax(GDT).code(&[0x8a, 0x00]));
        assert_eq!(e.cause, FaultCause::ProtectionViolation);
        // Executing the stack (no-execute).
        let stack = layout().stack.addr;
        let e = exception(RawGuest::new().mov_rax(stack).code(&[0xff, 0xe0]));
        assert_eq!((e.rip, e.cause), (stack, FaultCause::ProtectionViolation));
        // Reading the page tables, which are not mapped at all.
        let e = exception(RawGuest::new().mov_rax(0x1_0000).code(&[0x8a, 0x00]));
        assert_eq!(e.cause, FaultCause::UnmappedAddress);
        // Reading past the end of guest memory.
        let end = layout().memory_size();
        let e = exception(RawGuest::new().mov_rax(end).code(&[0x8a, 0x00]));
        assert_eq!(
            (e.fault_address, e.cause),
            (Some(end), FaultCause::UnmappedAddress)
        );
    }

    #[test]
    fn a_guest_without_usable_exception_handling_triple_faults() {
        let mut vm = RawGuest::new().code(&[0x0f, 0x0b]).vm();
        let mut sregs = vm.vcpu.get_sregs().unwrap();
        sregs.idt.limit = 0;
        vm.vcpu.set_sregs(&sregs).unwrap();
        assert!(matches!(
            vm.run(),
            Err(RunError::Fault(GuestFault::TripleFault { rip })) if rip == IMAGE_BASE
        ));
    }
}
