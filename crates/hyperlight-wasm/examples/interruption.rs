//! Untrusted code must never hold the host hostage: a runaway call killed
//! from another thread, a call stopped by its time limit, and the sandbox
//! used again after each.
//!
//! Run with `cargo run --release -p hyperlight-wasm --example interruption`.

use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use hyperlight_wasm::{Error, Result, SandboxBuilder};

const MODULE: &str = r#"(module
  (import "env" "started" (func $started))
  (func (export "runaway") (call $started) (loop $forever (br $forever)))
  (func (export "spin") (loop $forever (br $forever)))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))"#;

fn main() -> Result<()> {
    let (started_tx, started) = mpsc::channel();
    let mut proto = SandboxBuilder::new()
        .with_guest_function_call_max_execution_time_millis(200)
        .build()?;
    proto.register("started", move || {
        let _ = started_tx.send(());
    })?;
    let mut sandbox = proto
        .load_runtime()?
        .load_module_from_buffer(MODULE.as_bytes())?;

    // 1. Killed from another thread once the guest is running.
    let handle = sandbox.interrupt_handle();
    let killer = thread::spawn(move || {
        started.recv().expect("the call starts");
        let at = Instant::now();
        let stopped = handle.kill();
        (stopped, at)
    });
    let result = sandbox.call_guest_function::<()>("runaway", ());
    let (stopped, killed_at) = killer.join().expect("killer thread");
    match result {
        Err(e @ Error::ExecutionCancelledByHost { .. }) => println!(
            "runaway call: {e} (stopped: {stopped}, {:.0?} after the kill)",
            killed_at.elapsed()
        ),
        other => panic!("runaway call: expected a cancellation, got {other:?}"),
    }
    let sum = sandbox.call_guest_function::<i32>("add", (1, 2))?;
    println!("add(1, 2) afterwards = {sum}");
    assert_eq!(sum, 3);

    // 2. Stopped by the 200 ms time limit.
    let start = Instant::now();
    match sandbox.call_guest_function::<()>("spin", ()) {
        Err(e @ Error::ExecutionCancelledByHost { .. }) => {
            println!("spinning call: {e} (after {:.0?})", start.elapsed())
        }
        other => panic!("spinning call: expected a cancellation, got {other:?}"),
    }
    let sum = sandbox.call_guest_function::<i32>("add", (20, 22))?;
    println!("add(20, 22) afterwards = {sum}");
    assert_eq!(sum, 42);
    Ok(())
}
