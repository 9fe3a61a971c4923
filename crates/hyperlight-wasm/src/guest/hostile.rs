//! The hostile-guest campaign: raw guests that attack the VMM in one way
//! each. Every attack must be answered with a typed error, and the next
//! call to the same sandbox must be correct.
//!
//! Each guest boots, then on every request looks at the called function's
//! name: `good` answers 42, `hostile` runs the attack. The attack's operand
//! (a port, an address) travels as the bits of an `f64` argument, which
//! postcard encodes as eight raw bytes at a fixed offset of the request.

use hyperlight_wasm_protocol::boot::IMAGE_BASE;
use hyperlight_wasm_protocol::message::{OutCall, Request, Response, Value, ValueType};
use hyperlight_wasm_protocol::port::Port;
use hyperlight_wasm_protocol::wire::{HEADER_LEN, encode_to_vec};

use super::outcalls::quiet;
use super::*;
use crate::error::{FaultCause, GuestException};
use crate::vm::layout::{BOOT_INFO, EXCEPTION_STACK, EXCEPTION_STUBS, GDT, IDT, PAGE_TABLES, TSS};
use crate::vm::testing::{RawGuest, layout};

/// Offsets in the input buffer of the called function's first byte and of
/// the `f64` argument's bits, found by encoding a request.
fn offsets() -> (u64, u64) {
    let marker = 0x0123_4567_89ab_cdef_u64;
    let bytes = encode_to_vec(&Request::Call {
        function: "hostile".into(),
        args: vec![Value::F64(f64::from_bits(marker))],
        returns: ValueType::I32,
    })
    .unwrap();
    let find = |needle: &[u8]| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the request holds it") as u64
    };
    let input = layout().input.addr;
    assert!(find(b"hostile") >= HEADER_LEN as u64);
    (
        input + find(b"hostile"),
        input + find(&marker.to_le_bytes()),
    )
}

/// The attack's operand, loaded into `rax` (`mov rax, [operand]`).
fn load_operand() -> Vec<u8> {
    let addr = u32::try_from(offsets().1).unwrap();
    [&[0x48, 0x8b, 0x04, 0x25][..], &addr.to_le_bytes()].concat()
}

/// A guest that runs `attack` when `hostile` is called and answers 42 to
/// `good`.
fn guest_attacking(attack: &[u8]) -> Guest {
    guest_from(RawGuest::new(), attack)
}

fn guest_from(raw: RawGuest, attack: &[u8]) -> Guest {
    let (name, _) = offsets();
    let ready = encode_to_vec(&Response::Ready {
        protocol_version: PROTOCOL_VERSION,
    })
    .unwrap();
    let answer = encode_to_vec(&Response::Returned(Value::I32(42))).unwrap();
    let raw = raw.send_output(&ready, Port::Done);
    let top = raw.here();
    let raw = raw
        .if_byte(name, b'h', attack)
        .send_output(&answer, Port::Done)
        .jmp_to(top);
    let limits = crate::vm::CallLimits {
        time_limit: std::time::Duration::from_secs(5),
        cancel_wait: std::time::Duration::from_millis(100),
    };
    let mut g = Guest::new(raw.vm_with(limits), quiet(), false);
    g.boot().unwrap();
    g
}

fn attack(g: &mut Guest, operand: u64) -> Result<Value> {
    g.call(
        "hostile",
        vec![Value::F64(f64::from_bits(operand))],
        ValueType::I32,
    )
}

/// The next call is correct.
fn assert_alive(g: &mut Guest, after: &str) {
    match g.call("good", Vec::new(), ValueType::I32) {
        Ok(Value::I32(42)) => {}
        other => panic!("after {after}, the next call gave {other:?}"),
    }
}

/// Runs the attack and returns the exception it raised; the next call is
/// then correct.
fn exception(g: &mut Guest, operand: u64, what: &str) -> GuestException {
    let e = match attack(g, operand) {
        Err(Error::GuestException(e)) => e,
        other => panic!("{what}: expected a guest exception, got {other:?}"),
    };
    assert_alive(g, what);
    e
}

/// `mov byte [rax], al`.
const WRITE: &[u8] = &[0x88, 0x00];
/// `mov al, byte [rax]`.
const READ: &[u8] = &[0x8a, 0x00];

