//! The limits table: each figure of issue 7's targets, its median, the limit
//! it is held against, and the ratio. Limits are measured in this same
//! process, each in alternation with its figure (this machine's speed drifts
//! by tens of percent over a minute), or are fixed budgets. Run with
//! `cargo bench -p hyperlight-wasm --features __limits --bench limits`; the table it prints goes
//! into BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hyperlight_wasm::__limits::{CallPart, RawExitLoop, RawSpinLoop, RawVm, take_call_parts};
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

/// Times one run of `run` (dropping its result outside the timing).
fn time<T>(run: impl FnOnce() -> T) -> Duration {
    let start = Instant::now();
    let output = run();
    let elapsed = start.elapsed();
    drop(black_box(output));
    elapsed
}

fn median_of(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The medians of `samples` timings of `a` and of `b`, taken in
/// alternation.
fn paired(
    samples: usize,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> (Duration, Duration) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        first.push(a());
        second.push(b());
    }
    (median_of(first), median_of(second))
}

/// The median of `samples` timings of `run`.
fn median(samples: usize, mut run: impl FnMut() -> Duration) -> Duration {
    median_of((0..samples).map(|_| run()).collect())
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
    /// The target ratio, if the figure has one.
    target: Option<f64>,
    unit: &'static str,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn row(figure: &'static str, value: Duration, limit_name: &'static str, limit: Duration) -> Row {
    Row {
        figure,
        value: us(value),
        limit_name,
        limit: us(limit),
        target: None,
        unit: "µs",
    }
}

/// Calls averaged for the breakdown.
const CALLS: u64 = 2000;

/// The breakdown of a trivial call: per part, µs per call, fresh state and
/// persistent, beside the medians of the raw exit and the calls.
fn print_parts(
    fresh: &[(CallPart, u64, u64)],
    kept: &[(CallPart, u64, u64)],
    raw_exit: [Duration; 2],
    calls: [Duration; 2],
) {
    let per_call = |ns: u64| ns as f64 / CALLS as f64 / 1000.0;
    println!("Where a trivial call's time goes (µs per call, {CALLS} calls each):");
    println!();
    println!("| part | fresh state | persistent |");
    println!("|---|---|---|");
    let (mut sum_fresh, mut sum_kept) = (0u64, 0u64);
    for ((part, fresh_ns, _), (_, kept_ns, _)) in fresh.iter().zip(kept) {
        sum_fresh += fresh_ns;
        sum_kept += kept_ns;
        println!(
            "| {} | {:.2} | {:.2} |",
            part.name(),
            per_call(*fresh_ns),
            per_call(*kept_ns)
        );
    }
    let run = |parts: &[(CallPart, u64, u64)]| {
        parts
            .iter()
            .find(|(p, _, _)| *p == CallPart::Run)
            .map_or(0.0, |(_, ns, _)| per_call(*ns))
    };
    println!(
        "| sum of the parts | {:.2} | {:.2} |",
        per_call(sum_fresh),
        per_call(sum_kept)
    );
    println!(
        "| the call (median, above) | {:.2} | {:.2} |",
        us(calls[0]),
        us(calls[1])
    );
    println!(
        "| raw exit round trip (median, above) | {:.2} | {:.2} |",
        us(raw_exit[0]),
        us(raw_exit[1])
    );
    println!(
        "| guest work: KVM_RUN less the raw exit | {:.2} | {:.2} |",
        run(fresh) - us(raw_exit[0]),
        run(kept) - us(raw_exit[1])
    );
    println!();
}

