//! What compiling hostile-shaped modules costs the host, with the compile
//! limits the library offers (`set_max_module_size`, `set_compile_threads`).
//! Prints one line per module: its size, and the compile time on the
//! default thread pool and on one thread (best of three each).
//!
//! `cargo bench -p hyperlight-wasm --bench compile` (the sizes below);
//! `COMPILE_BENCH_SCALE=4 cargo bench ...` multiplies every size by 4.

use std::fmt::Write;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// Many tiny functions, all exported.
fn many_functions(count: usize) -> String {
    let mut wat = String::from("(module\n");
    for i in 0..count {
        let _ = writeln!(
            wat,
            "(func (export \"f{i}\") (param i32) (result i32) local.get 0 i32.const {i} i32.add)"
        );
    }
    wat.push(')');
    wat
}

/// One function whose blocks nest `depth` deep.
fn deep_nesting(depth: usize) -> String {
    let mut wat = String::from("(module (func (export \"deep\") (result i32)\n");
    wat.push_str(&"block\n".repeat(depth));
    wat.push_str(&"end\n".repeat(depth));
    wat.push_str("i32.const 1))");
    wat
}

/// One function with `ops` arithmetic operations in a row.
fn long_function(ops: usize) -> String {
    let mut wat =
        String::from("(module (func (export \"long\") (param i32) (result i32)\nlocal.get 0\n");
    for i in 0..ops {
        let _ = writeln!(wat, "i32.const {i} i32.add");
    }
    wat.push_str("))");
    wat
}

/// Many locals and a branch table over them.
fn wide_br_table(targets: usize) -> String {
    let mut wat = String::from("(module (func (export \"table\") (param i32) (result i32)\n");
    wat.push_str(&"block\n".repeat(targets));
    wat.push_str("local.get 0 br_table");
    for i in 0..targets {
        let _ = write!(wat, " {i}");
    }
    wat.push_str(" 0\n");
    for _ in 0..targets {
        wat.push_str("end\n");
    }
    wat.push_str("i32.const 0))");
    wat
}

fn best_of_three(compile: impl Fn()) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            compile();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let scale: usize = std::env::var("COMPILE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let n = |base: usize| base * scale;
    let modules = [
        (
            format!("{} exported functions", n(5_000)),
            many_functions(n(5_000)),
        ),
        (
            format!("blocks nested {} deep", n(10_000)),
            deep_nesting(n(10_000)),
        ),
        (
            format!("one function of {} additions", n(10_000)),
            long_function(n(10_000)),
        ),
        (
            format!("br_table over {} nested blocks", n(10_000)),
            wide_br_table(n(10_000)),
        ),
    ];
    println!(
        "{:<38} {:>12} {:>14} {:>14} {:>16}",
        "module", "binary", "default pool", "one thread", "wasmtime default"
    );
    // In-process wasmtime with its default configuration, for comparison.
    let wasmtime = wasmtime::Engine::default();
    for (name, wat) in &modules {
        let wasm = wat::parse_str(wat).expect("the generator writes valid text");
        let ours = || {
            hyperlight_wasm::compile_module(&wasm).expect("the module compiles");
        };
        hyperlight_wasm::set_compile_threads(None).expect("the default pool");
        let pool = best_of_three(ours);
        hyperlight_wasm::set_compile_threads(NonZeroUsize::new(1)).expect("one compile thread");
        let single = best_of_three(ours);
        let reference = best_of_three(|| {
            wasmtime
                .precompile_module(&wasm)
                .expect("the module compiles");
        });
        println!(
            "{name:<38} {:>9} KiB {:>11.1} ms {:>11.1} ms {:>13.1} ms",
            wasm.len() / 1024,
            pool.as_secs_f64() * 1e3,
            single.as_secs_f64() * 1e3,
            reference.as_secs_f64() * 1e3
        );
    }
    hyperlight_wasm::set_compile_threads(None).expect("the default pool");
}