#[test]
fn writes_to_the_cpu_structures_are_protection_faults() {
    let mut g = guest_attacking(&[load_operand(), WRITE.to_vec()].concat());
    for (what, addr) in [
        ("the GDT", GDT),
        ("the TSS", TSS),
        ("the I/O bitmap", TSS + 0x100),
        ("the IDT", IDT),
        ("the exception stubs", EXCEPTION_STUBS),
        ("the exception stack", EXCEPTION_STACK.addr),
        ("the boot info", BOOT_INFO),
    ] {
        let e = exception(&mut g, addr, what);
        assert_eq!(e.vector, 14, "{what}: {e}");
        assert_eq!(e.cause, FaultCause::ProtectionViolation, "{what}: {e}");
        assert_eq!(e.fault_address, Some(addr), "{what}");
    }
    // The page tables are not mapped at all, from their first page to
    // their last.
    let mut addr = PAGE_TABLES.addr;
    while addr < PAGE_TABLES.addr + PAGE_TABLES.size {
        let e = exception(&mut g, addr, "the page tables");
        assert_eq!(
            (e.vector, e.cause),
            (14, FaultCause::UnmappedAddress),
            "{addr:#x}"
        );
        addr += 0x1000;
    }
}

#[test]
fn memory_outside_ram_is_never_reached() {
    // No MMIO exit can happen: the guest's page tables map RAM only, so
    // every address beyond it faults inside the guest.
    let end = layout().memory_size();
    let mut addresses: Vec<u64> = (0..64).map(|i| end + i * 0x1000).collect();
    // Every 2 MiB up to 4 GiB, then every power of two and its neighbours
    // up to the top of the canonical lower half.
    addresses.extend((end.div_ceil(0x20_0000)..2048).map(|i| i * 0x20_0000));
    for bit in 32..47 {
        addresses.extend([(1u64 << bit) - 1, 1 << bit, (1 << bit) + 0x1000]);
    }
    for access in [READ, WRITE] {
        let mut g = guest_attacking(&[load_operand(), access.to_vec()].concat());
        for &addr in &addresses {
            let e = exception(&mut g, addr, "an access outside RAM");
            assert_eq!(e.vector, 14, "{addr:#x}: {e}");
            assert_eq!(e.cause, FaultCause::UnmappedAddress, "{addr:#x}: {e}");
        }
        // Non-canonical addresses are #GP, and so is the upper half.
        for addr in [1u64 << 47, 1 << 63, u64::MAX - 0xfff] {
            let e = exception(&mut g, addr, "a non-canonical access");
            assert!(matches!(e.vector, 13 | 14), "{addr:#x}: {e}");
        }
    }
}

#[test]
fn every_port_is_refused_for_in_and_out() {
    // `movzx edx, ax` after loading the operand, then the port access.
    let port_access =
        |insn: &[u8]| [load_operand(), vec![0x0f, 0xb7, 0xd0], insn.to_vec()].concat();
    for (what, insn) in [
        ("out dx, al", &[0xee][..]),
        ("in al, dx", &[0xec][..]),
        ("out dx, eax", &[0xef][..]),
        ("in eax, dx", &[0xed][..]),
    ] {
        let mut g = guest_attacking(&port_access(insn));
        for port in 0..=u16::MAX {
            let result = attack(&mut g, u64::from(port));
            let protocol = [Port::Done, Port::OutCall, Port::Abort]
                .iter()
                .any(|p| *p as u16 == port);
            match result {
                // Anything but the three protocol ports is a #GP from the
                // I/O bitmap, the exception stubs' port included (and so is
                // a 4-byte access that reaches past the protocol ports).
                Err(Error::GuestException(e)) => {
                    assert_eq!(e.vector, 13, "{what} {port:#x}: {e}");
                    assert_eq!(
                        e.cause,
                        FaultCause::PrivilegedInstruction,
                        "{what} {port:#x}"
                    );
                }
                // A protocol port with garbage in the buffer, or an `in`
                // from one: refused, whatever the buffer holds.
                Err(
                    Error::Protocol(_) | Error::UnexpectedExit { .. } | Error::GuestAborted { .. },
                ) if protocol => {}
                other => panic!("{what} {port:#x}: {other:?}"),
            }
            if port % 1024 == 0 || protocol {
                assert_alive(&mut g, what);
            }
        }
        assert_alive(&mut g, what);
    }
}

