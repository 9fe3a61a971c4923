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
pub(crate) mod images;
pub(crate) mod interrupt;
mod kvm;
pub(crate) mod layout;
pub mod limits;
pub(crate) mod memory;
pub(crate) mod reaper;
mod run;
pub(crate) mod snapshot;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyperlight_wasm_protocol::port::Port;
use kvm_bindings::{
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
    KVM_MEM_LOG_DIRTY_PAGES, Msrs, kvm_enable_cap, kvm_msr_entry, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, VcpuFd, VmFd};

use self::boot::EXCEPTION_VECTORS;
use self::elf::GuestImage;
use self::images::ImageKey;
use self::interrupt::{InterruptHandle, Interrupts};
pub use self::kvm::is_hypervisor_present;
pub(crate) use self::kvm::kvm as kvm_handle;
use self::layout::{EXCEPTION_STACK, EXCEPTION_STUBS, Layout, PAGE_SIZE, STUB_SIZE, Sizes};
use self::memory::GuestMemory;
use self::run::KvmRun;
use self::snapshot::{PageSet, Snapshot};
use crate::error::{Error, FaultCause, GuestException, Result};

/// Where KVM may put the three pages it needs for real-mode emulation on
/// Intel hosts (above any guest memory we map).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// IA32_MTRR_DEF_TYPE: MTRRs enabled, default type write-back. Without it
/// guest memory is uncached on some (nested) KVMs and code runs ~1000x slower.
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

/// The ways the guest hands control back that the protocol allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuestExit {
    /// [`Port::Done`]: a response is in the output buffer.
    Done,
    /// [`Port::OutCall`]: the guest needs the host.
    OutCall,
    /// [`Port::Abort`]: the guest stopped for good.
    Abort,
}

