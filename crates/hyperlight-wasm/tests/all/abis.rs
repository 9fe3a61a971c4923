//! Modules that are not shaped like the default: host functions imported
//! from other modules than `env`, allocators and memories under other
//! names, input written into the module's memory by the host.

use hyperlight_wasm::{Error, ModuleAbi, SandboxBuilder};

use crate::common::{loaded, require_kvm};

#[test]
fn host_functions_can_live_in_any_import_module() {
    require_kvm();
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto.register("add", |a: i32, b: i32| a + b).unwrap();
    proto
        .register_in("spectest", "add", |a: i32, b: i32| a * b)
        .unwrap();
    proto
        .register_in("emscripten", "greet", |name: String| format!("hi {name}"))
        .unwrap();
    // The same name twice in one module is refused, naming both.
    match proto.register_in("spectest", "add", |a: i32| a) {
        Err(Error::HostFunctionAlreadyRegistered { name }) => assert_eq!(name, "spectest::add"),
        other => panic!("{other:?}"),
    }
    let mut sandbox = proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(
            br#"(module
                (import "env" "add" (func $add (param i32 i32) (result i32)))
                (import "spectest" "add" (func $mul (param i32 i32) (result i32)))
                (func (export "both") (param i32 i32) (result i32)
                    (i32.add
                        (call $add (local.get 0) (local.get 1))
                        (call $mul (local.get 0) (local.get 1)))))"#,
        )
        .unwrap();
    // (3 + 4) + (3 * 4)
    assert_eq!(
        sandbox.call_guest_function::<i32>("both", (3, 4)).unwrap(),
        19
    );
}

