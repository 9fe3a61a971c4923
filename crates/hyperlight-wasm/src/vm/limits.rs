//! What the hardware allows, measured with the VMM's own pieces, for the
//! limits table of `benches/limits.rs`: a raw KVM VM with its vCPU and
//! memory slot, and one exit round trip from a CPL3 guest. Not a stable API.

use hyperlight_wasm_protocol::boot::IMAGE_BASE;
use hyperlight_wasm_protocol::port::Port;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use super::elf::{GuestImage, Segment};
use super::layout::{Layout, Sizes};
use super::memory::GuestMemory;
use super::{CallLimits, KVM_TSS_ADDRESS, Vm, create_vm, kvm};
use crate::error::{Error, Result};
use crate::sandbox::SandboxBuilder;

/// The sizes of a default sandbox.
fn default_sizes() -> Sizes {
    Sizes {
        heap: SandboxBuilder::DEFAULT_GUEST_HEAP_SIZE,
        stack: SandboxBuilder::DEFAULT_GUEST_STACK_SIZE,
        input: SandboxBuilder::DEFAULT_BUFFER_SIZE,
        output: SandboxBuilder::DEFAULT_BUFFER_SIZE,
    }
}

/// A KVM VM with one vCPU and one memory slot of a default sandbox's size,
/// and nothing else: the least any sandbox must create.
#[derive(Debug)]
pub struct RawVm {
    _vcpu: VcpuFd,
    _vm: VmFd,
    _memory: GuestMemory,
}

impl RawVm {
    /// Creates the VM, its memory slot and its vCPU.
    ///
    /// # Errors
    ///
    /// When KVM or the OS refuse.
    pub fn new() -> Result<RawVm> {
        let handle = kvm::kvm()?;
        let layout = Layout::new(&default_sizes())?;
        let memory = GuestMemory::new(layout.memory_size())?;
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
        // SAFETY: the region is our own mapping of exactly that size, and it
        // outlives the VM (fields drop in order: vCPU, VM, then memory).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        Ok(RawVm {
            _vcpu: vcpu,
            _vm: vm,
            _memory: memory,
        })
    }
}

/// A CPL3 guest that does nothing but `out` to the host in a loop, set up
/// exactly like a sandbox's guest (page tables, GDT, TSS with its I/O
/// bitmap).
#[derive(Debug)]
pub struct RawExitLoop {
    vm: Vm,
}

impl RawExitLoop {
    /// Creates and boots the guest.
    ///
    /// # Errors
    ///
    /// When KVM or the OS refuse.
    pub fn new() -> Result<RawExitLoop> {
        // out Done, al; jmp back to the out.
        let code = [0xe6, Port::Done as u8, 0xeb, 0xfc];
        let image = GuestImage {
            entry: IMAGE_BASE,
            segments: vec![Segment {
                addr: IMAGE_BASE,
                data: &code,
                mem_size: 0x1000,
                writable: false,
                executable: true,
            }],
        };
        let mut vm = Vm::new(&default_sizes(), CallLimits::default())?;
        vm.embedded_guest = false;
        vm.boot(&image)?;
        Ok(RawExitLoop { vm })
    }

    /// Runs the guest until its next `out`: one exit round trip.
    ///
    /// # Errors
    ///
    /// When the exit is anything but that `out`.
    pub fn round_trip(&mut self) -> Result<()> {
        match self.vm.vcpu.run() {
            Ok(VcpuExit::IoOut(port, _)) if port == Port::Done as u16 => Ok(()),
            Ok(other) => Err(Error::UnexpectedExit {
                exit: format!("{other:?}"),
                rip: 0,
            }),
            Err(source) => Err(Error::Kvm {
                operation: "KVM_RUN",
                source,
            }),
        }
    }
}
