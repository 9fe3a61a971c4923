//! Soak, leaks and concurrency, bounded by iterations (never by time):
//!
//! - create/load/call/drop cycles leave the process's open file descriptors
//!   and resident memory flat after a warm-up;
//! - eight threads making calls under random time limits while another
//!   thread kills calls at random: every call returns, cancelled calls
//!   within their limit plus the cancel wait (and a scheduling slack), the
//!   next call on the same sandbox is correct, and every sandbox gauge is
//!   back to zero at the end.
//!
//! CI runs the reduced counts; `HYPERLIGHT_WASM_LONG=1` runs the full ones
//! (10 000 cycles, 8 x 1 000 calls), whose figures RELIABILITY.md gives.
//! A binary of its own: it counts the process's file descriptors and reads
//! its process-wide gauges.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyperlight_wasm::{
    CancelReason, Error, InterruptHandle, LoadedWasmSandbox, SandboxBuilder, is_hypervisor_present,
    set_metrics_registry, wait_for_teardown,
};
use prometheus::Registry;

const MODULE: &str = r#"(module
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (func (export "add") (param i32 i32) (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store (i32.const 0) (global.get $calls))
    (i32.add (local.get 0) (local.get 1)))
  (func (export "spin") (loop $l (br $l))))"#;

fn long() -> bool {
    std::env::var_os("HYPERLIGHT_WASM_LONG").is_some()
}

/// The tests share process-wide gauges: they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<&'static Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry: &'static Registry = Box::leak(Box::new(Registry::new()));
        set_metrics_registry(registry).unwrap();
        registry
    })
}

fn gauge(name: &str) -> f64 {
    registry()
        .gather()
        .iter()
        .find(|family| family.name() == name)
        .map_or(0.0, |family| {
            family
                .get_metric()
                .iter()
                .map(|m| m.get_gauge().get_value())
                .sum()
        })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident memory in bytes (`/proc/self/statm`, second field, pages).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn cycle() {
    let mut sandbox = SandboxBuilder::new()
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(MODULE.as_bytes())
        .unwrap();
    assert_eq!(
        sandbox.call_guest_function::<i32>("add", (40, 2)).unwrap(),
        42
    );
}

#[test]
fn create_load_call_drop_cycles_leave_fds_and_memory_flat() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(is_hypervisor_present(), "this test needs a usable /dev/kvm");
    registry();
    let cycles = if long() { 10_000 } else { 1_000 };
    // Warm-up: the compiler, the shared images, the reaper and watchdog
    // threads, the allocator's arenas.
    for _ in 0..200 {
        cycle();
    }
    wait_for_teardown();
    let (fds, resident) = (open_fds(), rss());
    for _ in 0..cycles {
        cycle();
    }
    wait_for_teardown();
    let (fds_after, resident_after) = (open_fds(), rss());
    println!(
        "{cycles} cycles: open fds {fds} -> {fds_after}, RSS {} -> {} KiB",
        resident / 1024,
        resident_after / 1024
    );
    // Slack: none for descriptors (every VM's are closed once the reaper
    // has drained); 16 MiB for resident memory (allocator and page-cache
    // noise), far below the ~200 KiB a leaked sandbox would hold per cycle.
    assert_eq!(fds_after, fds, "file descriptors leaked");
    assert!(
        resident_after <= resident + (16 << 20),
        "RSS grew from {resident} to {resident_after} bytes over {cycles} cycles"
    );
    assert_eq!(gauge("current_number_of_loaded_wasm_sandboxes"), 0.0);
}

/// A tiny deterministic generator (xorshift64*), one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const CANCEL_WAIT: Duration = Duration::from_millis(50);
/// What a loaded 2-core machine may add to a cancelled call's return
/// (threads waiting for a core): a liveness bound, not a speed target.
const SCHEDULING_SLACK: Duration = Duration::from_secs(2);

/// A sandbox whose calls have time limit `limit`. The limit holds for the
/// load too, which eight threads on two cores can push past it: such a
/// load is tried again (at most ten times).
fn sandbox(limit: Duration) -> LoadedWasmSandbox {
    let mut attempts = 0;
    loop {
        let loaded = SandboxBuilder::new()
            .with_max_execution_time(limit)
            .with_max_cancel_wait(CANCEL_WAIT)
            .build()
            .and_then(|proto| proto.load_runtime())
            .and_then(|sandbox| sandbox.load_module_from_buffer(MODULE.as_bytes()));
        match loaded {
            Err(Error::ExecutionCancelledByHost { .. }) if attempts < 10 => attempts += 1,
            loaded => return loaded.unwrap(),
        }
    }
}

