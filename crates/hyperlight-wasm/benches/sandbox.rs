//! Criterion benchmarks of sandbox creation, calls, per-call reset and
//! compute, each against a module defined here. Run with
//! `cargo bench -p hyperlight-wasm --bench sandbox`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hyperlight_wasm::{LoadedWasmSandbox, SandboxBuilder, WasmSandbox, wait_for_teardown};

/// Calls, echoes, host calls, page touching and fib.
const MODULE: &str = r#"(module
  (import "env" "host_add" (func $host_add (param i32 i32) (result i32)))
  (memory (export "memory") 80)
  (global $heap (mut i32) (i32.const 1048576))
  (func $malloc (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "free") (param i32))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "echo_string") (param $s i32) (result i32) (local.get $s))
  (func (export "echo_bytes") (param $p i32) (param $n i32) (result i32)
    (local $out i32)
    (local.set $out (call $malloc (i32.add (local.get $n) (i32.const 4))))
    (i32.store (local.get $out) (local.get $n))
    (memory.copy (i32.add (local.get $out) (i32.const 4)) (local.get $p) (local.get $n))
    (local.get $out))
  (func (export "host_calls") (param $n i32) (result i32)
    (local $i i32) (local $acc i32)
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $acc (call $host_add (local.get $acc) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (local.get $acc))
  (func (export "touch") (param $pages i32)
    (local $i i32)
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (local.get $pages)))
      (i32.store (i32.mul (local.get $i) (i32.const 4096)) (local.get $i))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l))))
  (func $fib (export "fib") (param i32) (result i32)
    (if (result i32) (i32.lt_s (local.get 0) (i32.const 2))
      (then (local.get 0))
      (else (i32.add (call $fib (i32.sub (local.get 0) (i32.const 1)))
                     (call $fib (i32.sub (local.get 0) (i32.const 2))))))))"#;

fn builder() -> SandboxBuilder {
    SandboxBuilder::new().with_guest_function_call_max_execution_time_millis(60_000)
}

fn runtime() -> WasmSandbox {
    let mut proto = builder().build().expect("build");
    proto
        .register("host_add", |a: i32, b: i32| a + b)
        .expect("register");
    proto.load_runtime().expect("load_runtime")
}

fn loaded(persistent: bool) -> LoadedWasmSandbox {
    let mut proto = builder()
        .with_persistent_state(persistent)
        .build()
        .expect("build");
    proto
        .register("host_add", |a: i32, b: i32| a + b)
        .expect("register");
    proto
        .load_runtime()
        .expect("load_runtime")
        .load_module_from_buffer(MODULE.as_bytes())
        .expect("load_module")
}

fn creation(c: &mut Criterion) {
    let mut group = c.benchmark_group("creation");
    group.bench_function("build", |b| {
        b.iter_batched(
            || (),
            |()| builder().build().expect("build"),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("load_runtime", |b| {
        b.iter_batched(
            || builder().build().expect("build"),
            |proto| proto.load_runtime().expect("load_runtime"),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("load_module (known module)", |b| {
        b.iter_batched(
            runtime,
            |wasm| {
                wasm.load_module_from_buffer(MODULE.as_bytes())
                    .expect("load")
            },
            BatchSize::PerIteration,
        )
    });
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    group.bench_function("load_module (new module, compiled)", |b| {
        b.iter_batched(
            || {
                let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
                let module = format!("(module (func (export \"f\") (result i64) i64.const {n}))");
                (runtime(), module)
            },
            |(wasm, module)| {
                wasm.load_module_from_buffer(module.as_bytes())
                    .expect("load")
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("whole chain (known module)", |b| {
        b.iter(|| {
            builder()
                .build()
                .and_then(|p| p.load_runtime())
                .and_then(|w| w.load_module_from_buffer(b"(module (func (export \"f\")))"))
                .expect("chain")
        })
    });
    group.bench_function("drop (caller's thread)", |b| {
        b.iter_batched(|| loaded(false), drop, BatchSize::PerIteration)
    });
    group.finish();
    wait_for_teardown();
}

fn calls(c: &mut Criterion) {
    let mut group = c.benchmark_group("calls");
    for persistent in [false, true] {
        let mode = if persistent {
            "persistent"
        } else {
            "fresh per call"
        };
        let mut sb = loaded(persistent);
        group.bench_function(format!("add i32 ({mode})"), |b| {
            b.iter(|| {
                sb.call_guest_function::<i32>("add", (black_box(1), 2))
                    .expect("add")
            })
        });
    }
    let mut sb = loaded(false);
    let kib = "x".repeat(1023);
    group.bench_function("echo 1 KiB string", |b| {
        b.iter(|| {
            sb.call_guest_function::<String>("echo_string", kib.as_str())
                .expect("echo")
        })
    });
    let bytes = vec![7u8; 64 * 1024];
    group.bench_function("echo 64 KiB bytes", |b| {
        b.iter(|| {
            sb.call_guest_function::<Vec<u8>>("echo_bytes", bytes.as_slice())
                .expect("echo")
        })
    });
    for n in [1, 100] {
        group.bench_function(format!("{n} host call(s)"), |b| {
            b.iter(|| {
                sb.call_guest_function::<i32>("host_calls", n)
                    .expect("host calls")
            })
        });
    }
    group.finish();
}

fn reset(c: &mut Criterion) {
    let mut group = c.benchmark_group("reset");
    let mut fresh = loaded(false);
    let mut kept = loaded(true);
    for pages in [1, 64, 1024] {
        group.bench_function(format!("call touching {pages} pages, reset"), |b| {
            b.iter(|| {
                fresh
                    .call_guest_function::<()>("touch", pages)
                    .expect("touch")
            })
        });
        group.bench_function(format!("call touching {pages} pages, persistent"), |b| {
            b.iter(|| {
                kept.call_guest_function::<()>("touch", pages)
                    .expect("touch")
            })
        });
    }
    group.finish();
}

fn fib_native(n: i32) -> i32 {
    if n < 2 {
        n
    } else {
        fib_native(n - 1) + fib_native(n - 2)
    }
}

fn compute(c: &mut Criterion) {
    let mut group = c.benchmark_group("compute");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let mut sb = loaded(true);
    group.bench_function("fib(30) in the sandbox", |b| {
        b.iter(|| {
            sb.call_guest_function::<i32>("fib", black_box(30))
                .expect("fib")
        })
    });
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(
        &engine,
        r#"(module (func $fib (export "fib") (param i32) (result i32)
            (if (result i32) (i32.lt_s (local.get 0) (i32.const 2))
              (then (local.get 0))
              (else (i32.add (call $fib (i32.sub (local.get 0) (i32.const 1)))
                             (call $fib (i32.sub (local.get 0) (i32.const 2))))))))"#,
    )
    .expect("compile");
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiate");
    let fib = instance
        .get_typed_func::<i32, i32>(&mut store, "fib")
        .expect("fib");
    group.bench_function("fib(30) in wasmtime in-process", |b| {
        b.iter(|| fib.call(&mut store, black_box(30)).expect("fib"))
    });
    group.bench_function("fib(30) native Rust", |b| {
        b.iter(|| fib_native(black_box(30)))
    });
    group.finish();
}

criterion_group!(benches, creation, calls, reset, compute);
criterion_main!(benches);
