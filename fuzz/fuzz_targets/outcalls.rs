//! Sequences of hostile messages (out-calls, responses, aborts, framed or
//! raw) from a raw guest against a real VM: the host must answer with a
//! result or a typed error, never panic or hang, and give the same answer
//! the second time (the guest's state is reset after every call).
#![no_main]

use arbitrary::Arbitrary;
use hyperlight_wasm::__fuzz::{Message, hostile_out_calls};

#[derive(Debug, Arbitrary)]
struct Input {
    messages: Vec<(u8, bool, Vec<u8>)>,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let messages: Vec<Message> = input
        .messages
        .into_iter()
        .take(32)
        .map(|(port, framed, bytes)| Message {
            port,
            framed,
            bytes,
        })
        .collect();
    let (first, second) = hostile_out_calls(&messages);
    assert_eq!(
        first, second,
        "two calls of one guest gave different results"
    );
});
