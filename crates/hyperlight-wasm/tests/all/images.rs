//! Shared images: sandboxes of one configuration start from the same
//! post-runtime and post-load images, yet never see each other's writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use hyperlight_wasm::{LoadedWasmSandbox, SandboxBuilder, clear_image_cache};

use crate::common::require_kvm;

/// A counter in a global and a word of linear memory.
const MODULE: &str = r#"(module
  (memory (export "memory") 1)
  (global $count (mut i32) (i32.const 0))
  (func (export "count") (result i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (global.get $count))
  (func (export "store") (param i32) (i32.store (i32.const 2048) (local.get 0)))
  (func (export "load") (result i32) (i32.load (i32.const 2048))))"#;

fn persistent() -> LoadedWasmSandbox {
    require_kvm();
    SandboxBuilder::new()
        .with_persistent_state(true)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(MODULE.as_bytes())
        .unwrap()
}

#[test]
fn sandboxes_started_from_one_image_never_see_each_others_writes() {
    let mut a = persistent();
    a.call_guest_function::<()>("store", 41).unwrap();
    for want in 1..=3 {
        assert_eq!(a.call_guest_function::<i32>("count", ()).unwrap(), want);
    }
    // Started from the image of the post-load state, taken before `a` wrote.
    let mut b = persistent();
    assert_eq!(b.call_guest_function::<i32>("load", ()).unwrap(), 0);
    assert_eq!(b.call_guest_function::<i32>("count", ()).unwrap(), 1);
    b.call_guest_function::<()>("store", 7).unwrap();
    assert_eq!(a.call_guest_function::<i32>("load", ()).unwrap(), 41);
    assert_eq!(a.call_guest_function::<i32>("count", ()).unwrap(), 4);
    // Unloading and loading again maps the images again: a fresh instance,
    // and `b` keeps its own state.
    let mut a = a
        .unload_module()
        .unwrap()
        .load_module_from_buffer(MODULE.as_bytes())
        .unwrap();
    assert_eq!(a.call_guest_function::<i32>("load", ()).unwrap(), 0);
    assert_eq!(a.call_guest_function::<i32>("count", ()).unwrap(), 1);
    assert_eq!(b.call_guest_function::<i32>("load", ()).unwrap(), 7);
    assert_eq!(b.call_guest_function::<i32>("count", ()).unwrap(), 2);
}

#[test]
fn a_load_that_asks_the_host_anything_is_not_shared() {
    require_kvm();
    // The start function asks a host function for a value: every sandbox
    // must ask, and get its own answer.
    let module = r#"(module
      (import "env" "on_load" (func $on_load (result i32)))
      (global $seen (mut i32) (i32.const 0))
      (func $start (global.set $seen (call $on_load)))
      (start $start)
      (func (export "seen") (result i32) (global.get $seen)))"#;
    let calls = Arc::new(AtomicI32::new(0));
    for want in 1..=3 {
        let mut proto = SandboxBuilder::new().build().unwrap();
        let counter = Arc::clone(&calls);
        proto
            .register("on_load", move || {
                counter.fetch_add(1, Ordering::SeqCst) + 1
            })
            .unwrap();
        let mut sb = proto
            .load_runtime()
            .unwrap()
            .load_module_from_buffer(module.as_bytes())
            .unwrap();
        assert_eq!(sb.call_guest_function::<i32>("seen", ()).unwrap(), want);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn a_cache_miss_behaves_like_a_hit() {
    let run = || {
        let mut sb = persistent();
        let counts = [
            sb.call_guest_function::<i32>("count", ()).unwrap(),
            sb.call_guest_function::<i32>("count", ()).unwrap(),
        ];
        sb.call_guest_function::<()>("store", 99).unwrap();
        (counts, sb.call_guest_function::<i32>("load", ()).unwrap())
    };
    let warm = run();
    // Sandboxes alive keep their images; new ones boot and load again.
    let alive = persistent();
    clear_image_cache();
    let missed = run();
    let hit = run();
    assert_eq!(warm, ([1, 2], 99));
    assert_eq!(missed, warm);
    assert_eq!(hit, warm);
    let mut alive = alive;
    assert_eq!(alive.call_guest_function::<i32>("count", ()).unwrap(), 1);
}
