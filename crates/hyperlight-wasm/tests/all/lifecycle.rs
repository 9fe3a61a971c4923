//! The sandbox lifecycle and calls that succeed.

use std::thread;

use hyperlight_wasm::{Error, SandboxBuilder, compile_module, is_hypervisor_present};

use crate::common::{BASIC, fixture, loaded, require_kvm, runtime};

#[test]
fn hypervisor_is_present() {
    require_kvm();
    assert!(is_hypervisor_present());
}

#[test]
fn i32_and_i64_round_trip_at_their_extremes() {
    let mut sandbox = loaded(BASIC);
    for v in [0, 1, -1, i32::MIN, i32::MAX, 0x1234_5678] {
        assert_eq!(sandbox.call_guest_function::<i32>("id_i32", v).unwrap(), v);
    }
    for v in [0, 1, -1, i64::MIN, i64::MAX, 0x1234_5678_9abc_def0] {
        assert_eq!(sandbox.call_guest_function::<i64>("id_i64", v).unwrap(), v);
    }
    assert_eq!(
        sandbox.call_guest_function::<i32>("add", (40, 2)).unwrap(),
        42
    );
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("add", (i32::MAX, 1))
            .unwrap(),
        i32::MIN
    );
    assert_eq!(
        sandbox
            .call_guest_function::<i64>("add_i64", (i64::MAX - 5, 5i64))
            .unwrap(),
        i64::MAX
    );
    sandbox.call_guest_function::<()>("nothing", ()).unwrap();
}

#[test]
fn recursive_fib_is_computed_in_the_guest() {
    let mut sandbox = loaded(BASIC);
    let expected = [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55];
    for (n, want) in expected.iter().enumerate() {
        assert_eq!(
            sandbox.call_guest_function::<i32>("fib", n as i32).unwrap(),
            *want
        );
    }
    assert_eq!(
        sandbox.call_guest_function::<i32>("fib", 25).unwrap(),
        75025
    );
}

#[test]
fn the_example_fixture_loads_from_a_file() {
    require_kvm();
    let mut sandbox = runtime().load_module(fixture("helloworld.wat")).unwrap();
    assert_eq!(
        sandbox.call_guest_function::<i64>("fib", 20i64).unwrap(),
        6765
    );
    assert_eq!(
        sandbox.call_guest_function::<i32>("add", (2, 3)).unwrap(),
        5
    );
}

#[test]
fn a_missing_module_file_is_a_read_error() {
    let err = runtime()
        .load_module(fixture("no-such-module.wasm"))
        .unwrap_err();
    match err {
        Error::ReadModule { path, source } => {
            assert!(path.ends_with("no-such-module.wasm"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_modules_load_in_sequence_into_one_sandbox() {
    let first =
        wat::parse_str(r#"(module (func (export "which") (result i32) i32.const 1))"#).unwrap();
    let second = wat::parse_str(
        r#"(module (func (export "other") (result i32) i32.const 2)
                   (func (export "which") (result i32) i32.const 22))"#,
    )
    .unwrap();
    let mut sandbox = runtime().load_module_from_buffer(&first).unwrap();
    assert_eq!(sandbox.call_guest_function::<i32>("which", ()).unwrap(), 1);
    let mut sandbox = sandbox
        .unload_module()
        .unwrap()
        .load_module_from_buffer(&second)
        .unwrap();
    assert_eq!(sandbox.call_guest_function::<i32>("which", ()).unwrap(), 22);
    assert_eq!(sandbox.call_guest_function::<i32>("other", ()).unwrap(), 2);
    // And back to the first, many times: nothing leaks between loads.
    let mut wasm = sandbox.unload_module().unwrap();
    for _ in 0..20 {
        let mut loaded = wasm.load_module_from_buffer(&first).unwrap();
        assert_eq!(loaded.call_guest_function::<i32>("which", ()).unwrap(), 1);
        wasm = loaded.unload_module().unwrap();
    }
}

#[test]
fn a_precompiled_module_loads_and_runs() {
    require_kvm();
    let artifact = compile_module(BASIC.as_bytes()).unwrap();
    // SAFETY: produced just now by this build's compile_module.
    let mut sandbox = unsafe { runtime().load_precompiled_module_from_buffer(&artifact) }.unwrap();
    assert_eq!(sandbox.call_guest_function::<i32>("fib", 15).unwrap(), 610);
}

#[test]
fn many_sandboxes_run_at_once_in_many_threads() {
    require_kvm();
    let threads: Vec<_> = (0..6)
        .map(|t| {
            thread::spawn(move || {
                let mut sandbox = loaded(BASIC);
                for i in 0..50 {
                    let got: i32 = sandbox.call_guest_function("add", (t * 1000, i)).unwrap();
                    assert_eq!(got, t * 1000 + i);
                }
                sandbox.call_guest_function::<i32>("fib", 20).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 6765);
    }
}

#[test]
fn a_sandbox_can_move_between_threads() {
    let mut sandbox = loaded(BASIC);
    assert_eq!(
        sandbox.call_guest_function::<i32>("add", (1, 1)).unwrap(),
        2
    );
    let mut sandbox = thread::spawn(move || {
        assert_eq!(
            sandbox.call_guest_function::<i32>("add", (2, 2)).unwrap(),
            4
        );
        sandbox
    })
    .join()
    .unwrap();
    assert_eq!(
        sandbox.call_guest_function::<i32>("add", (3, 3)).unwrap(),
        6
    );
}

#[test]
fn custom_sizes_work() {
    require_kvm();
    let mut sandbox = SandboxBuilder::new()
        .with_guest_heap_size(SandboxBuilder::MIN_GUEST_HEAP_SIZE)
        .with_guest_stack_size(SandboxBuilder::MIN_GUEST_STACK_SIZE)
        .with_guest_input_buffer_size(SandboxBuilder::MIN_BUFFER_SIZE)
        .with_guest_output_buffer_size(SandboxBuilder::MIN_BUFFER_SIZE)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(BASIC.as_bytes())
        .unwrap();
    assert_eq!(sandbox.call_guest_function::<i32>("fib", 10).unwrap(), 55);
}

#[test]
fn dropping_sandboxes_in_every_state_is_clean() {
    require_kvm();
    for _ in 0..10 {
        drop(SandboxBuilder::new().build().unwrap());
        drop(runtime());
        drop(loaded(BASIC));
    }
}