#[test]
fn privileged_instructions_are_refused() {
    for (what, code) in [
        ("hlt", &[0xf4][..]),
        ("cli", &[0xfa]),
        ("sti", &[0xfb]),
        ("rdmsr", &[0x0f, 0x32]),
        ("wrmsr", &[0x0f, 0x30]),
        ("xsetbv", &[0x31, 0xc9, 0x0f, 0x01, 0xd1]), // xor ecx, ecx; xsetbv
        ("mov rax, cr0", &[0x0f, 0x20, 0xc0]),
        ("mov cr3, rax", &[0x0f, 0x22, 0xd8]),
        ("lgdt [rax]", &[0x0f, 0x01, 0x10]),
        ("lidt [rax]", &[0x0f, 0x01, 0x18]),
        ("ltr ax", &[0x0f, 0x00, 0xd8]),
        ("invlpg [rax]", &[0x0f, 0x01, 0x38]),
        ("wbinvd", &[0x0f, 0x09]),
        ("swapgs", &[0x0f, 0x01, 0xf8]),
        ("sysenter", &[0x0f, 0x34]),
        ("syscall", &[0x0f, 0x05]),
        ("int1", &[0xf1]),
        ("ud2", &[0x0f, 0x0b]),
    ] {
        // rax points at the boot info (readable), for the memory operands.
        let mut g = guest_attacking(&[load_operand(), code.to_vec()].concat());
        let e = exception(&mut g, BOOT_INFO, what);
        match e.vector {
            1 | 6 | 13 => {}
            // Seen here: a KVM on which `syscall` with EFER.SCE clear still
            // jumps to LSTAR, which is 0 (the guest cannot write MSRs): a
            // fetch from the unmapped null page.
            14 if what == "syscall" => {
                assert_eq!((e.rip, e.cause), (0, FaultCause::NullPointer), "{e}");
            }
            _ => panic!("{what}: {e}"),
        }
    }
}

#[test]
fn every_software_interrupt_is_refused() {
    // `int n` for every n. The gates are DPL0, so the CPU should raise #GP
    // for each. Seen here, a KVM that delivers some of them through their
    // gate (`int 4` reported as #OF), answers others with #UD, and (once,
    // in a loaded run) resumed the guest past one. Each is a typed error
    // for a vector that has a stub, or no effect at all; the next call
    // runs either way.
    let mut resumed = Vec::new();
    for n in 0..=u8::MAX {
        let mut g = guest_attacking(&[0xcd, n]);
        match attack(&mut g, 0) {
            Err(Error::GuestException(e)) => assert!(e.vector < 32, "int {n:#x}: {e}"),
            Ok(Value::I32(42)) => resumed.push(n),
            other => panic!("int {n:#x}: {other:?}"),
        }
        assert_alive(&mut g, "int n");
    }
    // Resuming past the instruction is the exception, not the rule.
    assert!(resumed.len() < 8, "int resumed for vectors {resumed:x?}");
}

#[test]
fn privileged_selectors_and_far_jumps_are_refused() {
    // The GDT's kernel selectors (0x08 code, 0x10 data), with RPL 0 and 3,
    // and the TSS's.
    for selector in [0x08u64, 0x0b, 0x10, 0x13, 0x28, 0x2b, 0x1000] {
        for (what, code) in [
            ("mov ds", &[0x8e, 0xd8][..]), // mov ds, eax
            ("mov ss", &[0x8e, 0xd0]),     // mov ss, eax
            ("mov es", &[0x8e, 0xc0]),     // mov es, eax
            // jmp far [rsp] after pushing the selector and an offset.
            (
                "jmp far",
                &[0x50, 0x48, 0x31, 0xc0, 0x50, 0x48, 0xff, 0x2c, 0x24],
            ),
            // call far, the same way.
            (
                "call far",
                &[0x50, 0x48, 0x31, 0xc0, 0x50, 0x48, 0xff, 0x1c, 0x24],
            ),
        ] {
            let mut g = guest_attacking(&[load_operand(), code.to_vec()].concat());
            match attack(&mut g, selector) {
                Err(Error::GuestException(e)) => {
                    assert!(matches!(e.vector, 6 | 11 | 13), "{what} {selector:#x}: {e}");
                }
                // Seen here: a KVM that lets CPL3 load the TSS selector
                // into DS, ES and SS. In 64-bit mode their bases and limits
                // are ignored, so the load gains the guest nothing; the
                // far jumps and calls, which would change privilege, fault.
                Ok(Value::I32(42)) if what.starts_with("mov") && selector & !3 == 0x28 => {}
                other => panic!("{what} {selector:#x}: {other:?}"),
            }
            assert_alive(&mut g, what);
        }
    }
}

#[test]
fn a_guest_rewriting_its_own_code_is_undone_or_refused() {
    // The attack writes `ud2` over the check at the top of the request loop
    // (`mov word [top], 0x0b0f`) and jumps there.
    let top = IMAGE_BASE + RawGuest::new().send_output(&[], Port::Done).here() as u64;
    let rewrite = [
        &[0x66, 0xc7, 0x04, 0x25][..],
        &u32::try_from(top).unwrap().to_le_bytes(),
        &[0x0f, 0x0b],
        &[0x48, 0xb8],
        &top.to_le_bytes(),
        &[0xff, 0xe0], // jmp rax
    ]
    .concat();
    // Writable code: the rewritten code faults, and every next call runs
    // the original code again (each `good` call passes the check).
    let mut g = guest_attacking(&rewrite);
    for _ in 0..3 {
        let e = exception(&mut g, 0, "rewriting its code");
        assert_eq!((e.vector, e.rip), (6, top), "{e}");
    }
    // Read-only code, as the real guest's is: the write itself faults.
    let mut g = guest_from(RawGuest::new().read_only(), &rewrite);
    let e = exception(&mut g, 0, "writing read-only code");
    assert_eq!(
        (e.vector, e.cause),
        (14, FaultCause::ProtectionViolation),
        "{e}"
    );
    assert_eq!(e.fault_address, Some(top));
}

