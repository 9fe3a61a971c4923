//! Tests of the guest session against raw guests and real sandboxes.

use hyperlight_wasm_protocol::message::{Abort, ErrorCode, OutCall, Response};
use hyperlight_wasm_protocol::port::Port;
use hyperlight_wasm_protocol::wire::{self, HEADER_LEN, HEADER_MAGIC, encode_to_vec};

use super::errors::QUOTE_LIMIT;
use super::*;
use crate::vm::testing::{RawGuest, layout};
use crate::{LoadedWasmSandbox, SandboxBuilder};

#[test]
fn a_call_costs_one_exit_plus_one_per_host_call() {
    for persistent in [false, true] {
        let mut proto = SandboxBuilder::new()
            .with_persistent_state(persistent)
            .build()
            .unwrap();
        proto.register("inc", |x: i32| x + 1).unwrap();
        let mut sb = proto
            .load_runtime()
            .unwrap()
            .load_module_from_buffer(
                br#"(module (import "env" "inc" (func $inc (param i32) (result i32)))
                (func (export "add") (param i32 i32) (result i32)
                    (i32.add (local.get 0) (local.get 1)))
                (func (export "inc_twice") (param i32) (result i32)
                    (call $inc (call $inc (local.get 0)))))"#,
            )
            .unwrap();
        for _ in 0..3 {
            let before = sb.guest().vm.entries();
            assert_eq!(sb.call_guest_function::<i32>("add", (1, 2)).unwrap(), 3);
            let after_add = sb.guest().vm.entries();
            assert_eq!(sb.call_guest_function::<i32>("inc_twice", 1).unwrap(), 3);
            let after_inc = sb.guest().vm.entries();
            assert_eq!(after_add - before, 1, "persistent: {persistent}");
            assert_eq!(after_inc - after_add, 3, "persistent: {persistent}");
        }
    }
}

#[test]
fn sandboxes_of_one_configuration_share_their_images() {
    let load = |module: &str| -> LoadedWasmSandbox {
        let mut proto = SandboxBuilder::new().build().unwrap();
        proto.register("answer", || 42).unwrap();
        proto
            .load_runtime()
            .unwrap()
            .load_module_from_buffer(module.as_bytes())
            .unwrap()
    };
    let same = |a: &Option<Arc<Snapshot>>, b: &Option<Arc<Snapshot>>| match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    let quiet = r#"(module (func (export "f") (result i32) i32.const 5))"#;
    let (a, b) = (load(quiet), load(quiet));
    let (a, b) = (a.guest(), b.guest());
    assert!(same(&a.runtime_snapshot, &b.runtime_snapshot));
    assert!(same(&a.module_snapshot, &b.module_snapshot));
    // A start function that asks the host: each sandbox loads it itself.
    let asking = r#"(module (import "env" "answer" (func $a (result i32)))
        (global $g (mut i32) (i32.const 0))
        (func $s (global.set $g (call $a))) (start $s))"#;
    let (c, d) = (load(asking), load(asking));
    let (c, d) = (c.guest(), d.guest());
    assert!(same(&c.runtime_snapshot, &a.runtime_snapshot));
    assert!(!same(&c.module_snapshot, &d.module_snapshot));
    // Test guests never share.
    let raw = || {
        let mut g = guest(RawGuest::new().send_output(&ready(), Port::Done));
        g.boot().unwrap();
        g
    };
    assert!(!same(&raw().runtime_snapshot, &raw().runtime_snapshot));
}

use super::outcalls::quiet;

fn guest(raw: RawGuest) -> Guest {
    Guest::new(raw.vm(), quiet(), false)
}

fn framed<T: Serialize>(msg: &T) -> Vec<u8> {
    encode_to_vec(msg).unwrap()
}

fn header(len: u32) -> Vec<u8> {
    let mut bytes = len.to_le_bytes().to_vec();
    bytes.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
    bytes
}

fn ready() -> Vec<u8> {
    framed(&Response::Ready {
        protocol_version: PROTOCOL_VERSION,
    })
}

