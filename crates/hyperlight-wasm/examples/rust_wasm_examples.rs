//! Builds the Rust module in `fixtures/rust-wasm` for wasm32-wasip1 (with
//! cargo; `scripts/setup` installs the target), loads it, and calls its
//! exports: strings, buffers, a host function, WASI printing and clocks.
//!
//! Run with `cargo run --release -p hyperlight-wasm --example rust_wasm_examples`.

#[path = "../fixtures/fixtures.rs"]
mod fixtures;

use hyperlight_wasm::{Result, SandboxBuilder};

fn main() -> Result<()> {
    let module = fixtures::rust_samples();
    println!("built the Rust module: {} bytes of wasm", module.len());

    let mut proto = SandboxBuilder::new().build()?;
    proto.register("HostAdd", |a: i32, b: i32| a + b)?;
    let mut sandbox = proto.load_runtime()?.load_module_from_buffer(module)?;

    let greeting: String = sandbox.call_guest_function("Greet", "hyperlight")?;
    println!("Greet returned {greeting:?}");
    assert_eq!(greeting, "Hello from Rust, hyperlight!");
    let reversed: Vec<u8> = sandbox.call_guest_function("Reverse", &b"stressed"[..])?;
    println!(
        "Reverse(\"stressed\") = {:?}",
        String::from_utf8_lossy(&reversed)
    );
    assert_eq!(reversed, b"desserts");
    let sum = sandbox.call_guest_function::<i32>("AddViaHost", (40, 2))?;
    println!("AddViaHost(40, 2) = {sum}");
    assert_eq!(sum, 42);
    let total = sandbox.call_guest_function::<u64>("SumVec", 1000u32)?;
    println!("SumVec(1000) = {total}");
    assert_eq!(total, 499_500);
    let now = sandbox.call_guest_function::<u64>("UnixTime", ())?;
    println!("UnixTime() = {now}");
    // After 2020 and before 2100: the guest reads the host's clock.
    assert!((1_577_836_800..4_102_444_800).contains(&now), "{now}");
    Ok(())
}