/// A VM exit, copied out of the vCPU's shared `kvm_run` page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exit {
    Out {
        port: u16,
        byte: Option<u8>,
        len: usize,
    },
    In {
        port: u16,
    },
    Shutdown,
    Mmio {
        gpa: u64,
    },
    Other(String),
}

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
    /// Whether snapshots set registers through the `kvm_run` page.
    sync_regs: bool,
    /// Whether KVM write-protects pages for the dirty log only when asked
    /// (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`), which lets hot pages stay
    /// writable (see [`snapshot`]).
    manual_protect: bool,
    /// Guest entries (`KVM_RUN`s) that ran guest code, for tests that count
    /// exits.
    entries: u64,
    /// Whether the last exit may have left KVM emulation to finish on the
    /// next entry (see `Vm::drain_pending_emulation`).
    pending_emulation: bool,
    /// Whether the vCPU's floating-point state is saved and set as a whole
    /// XSAVE area (else x87 and XMM only, through KVM_GET/SET_FPU).
    use_xsave: bool,
    /// Pages left writable and reported dirty on every read of the log: a
    /// reset copies them back every time instead of the guest faulting on
    /// them every call. At most [`snapshot::MAX_HOT_PAGES`].
    hot: PageSet,
    /// The image guest memory is mapped from (`None`: anonymous memory that
    /// started all zeros).
    backing: Option<Arc<Snapshot>>,
    /// Every page written since memory was mapped.
    touched: PageSet,
    /// Pages written since memory last matched `base`.
    since_base: PageSet,
    /// The snapshot memory matched when it was last taken or restored.
    base: Option<Arc<Snapshot>>,
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
    pub(crate) fn new(sizes: &Sizes, limits: CallLimits) -> Result<Vm> {
        let handle = kvm::kvm()?;
        let layout = Layout::new(sizes)?;
        let memory = GuestMemory::new(layout.memory_size())?;

        let kvm_err = |operation| move |source| Error::Kvm { operation, source };
        let vm = create_vm(&handle.kvm)?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
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
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;

        // KVM_GET/SET_XSAVE copy the VM's XSAVE size (KVM_CAP_XSAVE2, 0 on
        // kernels before it); the `kvm_xsave` we pass holds 4096 bytes.
        let xsave_size = vm.check_extension_int(Cap::Xsave2);
        let use_xsave = vm.check_extension(Cap::Xsave) && (0..=4096).contains(&xsave_size);
        let mut vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(&handle.cpuid)
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            data: MTRR_ENABLE_WRITE_BACK,
            ..Default::default()
        }])
        .map_err(|e| Error::HypervisorUnavailable {
            reason: format!("cannot build the MSR list for the vCPU: {e:?}"),
            source: None,
        })?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if written != 1 {
            return Err(Error::HypervisorUnavailable {
                reason: String::from("KVM refused to set the MTRR default type"),
                source: None,
            });
        }

        let mmap_size = handle
            .kvm
            .get_vcpu_mmap_size()
            .map_err(kvm_err("KVM_GET_VCPU_MMAP_SIZE"))?;
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
            sync_regs: handle.sync_regs,
            manual_protect,
            entries: 0,
            pending_emulation: false,
            use_xsave,
            hot: PageSet::new(pages),
            backing: None,
            touched: PageSet::new(pages),
            since_base: PageSet::new(pages),
            base: None,
            #[cfg(test)]
            fail_register_reads: false,
        })
    }

    /// Creates a VM running `image` (a test guest), stopped at its entry
    /// point.
    #[cfg(test)]
    pub(crate) fn with_image(
        sizes: &Sizes,
        limits: CallLimits,
        image: &GuestImage<'_>,
    ) -> Result<Vm> {
        let mut vm = Vm::new(sizes, limits)?;
        vm.embedded_guest = false;
        vm.boot(image)?;
        Ok(vm)
    }

    /// Writes everything `image` needs into guest memory (page tables, GDT,
    /// TSS, IDT, the image itself) and points the vCPU at its entry point,
    /// in 64-bit mode at CPL3.
    pub(crate) fn boot(&mut self, image: &GuestImage<'_>) -> Result<()> {
        let pml4 =
            boot::write_guest_memory(&mut self.memory, &self.layout, image).map_err(|e| {
                Error::InvalidConfiguration {
                    setting: "guest memory",
                    value: self.layout.memory_size(),
                    reason: format!("cannot be laid out: {e}"),
                }
            })?;
        let kvm_err = |operation| move |source| Error::Kvm { operation, source };
        let sregs = self.vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        self.vcpu
            .set_sregs(&boot::initial_sregs(sregs, pml4))
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        self.vcpu
            .set_regs(&boot::initial_regs(image.entry, self.layout.stack))
            .map_err(kvm_err("KVM_SET_REGS"))?;
        Ok(())
    }

    /// [`Vm::boot`] with the embedded guest.
    pub(crate) fn boot_embedded(&mut self) -> Result<()> {
        let image = elf::embedded_guest().map_err(|e| Error::InvalidGuestImage {
            message: e.to_string(),
        })?;
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
    pub(crate) fn complete_pending_exit(&mut self) -> Result<()> {
        self.run.set_immediate_exit(true);
        let result = self.run.enter(&self.vcpu);
        self.run.set_immediate_exit(false);
        match result {
            Err(libc::EINTR | libc::EAGAIN) => self.apply_pending_registers(),
            Err(errno) => Err(Error::Kvm {
                operation: "KVM_RUN (completing the last exit)",
                source: kvm_ioctls::Error::new(errno),
            }),
            Ok(()) => Err(Error::UnexpectedExit {
                exit: format!("{:?} while completing the last exit", self.run.exit()),
                rip: self.rip()?,
            }),
        }
    }

    /// Guest memory.
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
    pub(crate) fn begin_call(&mut self) -> Result<()> {
        self.interrupts.begin(&self.vcpu)
    }

    /// Marks the end of a guest request.
    pub(crate) fn end_call(&mut self) {
        self.interrupts.end();
    }

    /// Runs the vCPU until the guest exits through one of the protocol's
    /// ports. Every other exit becomes an error, and a cancelled call
    /// [`Error::ExecutionCancelledByHost`].
    pub(crate) fn run(&mut self) -> Result<GuestExit> {
        let exit = loop {
            self.interrupts.check()?;
            self.interrupts.set_in_guest(true);
            self.entries += 1;
            let result = self.run.enter(&self.vcpu);
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
                    return Err(Error::Kvm {
                        operation: "KVM_RUN",
                        source: kvm_ioctls::Error::new(errno),
                    });
                }
            }
        };
        // Only a one-byte `out` leaves nothing for KVM to finish but moving
        // RIP past it (which KVM skips when RIP was set since).
        self.pending_emulation = !matches!(exit, Exit::Out { len: 1, .. });
        self.classify(exit)
    }

    /// One `KVM_RUN` as it is, for the benchmarks' raw guests: the exit,
    /// or `None` when a signal interrupted it.
    pub(crate) fn enter_raw(&mut self) -> Result<Option<Exit>> {
        match self.run.enter(&self.vcpu) {
            Ok(()) => Ok(Some(self.run.exit())),
            Err(libc::EINTR | libc::EAGAIN) => Ok(None),
            Err(errno) => Err(Error::Kvm {
                operation: "KVM_RUN",
                source: kvm_ioctls::Error::new(errno),
            }),
        }
    }

    fn classify(&self, exit: Exit) -> Result<GuestExit> {
        match exit {
            Exit::Out { port, len, .. } if len != 1 => Err(Error::UnexpectedExit {
                exit: format!(
                    "{len}-byte or string out to I/O port {port:#x} (the protocol uses one-byte out)"
                ),
                rip: self.rip()?,
            }),
            Exit::Out { port, byte, .. } => match Port::try_from(port) {
                Ok(Port::Done) => Ok(GuestExit::Done),
                Ok(Port::OutCall) => Ok(GuestExit::OutCall),
                Ok(Port::Abort) => Ok(GuestExit::Abort),
                Ok(Port::Exception) => Err(self.exception(byte)?),
                Err(unknown) => Err(Error::UnexpectedExit {
                    exit: unknown.to_string(),
                    rip: self.rip()?,
                }),
            },
            Exit::In { port } => Err(Error::UnexpectedExit {
                exit: format!("in from I/O port {port:#x}"),
                rip: self.rip()?,
            }),
            Exit::Shutdown => Err(Error::TripleFault { rip: self.rip()? }),
            Exit::Mmio { gpa } => Err(Error::GuestMemoryViolation {
                gpa,
                rip: self.rip()?,
            }),
            Exit::Other(exit) => Err(Error::UnexpectedExit {
                exit,
                rip: self.rip()?,
            }),
        }
    }

    fn rip(&self) -> Result<u64> {
        self.vcpu
            .get_regs()
            .map(|regs| regs.rip)
            .map_err(|source| Error::Kvm {
                operation: "KVM_GET_REGS",
                source,
            })
    }

    /// Decodes an exception report from a CPL0 stub: the vector, and the
    /// CPU's exception frame on the exception stack.
    fn exception(&self, byte: Option<u8>) -> Result<Error> {
        let regs = self.vcpu.get_regs().map_err(|source| Error::Kvm {
            operation: "KVM_GET_REGS",
            source,
        })?;
        let sregs = self.vcpu.get_sregs().map_err(|source| Error::Kvm {
            operation: "KVM_GET_SREGS",
            source,
        })?;
        // Only the stubs can write this port (CPL3 may not): check that this
        // exit came from the stub of the vector it names, right after its
        // `out` instruction.
        let vector = byte.filter(|v| *v < EXCEPTION_VECTORS);
        // The stub is `mov al, v` (2 bytes), `out imm8, al` (2 bytes). KVM
        // reports RIP on the `out` (mainline KVM advances it on the next
        // KVM_RUN) or past it (some KVMs advance it before the exit).
        let from_stub = vector.is_some_and(|v| {
            let out = EXCEPTION_STUBS + u64::from(v) * STUB_SIZE + 2;
            (regs.rip == out || regs.rip == out + 2) && sregs.cs.selector == 0x08
        });
        let (Some(vector), true) = (vector, from_stub) else {
            return Ok(Error::UnexpectedExit {
                exit: format!("exception report {byte:?} from outside the exception stubs"),
                rip: regs.rip,
            });
        };

        // The frame: [error code], RIP, CS, RFLAGS, RSP, SS.
        let has_error_code = matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30);
        let words = if has_error_code { 6 } else { 5 };
        if !EXCEPTION_STACK.contains_range(regs.rsp, words * 8) {
            return Ok(Error::UnexpectedExit {
                exit: format!("exception {vector} with a corrupt exception stack"),
                rip: regs.rip,
            });
        }
        let Ok(frame) = self.memory.read_vec(regs.rsp, words as usize * 8) else {
            return Ok(Error::UnexpectedExit {
                exit: format!("exception {vector} with an unreadable exception stack"),
                rip: regs.rip,
            });
        };
        let word = |i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&frame[i * 8..i * 8 + 8]);
            u64::from_le_bytes(bytes)
        };
        let (error_code, rip) = if has_error_code {
            (Some(word(0)), word(1))
        } else {
            (None, word(0))
        };
        let fault_address = (vector == 14).then_some(sregs.cr2);
        let cause = self.fault_cause(vector, error_code, fault_address, rip);
        Ok(Error::GuestException(GuestException {
            vector,
            error_code,
            rip,
            fault_address,
            cause,
            function: self
                .embedded_guest
                .then(|| elf::guest_symbol(rip))
                .flatten(),
        }))
    }

    fn fault_cause(
        &self,
        vector: u8,
        error_code: Option<u64>,
        addr: Option<u64>,
        rip: u64,
    ) -> FaultCause {
        match (vector, addr) {
            (14, Some(addr)) if addr < PAGE_SIZE => FaultCause::NullPointer,
            (14, Some(addr)) if self.layout.stack_guard.contains_range(addr, 1) => {
                FaultCause::StackOverflow
            }
            // Error code bit 0: the page was present, so its protection
            // forbade the access.
            (14, _) if error_code.is_some_and(|e| e & 1 != 0) => FaultCause::ProtectionViolation,
            (14, _) => FaultCause::UnmappedAddress,
            (13, _) if self.is_privileged_instruction(rip) => FaultCause::PrivilegedInstruction,
            _ => FaultCause::Other,
        }
    }

    /// Whether the instruction at `rip` is one CPL3 may not execute.
    fn is_privileged_instruction(&self, rip: u64) -> bool {
        let mut op = [0u8; 2];
        if self.memory.read(rip, &mut op).is_err() {
            return false;
        }
        matches!(
            op,
            [0xf4, _] // hlt
                | [0xe4..=0xe7 | 0xec..=0xef, _] // in, out
                | [0xfa | 0xfb, _] // cli, sti
                | [0x0f, 0x01 | 0x06 | 0x08 | 0x09 | 0x20..=0x23 | 0x30 | 0x32] // lgdt.., clts, invd, wbinvd, mov cr/dr, wrmsr, rdmsr
        )
    }
}

