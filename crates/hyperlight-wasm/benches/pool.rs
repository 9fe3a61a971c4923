//! `SandboxPool::get` while the pool is warm, beside making a sandbox
//! without one: criterion's mean of `get` + a call + giving it back, and the
//! p50/p99 of `get` alone over 2,000 takes (issue 16's target: p99 at most
//! 100 µs), printed. Run with `cargo bench -p hyperlight-wasm --bench pool`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use hyperlight_wasm::{SandboxBuilder, SandboxPool};

const MODULE: &str = r#"(module
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))"#;

/// More ready sandboxes than a round takes: every `get` finds one.
const SIZE: usize = 8;

fn percentiles(pool: &SandboxPool) {
    let mut takes = Vec::with_capacity(2000);
    for _ in 0..2000 {
        // Warm: the sandbox given back last round is reset and ready.
        assert!(pool.wait_ready(SIZE, Duration::from_secs(60)));
        let start = Instant::now();
        let sandbox = pool.get().expect("get");
        takes.push(start.elapsed());
        drop(black_box(sandbox));
    }
    takes.sort();
    let at = |q: f64| takes[((takes.len() as f64 - 1.0) * q) as usize];
    let stats = pool.stats();
    println!(
        "pool get (warm, {} takes): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs; cold gets {}",
        takes.len(),
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(1.0).as_secs_f64() * 1e6,
        stats.cold
    );
}

fn bench(c: &mut Criterion) {
    let module = MODULE.as_bytes().to_vec();
    let pool = SandboxPool::new(SandboxBuilder::new(), module.clone(), SIZE).expect("pool");
    assert!(pool.wait_ready(SIZE, Duration::from_secs(60)));
    percentiles(&pool);
    let mut group = c.benchmark_group("pool");
    group.bench_function("get + call + give back (warm pool)", |b| {
        b.iter(|| {
            let mut sandbox = pool.get().expect("get");
            black_box(
                sandbox
                    .call_guest_function::<i32>("add", (1, 2))
                    .expect("call"),
            );
        });
    });
    group.bench_function("build + load + call (no pool)", |b| {
        b.iter(|| {
            let mut sandbox = SandboxBuilder::new()
                .build()
                .expect("build")
                .load_runtime()
                .expect("load_runtime")
                .load_module_from_buffer(&module)
                .expect("load_module");
            black_box(
                sandbox
                    .call_guest_function::<i32>("add", (1, 2))
                    .expect("call"),
            );
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