/// Boots, expecting a protocol error, then checks the guest is poisoned.
fn boot_fails(mut g: Guest) -> ProtocolError {
    let err = g.boot().unwrap_err();
    assert!(matches!(g.boot(), Err(Error::Poisoned { .. })));
    assert!(matches!(
        g.call("f", Vec::new(), ValueType::Void),
        Err(Error::Poisoned { .. })
    ));
    match err {
        Error::Protocol(e) => e,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn a_well_behaved_raw_guest_boots() {
    let mut g = guest(RawGuest::new().send_output(&ready(), Port::Done).spin());
    g.boot().unwrap();
}

#[test]
fn garbage_instead_of_a_response_is_rejected() {
    let g = guest(RawGuest::new().send_output(&[0xab; 64], Port::Done));
    assert!(matches!(
        boot_fails(g),
        ProtocolError::Malformed {
            source: wire::WireError::BadMagic { .. },
            ..
        }
    ));
}

#[test]
fn a_length_beyond_the_buffer_is_rejected() {
    for len in [u32::MAX, layout().output.size as u32] {
        let g = guest(RawGuest::new().send_output(&header(len), Port::Done));
        assert!(matches!(
            boot_fails(g),
            ProtocolError::Malformed {
                source: wire::WireError::TooLarge { .. },
                ..
            }
        ));
    }
}

#[test]
fn a_malformed_payload_is_rejected() {
    let cases: [&[u8]; 4] = [
        &[0x7f],             // no such variant
        &[0x00],             // Ready without its version
        &[0x03, 0x00, 0x05], // Failed, its message promised but missing
        &[],                 // nothing at all
    ];
    for payload in cases {
        let mut msg = header(payload.len() as u32);
        msg.extend_from_slice(payload);
        let g = guest(RawGuest::new().send_output(&msg, Port::Done));
        assert!(
            matches!(
                boot_fails(g),
                ProtocolError::Malformed {
                    source: wire::WireError::Malformed(_),
                    ..
                }
            ),
            "{payload:?}"
        );
    }
    // A valid message with junk after it.
    let mut msg = ready();
    msg[0] += 2;
    msg.extend_from_slice(&[1, 2]);
    let g = guest(RawGuest::new().send_output(&msg, Port::Done));
    assert!(matches!(
        boot_fails(g),
        ProtocolError::Malformed {
            source: wire::WireError::TrailingBytes(2),
            ..
        }
    ));
}

#[test]
fn the_wrong_message_or_version_is_rejected() {
    let g = guest(RawGuest::new().send_output(&framed(&Response::ModuleLoaded), Port::Done));
    assert!(matches!(
        boot_fails(g),
        ProtocolError::UnexpectedMessage { .. }
    ));
    let other_version = framed(&Response::Ready {
        protocol_version: PROTOCOL_VERSION + 1,
    });
    let g = guest(RawGuest::new().send_output(&other_version, Port::Done));
    assert!(matches!(
        boot_fails(g),
        ProtocolError::VersionMismatch { .. }
    ));
    // An out-call where none is expected.
    let call = framed(&OutCall::ArtifactBuffer { addr: 0, len: 0 });
    let g = guest(RawGuest::new().send_output(&call, Port::OutCall));
    assert!(matches!(
        boot_fails(g),
        ProtocolError::UnexpectedMessage { .. }
    ));
}

#[test]
fn a_result_of_another_type_than_requested_is_rejected() {
    let wrong = framed(&Response::Returned(Value::I64(1)));
    let mut g = guest(
        RawGuest::new()
            .send_output(&ready(), Port::Done)
            .send_output(&wrong, Port::Done),
    );
    g.boot().unwrap();
    assert!(matches!(
        g.call("f", Vec::new(), ValueType::I32),
        Err(Error::Protocol(ProtocolError::UnexpectedMessage { .. }))
    ));
}

/// A guest that boots, then answers the module load with `call`.
fn load_with(call: OutCall) -> Result<()> {
    let mut g = guest(
        RawGuest::new()
            .send_output(&ready(), Port::Done)
            .send_output(&framed(&call), Port::OutCall)
            .send_output(&framed(&Response::ModuleLoaded), Port::Done),
    );
    g.boot().unwrap();
    g.load_module(&[7u8; 100], &[0; 32], &Arc::default())
}

#[test]
fn the_artifact_buffer_must_lie_in_the_heap_and_fit() {
    let heap = layout().heap;
    load_with(OutCall::ArtifactBuffer {
        addr: heap.addr,
        len: 100,
    })
    .unwrap();
    for (addr, len) in [
        (0x1000, 100),              // the GDT
        (layout().stack.addr, 100), // the stack
        (heap.end() - 50, 100),     // runs past the heap
        (u64::MAX - 10, 100),       // wraps around
    ] {
        assert!(
            matches!(
                load_with(OutCall::ArtifactBuffer { addr, len }),
                Err(Error::Protocol(ProtocolError::OutOfBounds { .. }))
            ),
            "{addr:#x}"
        );
    }
    assert!(matches!(
        load_with(OutCall::ArtifactBuffer {
            addr: heap.addr,
            len: 99
        }),
        Err(Error::Protocol(ProtocolError::WrongLength { .. }))
    ));
}

#[test]
fn the_artifact_buffer_is_filled_once_only() {
    let heap = layout().heap;
    let call = framed(&OutCall::ArtifactBuffer {
        addr: heap.addr,
        len: 4,
    });
    let mut g = guest(
        RawGuest::new()
            .send_output(&ready(), Port::Done)
            .send_output(&call, Port::OutCall)
            .send_output(&call, Port::OutCall),
    );
    g.boot().unwrap();
    assert!(matches!(
        g.load_module(&[1, 2, 3, 4], &[0; 32], &Arc::default()),
        Err(Error::Protocol(ProtocolError::UnexpectedMessage { .. }))
    ));
}

#[test]
fn an_abort_reports_its_reason() {
    let abort = framed(&Abort {
        code: ErrorCode::Panic,
        message: "boom",
    });
    let mut g = guest(RawGuest::new().send_output(&abort, Port::Abort));
    match g.boot() {
        Err(Error::GuestAborted { code, message }) => {
            assert_eq!((code, message.as_str()), (ErrorCode::Panic, "boom"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(g.boot(), Err(Error::Poisoned { reason }) if reason.contains("boom")));
    // Out of memory is its own error.
    let abort = framed(&Abort {
        code: ErrorCode::OutOfMemory,
        message: "no heap",
    });
    let mut g = guest(RawGuest::new().send_output(&abort, Port::Abort));
    assert!(matches!(g.boot(), Err(Error::GuestOutOfMemory { .. })));
}

#[test]
fn an_abort_with_garbage_is_still_an_abort() {
    let mut g = guest(RawGuest::new().send_output(&[0xff; 32], Port::Abort));
    match g.boot() {
        Err(Error::GuestAborted { code, message }) => {
            assert_eq!(code, ErrorCode::Other);
            assert!(message.contains("without a readable reason"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_fault_after_boot_is_undone_by_restoring_the_snapshot() {
    // Boots, then faults on every request: each call must see the same
    // fault, proving the VM went back to its post-boot state (otherwise
    // it would be stuck spinning in the exception stub).
    let mut g = guest(
        RawGuest::new()
            .send_output(&ready(), Port::Done)
            .code(&[0x0f, 0x0b]),
    );
    g.boot().unwrap();
    for _ in 0..3 {
        match g.call("f", Vec::new(), ValueType::Void) {
            Err(Error::GuestException(e)) => assert_eq!(e.vector, 6),
            other => panic!("{other:?}"),
        }
    }
    // So does a guest that breaks the protocol.
    let mut g = guest(
        RawGuest::new()
            .send_output(&ready(), Port::Done)
            .send_output(&[0xee; 40], Port::Done),
    );
    g.boot().unwrap();
    for _ in 0..3 {
        assert!(matches!(
            g.call("f", Vec::new(), ValueType::Void),
            Err(Error::Protocol(ProtocolError::Malformed { .. }))
        ));
    }
}

#[test]
fn a_guest_that_never_answers_is_stopped_by_the_time_limit() {
    let limits = crate::vm::CallLimits {
        time_limit: std::time::Duration::from_millis(100),
        cancel_wait: std::time::Duration::ZERO,
    };
    let raw = RawGuest::new().send_output(&ready(), Port::Done).spin();
    let mut g = Guest::new(raw.vm_with(limits), quiet(), false);
    g.boot().unwrap();
    for _ in 0..3 {
        assert!(matches!(
            g.call("f", Vec::new(), ValueType::Void),
            Err(Error::ExecutionCancelledByHost { .. })
        ));
    }
}

#[test]
fn a_guest_exception_poisons_the_guest() {
    let mut g = guest(RawGuest::new().code(&[0x0f, 0x0b]));
    assert!(matches!(g.boot(), Err(Error::GuestException(_))));
    assert!(matches!(g.boot(), Err(Error::Poisoned { reason }) if reason.contains("#UD")));
}

/// A guest with the largest output buffer that boots, then answers
/// the next request with `prefix` (a header claiming the whole buffer,
/// and the start of a message) on `port`: the rest of the buffer is
/// zeros, which decode as `Value::Void`s, or bytes of a `Vec<u8>`.
fn largest_buffer_guest(prefix: impl Fn(usize) -> Vec<u8>, port: Port) -> Guest {
    let sizes = crate::vm::layout::Sizes {
        output: SandboxBuilder::MAX_BUFFER_SIZE,
        ..crate::vm::testing::SIZES
    };
    let output = crate::vm::layout::Layout::new(&sizes).unwrap().output;
    let payload = output.size as usize - HEADER_LEN;
    let mut bytes = header(payload as u32);
    bytes.extend(prefix(payload));
    let ready = framed(&Response::Ready {
        protocol_version: PROTOCOL_VERSION,
    });
    let raw = RawGuest::new()
        .send(output.addr, &ready, Port::Done)
        .send(output.addr, &bytes, port);
    let mut g = Guest::new(
        raw.vm_sized(&sizes, crate::vm::CallLimits::default()),
        quiet(),
        false,
    );
    g.boot().unwrap();
    g
}

/// `head` followed by a varint count such that the message fills a
/// payload of `payload` bytes.
fn filling(head: &[u8], payload: usize) -> Vec<u8> {
    let mut count = payload - head.len();
    loop {
        let varint = encode_varint(count);
        let fitted = payload - head.len() - varint.len();
        if fitted == count {
            return [head, &varint].concat();
        }
        count = fitted;
    }
}

fn encode_varint(value: usize) -> Vec<u8> {
    postcard::to_allocvec(&value).unwrap()
}

#[test]
fn a_host_call_claiming_millions_of_arguments_allocates_nothing_for_them() {
    // CallHost (variant 1), module "env", function "f", then ~268 million
    // arguments that are each one zero byte (Void): decoded first, they
    // would take 32 bytes each, 8 GiB in all.
    let head = [
        &[1u8][..],
        &encode_varint(3),
        b"env",
        &encode_varint(1),
        b"f",
    ]
    .concat();
    // Unknown, then registered with two parameters.
    for register in [false, true] {
        let mut g = largest_buffer_guest(|payload| filling(&head, payload), Port::OutCall);
        if register {
            g.host_functions_mut().insert(
                host_functions::ImportName::env("f"),
                host_functions::Registered::new(|a: i32, b: i32| a + b),
            );
        }
        let (result, peak) =
            crate::allocations::peak_during(|| g.call("anything", Vec::new(), ValueType::Void));
        assert!(
            matches!(
                result,
                Err(Error::Protocol(ProtocolError::UnexpectedMessage { .. }))
            ),
            "{result:?}"
        );
        // The copy of the buffer, and little else.
        let buffer = SandboxBuilder::MAX_BUFFER_SIZE as usize;
        assert!(
            peak < buffer + buffer / 4,
            "{peak} bytes for a {buffer}-byte buffer"
        );
    }
}

#[test]
fn an_unexpected_message_is_quoted_without_formatting_it_whole() {
    // Returned (2) a Vec<u8> (9) as large as the buffer holds, where the
    // call asked for an i32: the error quotes it. Its Debug form would
    // take three bytes per byte (768 MiB).
    let mut g = largest_buffer_guest(|payload| filling(&[2, 9], payload), Port::Done);
    let (result, peak) =
        crate::allocations::peak_during(|| g.call("f", Vec::new(), ValueType::I32));
    match result {
        Err(Error::Protocol(ProtocolError::UnexpectedMessage { got, .. })) => {
            assert!(got.len() <= QUOTE_LIMIT + 3, "{} bytes", got.len());
            assert!(got.ends_with("..."), "{got}");
        }
        other => panic!("{other:?}"),
    }
    // The copy of the buffer and the decoded bytes: two buffers' worth.
    let buffer = SandboxBuilder::MAX_BUFFER_SIZE as usize;
    assert!(
        peak < 2 * buffer + buffer / 2,
        "{peak} bytes for a {buffer}-byte buffer"
    );
}

#[test]
fn host_calls_are_checked_against_the_registry_before_they_run() {
    let call = |function: &str, args: Vec<Value>| {
        framed(&OutCall::CallHost {
            module: String::from("env"),
            function: String::from(function),
            args,
        })
    };
    let cases = [
        call("missing", vec![]),
        call("add", vec![Value::I32(1)]),
        call("add", vec![Value::I32(1), Value::I64(2)]),
        call("add", vec![Value::I32(1), Value::I32(2), Value::I32(3)]),
    ];
    for message in cases {
        let mut g = guest(
            RawGuest::new()
                .send_output(&ready(), Port::Done)
                .send_output(&message, Port::OutCall),
        );
        g.host_functions_mut().insert(
            host_functions::ImportName::env("add"),
            host_functions::Registered::new(|a: i32, b: i32| -> i32 {
                panic!("called with {a} and {b}")
            }),
        );
        g.boot().unwrap();
        assert!(matches!(
            g.call("f", Vec::new(), ValueType::Void),
            Err(Error::Protocol(ProtocolError::UnexpectedMessage { .. }))
        ));
    }
}

#[test]
fn only_functions_the_host_knows_are_exported_get_metric_series() {
    // A guest that answers "returned" to anything it is asked.
    let returned = framed(&Response::Returned(Value::Void));
    let mut raw = RawGuest::new().send_output(&ready(), Port::Done);
    for _ in 0..4 {
        raw = raw.send_output(&returned, Port::Done);
    }
    let mut g = guest(raw);
    g.boot().unwrap();
    let mut exports = Exports::new();
    exports.insert(
        String::from("known_export_1a2b"),
        crate::compile::artifact::ExportedFunction {
            name: String::from("known_export_1a2b"),
            params: Vec::new(),
            results: Vec::new(),
        },
    );
    g.exports = Some(Arc::new(exports));
    for name in ["made_up_1a2b", "another_made_up_1a2b"] {
        assert!(matches!(
            g.call(name, Vec::new(), ValueType::Void),
            Err(Error::GuestFunctionNotFound { .. })
        ));
    }
    g.call("known_export_1a2b", Vec::new(), ValueType::Void)
        .unwrap();
    let series: Vec<String> = prometheus::gather()
        .iter()
        .flat_map(|family| family.get_metric().to_vec())
        .flat_map(|metric| metric.get_label().to_vec())
        .map(|label| label.value().to_owned())
        .filter(|value| value.ends_with("1a2b"))
        .collect();
    if cfg!(feature = "function_call_metrics") {
        assert_eq!(series, ["known_export_1a2b"]);
    } else {
        assert!(series.is_empty());
    }
}

#[test]
fn a_request_too_large_for_the_input_buffer_is_an_error() {
    let mut g = guest(
        RawGuest::new()
            .send_output(&ready(), Port::Done)
            .send_output(&framed(&Response::Returned(Value::Void)), Port::Done),
    );
    g.boot().unwrap();
    let name = "f".repeat(layout().input.size as usize);
    assert!(matches!(
        g.call(&name, Vec::new(), ValueType::Void),
        Err(Error::RequestTooLarge { .. })
    ));
    // Not the guest's fault: the guest is still usable.
    g.call("f", Vec::new(), ValueType::Void).unwrap();
}
