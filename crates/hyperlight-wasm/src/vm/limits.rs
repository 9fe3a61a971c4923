//! What the hardware allows, measured with the VMM's own pieces, for the
//! limits table of `benches/limits.rs`: a raw KVM VM with its vCPU and
//! memory slot, and one exit round trip from a CPL3 guest. Not a stable API.

use hyperlight_wasm_protocol::boot::IMAGE_BASE;
use hyperlight_wasm_protocol::port::Port;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{VcpuFd, VmFd};

use super::elf::{GuestImage, Segment};
use super::error::VmError;
use super::layout::{Layout, Sizes};
use super::memory::GuestMemory;
use super::{CallLimits, Exit, KVM_TSS_ADDRESS, Vm, create_vm, kvm};
use crate::error::{Error, Result};
use crate::sandbox::SandboxBuilder;

#[cfg(feature = "__limits")]
pub use super::timing::{Part as CallPart, take as take_call_parts};

/// The sizes of a default sandbox.
fn default_sizes() -> Sizes {
    Sizes {
        heap: SandboxBuilder::DEFAULT_GUEST_HEAP_SIZE,
        stack: SandboxBuilder::DEFAULT_GUEST_STACK_SIZE,
        input: SandboxBuilder::DEFAULT_BUFFER_SIZE,
        output: SandboxBuilder::DEFAULT_BUFFER_SIZE,
    }
}

/// A VM of a default sandbox's size running `code` (at the image base) at
/// CPL3, set up like a sandbox's guest.
fn raw_guest(code: &[u8], limits: CallLimits) -> Result<Vm> {
    let image = GuestImage {
        entry: IMAGE_BASE,
        segments: vec![Segment {
            addr: IMAGE_BASE,
            data: code,
            mem_size: 0x1000,
            writable: false,
            executable: true,
        }],
    };
    let mut vm = Vm::new(&default_sizes(), limits)?;
    vm.embedded_guest = false;
    vm.boot(&image)?;
    Ok(vm)
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
        let vm = create_vm(&handle.kvm)?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(VmError::kvm("KVM_SET_TSS_ADDR"))?;
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
            .map_err(VmError::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = vm.create_vcpu(0).map_err(VmError::kvm("KVM_CREATE_VCPU"))?;
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
        let vm = raw_guest(&code, CallLimits::default())?;
        Ok(RawExitLoop { vm })
    }

    /// Runs the guest until its next `out`: one exit round trip.
    ///
    /// # Errors
    ///
    /// When the exit is anything but that `out`.
    pub fn round_trip(&mut self) -> Result<()> {
        match self.vm.enter_raw()? {
            Some(Exit::Out { port, .. }) if port == Port::Done as u16 => Ok(()),
            other => Err(Error::UnexpectedExit {
                exit: format!("{other:?}"),
                rip: 0,
            }),
        }
    }
}

/// A CPL3 guest that never exits while it waits: its vCPU runs on a thread
/// of its own, spinning on a request word in guest memory, and answers each
/// request by writing it back to the next word. The host side of an
/// exit-less call path, measured: no VM exit per round trip, but a host core
/// spent on the spinning vCPU for as long as the loop exists.
#[derive(Debug)]
pub struct RawSpinLoop {
    /// Host address of the request word (the answer is the next word).
    request: *mut u64,
    sequence: u64,
    stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The vCPU thread; it hands the VM (and so guest memory) back when it
    /// ends, and `drop` joins it before dropping the VM.
    vcpu: Option<std::thread::JoinHandle<(Result<()>, Vm)>>,
}

// SAFETY: `request` points into guest memory of the VM the vCPU thread owns
// and returns when it ends: the memory stays mapped until `drop` has joined
// the thread. It is only accessed atomically.
unsafe impl Send for RawSpinLoop {}

/// Value of the request word that makes the guest stop.
const STOP: u64 = u64::MAX;

impl RawSpinLoop {
    /// Boots the guest on its own thread.
    ///
    /// # Errors
    ///
    /// When KVM or the OS refuse.
    pub fn new() -> Result<RawSpinLoop> {
        RawSpinLoop::start(false)
    }

