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

/// A bump allocator (`malloc`, a no-op `free`), a memory and helpers
/// (`$strdup`, `$prefixed` copies into a length-prefixed buffer), for WAT
/// fixtures that take or return strings and buffers.
pub const ALLOCATOR: &str = r#"
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func $malloc (export "malloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap
      (i32.and (i32.add (i32.add (global.get $heap) (local.get $size)) (i32.const 7))
               (i32.const -8)))
    (block $done
      (loop $grow
        (br_if $done
          (i32.le_u (global.get $heap) (i32.shl (memory.size) (i32.const 16))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
          (then (return (i32.const 0))))
        (br $grow)))
    (local.get $ptr))
  (func (export "free") (param i32))
  (func $strlen (param $s i32) (result i32)
    (local $n i32)
    (block $end
      (loop $next
        (br_if $end (i32.eqz (i32.load8_u (i32.add (local.get $s) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))
  (func $strdup (param $s i32) (result i32)
    (local $len i32) (local $copy i32)
    (local.set $len (i32.add (call $strlen (local.get $s)) (i32.const 1)))
    (local.set $copy (call $malloc (local.get $len)))
    (memory.copy (local.get $copy) (local.get $s) (local.get $len))
    (local.get $copy))
  (func $prefixed (param $ptr i32) (param $len i32) (result i32)
    (local $out i32)
    (local.set $out (call $malloc (i32.add (local.get $len) (i32.const 4))))
    (i32.store (local.get $out) (local.get $len))
    (memory.copy (i32.add (local.get $out) (i32.const 4)) (local.get $ptr) (local.get $len))
    (local.get $out))
"#;

/// Wraps module fields into a module with [`ALLOCATOR`] (after them, so
/// that imports among the fields come before any function).
pub fn with_allocator(fields: &str) -> String {
    format!("(module {fields} {ALLOCATOR})")
}

/// A core module with a memory and a bump allocator, for the canonical
/// ABI's `memory` and `realloc` options.
pub const LIBC: &str = r#"
  (core module $libc
    (memory (export "mem") 1)
    (global $heap (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      global.get $heap local.get 2 i32.add i32.const 1 i32.sub
      i32.const 0 local.get 2 i32.sub i32.and
      local.set $p
      local.get $p local.get 3 i32.add global.set $heap
      local.get $p))
  (core instance $libc (instantiate $libc))
"#;
