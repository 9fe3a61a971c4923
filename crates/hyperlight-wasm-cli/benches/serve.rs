//! The load benchmark of BENCHMARKS.md: `wrk` (Debian's) against the
//! `serve` server on loopback, 50 connections on a trivial export, for
//! each strategy; then the same server with a bench-only in-process
//! wasmtime backend (a fresh instance per request from wasmtime's pooling
//! allocator, and one instance reused), which is never in the binary.
//!
//! `cargo bench -p hyperlight-wasm-cli --bench serve`; `SERVE_BENCH_SECONDS`
//! sets each run's length (default 5). Speed is reported, not asserted.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hyperlight_wasm::{ExportedFunction, ParameterValue, ReturnType, ReturnValue, SandboxBuilder};
use hyperlight_wasm_cli::cli::Strategy;
use hyperlight_wasm_cli::serve::error::{CallError, ErrorKind};
use hyperlight_wasm_cli::serve::pool::{Backend, Instance};
use hyperlight_wasm_cli::serve::{PoolConfig, SandboxBackend, Server};

const MODULE: &str = r#"(module
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))"#;
const CONNECTIONS: u32 = 50;
/// `serve`'s default pool size.
const POOL_SIZE: usize = 2;

/// wasmtime in this process: the limit a micro-VM per sandbox is set
/// beside.
struct Wasmtime {
    engine: wasmtime::Engine,
    pre: wasmtime::InstancePre<()>,
    exports: Vec<ExportedFunction>,
}

impl Wasmtime {
    fn new() -> Wasmtime {
        let mut config = wasmtime::Config::new();
        let mut pooling = wasmtime::PoolingAllocationConfig::default();
        pooling
            .total_memories(256)
            .total_tables(256)
            .total_core_instances(256);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
        let engine = wasmtime::Engine::new(&config).expect("a wasmtime engine");
        let module = wasmtime::Module::new(&engine, MODULE).expect("the module compiles");
        let linker = wasmtime::Linker::new(&engine);
        let pre = linker.instantiate_pre(&module).expect("the module links");
        let exports = hyperlight_wasm::inspect(MODULE.as_bytes())
            .expect("the module parses")
            .exports()
            .to_vec();
        Wasmtime {
            engine,
            pre,
            exports,
        }
    }
}

struct WasmtimeInstance {
    engine: wasmtime::Engine,
    pre: wasmtime::InstancePre<()>,
    persistent: Option<(wasmtime::Store<()>, wasmtime::Instance)>,
}

fn internal(e: impl std::fmt::Display) -> CallError {
    CallError::new(ErrorKind::Internal, e.to_string())
}

impl WasmtimeInstance {
    fn call_in(
        store: &mut wasmtime::Store<()>,
        instance: &wasmtime::Instance,
        function: &str,
        args: &[ParameterValue],
        result: ReturnType,
    ) -> Result<ReturnValue, CallError> {
        let func = instance
            .get_func(&mut *store, function)
            .ok_or_else(|| CallError::new(ErrorKind::NotFound, function))?;
        let params: Vec<wasmtime::Val> = args
            .iter()
            .map(|a| match a {
                ParameterValue::Int(v) => Ok(wasmtime::Val::I32(*v)),
                ParameterValue::Long(v) => Ok(wasmtime::Val::I64(*v)),
                other => Err(CallError::new(ErrorKind::BadRequest, format!("{other:?}"))),
            })
            .collect::<Result<_, _>>()?;
        let mut results = [wasmtime::Val::I32(0)];
        let results = if result == ReturnType::Void {
            &mut results[..0]
        } else {
            &mut results[..]
        };
        func.call(&mut *store, &params, results)
            .map_err(|e| CallError::new(ErrorKind::GuestFault, e.to_string()))?;
        Ok(match results.first() {
            None => ReturnValue::Void,
            Some(wasmtime::Val::I32(v)) => ReturnValue::Int(*v),
            Some(wasmtime::Val::I64(v)) => ReturnValue::Long(*v),
            Some(other) => return Err(internal(format!("{other:?}"))),
        })
    }
}

impl Instance for WasmtimeInstance {
    fn call(
        &mut self,
        function: &str,
        args: &[ParameterValue],
        result: ReturnType,
    ) -> Result<ReturnValue, CallError> {
        match &mut self.persistent {
            Some((store, instance)) => Self::call_in(store, instance, function, args, result),
            None => {
                // A fresh instance per call, from the pooling allocator.
                let mut store = wasmtime::Store::new(&self.engine, ());
                let instance = self.pre.instantiate(&mut store).map_err(internal)?;
                Self::call_in(&mut store, &instance, function, args, result)
            }
        }
    }

    fn is_broken(&self) -> bool {
        false
    }
}

impl Backend for Wasmtime {
    fn exports(&self) -> &[ExportedFunction] {
        &self.exports
    }

    fn instantiate(&self, persistent: bool) -> Result<Box<dyn Instance>, CallError> {
        let persistent = if persistent {
            let mut store = wasmtime::Store::new(&self.engine, ());
            let instance = self.pre.instantiate(&mut store).map_err(internal)?;
            Some((store, instance))
        } else {
            None
        };
        Ok(Box::new(WasmtimeInstance {
            engine: self.engine.clone(),
            pre: self.pre.clone(),
            persistent,
        }))
    }
}

/// What wrk measured.
#[derive(Debug, Clone, Copy)]
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    requests: u64,
}

/// `12.34us`, `1.5ms`, `2s` in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