/// `KVM_CREATE_VM`, retried when a signal interrupts it (the kernel can
/// return EINTR while it waits for other VMs to be torn down).
fn create_vm(kvm: &kvm_ioctls::Kvm) -> Result<VmFd> {
    loop {
        match kvm.create_vm() {
            Ok(vm) => return Ok(vm),
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(source) => {
                return Err(Error::Kvm {
                    operation: "KVM_CREATE_VM",
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hyperlight_wasm_protocol::boot::IMAGE_BASE;

    use super::testing::{RawGuest, layout};
    use super::*;
    use crate::vm::layout::{BOOT_INFO, GDT};

    /// Runs a raw guest and returns the exception it raised.
    fn exception(guest: RawGuest) -> GuestException {
        match guest.vm().run() {
            Err(Error::GuestException(e)) => e,
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
            Err(Error::UnexpectedExit { exit, rip }) => {
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
        assert!(matches!(vm.run(), Err(Error::TripleFault { rip }) if rip == IMAGE_BASE));
    }

    #[test]
    fn exits_the_protocol_does_not_allow_are_errors() {
        let vm = RawGuest::new().vm();
        assert!(matches!(
            vm.classify(Exit::Mmio { gpa: 1 << 40 }),
            Err(Error::GuestMemoryViolation { gpa, .. }) if gpa == 1 << 40
        ));
        assert!(matches!(
            vm.classify(Exit::Out {
                port: 0x80,
                byte: Some(0),
                len: 1,
            }),
            Err(Error::UnexpectedExit { .. })
        ));
        assert!(matches!(
            vm.classify(Exit::Other(String::from("Hlt"))),
            Err(Error::UnexpectedExit { .. })
        ));
        // An exception report that did not come from a stub.
        assert!(matches!(
            vm.classify(Exit::Out {
                port: Port::Exception as u16,
                byte: Some(14),
                len: 1,
            }),
            Err(Error::UnexpectedExit { .. })
        ));
        // More than one byte to a protocol port.
        assert!(matches!(
            vm.classify(Exit::Out {
                port: Port::Done as u16,
                byte: Some(0),
                len: 4,
            }),
            Err(Error::UnexpectedExit { exit, .. }) if exit.contains("4-byte or string out")
        ));
    }
}
