//! Entry points for the fuzz targets in `fuzz/` (feature `__fuzz`; not a
//! stable API): the host's own decoding and serving code, and real VMs
//! running raw guests, driven with bytes a fuzzer chooses.

use hyperlight_wasm_protocol::message::{Response, Value, ValueType};
use hyperlight_wasm_protocol::port::Port;
use hyperlight_wasm_protocol::wire::{self, HEADER_LEN, HEADER_MAGIC, encode_to_vec};

use super::host_functions::{ImportName, Registered};
use super::outcalls::{HostServices, quiet};
use super::{Guest, PROTOCOL_VERSION, errors};
use crate::vm::testing::{RawGuest, SIZES};

/// Registers the host functions the fuzzed guests may call: one that adds,
/// one that echoes a string, one that fails and one that panics.
fn register(functions: &mut super::host_functions::HostFunctions) {
    functions.insert(
        ImportName::env("add"),
        Registered::new(|a: i32, b: i32| a + b),
    );
    functions.insert(ImportName::env("echo"), Registered::new(|s: String| s));
    functions.insert(
        ImportName::env("fail"),
        Registered::new(|| -> Result<i32, String> { Err(String::from("refused")) }),
    );
    functions.insert(
        ImportName::env("panics"),
        Registered::new(|| -> i32 { panic!("a host function that panics") }),
    );
}

/// Treats `bytes` as the guest's output buffer and runs the host's decoding
/// of it: the header; the payload as a response, as an out-call (served,
/// when it decodes, against the functions of [`register`], with no WASI
/// grants), and as an abort message. The fuzzer's failures are panics and
/// allocations out of proportion to `bytes`.
pub fn guest_output(bytes: &[u8]) {
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let Ok(len) = wire::payload_len(header, bytes.len()) else {
        return;
    };
    let Some(payload) = rest.get(..len) else {
        panic!(
            "payload_len accepted {len} bytes where only {} follow",
            rest.len()
        );
    };
    let _ = wire::decode::<Response>(payload);
    let sleep = Box::new(|_: std::time::Duration| true);
    let mut services = HostServices::new(quiet(), sleep);
    register(services.functions_mut());
    if let Ok(call) = services.decode(payload) {
        let _ = services.serve(call, SIZES.input);
    }
    let _ = errors::abort_error(Ok(payload.to_vec()));
}

/// One message of a hostile guest: `bytes` copied to the output buffer
/// (after a valid header for them when `framed`), then an exit on `port`
/// (0: done, 1: out-call, 2: abort; anything else: the exception stubs'
/// port, which a guest may not use).
#[derive(Debug, Clone)]
pub struct Message {
    /// Which exit follows.
    pub port: u8,
    /// Whether a valid header precedes `bytes`.
    pub framed: bool,
    /// What the guest writes.
    pub bytes: Vec<u8>,
}

/// Boots a raw guest that, on every call, sends `messages` in order and
/// then answers 42, and calls it twice. Returns what each call gave, as
/// text: the host must neither panic nor hang, and (the state being reset
/// after every call) both calls must give the same.
pub fn hostile_out_calls(messages: &[Message]) -> (String, String) {
    let ready = encode_to_vec(&Response::Ready {
        protocol_version: PROTOCOL_VERSION,
    })
    .expect("the ready message encodes");
    let answer = encode_to_vec(&Response::Returned(Value::I32(42))).expect("the answer encodes");
    let room = usize::try_from(SIZES.output).unwrap_or(usize::MAX);
    let mut raw = RawGuest::new().send_output(&ready, Port::Done);
    // The raw guest's code room bounds how many messages fit.
    for message in messages.iter().take(256) {
        let mut bytes = Vec::new();
        if message.framed {
            let len = u32::try_from(message.bytes.len()).unwrap_or(u32::MAX);
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        }
        bytes.extend_from_slice(&message.bytes);
        bytes.truncate(room);
        let port = match message.port % 4 {
            0 => Port::Done,
            1 => Port::OutCall,
            2 => Port::Abort,
            _ => Port::Exception,
        };
        raw = raw.send_output(&bytes, port);
    }
    let raw = raw.send_output(&answer, Port::Done);
    let limits = crate::vm::CallLimits {
        time_limit: std::time::Duration::from_secs(2),
        cancel_wait: std::time::Duration::from_millis(100),
    };
    let mut guest = Guest::new(raw.vm_with(limits), quiet(), false);
    register(guest.host_functions_mut());
    // Booting only reads the ready message, which comes first.
    if let Err(e) = guest.boot() {
        let failed = format!("boot: {e:?}");
        return (failed.clone(), failed);
    }
    let first = format!("{:?}", guest.call("f", Vec::new(), ValueType::I32));
    let second = format!("{:?}", guest.call("f", Vec::new(), ValueType::I32));
    (first, second)
}
