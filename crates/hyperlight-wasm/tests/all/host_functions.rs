//! Host functions: registration, errors and panics, import checks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use hyperlight_wasm::{Error, SandboxBuilder};

use crate::common::{require_kvm, runtime};

const CALLS_HOST: &str = r#"(module
  (import "env" "check" (func $check (param i32) (result i32)))
  (func (export "call_check") (param i32) (result i32) (call $check (local.get 0))))"#;

fn with_check(
    check: impl FnMut(i32) -> Result<i32, String> + Send + 'static,
) -> hyperlight_wasm::LoadedWasmSandbox {
    require_kvm();
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto.register("check", check).unwrap();
    proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(CALLS_HOST.as_bytes())
        .unwrap()
}

#[test]
fn a_host_function_keeps_state_between_calls() {
    require_kvm();
    let counter = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&counter);
    let mut proto = SandboxBuilder::new().build().unwrap();
    let mut total = 0;
    proto
        .register("check", move |x: i32| -> Result<i32, String> {
            seen.fetch_add(1, Ordering::SeqCst);
            total += x;
            Ok(total)
        })
        .unwrap();
    let mut sb = proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(CALLS_HOST.as_bytes())
        .unwrap();
    assert_eq!(sb.call_guest_function::<i32>("call_check", 5).unwrap(), 5);
    assert_eq!(sb.call_guest_function::<i32>("call_check", 7).unwrap(), 12);
    assert_eq!(counter.load(Ordering::SeqCst), 2);
}

#[test]
fn a_host_function_error_fails_the_call_naming_the_function() {
    let mut sb = with_check(|x| {
        if x < 0 {
            Err(format!("negative: {x}"))
        } else {
            Ok(x * 2)
        }
    });
    assert_eq!(sb.call_guest_function::<i32>("call_check", 21).unwrap(), 42);
    match sb.call_guest_function::<i32>("call_check", -3) {
        Err(Error::HostFunctionFailed { function, source }) => {
            assert_eq!(function, "check");
            assert_eq!(source.to_string(), "negative: -3");
        }
        other => panic!("{other:?}"),
    }
    // The sandbox is fine afterwards.
    assert_eq!(sb.call_guest_function::<i32>("call_check", 1).unwrap(), 2);
}

#[test]
fn a_panicking_host_function_fails_the_call_and_the_host_survives() {
    let mut sb = with_check(|x| {
        if x == 13 {
            panic!("unlucky {x}");
        }
        Ok(x)
    });
    match sb.call_guest_function::<i32>("call_check", 13) {
        Err(Error::HostFunctionPanicked { function, message }) => {
            assert_eq!(function, "check");
            assert_eq!(message, "unlucky 13");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sb.call_guest_function::<i32>("call_check", 14).unwrap(), 14);
}

#[test]
fn registering_a_name_twice_is_an_error() {
    require_kvm();
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto.register("f", |x: i32| x).unwrap();
    match proto.register("f", |x: i64| x) {
        Err(Error::HostFunctionAlreadyRegistered { name }) => assert_eq!(name, "f"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn host_functions_can_take_and_return_strings_and_bytes() {
    require_kvm();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto
        .register("describe", move |name: String, data: Vec<u8>, n: u64| {
            seen.lock().unwrap().push(name.clone());
            format!("{name}:{}:{n}", data.len())
        })
        .unwrap();
    let module = crate::common::with_allocator(
        r#"(import "env" "describe" (func $d (param i32 i32 i32 i64) (result i32)))
           (data (i32.const 16) "héllo\00")
           (func (export "go") (result i32)
             (call $d (i32.const 16) (i32.const 16) (i32.const 3) (i64.const -1)))"#,
    );
    let mut sb = proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(module.as_bytes())
        .unwrap();
    let got: String = sb.call_guest_function("go", ()).unwrap();
    assert_eq!(got, format!("héllo:3:{}", u64::MAX));
    assert_eq!(*log.lock().unwrap(), vec![String::from("héllo")]);
}

#[test]
fn an_import_with_another_signature_is_rejected_naming_it() {
    require_kvm();
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto.register("check", |x: i64| x).unwrap();
    match proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(CALLS_HOST.as_bytes())
    {
        Err(Error::ImportTypeMismatch { message }) => {
            assert!(message.contains("env::check"), "{message}");
            assert!(message.contains("(i32) -> (i32)"), "{message}");
            assert!(message.contains("(i64) -> (i64)"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_host_function_is_rejected_naming_it() {
    match runtime().load_module_from_buffer(CALLS_HOST.as_bytes()) {
        Err(Error::UnknownImport { message }) => {
            assert!(message.contains("env::check"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A name that is not part of WASI preview 1.
    let wasi = r#"(module (import "wasi_snapshot_preview1" "path_open2"
        (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32))))"#;
    match runtime().load_module_from_buffer(wasi.as_bytes()) {
        Err(Error::UnknownImport { message }) => {
            assert!(
                message.contains("wasi_snapshot_preview1::path_open2"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let other = r#"(module (import "somewhere" "memory" (memory 1)))"#;
    assert!(matches!(
        runtime().load_module_from_buffer(other.as_bytes()),
        Err(Error::UnknownImport { .. })
    ));
}

#[test]
fn host_functions_run_during_the_start_function() {
    require_kvm();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto
        .register("check", move |x: i32| {
            seen.fetch_add(1, Ordering::SeqCst);
            x
        })
        .unwrap();
    let module = r#"(module
      (import "env" "check" (func $check (param i32) (result i32)))
      (func $start (drop (call $check (i32.const 1))))
      (start $start))"#;
    proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(module.as_bytes())
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn a_panicking_print_function_fails_the_call_and_the_sandbox_recovers() {
    require_kvm();
    let mut proto = SandboxBuilder::new()
        .with_host_print_fn(|text| {
            if text.contains("boom") {
                panic!("the print function saw {text:?}");
            }
        })
        .build()
        .unwrap();
    proto.register("unused", || ()).unwrap();
    let module = crate::common::with_allocator(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
           (func (export "say") (param $s i32) (param $n i32) (result i32)
             (i32.store (i32.const 0) (local.get $s))
             (i32.store (i32.const 4) (local.get $n))
             (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))"#,
    );
    let mut sb = proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(module.as_bytes())
        .unwrap();
    match sb.call_guest_function::<i32>("say", &b"boom\n"[..]) {
        Err(Error::HostFunctionPanicked { function, message }) => {
            assert_eq!(function, "<print function>");
            assert!(message.contains("boom"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sb.call_guest_function::<i32>("say", &b"fine\n"[..])
            .unwrap(),
        0
    );
}

#[test]
fn a_host_result_too_large_for_the_input_buffer_fails_only_that_call() {
    require_kvm();
    let mut proto = SandboxBuilder::new()
        .with_persistent_state(true)
        .build()
        .unwrap();
    proto
        .register("make", |n: i32| "x".repeat(n as usize))
        .unwrap();
    let module = crate::common::with_allocator(
        r#"(import "env" "make" (func $make (param i32) (result i32)))
           (func (export "len") (param i32) (result i32) (call $strlen (call $make (local.get 0))))"#,
    );
    let mut sb = proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(module.as_bytes())
        .unwrap();
    assert!(matches!(
        sb.call_guest_function::<i32>("len", 1 << 20),
        Err(Error::RequestTooLarge { .. })
    ));
    // The next call runs as itself, not as the rest of the failed one.
    assert_eq!(sb.call_guest_function::<i32>("len", 10).unwrap(), 10);
}