#[test]
fn a_guest_that_never_answers_is_stopped_and_the_next_call_runs() {
    let mut g = guest_attacking(&[0xeb, 0xfe]); // jmp .
    for _ in 0..2 {
        assert!(matches!(
            attack(&mut g, 0),
            Err(Error::ExecutionCancelledByHost { .. })
        ));
        assert_alive(&mut g, "a guest that never answers");
    }
}

#[test]
fn a_million_out_calls_in_one_call_are_served_in_bounded_memory() {
    // A million with HYPERLIGHT_WASM_LONG=1 (112 s in a debug build here),
    // a hundred thousand otherwise.
    let calls: u32 = if std::env::var_os("HYPERLIGHT_WASM_LONG").is_some() {
        1_000_000
    } else {
        100_000
    };
    let mut g = counted_out_calls(calls);
    let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = Arc::clone(&ticks);
    g.host_functions_mut().insert(
        host_functions::ImportName::env("tick"),
        host_functions::Registered::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }),
    );
    let (result, peak) = crate::allocations::peak_during(|| attack(&mut g, 0));
    assert!(matches!(result, Ok(Value::I32(42))), "{result:?}");
    assert_eq!(ticks.load(std::sync::atomic::Ordering::Relaxed), calls);
    // Each out-call's memory is given back before the next.
    assert!(peak < 1 << 20, "{peak} bytes held at the peak");
    assert_alive(&mut g, "a million out-calls");
}

/// A guest whose `hostile` call makes `calls` host calls to `env::tick`
/// (`mov ebx, calls`, then the call and `dec ebx; jnz` in a loop), then
/// answers 42.
fn counted_out_calls(calls: u32) -> Guest {
    let (name, _) = offsets();
    let ready = encode_to_vec(&Response::Ready {
        protocol_version: PROTOCOL_VERSION,
    })
    .unwrap();
    let answer = encode_to_vec(&Response::Returned(Value::I32(42))).unwrap();
    let call = encode_to_vec(&OutCall::CallHost {
        module: "env".into(),
        function: "tick".into(),
        args: Vec::new(),
    })
    .unwrap();
    let raw = RawGuest::new().send_output(&ready, Port::Done);
    let top = raw.here();
    // `movzx eax, byte [name]; cmp al, 'h'; jne answer`
    let raw = raw
        .code(&[0x0f, 0xb6, 0x04, 0x25])
        .code(&u32::try_from(name).unwrap().to_le_bytes())
        .code(&[0x3c, b'h', 0x0f, 0x85, 0, 0, 0, 0]);
    let jne_end = raw.here();
    let raw = raw.code(&[0xbb]).code(&calls.to_le_bytes());
    let loop_top = raw.here();
    let raw = raw.send_output(&call, Port::OutCall).code(&[0xff, 0xcb]); // dec ebx
    let rel = loop_top as i64 - (raw.here() as i64 + 6);
    let raw = raw.code(&[0x0f, 0x85]).code(&(rel as i32).to_le_bytes()); // jnz loop_top
    let answer_at = raw.here();
    let mut raw = raw.send_output(&answer, Port::Done).jmp_to(top);
    raw.patch_rel32(jne_end - 4, answer_at as i64 - jne_end as i64);
    let limits = crate::vm::CallLimits {
        time_limit: std::time::Duration::from_secs(600),
        cancel_wait: std::time::Duration::from_millis(100),
    };
    let mut g = Guest::new(raw.vm_with(limits), quiet(), false);
    g.boot().unwrap();
    g
}

#[test]
fn a_fault_while_delivering_an_exception_is_a_triple_fault_and_the_next_call_runs() {
    // The guest cannot reach the IDT or the stubs (see above); the host
    // breaks exception delivery for one call by making the IDT unusable,
    // as a corrupted one would be. The `ud2` then cannot be delivered:
    // a triple fault, a typed error, and the restore that follows puts
    // every register back.
    let mut g = guest_attacking(&[0x0f, 0x0b]);
    let mut sregs = g.vm.vcpu().get_sregs().unwrap();
    sregs.idt.limit = 0;
    g.vm.vcpu().set_sregs(&sregs).unwrap();
    assert!(matches!(attack(&mut g, 0), Err(Error::TripleFault { .. })));
    assert_alive(&mut g, "a triple fault");
    // The IDT is whole again: a fault is an ordinary exception now.
    let e = exception(&mut g, 0, "a fault after the restore");
    assert_eq!(e.vector, 6);
}
