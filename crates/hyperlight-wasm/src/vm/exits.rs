//! Turning a VM exit into one of the protocol's three exits
//! ([`GuestExit`]) or a [`GuestFault`] that says what the guest did.
//!
//! [`classify`] is a pure function of the exit and an [`ExitContext`] (the
//! vCPU's registers and guest memory, read only when an error needs them),
//! so its tests need no vCPU.

use hyperlight_wasm_protocol::boot::Region;
use hyperlight_wasm_protocol::port::Port;
use kvm_bindings::{kvm_regs, kvm_sregs};

use super::boot::EXCEPTION_VECTORS;
use super::error::{RunError, VmError};
use super::layout::{EXCEPTION_STACK, EXCEPTION_STUBS, PAGE_SIZE, STUB_SIZE};
use crate::error::{FaultCause, GuestException};
use crate::vm::error::GuestFault;

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

impl Exit {
    /// Whether KVM may have left work of this exit to finish on the next
    /// entry (string or multi-byte I/O, `in`, MMIO): only a one-byte `out`
    /// leaves nothing but moving RIP past it, which KVM skips when RIP was
    /// set since.
    pub(crate) fn may_leave_emulation_pending(&self) -> bool {
        !matches!(self, Exit::Out { len: 1, .. })
    }
}

/// What classifying an exit may read.
pub(crate) trait ExitContext {
    /// The vCPU's general registers.
    fn regs(&self) -> Result<kvm_regs, VmError>;
    /// The vCPU's special registers.
    fn sregs(&self) -> Result<kvm_sregs, VmError>;
    /// Copies guest memory at `addr` into `out`; `false` outside it.
    fn read(&self, addr: u64, out: &mut [u8]) -> bool;
    /// The unmapped page below the stack.
    fn stack_guard(&self) -> Region;
    /// The guest function containing `rip`, if the guest image names one.
    fn symbol(&self, rip: u64) -> Option<String>;
}

/// The protocol exit `exit` is, or what the guest did wrong.
pub(crate) fn classify(exit: Exit, ctx: &dyn ExitContext) -> Result<GuestExit, RunError> {
    let rip = || ctx.regs().map(|regs| regs.rip);
    let unexpected = |exit: String| -> Result<GuestExit, RunError> {
        Err(GuestFault::UnexpectedExit { exit, rip: rip()? }.into())
    };
    match exit {
        Exit::Out { port, len, .. } if len != 1 => unexpected(format!(
            "{len}-byte or string out to I/O port {port:#x} (the protocol uses one-byte out)"
        )),
        Exit::Out { port, byte, .. } => match Port::try_from(port) {
            Ok(Port::Done) => Ok(GuestExit::Done),
            Ok(Port::OutCall) => Ok(GuestExit::OutCall),
            Ok(Port::Abort) => Ok(GuestExit::Abort),
            Ok(Port::Exception) => Err(exception(byte, ctx)?.into()),
            Err(unknown) => unexpected(unknown.to_string()),
        },
        Exit::In { port } => unexpected(format!("in from I/O port {port:#x}")),
        Exit::Shutdown => Err(GuestFault::TripleFault { rip: rip()? }.into()),
        Exit::Mmio { gpa } => Err(GuestFault::MemoryViolation { gpa, rip: rip()? }.into()),
        Exit::Other(exit) => unexpected(exit),
    }
}

