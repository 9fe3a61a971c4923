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
mod kvm;
pub(crate) mod layout;
pub(crate) mod memory;

use hyperlight_wasm_protocol::port::Port;
use kvm_bindings::{Msrs, kvm_msr_entry, kvm_userspace_memory_region};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

pub use self::kvm::is_hypervisor_present;
use self::boot::EXCEPTION_VECTORS;
use self::elf::GuestImage;
use self::layout::{EXCEPTION_STACK, EXCEPTION_STUBS, Layout, PAGE_SIZE, STUB_SIZE, Sizes};
use self::memory::GuestMemory;
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
enum Exit {
    Out { port: u16, byte: Option<u8> },
    Shutdown,
    Mmio { gpa: u64 },
    Other(String),
}

/// One micro-VM: its vCPU, its VM and its memory. Fields drop in order: the
/// KVM objects before the memory KVM maps.
#[derive(Debug)]
pub(crate) struct Vm {
    vcpu: VcpuFd,
    _vm: VmFd,
    memory: GuestMemory,
    layout: Layout,
    /// Whether guest addresses can be named with the embedded guest's
    /// symbols (not for test images).
    symbolize: bool,
}

impl Vm {
    /// Creates a VM running the embedded guest, stopped at its entry point.
    pub(crate) fn new(sizes: &Sizes) -> Result<Vm> {
        let image = elf::embedded_guest().map_err(|e| Error::InvalidGuestImage {
            message: e.to_string(),
        })?;
        let mut vm = Vm::with_image(sizes, image)?;
        vm.symbolize = true;
        Ok(vm)
    }

    /// Creates a VM running `image`, stopped at its entry point.
    pub(crate) fn with_image(sizes: &Sizes, image: &GuestImage<'_>) -> Result<Vm> {
        let handle = kvm::kvm()?;
        let layout = Layout::new(sizes)?;
        let mut memory = GuestMemory::new(layout.memory_size())?;
        let pml4 = boot::write_guest_memory(&mut memory, &layout, image).map_err(|e| {
            Error::InvalidConfiguration {
                setting: "guest memory",
                value: layout.memory_size(),
                reason: format!("cannot be laid out: {e}"),
            }
        })?;

        let kvm_err = |operation| move |source| Error::Kvm { operation, source };
        let vm = create_vm(&handle.kvm)?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: memory.size(),
            userspace_addr: memory.host_address(),
            flags: 0,
        };
        // SAFETY: the region is our own mapping of exactly that size; it
        // outlives the VM (Vm drops its VmFd before its GuestMemory) and is
        // not registered twice.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;

        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
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
        let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&boot::initial_sregs(sregs, pml4))
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        vcpu.set_regs(&boot::initial_regs(image.entry, layout.stack))
            .map_err(kvm_err("KVM_SET_REGS"))?;

        Ok(Vm {
            vcpu,
            _vm: vm,
            memory,
            layout,
            symbolize: false,
        })
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

    /// Runs the vCPU until the guest exits through one of the protocol's
    /// ports. Every other exit becomes an error.
    pub(crate) fn run(&mut self) -> Result<GuestExit> {
        let exit = loop {
            match self.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    break Exit::Out {
                        port,
                        byte: data.first().copied(),
                    };
                }
                Ok(VcpuExit::Shutdown) => break Exit::Shutdown,
                Ok(VcpuExit::MmioRead(gpa, _) | VcpuExit::MmioWrite(gpa, _)) => {
                    break Exit::Mmio { gpa };
                }
                Ok(other) => break Exit::Other(format!("{other:?}")),
                // A signal interrupted KVM_RUN before or while the guest ran;
                // nothing asked us to stop, so go on.
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(source) => {
                    return Err(Error::Kvm {
                        operation: "KVM_RUN",
                        source,
                    });
                }
            }
        };
        self.classify(exit)
    }

    fn classify(&self, exit: Exit) -> Result<GuestExit> {
        match exit {
            Exit::Out { port, byte } => match Port::try_from(port) {
                Ok(Port::Done) => Ok(GuestExit::Done),
                Ok(Port::OutCall) => Ok(GuestExit::OutCall),
                Ok(Port::Abort) => Ok(GuestExit::Abort),
                Ok(Port::Exception) => Err(self.exception(byte)?),
                Err(unknown) => Err(Error::UnexpectedExit {
                    exit: unknown.to_string(),
                    rip: self.rip()?,
                }),
            },
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
        let from_stub = vector.is_some_and(|v| {
            regs.rip == EXCEPTION_STUBS + u64::from(v) * STUB_SIZE + 4
                && sregs.cs.selector == 0x08
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
            function: self.symbolize.then(|| elf::guest_symbol(rip)).flatten(),
        }))
    }

    fn fault_cause(&self, vector: u8, error_code: Option<u64>, addr: Option<u64>, rip: u64) -> FaultCause {
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