fn random_limit(rng: &mut Rng) -> Duration {
    Duration::from_millis(50 + rng.below(200))
}

#[test]
fn concurrent_calls_with_random_limits_and_kills_all_return_and_gauges_drain() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(is_hypervisor_present(), "this test needs a usable /dev/kvm");
    registry();
    let calls_per_thread: u64 = if long() { 1_000 } else { 150 };
    let handles: Arc<Mutex<Vec<InterruptHandle>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (handles, done, kills) = (Arc::clone(&handles), Arc::clone(&done), Arc::clone(&kills));
        std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            while !done.load(Ordering::Relaxed) {
                let handle = {
                    let handles = handles.lock().unwrap();
                    if handles.is_empty() {
                        None
                    } else {
                        Some(handles[rng.below(handles.len() as u64) as usize].clone())
                    }
                };
                // `kill` waits until a running call has ended, so this
                // loop is paced by the calls themselves.
                if let Some(handle) = handle
                    && handle.kill()
                {
                    kills.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::yield_now();
            }
        })
    };
    let workers: Vec<_> = (0..8u64)
        .map(|t| {
            let handles = Arc::clone(&handles);
            std::thread::spawn(move || {
                let mut rng = Rng(0x1234_5678 + t * 0x9e37);
                let mut counts = [0usize; 3]; // returned, timed out, killed
                let mut limit = random_limit(&mut rng);
                let mut sb = sandbox(limit);
                handles.lock().unwrap().push(sb.interrupt_handle());
                for i in 0..calls_per_thread {
                    if i % 50 == 49 {
                        // A new sandbox with a new random limit.
                        limit = random_limit(&mut rng);
                        sb = sandbox(limit);
                        handles.lock().unwrap().push(sb.interrupt_handle());
                    }
                    let spin = rng.below(4) == 0;
                    let start = Instant::now();
                    let result = if spin {
                        sb.call_guest_function::<()>("spin", ()).map(|()| 0)
                    } else {
                        sb.call_guest_function::<i32>("add", (i as i32, 1))
                    };
                    let took = start.elapsed();
                    match result {
                        Ok(v) => {
                            assert!(!spin, "an endless loop returned");
                            assert_eq!(v, i as i32 + 1);
                            counts[0] += 1;
                        }
                        // (A quick call too, when its thread waited for a
                        // core longer than the limit.)
                        Err(Error::ExecutionCancelledByHost {
                            reason: CancelReason::TimeLimit(l),
                        }) => {
                            assert_eq!(l, limit);
                            counts[1] += 1;
                        }
                        Err(Error::ExecutionCancelledByHost {
                            reason: CancelReason::Killed,
                        }) => counts[2] += 1,
                        Err(e) => panic!("call {i} of thread {t}: {e}"),
                    }
                    assert!(
                        took <= limit + CANCEL_WAIT + SCHEDULING_SLACK,
                        "a call under a {limit:?} limit took {took:?}"
                    );
                    // Cancelled or not, the sandbox answers the next call.
                    if !spin || i % 7 == 0 {
                        match sb.call_guest_function::<i32>("add", (2, 3)) {
                            Ok(5) | Err(Error::ExecutionCancelledByHost { .. }) => {}
                            other => panic!("after call {i} of thread {t}: {other:?}"),
                        }
                    }
                }
                counts
            })
        })
        .collect();
    let mut totals = [0usize; 3];
    for worker in workers {
        let counts = worker.join().unwrap();
        for (total, n) in totals.iter_mut().zip(counts) {
            *total += n;
        }
    }
    done.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    drop(handles);
    wait_for_teardown();
    println!(
        "{} calls: {} returned, {} hit their time limit, {} killed ({} kills landed)",
        8 * calls_per_thread,
        totals[0],
        totals[1],
        totals[2],
        kills.load(Ordering::Relaxed)
    );
    assert_eq!(totals.iter().sum::<usize>() as u64, 8 * calls_per_thread);
    assert!(totals[1] > 0, "no call hit its time limit");
    assert!(kills.load(Ordering::Relaxed) > 0, "no kill landed");
    for name in [
        "current_number_of_wasm_sandboxes",
        "current_number_of_loaded_wasm_sandboxes",
        "current_number_of_proto_wasm_sandboxes",
    ] {
        assert_eq!(gauge(name), 0.0, "{name} after every sandbox was dropped");
    }
}
