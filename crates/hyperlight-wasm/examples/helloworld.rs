//! Loads a module into a fresh micro-VM sandbox, calls two of its exported
//! functions and prints the results.
//!
//! Run with `cargo run --release -p hyperlight-wasm --example helloworld`.

use std::time::Instant;

use hyperlight_wasm::{Result, SandboxBuilder};

fn main() -> Result<()> {
    let module = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/helloworld.wat");

    let start = Instant::now();
    let proto = SandboxBuilder::new().build()?;
    let built = start.elapsed();
    let sandbox = proto.load_runtime()?;
    let runtime = start.elapsed();
    let mut sandbox = sandbox.load_module(module)?;
    let loaded = start.elapsed();
    println!(
        "sandbox ready in {:.2?} (build {:.2?}, runtime {:.2?}, module {:.2?})",
        loaded,
        built,
        runtime - built,
        loaded - runtime
    );

    let start = Instant::now();
    let sum: i32 = sandbox.call_guest_function("add", (40, 2))?;
    println!("add(40, 2) = {sum}  ({:.2?})", start.elapsed());
    assert_eq!(sum, 42);

    let start = Instant::now();
    let fib: i64 = sandbox.call_guest_function("fib", 30i64)?;
    println!("fib(30) = {fib}  ({:.2?})", start.elapsed());
    assert_eq!(fib, 832_040);
    Ok(())
}