    /// [`RawSpinLoop::new`]; `panic_in_thread` makes the vCPU thread panic
    /// before it runs the guest (a test of the error path).
    fn start(panic_in_thread: bool) -> Result<RawSpinLoop> {
        let request = Layout::new(&default_sizes())?.heap.addr;
        // rdi = request; loop: rax = [rdi]; if rax == rbx goto loop;
        // if rax == STOP goto out; rbx = rax; [rdi + 8] = rax; goto loop;
        // out: out Done.
        let code: &[&[u8]] = &[
            &[0x48, 0xbf],             // 0: mov rdi, request
            &request.to_le_bytes(),    //
            &[0x48, 0x8b, 0x07],       // 10: mov rax, [rdi]
            &[0x48, 0x39, 0xd8],       // 13: cmp rax, rbx
            &[0x74, 0xf8],             // 16: je 10
            &[0x48, 0x83, 0xf8, 0xff], // 18: cmp rax, -1
            &[0x74, 0x09],             // 22: je 33
            &[0x48, 0x89, 0xc3],       // 24: mov rbx, rax
            &[0x48, 0x89, 0x47, 0x08], // 27: mov [rdi + 8], rax
            &[0xeb, 0xe9],             // 31: jmp 10
            &[0xe6, Port::Done as u8], // 33: out Done, al
        ];
        let limits = CallLimits {
            time_limit: std::time::Duration::from_secs(3600),
            ..CallLimits::default()
        };
        let mut vm = raw_guest(&code.concat(), limits)?;
        let host = vm.memory.host_address() + request;
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::clone(&stopped);
        let vcpu = std::thread::Builder::new()
            .name(String::from("raw-spin-vcpu"))
            .spawn(move || {
                // Whatever happens on this thread (a panic included), the VM
                // and its memory outlive it: they are handed back to
                // `drop`, which joins the thread before anything unmaps
                // the words the host side reads.
                let spin = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    loop {
                        if panic_in_thread {
                            panic!("the spinning vCPU thread panics, as asked");
                        }
                        match vm.enter_raw() {
                            Ok(Some(Exit::Out { port, .. })) if port == Port::Done as u16 => {
                                break Ok(());
                            }
                            // A signal: go on spinning.
                            Ok(None) => {}
                            Ok(Some(other)) => {
                                break Err(Error::UnexpectedExit {
                                    exit: format!("{other:?}"),
                                    rip: 0,
                                });
                            }
                            Err(e) => break Err(e.into()),
                        }
                    }
                }));
                done.store(true, std::sync::atomic::Ordering::SeqCst);
                let result = spin.unwrap_or_else(|_| {
                    Err(Error::UnexpectedExit {
                        exit: String::from("the spinning vCPU thread panicked"),
                        rip: 0,
                    })
                });
                (result, vm)
            })
            .map_err(|e| Error::Os {
                operation: "spawn the vCPU thread",
                source: e,
            })?;
        Ok(RawSpinLoop {
            request: host as *mut u64,
            sequence: 0,
            stopped,
            vcpu: Some(vcpu),
        })
    }

    fn word(&self, index: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: `request` and the word after it lie in guest memory, which
        // is mapped, 8-byte aligned and alive until the vCPU thread ends (it
        // is joined in `drop`); the guest only touches them with aligned
        // 8-byte accesses.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(self.request.add(index)) }
    }

    /// Sends one request and waits for its answer, spinning.
    ///
    /// # Errors
    ///
    /// When the guest stopped.
    pub fn round_trip(&mut self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let stopped = || Error::UnexpectedExit {
            exit: String::from("the spinning guest stopped"),
            rip: 0,
        };
        if self.stopped.load(Ordering::SeqCst) {
            return Err(stopped());
        }
        self.sequence += 1;
        self.word(0).store(self.sequence, Ordering::SeqCst);
        while self.word(1).load(Ordering::SeqCst) != self.sequence {
            if self.stopped.load(Ordering::SeqCst) {
                return Err(stopped());
            }
            std::hint::spin_loop();
        }
        Ok(())
    }
}

impl Drop for RawSpinLoop {
    fn drop(&mut self) {
        // Guest memory is alive until the join below hands the VM back.
        self.word(0)
            .store(STOP, std::sync::atomic::Ordering::SeqCst);
        if let Some(vcpu) = self.vcpu.take() {
            // The VM drops here, after its thread is gone.
            drop(vcpu.join());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spin_loop_round_trips_and_survives_a_panicking_thread() {
        let mut spin = RawSpinLoop::new().unwrap();
        for _ in 0..100 {
            spin.round_trip().unwrap();
        }
        drop(spin);
        // The vCPU thread panics: the host side gets an error (guest
        // memory is still mapped), and drop joins without touching freed
        // memory.
        let mut spin = RawSpinLoop::start(true).unwrap();
        assert!(spin.round_trip().is_err());
        drop(spin);
    }
}
