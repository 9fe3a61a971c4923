//! hyperlight-wasm in a build where wasmtime has its default features.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use hyperlight_wasm::{SandboxBuilder, compile_module, is_hypervisor_present};

const ADD: &str = r#"(module
  (func (export "add") (param i32 i32) (result i32)
    local.get 0 local.get 1 i32.add)
  (func $fib (export "fib") (param i32) (result i32)
    local.get 0 i32.const 2 i32.lt_s
    if (result i32) local.get 0
    else
      local.get 0 i32.const 1 i32.sub call $fib
      local.get 0 i32.const 2 i32.sub call $fib
      i32.add
    end)
  (memory (export "memory") 1))"#;

fn require_kvm() {
    assert!(
        is_hypervisor_present(),
        "these tests need a usable /dev/kvm (Linux with KVM, read/write access for this user)"
    );
}

#[test]
fn modules_load_and_run_in_micro_vms_next_to_in_process_wasmtime() {
    require_kvm();
    // The application's own wasmtime works...
    assert_eq!(
        host_with_wasmtime::run_in_process(ADD, "add", 40, 2).unwrap(),
        42
    );
    // ...and so does hyperlight-wasm, from text, binary and a precompiled
    // artifact.
    let binary = wat::parse_str(ADD).unwrap();
    for bytes in [ADD.as_bytes(), &binary] {
        let mut sandbox = SandboxBuilder::new()
            .build()
            .unwrap()
            .load_runtime()
            .unwrap()
            .load_module_from_buffer(bytes)
            .unwrap();
        assert_eq!(
            sandbox.call_guest_function::<i32>("add", (40, 2)).unwrap(),
            42
        );
        assert_eq!(sandbox.call_guest_function::<i32>("fib", 20).unwrap(), 6765);
    }
    let artifact = compile_module(ADD.as_bytes()).unwrap();
    let wasm = SandboxBuilder::new()
        .build()
        .unwrap()
        .load_runtime()
        .unwrap();
    // SAFETY: the artifact was produced just now by this build's
    // compile_module and never left this process.
    let mut sandbox = unsafe { wasm.load_precompiled_module_from_buffer(&artifact) }.unwrap();
    assert_eq!(
        sandbox.call_guest_function::<i32>("add", (1, 2)).unwrap(),
        3
    );
    // The application's wasmtime still works afterwards.
    assert_eq!(
        host_with_wasmtime::run_in_process(ADD, "add", 2, 3).unwrap(),
        5
    );
}
