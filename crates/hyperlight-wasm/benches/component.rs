//! A component call beside the same call on a core module, in the same
//! run: `add` (two u32s in, one out) and an echo of a 1 KiB string, with
//! fresh state per call and persistent. Run with
//! `cargo bench -p hyperlight-wasm --bench component`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hyperlight_wasm::component::Val;
use hyperlight_wasm::{LoadedComponentSandbox, LoadedWasmSandbox, SandboxBuilder};

/// The module: `add`, and `echo` of a length-prefixed string (the
/// library's string ABI: the host writes the string through `malloc`).
const MODULE: &str = r#"(module
  (memory (export "memory") 2)
  ;; One string at a time: persistent sandboxes never run out.
  (func (export "malloc") (param $n i32) (result i32) (i32.const 4096))
  (func (export "free") (param i32))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "echo") (param $s i32) (result i32) (local.get $s)))"#;

/// The component: `add: func(a: u32, b: u32) -> u32` and
/// `echo: func(s: string) -> string`.
const COMPONENT: &str = r#"(component
  (core module $m
    (memory (export "mem") 2)
    ;; One string at a time, as the module's malloc.
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
    (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
    (func (export "echo") (param i32 i32) (result i32)
      (i32.store (i32.const 1024) (local.get 0))
      (i32.store (i32.const 1028) (local.get 1))
      i32.const 1024))
  (core instance $i (instantiate $m))
  (func (export "add") (param "a" u32) (param "b" u32) (result u32)
    (canon lift (core func $i "add")))
  (func (export "echo") (param "s" string) (result string)
    (canon lift (core func $i "echo") (memory (core memory $i "mem")) (realloc (core func $i "realloc")))))"#;

fn builder(persistent: bool) -> SandboxBuilder {
    SandboxBuilder::new()
        .with_persistent_state(persistent)
        .with_guest_function_call_max_execution_time_millis(60_000)
}

fn module(persistent: bool) -> LoadedWasmSandbox {
    builder(persistent)
        .build()
        .expect("build")
        .load_runtime()
        .expect("load_runtime")
        .load_module_from_buffer(MODULE.as_bytes())
        .expect("load_module")
}

fn component(persistent: bool) -> LoadedComponentSandbox {
    builder(persistent)
        .build()
        .expect("build")
        .load_runtime()
        .expect("load_runtime")
        .load_component_from_buffer(COMPONENT.as_bytes())
        .expect("load_component")
}

fn calls(c: &mut Criterion) {
    let mut group = c.benchmark_group("component vs module");
    let kib = "x".repeat(1024);
    for persistent in [false, true] {
        let mode = if persistent {
            "persistent"
        } else {
            "fresh per call"
        };
        let mut m = module(persistent);
        group.bench_function(format!("module add ({mode})"), |b| {
            b.iter(|| {
                m.call_guest_function::<i32>("add", (black_box(1), 2))
                    .expect("add")
            })
        });
        group.bench_function(format!("module echo 1 KiB string ({mode})"), |b| {
            b.iter(|| {
                m.call_guest_function::<String>("echo", kib.as_str())
                    .expect("echo")
            })
        });
        let mut comp = component(persistent);
        group.bench_function(format!("component add, Val ({mode})"), |b| {
            b.iter(|| {
                comp.call("add", &[Val::U32(black_box(1)), Val::U32(2)])
                    .expect("add")
            })
        });
        group.bench_function(format!("component add, typed ({mode})"), |b| {
            b.iter(|| {
                comp.call_typed::<_, u32>("add", (black_box(1u32), 2u32))
                    .expect("add")
            })
        });
        let arg = [Val::String(kib.clone())];
        group.bench_function(format!("component echo 1 KiB string ({mode})"), |b| {
            b.iter(|| comp.call("echo", &arg).expect("echo"))
        });
    }
    group.finish();
}

criterion_group!(benches, calls);
criterion_main!(benches);