/// Decodes an exception report from a CPL0 stub: the vector, and the CPU's
/// exception frame on the exception stack.
fn exception(byte: Option<u8>, ctx: &dyn ExitContext) -> Result<GuestFault, VmError> {
    let regs = ctx.regs()?;
    let sregs = ctx.sregs()?;
    // Only the stubs can write this port (CPL3 may not): check that this
    // exit came from the stub of the vector it names, right after its `out`
    // instruction.
    let vector = byte.filter(|v| *v < EXCEPTION_VECTORS);
    // The stub is `mov al, v` (2 bytes), `out imm8, al` (2 bytes). KVM
    // reports RIP on the `out` (mainline KVM advances it on the next
    // KVM_RUN) or past it (some KVMs advance it before the exit).
    let from_stub = vector.is_some_and(|v| {
        let out = EXCEPTION_STUBS + u64::from(v) * STUB_SIZE + 2;
        (regs.rip == out || regs.rip == out + 2) && sregs.cs.selector == 0x08
    });
    let (Some(vector), true) = (vector, from_stub) else {
        return Ok(GuestFault::UnexpectedExit {
            exit: format!("exception report {byte:?} from outside the exception stubs"),
            rip: regs.rip,
        });
    };

    // The frame: [error code], RIP, CS, RFLAGS, RSP, SS.
    let has_error_code = matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30);
    let words: usize = if has_error_code { 6 } else { 5 };
    let mut frame = [0u8; 6 * 8];
    let frame = &mut frame[..words * 8];
    if !EXCEPTION_STACK.contains_range(regs.rsp, frame.len() as u64) {
        return Ok(GuestFault::UnexpectedExit {
            exit: format!("exception {vector} with a corrupt exception stack"),
            rip: regs.rip,
        });
    }
    if !ctx.read(regs.rsp, frame) {
        return Ok(GuestFault::UnexpectedExit {
            exit: format!("exception {vector} with an unreadable exception stack"),
            rip: regs.rip,
        });
    }
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
    let cause = fault_cause(vector, error_code, fault_address, rip, ctx);
    Ok(GuestFault::Exception(GuestException {
        vector,
        error_code,
        rip,
        fault_address,
        cause,
        function: ctx.symbol(rip),
    }))
}

fn fault_cause(
    vector: u8,
    error_code: Option<u64>,
    addr: Option<u64>,
    rip: u64,
    ctx: &dyn ExitContext,
) -> FaultCause {
    match (vector, addr) {
        (14, Some(addr)) if addr < PAGE_SIZE => FaultCause::NullPointer,
        (14, Some(addr)) if ctx.stack_guard().contains_range(addr, 1) => FaultCause::StackOverflow,
        // Error code bit 0: the page was present, so its protection forbade
        // the access.
        (14, _) if error_code.is_some_and(|e| e & 1 != 0) => FaultCause::ProtectionViolation,
        (14, _) => FaultCause::UnmappedAddress,
        (13, _) if is_privileged_instruction(rip, ctx) => FaultCause::PrivilegedInstruction,
        _ => FaultCause::Other,
    }
}

