//! The limits table: each figure of issue 7's targets, its median, the limit
//! it is held against (measured in this same process, or a fixed budget),
//! and the ratio. Run with `cargo bench -p hyperlight-wasm --bench limits`;
//! the table it prints goes into BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hyperlight_wasm::__limits::{RawExitLoop, RawVm};
use hyperlight_wasm::{LoadedWasmSandbox, SandboxBuilder, wait_for_teardown};

/// A small module: a trivial export and fib.
const MODULE: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func $fib (export "fib") (param i32) (result i32)
    (if (result i32) (i32.lt_s (local.get 0) (i32.const 2))
      (then (local.get 0))
      (else (i32.add (call $fib (i32.sub (local.get 0) (i32.const 1)))
                     (call $fib (i32.sub (local.get 0) (i32.const 2))))))))"#;

fn builder() -> SandboxBuilder {
    SandboxBuilder::new().with_guest_function_call_max_execution_time_millis(60_000)
}

fn loaded(persistent: bool) -> LoadedWasmSandbox {
    builder()
        .with_persistent_state(persistent)
        .build()
        .and_then(|p| p.load_runtime())
        .and_then(|w| w.load_module_from_buffer(MODULE.as_bytes()))
        .expect("a loaded sandbox")
}

/// The median of `samples` timings of `run`, each after an untimed `setup`.
fn median<S, T>(
    samples: usize,
    mut setup: impl FnMut() -> S,
    mut run: impl FnMut(S) -> T,
) -> Duration {
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let input = setup();
            let start = Instant::now();
            let output = run(input);
            let elapsed = start.elapsed();
            drop(black_box(output));
            elapsed
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Private memory of this process (kB, from /proc/self/smaps_rollup).
fn private_kib() -> u64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").expect("smaps_rollup");
    rollup
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

struct Row {
    figure: &'static str,
    value: f64,
    limit_name: &'static str,
    limit: f64,
    target: f64,
    unit: &'static str,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // Criterion-style arguments (`--bench`) are ignored.
    let mut rows = Vec::new();

    // Warm up: the first sandbox boots the guest and loads the module, and
    // takes the shared images every later one starts from.
    drop(loaded(false));
    wait_for_teardown();

    let raw_vm = median(200, || (), |()| RawVm::new().expect("raw VM"));
    wait_for_teardown();
    let mut exit_loop = RawExitLoop::new().expect("raw exit loop");
    exit_loop.round_trip().expect("first exit");
    let raw_exit = median(2000, || (), |()| exit_loop.round_trip().expect("exit"));
    drop(exit_loop);

    let build = median(200, || (), |()| builder().build().expect("build"));
    wait_for_teardown();
    let load_runtime = median(
        200,
        || builder().build().expect("build"),
        |p| p.load_runtime().expect("load_runtime"),
    );
    wait_for_teardown();
    let load_module = median(
        200,
        || {
            builder()
                .build()
                .and_then(|p| p.load_runtime())
                .expect("runtime")
        },
        |w| w.load_module_from_buffer(MODULE.as_bytes()).expect("load"),
    );
    wait_for_teardown();
    let chain = median(200, || (), |()| loaded(false));
    wait_for_teardown();
    let drop_time = median(
        200,
        || {
            wait_for_teardown();
            let mut sb = loaded(false);
            sb.call_guest_function::<i32>("add", (1, 2)).expect("add");
            sb
        },
        drop,
    );
    wait_for_teardown();

    let mut fresh = loaded(false);
    let mut kept = loaded(true);
    for sb in [&mut fresh, &mut kept] {
        for _ in 0..100 {
            sb.call_guest_function::<i32>("add", (1, 2)).expect("add");
        }
    }
    let call_fresh = median(
        2000,
        || (),
        |()| {
            fresh
                .call_guest_function::<i32>("add", (black_box(1), 2))
                .expect("add")
        },
    );
    let call_kept = median(
        2000,
        || (),
        |()| {
            kept.call_guest_function::<i32>("add", (black_box(1), 2))
                .expect("add")
        },
    );
    let fib_sandbox = median(
        21,
        || (),
        |()| {
            kept.call_guest_function::<i32>("fib", black_box(30))
                .expect("fib")
        },
    );
    drop((fresh, kept));

    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, MODULE).expect("compile");
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiate");
    let fib = instance
        .get_typed_func::<i32, i32>(&mut store, "fib")
        .expect("fib");
    let fib_wasmtime = median(
        21,
        || (),
        |()| fib.call(&mut store, black_box(30)).expect("fib"),
    );

    wait_for_teardown();
    let before = private_kib();
    let alive: Vec<LoadedWasmSandbox> = (0..100)
        .map(|_| {
            let mut sb = loaded(false);
            sb.call_guest_function::<i32>("add", (1, 2)).expect("add");
            sb
        })
        .collect();
    let per_sandbox_kib = private_kib().saturating_sub(before) as f64 / alive.len() as f64;
    drop(alive);
    wait_for_teardown();

    let raw_vm_us = us(raw_vm);
    let raw_exit_us = us(raw_exit);
    rows.push(Row {
        figure: "build()",
        value: us(build),
        limit_name: "raw VM + vCPU + slot",
        limit: raw_vm_us,
        target: 0.0,
        unit: "µs",
    });
    rows.push(Row {
        figure: "load_runtime()",
        value: us(load_runtime),
        limit_name: "raw VM + vCPU + slot",
        limit: raw_vm_us,
        target: 0.0,
        unit: "µs",
    });
    rows.push(Row {
        figure: "load_module() of a known module",
        value: us(load_module),
        limit_name: "raw VM + vCPU + slot",
        limit: raw_vm_us,
        target: 0.0,
        unit: "µs",
    });
    rows.push(Row {
        figure: "ready sandbox, known module (build + load_runtime + load_module)",
        value: us(chain),
        limit_name: "raw VM + vCPU + slot",
        limit: raw_vm_us,
        target: 2.0,
        unit: "µs",
    });
    rows.push(Row {
        figure: "drop, on the caller's thread",
        value: us(drop_time),
        limit_name: "budget",
        limit: 50.0,
        target: 1.0,
        unit: "µs",
    });
    rows.push(Row {
        figure: "trivial call, fresh state per call (reset included)",
        value: us(call_fresh),
        limit_name: "raw exit round trip",
        limit: raw_exit_us,
        target: 1.5,
        unit: "µs",
    });
    rows.push(Row {
        figure: "trivial call, persistent state",
        value: us(call_kept),
        limit_name: "raw exit round trip",
        limit: raw_exit_us,
        target: 1.2,
        unit: "µs",
    });
    rows.push(Row {
        figure: "fib(30) in the sandbox",
        value: us(fib_sandbox),
        limit_name: "wasmtime in-process",
        limit: us(fib_wasmtime),
        target: 1.1,
        unit: "µs",
    });
    rows.push(Row {
        figure: "private memory per loaded sandbox (100 alive)",
        value: per_sandbox_kib,
        limit_name: "budget",
        limit: 1024.0,
        target: 1.0,
        unit: "KiB",
    });

    println!(
        "raw VM + vCPU + slot creation: {raw_vm_us:.1} µs (median); raw exit round trip: {raw_exit_us:.1} µs (median)\n"
    );
    println!("| figure | median | limit | ratio | target |");
    println!("|---|---|---|---|---|");
    for row in rows {
        let ratio = row.value / row.limit;
        let target = if row.target > 0.0 {
            let verdict = if ratio <= row.target { "met" } else { "missed" };
            format!("≤ {:.1} × ({verdict})", row.target)
        } else {
            String::from("-")
        };
        println!(
            "| {} | {:.1} {} | {}: {:.1} {} | {:.2} × | {} |",
            row.figure, row.value, row.unit, row.limit_name, row.limit, row.unit, ratio, target
        );
    }
}
