//! Helpers shared by the integration tests.

use hyperlight_wasm::{LoadedWasmSandbox, SandboxBuilder, WasmSandbox, is_hypervisor_present};

/// Fails the test, with the reason, when this machine cannot run sandboxes.
pub fn require_kvm() {
    assert!(
        is_hypervisor_present(),
        "these tests need a usable /dev/kvm (Linux with KVM, read/write access for this user); \
         it is missing or inaccessible here"
    );
}

/// A sandbox with its runtime loaded and no module.
pub fn runtime() -> WasmSandbox {
    require_kvm();
    SandboxBuilder::new()
        .build()
        .expect("build")
        .load_runtime()
        .expect("load_runtime")
}

/// A sandbox with the module given as WAT text loaded (converted with the
/// `wat` crate).
pub fn loaded(wat: &str) -> LoadedWasmSandbox {
    let wasm = wat::parse_str(wat).expect("fixture WAT parses");
    runtime()
        .load_module_from_buffer(&wasm)
        .expect("load_module")
}

/// Path of a fixture file in `fixtures/`.
pub fn fixture(name: &str) -> String {
    format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Functions most tests call: add, identity, fib, traps.
pub const BASIC: &str = r#"
(module
  (func (export "add") (param i32 i32) (result i32)
    local.get 0 local.get 1 i32.add)
  (func (export "id_i32") (param i32) (result i32) local.get 0)
  (func (export "id_i64") (param i64) (result i64) local.get 0)
  (func (export "add_i64") (param i64 i64) (result i64)
    local.get 0 local.get 1 i64.add)
  (func (export "nothing"))
  (func $fib (export "fib") (param i32) (result i32)
    local.get 0 i32.const 2 i32.lt_s
    if (result i32)
      local.get 0
    else
      local.get 0 i32.const 1 i32.sub call $fib
      local.get 0 i32.const 2 i32.sub call $fib
      i32.add
    end)
  (func (export "unreachable") (result i32) unreachable)
  (func (export "div") (param i32 i32) (result i32)
    local.get 0 local.get 1 i32.div_s)
  (func $recurse (export "recurse") (param i32) (result i32)
    local.get 0 i32.const 1 i32.add call $recurse)
  (memory 1)
  (func (export "load") (param i32) (result i32)
    local.get 0 i32.load)
)
"#;
