//! Arbitrary bytes as the guest's output buffer, through the host's real
//! decoding (and, for out-calls that decode, serving) code, without a VM.
//! A panic, or an allocation out of proportion to the input (libFuzzer's
//! `-rss_limit_mb` and `-malloc_limit_mb`), is a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    hyperlight_wasm::__fuzz::guest_output(bytes);
});