fn wrk(addr: SocketAddr, seconds: u64, script: &std::path::Path) -> Load {
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/v1/modules/bench/call/add"))
        .output()
        .expect("wrk runs (Debian's `wrk`: scripts/setup installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
    };
    let parse_ms = |prefix: &str| {
        field(prefix)
            .and_then(|v| millis(&v))
            .unwrap_or_else(|| panic!("no `{prefix}` in wrk's output:\n{text}"))
    };
    Load {
        requests_per_second: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}")),
        p50_ms: parse_ms("50%"),
        p99_ms: parse_ms("99%"),
        non_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        requests: text
            .lines()
            .find_map(|l| {
                l.trim()
                    .split_once(" requests in ")
                    .and_then(|(n, _)| n.parse().ok())
            })
            .unwrap_or_else(|| panic!("no request count in wrk's output:\n{text}")),
    }
}

fn measure(
    runtime: &tokio::runtime::Runtime,
    backend: Arc<dyn Backend>,
    strategy: Strategy,
    seconds: u64,
    script: &std::path::Path,
) -> Measured {
    let pools = PoolConfig {
        strategy,
        size: POOL_SIZE,
        max_concurrency: 256,
    };
    let server = runtime
        .block_on(Server::start(
            "127.0.0.1:0".parse().expect("an address"),
            vec![(String::from("bench"), backend)],
            pools,
            1 << 20,
            prometheus::Registry::new(),
        ))
        .expect("the server starts");
    // A short warm-up (connections, caches), then the measured run.
    wrk(server.addr(), 1, script);
    let (cpu, calls) = (cpu_time(), guest_calls());
    let load = wrk(server.addr(), seconds, script);
    let (cpu, calls) = (cpu_time() - cpu, guest_calls().delta(calls));
    runtime.block_on(server.shutdown(Duration::from_secs(10)));
    assert_eq!(load.non_2xx, 0, "errors under load: {load:?}");
    // wrk's count includes requests cut off at the end of the run.
    let requests = load.requests.max(1) as f64;
    Measured {
        load,
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / requests,
        guest_call_us: calls.mean(),
    }
}

/// A run's figures and where its time went.
struct Measured {
    load: Load,
    /// This process's CPU time (server, pools, sandboxes' vCPUs; wrk is
    /// another process) per request.
    cpu_us_per_request: f64,
    /// The mean guest call as the library's histogram times it (none for
    /// wasmtime).
    guest_call_us: Option<f64>,
}

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The library's guest-call histogram for `add`: count and sum (µs).
#[derive(Clone, Copy)]
struct Calls(u64, f64);

impl Calls {
    fn delta(self, before: Calls) -> Calls {
        Calls(self.0 - before.0, self.1 - before.1)
    }

    fn mean(self) -> Option<f64> {
        (self.0 > 0).then(|| self.1 / self.0 as f64)
    }
}

fn guest_calls() -> Calls {
    prometheus::gather()
        .iter()
        .filter(|family| family.name() == "hyperlight_guest_function_call_duration_microseconds")
        .flat_map(|family| family.get_metric().iter())
        .filter(|metric| metric.get_label().iter().any(|l| l.value() == "add"))
        .map(|metric| {
            let h = metric.get_histogram();
            Calls(h.get_sample_count(), h.get_sample_sum())
        })
        .fold(Calls(0, 0.0), |a, b| Calls(a.0 + b.0, a.1 + b.1))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(
        hyperlight_wasm::is_hypervisor_present(),
        "/dev/kvm is not usable: this benchmark runs real micro-VMs"
    );
    let seconds: u64 = std::env::var("SERVE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = '{\"args\": [40, 2]}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )
    .expect("the wrk script is written");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let hyperlight: Arc<dyn Backend> = Arc::new(
        SandboxBackend::new(
            SandboxBuilder::new().with_max_execution_time(Duration::from_secs(1)),
            MODULE.as_bytes().to_vec(),
        )
        .expect("the module parses"),
    );
    let wasmtime: Arc<dyn Backend> = Arc::new(Wasmtime::new());
    println!(
        "serve under load: wrk, 1 thread, {CONNECTIONS} connections, {seconds} s per run, \
         pool of {}, POST {{\"args\": [40, 2]}} to `add`\n",
        POOL_SIZE
    );
    println!(
        "| backend | strategy | requests/s | p50 | p99 | server CPU per request | guest call (mean) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut results = Vec::new();
    for (name, backend, strategy) in [
        ("hyperlight-wasm", &hyperlight, Strategy::Fresh),
        ("hyperlight-wasm", &hyperlight, Strategy::Reuse),
        ("hyperlight-wasm", &hyperlight, Strategy::Renew),
        ("in-process wasmtime", &wasmtime, Strategy::Fresh),
        ("in-process wasmtime", &wasmtime, Strategy::Reuse),
    ] {
        let measured = measure(&runtime, Arc::clone(backend), strategy, seconds, &script);
        let load = measured.load;
        println!(
            "| {name} | {strategy:?} | {:.0} | {:.2} ms | {:.2} ms | {:.1} µs | {} |",
            load.requests_per_second,
            load.p50_ms,
            load.p99_ms,
            measured.cpu_us_per_request,
            measured
                .guest_call_us
                .map_or(String::from("-"), |us| format!("{us:.1} µs")),
        );
        results.push(load.requests_per_second);
    }
    let fresh = results[0] / results[3];
    let reuse = results[1] / results[4];
    println!();
    println!(
        "fresh / wasmtime fresh instance: {fresh:.2} x (target >= 0.5: {})",
        if fresh >= 0.5 { "met" } else { "MISSED" }
    );
    println!(
        "reuse / wasmtime reused instance: {reuse:.2} x (target >= 0.7: {})",
        if reuse >= 0.7 { "met" } else { "MISSED" }
    );
}
