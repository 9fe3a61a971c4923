//! Registers host functions of several types and calls a module that uses
//! them: numbers, strings, byte buffers, a fallible function, and WASI
//! printing captured by a custom print function.
//!
//! Run with `cargo run --release -p hyperlight-wasm --example hostfuncs`.

use std::sync::{Arc, Mutex};

use hyperlight_wasm::{Error, Result, SandboxBuilder};

/// The module: imports the host functions below from module `env` and
/// exports functions that call them.
const MODULE: &str = r#"
(module
  (import "env" "add" (func $add (param i32 i32) (result i32)))
  (import "env" "scale" (func $scale (param f64 f64) (result f64)))
  (import "env" "greet" (func $greet (param i32) (result i32)))
  (import "env" "checksum" (func $checksum (param i32 i32) (result i64)))
  (import "env" "parse" (func $parse (param i32) (result i64)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "world\00")
  (data (i32.const 32) "\01\02\03\04\05")
  (data (i32.const 48) "printed through WASI\0a")
  (global $heap (mut i32) (i32.const 65536))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "free") (param i32))
  (func (export "sum") (param i32 i32) (result i32) (call $add (local.get 0) (local.get 1)))
  (func (export "area") (param f64) (result f64) (call $scale (local.get 0) (local.get 0)))
  (func (export "hello") (result i32) (call $greet (i32.const 16)))
  (func (export "check") (result i64) (call $checksum (i32.const 32) (i32.const 5)))
  (func (export "parse") (param i32) (result i64) (call $parse (local.get 0)))
  (func (export "say")
    (i32.store (i32.const 0) (i32.const 48))
    (i32.store (i32.const 4) (i32.const 21))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
)
"#;

fn main() -> Result<()> {
    let printed = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&printed);
    let mut proto = SandboxBuilder::new()
        .with_host_print_fn(move |text| sink.lock().expect("print lock").push_str(text))
        .build()?;

    proto.register("add", |a: i32, b: i32| a + b)?;
    proto.register("scale", |x: f64, factor: f64| x * factor)?;
    proto.register("greet", |name: String| format!("Hello, {name}!"))?;
    proto.register("checksum", |data: Vec<u8>| {
        data.iter().map(|b| i64::from(*b)).sum::<i64>()
    })?;
    proto.register("parse", |text: String| text.trim().parse::<i64>())?;

    let mut sandbox = proto
        .load_runtime()?
        .load_module_from_buffer(MODULE.as_bytes())?;

    let sum = sandbox.call_guest_function::<i32>("sum", (2, 3))?;
    println!("sum(2, 3) = {sum}");
    assert_eq!(sum, 5);
    let area = sandbox.call_guest_function::<f64>("area", 1.5)?;
    println!("area(1.5) = {area}");
    assert_eq!(area, 2.25);
    let hello = sandbox.call_guest_function::<String>("hello", ())?;
    println!("hello() = {hello:?}");
    assert_eq!(hello, "Hello, world!");
    let check = sandbox.call_guest_function::<i64>("check", ())?;
    println!("check() = {check}");
    assert_eq!(check, 15);
    let parsed = sandbox.call_guest_function::<i64>("parse", " 42 ")?;
    println!("parse(\" 42 \") = {parsed}");
    assert_eq!(parsed, 42);
    match sandbox.call_guest_function::<i64>("parse", "forty-two") {
        Err(Error::HostFunctionFailed { function, source }) => {
            println!("parse(\"forty-two\") failed in host function `{function}`: {source}");
            assert_eq!(function, "parse");
        }
        other => panic!("parse(\"forty-two\") should fail in the host, got {other:?}"),
    }
    sandbox.call_guest_function::<()>("say", ())?;
    let printed = printed.lock().expect("print lock").clone();
    print!("the module printed: {printed}");
    assert_eq!(printed, "printed through WASI\n");
    Ok(())
}