fn main() {
    // Arguments (cargo bench passes `--bench`) are ignored.

    // The first sandbox boots the guest and loads the module, and takes the
    // shared images every later one starts from.
    drop(loaded(false));
    wait_for_teardown();

    let after_teardown = |d: Duration| {
        wait_for_teardown();
        d
    };
    let (raw_vm, build) = paired(
        200,
        || after_teardown(time(|| RawVm::new().expect("raw VM"))),
        || after_teardown(time(|| builder().build().expect("build"))),
    );
    let (raw_vm_2, load_runtime) = paired(
        200,
        || after_teardown(time(|| RawVm::new().expect("raw VM"))),
        || {
            let proto = builder().build().expect("build");
            after_teardown(time(|| proto.load_runtime().expect("load_runtime")))
        },
    );
    let (raw_vm_3, load_module) = paired(
        200,
        || after_teardown(time(|| RawVm::new().expect("raw VM"))),
        || {
            let wasm = builder()
                .build()
                .and_then(|p| p.load_runtime())
                .expect("runtime");
            after_teardown(time(|| {
                wasm.load_module_from_buffer(MODULE.as_bytes())
                    .expect("load")
            }))
        },
    );
    let (raw_vm_4, chain) = paired(
        200,
        || after_teardown(time(|| RawVm::new().expect("raw VM"))),
        || after_teardown(time(|| loaded(false))),
    );
    let drop_time = median(200, || {
        let mut sb = loaded(false);
        sb.call_guest_function::<i32>("add", (1, 2)).expect("add");
        after_teardown(time(|| drop(sb)))
    });

    let mut exit_loop = RawExitLoop::new().expect("raw exit loop");
    exit_loop.round_trip().expect("first exit");
    let mut fresh = loaded(false);
    let mut kept = loaded(true);
    for sb in [&mut fresh, &mut kept] {
        for _ in 0..100 {
            sb.call_guest_function::<i32>("add", (1, 2)).expect("add");
        }
    }
    let call = |sb: &mut LoadedWasmSandbox| {
        time(|| {
            sb.call_guest_function::<i32>("add", (black_box(1), 2))
                .expect("add")
        })
    };
    let (raw_exit, call_fresh) = paired(
        3000,
        || time(|| exit_loop.round_trip().expect("exit")),
        || call(&mut fresh),
    );
    let (raw_exit_2, call_kept) = paired(
        3000,
        || time(|| exit_loop.round_trip().expect("exit")),
        || call(&mut kept),
    );
    // Where a trivial call's time goes: each part timed where it happens
    // (feature `__limits`), averaged over the same calls.
    let parts = |sb: &mut LoadedWasmSandbox| {
        take_call_parts();
        for _ in 0..CALLS {
            sb.call_guest_function::<i32>("add", (black_box(1), 2))
                .expect("add");
        }
        take_call_parts()
    };
    let fresh_parts = parts(&mut fresh);
    let kept_parts = parts(&mut kept);
    drop((fresh, exit_loop));

    // The exit-less alternative: guest and host meeting in shared memory,
    // with the guest's vCPU spinning on a thread of its own.
    let mut exit_loop = RawExitLoop::new().expect("raw exit loop");
    let mut spin_loop = RawSpinLoop::new().expect("raw spin loop");
    spin_loop.round_trip().expect("first round trip");
    let (raw_exit_3, spin) = paired(
        3000,
        || time(|| exit_loop.round_trip().expect("exit")),
        || time(|| spin_loop.round_trip().expect("spin")),
    );
    drop((spin_loop, exit_loop));

    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, MODULE).expect("compile");
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiate");
    let fib = instance
        .get_typed_func::<i32, i32>(&mut store, "fib")
        .expect("fib");
    let (fib_wasmtime, fib_sandbox) = paired(
        21,
        || time(|| fib.call(&mut store, black_box(30)).expect("fib")),
        || {
            time(|| {
                kept.call_guest_function::<i32>("fib", black_box(30))
                    .expect("fib")
            })
        },
    );
    drop(kept);
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

    let raw = "raw VM + vCPU + slot";
    let exit = "raw exit round trip";
    let rows = [
        row("build()", build, raw, raw_vm),
        row("load_runtime()", load_runtime, raw, raw_vm_2),
        row(
            "load_module() of a known module",
            load_module,
            raw,
            raw_vm_3,
        ),
        Row {
            target: Some(1.5),
            ..row(
                "ready sandbox, known module (build + load_runtime + load_module)",
                chain,
                raw,
                raw_vm_4,
            )
        },
        Row {
            target: Some(1.0),
            ..row(
                "drop, on the caller's thread",
                drop_time,
                "budget",
                Duration::from_micros(50),
            )
        },
        Row {
            target: Some(1.5),
            ..row(
                "trivial call, fresh state per call (reset included)",
                call_fresh,
                exit,
                raw_exit,
            )
        },
        Row {
            target: Some(1.2),
            ..row(
                "trivial call, persistent state",
                call_kept,
                exit,
                raw_exit_2,
            )
        },
        row(
            "exit-less round trip through shared memory (guest spinning; not used)",
            spin,
            exit,
            raw_exit_3,
        ),
        Row {
            target: Some(1.1),
            ..row(
                "fib(30) in the sandbox",
                fib_sandbox,
                "wasmtime in-process",
                fib_wasmtime,
            )
        },
        Row {
            figure: "private memory per loaded sandbox (100 alive, one call each)",
            value: per_sandbox_kib,
            limit_name: "budget",
            limit: 1024.0,
            target: Some(1.0),
            unit: "KiB",
        },
    ];

    print_parts(
        &fresh_parts,
        &kept_parts,
        [raw_exit, raw_exit_2],
        [call_fresh, call_kept],
    );

    println!("| figure | median | limit (median) | ratio | target |");
    println!("|---|---|---|---|---|");
    for row in rows {
        let ratio = row.value / row.limit;
        let target = match row.target {
            Some(t) if ratio <= t => format!("≤ {t:.1} × (met)"),
            Some(t) => format!("≤ {t:.1} × (missed)"),
            None => String::from("-"),
        };
        println!(
            "| {} | {:.1} {} | {}: {:.1} {} | {:.2} × | {} |",
            row.figure, row.value, row.unit, row.limit_name, row.limit, row.unit, ratio, target
        );
    }
}