#[test]
fn an_import_from_a_module_without_such_a_function_names_it() {
    require_kvm();
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto.register("f", || 1i32).unwrap();
    let result = proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(br#"(module (import "host" "f" (func (result i32))))"#);
    match result {
        Err(Error::UnknownImport { message }) => {
            assert!(message.contains("host::f"), "{message}");
            assert!(message.contains("register_in"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// A module with its own allocator and memory names, and strings in both
/// directions.
const OTHER_NAMES: &str = r#"(module
    (memory (export "mem") 1)
    (global $next (mut i32) (i32.const 1024))
    (func (export "walloc") (param $n i32) (result i32)
        (local $p i32)
        (local.set $p (global.get $next))
        (global.set $next (i32.add (global.get $next) (local.get $n)))
        (local.get $p))
    (func (export "wfree") (param i32))
    ;; The length of a NUL-terminated string.
    (func (export "strlen") (param $p i32) (result i32)
        (local $n i32)
        (block $done (loop $l
            (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
            (local.set $n (i32.add (local.get $n) (i32.const 1)))
            (br $l)))
        (local.get $n)))"#;

#[test]
fn allocators_and_memories_under_other_names_are_used_when_named() {
    require_kvm();
    let abi = ModuleAbi::default()
        .malloc("walloc")
        .free("wfree")
        .memory("mem");
    let mut sandbox = SandboxBuilder::new()
        .with_module_abi(abi)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(OTHER_NAMES.as_bytes())
        .unwrap();
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("strlen", "hyperlight")
            .unwrap(),
        10
    );
}

#[test]
fn a_string_argument_without_the_named_allocator_says_which_export_is_missing() {
    let mut sandbox = loaded(OTHER_NAMES);
    match sandbox.call_guest_function::<i32>("strlen", "x") {
        Err(Error::MissingExport { message }) => {
            assert!(message.contains("`memory`"), "{message}");
            assert!(message.contains("ModuleAbi::memory"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut sandbox = SandboxBuilder::new()
        .with_module_abi(ModuleAbi::default().memory("mem"))
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(OTHER_NAMES.as_bytes())
        .unwrap();
    match sandbox.call_guest_function::<i32>("strlen", "x") {
        Err(Error::MissingExport { message }) => {
            assert!(message.contains("`malloc: (i32) -> i32`"), "{message}");
            assert!(message.contains("ModuleAbi::malloc"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// Sums `len` bytes at `ptr`.
const SUMS_MEMORY: &str = r#"(module
    (memory (export "memory") 40)
    (func (export "sum") (param $p i32) (param $len i32) (result i64)
        (local $i i32) (local $s i64)
        (block $done (loop $l
            (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
            (local.set $s (i64.add (local.get $s)
                (i64.extend_i32_u (i32.load8_u (i32.add (local.get $p) (local.get $i))))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $l)))
        (local.get $s))
    (func (export "fill") (param $p i32) (param $len i32) (param $v i32)
        (memory.fill (local.get $p) (local.get $v) (local.get $len))))"#;

#[test]
fn input_written_into_memory_is_seen_by_the_next_call_then_reset() {
    let mut sandbox = loaded(SUMS_MEMORY);
    sandbox.write_memory(100, &[1, 2, 3, 4]).unwrap();
    assert_eq!(sandbox.read_memory(100, 4).unwrap(), [1, 2, 3, 4]);
    assert_eq!(
        sandbox.call_guest_function::<i64>("sum", (100, 4)).unwrap(),
        10
    );
    // Fresh state per call: the reset after the call removed the input.
    assert_eq!(sandbox.read_memory(100, 4).unwrap(), [0; 4]);
    assert_eq!(
        sandbox.call_guest_function::<i64>("sum", (100, 4)).unwrap(),
        0
    );
}

#[test]
fn in_persistent_mode_memory_keeps_what_was_written_and_what_calls_did() {
    require_kvm();
    let mut sandbox = SandboxBuilder::new()
        .with_persistent_state(true)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(SUMS_MEMORY.as_bytes())
        .unwrap();
    sandbox.write_memory(0, &[5; 8]).unwrap();
    sandbox
        .call_guest_function::<()>("fill", (8, 8, 7))
        .unwrap();
    assert_eq!(
        sandbox.read_memory(0, 16).unwrap(),
        [[5; 8], [7; 8]].concat()
    );
}

#[test]
fn reads_and_writes_larger_than_the_buffers_come_back_whole() {
    require_kvm();
    let mut sandbox = SandboxBuilder::new()
        .with_persistent_state(true)
        .with_guest_input_buffer_size(SandboxBuilder::MIN_BUFFER_SIZE)
        .with_guest_output_buffer_size(SandboxBuilder::MIN_BUFFER_SIZE)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(SUMS_MEMORY.as_bytes())
        .unwrap();
    // 1 MiB through 16 KiB buffers.
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    sandbox.write_memory(12_345, &data).unwrap();
    assert_eq!(sandbox.read_memory(12_345, 1 << 20).unwrap(), data);
    let expected: i64 = data.iter().map(|b| i64::from(*b)).sum();
    assert_eq!(
        sandbox
            .call_guest_function::<i64>("sum", (12_345, 1 << 20))
            .unwrap(),
        expected
    );
}

#[test]
fn accesses_outside_the_memory_are_refused() {
    let mut sandbox = loaded(SUMS_MEMORY);
    let size = 40 * 65536;
    assert!(matches!(
        sandbox.read_memory(size - 2, 4),
        Err(Error::BadGuestPointer { .. })
    ));
    assert!(matches!(
        sandbox.write_memory(size, &[1]),
        Err(Error::BadGuestPointer { .. })
    ));
    assert!(matches!(
        sandbox.read_memory(u32::MAX, 2),
        Err(Error::BadGuestPointer { .. })
    ));
    // Nothing was poisoned, and an empty read at the end is fine.
    assert!(sandbox.read_memory(size, 0).unwrap().is_empty());
    assert!(!sandbox.is_poisoned());
    // A module without a memory.
    let mut bare = loaded(r#"(module (func (export "f")))"#);
    assert!(matches!(
        bare.read_memory(0, 1),
        Err(Error::MissingExport { .. })
    ));
}
