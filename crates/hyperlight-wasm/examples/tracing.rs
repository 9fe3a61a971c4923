//! What hyperlight-wasm logs: `tracing` spans for every sandbox transition
//! and guest call, shown here with `tracing-subscriber` at `debug`.
//!
//! Run with `cargo run --release -p hyperlight-wasm --example tracing`; `RUST_LOG`-style
//! filtering is the subscriber's business (here: everything at `debug`).

use std::io::Write;
use std::sync::{Arc, Mutex};

use hyperlight_wasm::{Error, Result, SandboxBuilder};

/// Collects what the subscriber writes, so that the example can check it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(bytes)?;
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn main() -> Result<()> {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mut sandbox = SandboxBuilder::new()
        .build()?
        .load_runtime()?
        .load_module_from_buffer(
            br#"(module
                (func (export "add") (param i32 i32) (result i32)
                    (i32.add (local.get 0) (local.get 1)))
                (func (export "boom") unreachable))"#,
        )?;
    let sum: i32 = sandbox.call_guest_function("add", (40, 2))?;
    println!("add(40, 2) = {sum}");
    assert_eq!(sum, 42);
    match sandbox.call_guest_function::<()>("boom", ()) {
        Err(Error::GuestTrap { .. }) => println!("boom trapped, as it should"),
        other => panic!("boom should trap, got {other:?}"),
    }
    sandbox.unload_module()?;

    let log = String::from_utf8_lossy(&captured.0.lock().expect("log lock")).into_owned();
    // Each span as the subscriber names it where it closes: `name:` or
    // `name{fields}:` at the start of the span list.
    for span in [
        " build:",
        " load_runtime:",
        " load_module{",
        " call_guest_function{",
        " unload_module:",
    ] {
        assert!(log.contains(span), "no `{span}` span in the log:\n{log}");
    }
    assert!(log.contains("guest request failed"), "{log}");
    Ok(())
}
