//! The API a wasmtime user expects: exports listed from the host, typed
//! functions checked once, cloneable builders, `Duration` limits and the
//! poisoned state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyperlight_wasm::{Error, SandboxBuilder, WasmType};

use crate::common::{loaded, require_kvm};

const MODULE: &str = r#"(module
    (memory (export "memory") 1)
    (func (export "add") (param i32 i32) (result i32)
        (i32.add (local.get 0) (local.get 1)))
    (func (export "mix") (param i64 f32 f64))
    (func (export "spin") (loop $l (br $l)))
    (global (export "not_a_function") i32 (i32.const 0)))"#;

#[test]
fn exports_list_functions_with_their_signatures() {
    let sandbox = loaded(MODULE);
    let exports: Vec<(String, Vec<WasmType>, Vec<WasmType>)> = sandbox
        .exports()
        .iter()
        .map(|e| {
            (
                e.name().to_owned(),
                e.params().to_vec(),
                e.results().to_vec(),
            )
        })
        .collect();
    assert_eq!(
        exports,
        [
            (
                String::from("add"),
                vec![WasmType::I32, WasmType::I32],
                vec![WasmType::I32]
            ),
            (
                String::from("mix"),
                vec![WasmType::I64, WasmType::F32, WasmType::F64],
                vec![]
            ),
            (String::from("spin"), vec![], vec![]),
        ]
    );
}

#[test]
fn typed_functions_are_checked_once_and_called_many_times() {
    let mut sandbox = loaded(MODULE);
    let add = sandbox.typed_function::<(i32, i32), i32>("add").unwrap();
    for i in 0..3 {
        assert_eq!(add.call(&mut sandbox, (i, 40)).unwrap(), i + 40);
    }
    // u32 and bool travel as i32 too.
    let add_u = sandbox.typed_function::<(u32, bool), u32>("add").unwrap();
    assert_eq!(add_u.call(&mut sandbox, (41, true)).unwrap(), 42);
    let mix = sandbox
        .typed_function::<(i64, f32, f64), ()>("mix")
        .unwrap();
    mix.call(&mut sandbox, (1, 2.0, 3.0)).unwrap();
}

#[test]
fn typed_functions_that_do_not_fit_are_refused_before_any_call() {
    let sandbox = loaded(MODULE);
    assert!(matches!(
        sandbox.typed_function::<(), ()>("missing"),
        Err(Error::GuestFunctionNotFound { function }) if function == "missing"
    ));
    assert!(matches!(
        sandbox.typed_function::<(), ()>("not_a_function"),
        Err(Error::GuestFunctionNotFound { .. })
    ));
    assert!(matches!(
        sandbox.typed_function::<(i64, i32), i32>("add"),
        Err(Error::GuestFunctionParameterTypeMismatch { .. })
    ));
    assert!(matches!(
        sandbox.typed_function::<i32, i32>("add"),
        Err(Error::GuestFunctionParameterCountMismatch { .. })
    ));
    assert!(matches!(
        sandbox.typed_function::<(i32, i32), f64>("add"),
        Err(Error::GuestFunctionReturnTypeMismatch { .. })
    ));
    assert!(matches!(
        sandbox.typed_function::<(i32, i32), ()>("add"),
        Err(Error::GuestFunctionReturnTypeMismatch { .. })
    ));
}

#[test]
fn a_cloned_builder_builds_alike_and_shares_its_print_function() {
    require_kvm();
    let printed = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&printed);
    let builder = SandboxBuilder::new()
        .with_max_execution_time(Duration::from_millis(100))
        .with_host_print_fn(move |text| sink.lock().unwrap().push_str(text));
    let wat = r#"(module
        (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 16) "hi ")
        (func (export "say")
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const 3))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
        (func (export "spin") (loop $l (br $l))))"#;
    for b in [builder.clone(), builder] {
        let mut sandbox = b
            .build()
            .unwrap()
            .load_runtime()
            .unwrap()
            .load_module_from_buffer(wat.as_bytes())
            .unwrap();
        sandbox.call_guest_function::<()>("say", ()).unwrap();
        // The Duration limit holds for both.
        match sandbox.call_guest_function::<()>("spin", ()) {
            Err(Error::ExecutionCancelledByHost { reason }) => {
                assert_eq!(
                    reason,
                    hyperlight_wasm::CancelReason::TimeLimit(Duration::from_millis(100))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!sandbox.is_poisoned(), "a cancellation does not poison");
    }
    assert_eq!(*printed.lock().unwrap(), "hi hi ");
}

#[test]
fn traps_and_faults_do_not_poison() {
    let mut sandbox = loaded(
        r#"(module (func (export "trap") unreachable)
            (func (export "ok") (result i32) i32.const 1))"#,
    );
    assert!(matches!(
        sandbox.call_guest_function::<()>("trap", ()),
        Err(Error::GuestTrap { .. })
    ));
    assert!(!sandbox.is_poisoned());
    assert_eq!(sandbox.call_guest_function::<i32>("ok", ()).unwrap(), 1);
}