/// Whether the instruction at `rip` is one CPL3 may not execute.
fn is_privileged_instruction(rip: u64, ctx: &dyn ExitContext) -> bool {
    let mut op = [0u8; 2];
    if !ctx.read(rip, &mut op) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A vCPU stopped at `rip` with `rsp`, CS `cs` and CR2 `cr2`, over a
    /// memory of `bytes` at `base`.
    struct Fake {
        rip: u64,
        rsp: u64,
        cs: u16,
        cr2: u64,
        base: u64,
        bytes: Vec<u8>,
    }

    impl Fake {
        fn at(rip: u64) -> Fake {
            Fake {
                rip,
                rsp: 0,
                cs: 0x1b,
                cr2: 0,
                base: 0,
                bytes: Vec::new(),
            }
        }
    }

    impl ExitContext for Fake {
        fn regs(&self) -> Result<kvm_regs, VmError> {
            Ok(kvm_regs {
                rip: self.rip,
                rsp: self.rsp,
                ..Default::default()
            })
        }
        fn sregs(&self) -> Result<kvm_sregs, VmError> {
            let mut sregs = kvm_sregs {
                cr2: self.cr2,
                ..Default::default()
            };
            sregs.cs.selector = self.cs;
            Ok(sregs)
        }
        fn read(&self, addr: u64, out: &mut [u8]) -> bool {
            let Some(start) = addr.checked_sub(self.base) else {
                return false;
            };
            match self.bytes.get(start as usize..start as usize + out.len()) {
                Some(bytes) => {
                    out.copy_from_slice(bytes);
                    true
                }
                None => false,
            }
        }
        fn stack_guard(&self) -> Region {
            Region {
                addr: 0x10_0000,
                size: 0x1000,
            }
        }
        fn symbol(&self, rip: u64) -> Option<String> {
            Some(format!("fn_at_{rip:x}"))
        }
    }

    fn fault(result: Result<GuestExit, RunError>) -> GuestFault {
        match result {
            Err(RunError::Fault(fault)) => fault,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn protocol_ports_are_the_three_exits() {
        let ctx = Fake::at(0x20_0000);
        let out = |port: Port| Exit::Out {
            port: port as u16,
            byte: Some(0),
            len: 1,
        };
        assert_eq!(classify(out(Port::Done), &ctx).unwrap(), GuestExit::Done);
        assert_eq!(
            classify(out(Port::OutCall), &ctx).unwrap(),
            GuestExit::OutCall
        );
        assert_eq!(classify(out(Port::Abort), &ctx).unwrap(), GuestExit::Abort);
    }

    #[test]
    fn exits_the_protocol_does_not_allow_are_faults_at_their_rip() {
        let ctx = Fake::at(0x20_1234);
        let cases = [
            Exit::Out {
                port: 0x80,
                byte: Some(0),
                len: 1,
            },
            Exit::Out {
                port: Port::Done as u16,
                byte: Some(0),
                len: 4,
            },
            Exit::In { port: 0x10 },
            Exit::Other(String::from("Hlt")),
        ];
        for exit in cases {
            match fault(classify(exit.clone(), &ctx)) {
                GuestFault::UnexpectedExit { rip, .. } => assert_eq!(rip, 0x20_1234, "{exit:?}"),
                other => panic!("{exit:?}: {other:?}"),
            }
        }
        assert_eq!(
            fault(classify(Exit::Shutdown, &ctx)),
            GuestFault::TripleFault { rip: 0x20_1234 }
        );
        assert_eq!(
            fault(classify(Exit::Mmio { gpa: 1 << 40 }, &ctx)),
            GuestFault::MemoryViolation {
                gpa: 1 << 40,
                rip: 0x20_1234
            }
        );
    }

    /// A context stopped right after the stub of `vector`, with `frame`
    /// on the exception stack.
    fn stub_report(vector: u8, frame: &[u64]) -> Fake {
        let rsp = EXCEPTION_STACK.end() - 0x100;
        let mut bytes = vec![0u8; 0x100];
        for (i, word) in frame.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        Fake {
            rip: EXCEPTION_STUBS + u64::from(vector) * STUB_SIZE + 2,
            rsp,
            cs: 0x08,
            cr2: 0x10_0800,
            base: rsp,
            bytes,
        }
    }

    #[test]
    fn exception_reports_are_decoded_from_the_frame() {
        // A page fault below the stack: error code 6, then RIP.
        let ctx = stub_report(14, &[6, 0x20_0040, 0x1b, 0x2, 0x10_0800, 0x23]);
        let exit = Exit::Out {
            port: Port::Exception as u16,
            byte: Some(14),
            len: 1,
        };
        match fault(classify(exit, &ctx)) {
            GuestFault::Exception(e) => {
                assert_eq!((e.vector, e.error_code, e.rip), (14, Some(6), 0x20_0040));
                assert_eq!(e.fault_address, Some(0x10_0800));
                assert_eq!(e.cause, FaultCause::StackOverflow);
                assert_eq!(e.function.as_deref(), Some("fn_at_200040"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exception_reports_not_from_a_stub_are_not_believed() {
        let exit = |byte| Exit::Out {
            port: Port::Exception as u16,
            byte: Some(byte),
            len: 1,
        };
        // From guest code (CPL3 selector), or naming another vector than
        // the stub it came from, or a vector past the stubs.
        let mut ctx = stub_report(14, &[0; 6]);
        ctx.cs = 0x1b;
        assert!(matches!(
            fault(classify(exit(14), &ctx)),
            GuestFault::UnexpectedExit { .. }
        ));
        let ctx = stub_report(14, &[0; 6]);
        for byte in [13, 200] {
            assert!(matches!(
                fault(classify(exit(byte), &ctx)),
                GuestFault::UnexpectedExit { .. }
            ));
        }
        // A stack pointer outside the exception stack.
        let mut ctx = stub_report(6, &[0; 5]);
        ctx.rsp = 0x1000;
        match fault(classify(exit(6), &ctx)) {
            GuestFault::UnexpectedExit { exit, .. } => assert!(exit.contains("corrupt"), "{exit}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn privileged_instructions_are_named() {
        let code = |bytes: &[u8]| Fake {
            base: 0x20_0000,
            bytes: bytes.to_vec(),
            ..Fake::at(0x20_0000)
        };
        for op in [&[0xf4u8, 0][..], &[0xe6, 0x80], &[0xfa, 0], &[0x0f, 0x30]] {
            assert!(is_privileged_instruction(0x20_0000, &code(op)), "{op:x?}");
        }
        assert!(!is_privileged_instruction(0x20_0000, &code(&[0x90, 0x90])));
        assert!(!is_privileged_instruction(0x30_0000, &code(&[0xf4, 0])));
    }
}
