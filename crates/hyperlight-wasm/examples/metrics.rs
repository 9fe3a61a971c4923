//! Exercises every metric: many threads create, load, call, unload and
//! reload sandboxes; some calls are cancelled, some fail; then the metrics
//! are printed in the Prometheus text exposition format (CI checks them
//! with `promtool check metrics`).
//!
//! Run with `cargo run --release -p hyperlight-wasm --example metrics`.

use std::thread;

use hyperlight_wasm::{Error, Result, SandboxBuilder};
use prometheus::{Encoder, TextEncoder};

const MODULE: &str = r#"(module
  (import "env" "twice" (func $twice (param i32) (result i32)))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "via_host") (param i32) (result i32) (call $twice (local.get 0)))
  (func (export "spin") (loop $l (br $l))))"#;

fn worker(id: i32) -> Result<()> {
    for round in 0..3 {
        let mut proto = SandboxBuilder::new()
            .with_guest_function_call_max_execution_time_millis(100)
            .build()?;
        proto.register("twice", |x: i32| x * 2)?;
        let mut loaded = proto
            .load_runtime()?
            .load_module_from_buffer(MODULE.as_bytes())?;
        for i in 0..10 {
            loaded.call_guest_function::<i32>("add", (id, i))?;
            loaded.call_guest_function::<i32>("via_host", i)?;
        }
        // Some calls fail...
        if let Err(e) = loaded.call_guest_function::<i32>("div", (1, 0)) {
            assert!(matches!(e, Error::GuestTrap { .. }), "{e}");
        }
        // ...and some are cancelled by the time limit.
        if (id + round) % 2 == 0 {
            let e = loaded
                .call_guest_function::<()>("spin", ())
                .expect_err("an endless loop cannot finish");
            assert!(matches!(e, Error::ExecutionCancelledByHost { .. }), "{e}");
        }
        // Unload and reload.
        let mut loaded = loaded
            .unload_module()?
            .load_module_from_buffer(MODULE.as_bytes())?;
        loaded.call_guest_function::<i32>("add", (1, 2))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let workers: Vec<_> = (0..4).map(|id| thread::spawn(move || worker(id))).collect();
    for w in workers {
        w.join().expect("worker thread")?;
    }
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut out)
        .expect("encode metrics");
    print!("{}", String::from_utf8_lossy(&out));
    Ok(())
}
