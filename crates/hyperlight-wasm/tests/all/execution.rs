//! Execution control and state: time limits, kill, faults, per-call reset,
//! persistent state and snapshots.

use std::sync::mpsc;
use std::thread;

use hyperlight_wasm::{CancelReason, Error, LoadedWasmSandbox, SandboxBuilder};

use crate::common::{loaded, require_kvm, with_allocator};

/// Loops forever; `spin_after_host` tells the host first; `wait_in_host`
/// blocks in a host function; `count` increments a global; `store`/`load`
/// use linear memory; `grow` grows memory until it fails.
fn module() -> String {
    with_allocator(
        r#"
  (import "env" "started" (func $started))
  (import "env" "block" (func $block))
  (global $count (mut i32) (i32.const 0))
  (func (export "spin") (loop $l (br $l)))
  (func (export "spin_after_host") (call $started) (loop $l (br $l)))
  (func (export "wait_in_host") (result i32) (call $block) (i32.const 7))
  (func (export "count") (result i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (global.get $count))
  (func (export "store") (param i32) (i32.store (i32.const 1024) (local.get 0)))
  (func (export "load") (result i32) (i32.load (i32.const 1024)))
  (func (export "grow") (result i32)
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    (memory.size))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
"#,
    )
}

struct Channels {
    started: mpsc::Receiver<()>,
    blocked: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

fn sandbox(builder: SandboxBuilder) -> (LoadedWasmSandbox, Channels) {
    require_kvm();
    let (started_tx, started) = mpsc::channel();
    let (blocked_tx, blocked) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let mut proto = builder.build().unwrap();
    proto
        .register("started", move || {
            let _ = started_tx.send(());
        })
        .unwrap();
    proto
        .register("block", move || {
            let _ = blocked_tx.send(());
            let _ = release_rx.recv();
        })
        .unwrap();
    let sb = proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(module().as_bytes())
        .unwrap();
    (
        sb,
        Channels {
            started,
            blocked,
            release,
        },
    )
}

fn still_works(sb: &mut LoadedWasmSandbox) {
    assert_eq!(sb.call_guest_function::<i32>("add", (40, 2)).unwrap(), 42);
}

#[test]
fn an_infinite_loop_is_stopped_by_the_time_limit_every_time() {
    let builder = SandboxBuilder::new().with_guest_function_call_max_execution_time_millis(10);
    let (mut sb, _) = sandbox(builder);
    for _ in 0..200 {
        match sb.call_guest_function::<()>("spin", ()) {
            Err(Error::ExecutionCancelledByHost {
                reason: CancelReason::TimeLimit(limit),
            }) => assert_eq!(limit.as_millis(), 10),
            other => panic!("{other:?}"),
        }
        // The sandbox works again. On a loaded machine even a trivial call
        // can be descheduled past a 10 ms limit: that is a cancellation
        // too, never anything else, and a later attempt gets through.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match sb.call_guest_function::<i32>("add", (40, 2)) {
                Ok(sum) => break assert_eq!(sum, 42),
                Err(Error::ExecutionCancelledByHost { .. }) if attempts < 100 => continue,
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn a_short_time_limit_holds_while_a_long_one_is_armed() {
    // The watchdog sleeps until the earliest deadline it knows; a call with
    // a later one must not delay it, and one with an earlier one must wake
    // it.
    let (mut long, channels) =
        sandbox(SandboxBuilder::new().with_guest_function_call_max_execution_time_millis(600_000));
    let (mut short, _) =
        sandbox(SandboxBuilder::new().with_guest_function_call_max_execution_time_millis(20));
    let (done, finished) = mpsc::channel();
    let killer = long.interrupt_handle();
    let spinner = thread::spawn(move || {
        let result = long.call_guest_function::<()>("spin_after_host", ());
        let _ = done.send(());
        (result, long)
    });
    // The long call is running (its deadline armed) from here on.
    channels.started.recv().unwrap();
    for _ in 0..20 {
        assert!(matches!(
            short.call_guest_function::<()>("spin", ()),
            Err(Error::ExecutionCancelledByHost {
                reason: CancelReason::TimeLimit(_)
            })
        ));
    }
    // The long call is still running: only its time limit could end it.
    assert!(finished.try_recv().is_err());
    killer.kill();
    let (result, mut long) = spinner.join().unwrap();
    assert!(matches!(
        result,
        Err(Error::ExecutionCancelledByHost {
            reason: CancelReason::Killed
        })
    ));
    still_works(&mut long);
}

#[test]
fn kill_stops_an_infinite_loop_from_another_thread_every_time() {
    let builder = SandboxBuilder::new().with_guest_function_call_max_execution_time_millis(60_000);
    let (mut sb, channels) = sandbox(builder);
    let handle = sb.interrupt_handle();
    let (go, ready) = mpsc::channel::<()>();
    let killer = thread::spawn(move || {
        while ready.recv().is_ok() {
            channels.started.recv().unwrap();
            // The call is in the guest now: kill waits until it stopped.
            assert!(handle.kill());
        }
    });
    for _ in 0..300 {
        go.send(()).unwrap();
        match sb.call_guest_function::<()>("spin_after_host", ()) {
            Err(Error::ExecutionCancelledByHost {
                reason: CancelReason::Killed,
            }) => {}
            other => panic!("{other:?}"),
        }
        still_works(&mut sb);
    }
    drop(go);
    killer.join().unwrap();
}

#[test]
fn kill_during_a_host_function_ends_the_call_when_it_returns() {
    let builder = SandboxBuilder::new()
        .with_guest_function_call_max_execution_time_millis(60_000)
        .with_guest_function_call_max_cancel_wait_millis(0);
    let (mut sb, channels) = sandbox(builder);
    let handle = sb.interrupt_handle();
    let killer = thread::spawn(move || {
        channels.blocked.recv().unwrap();
        // The call is waiting in the host function: it cannot stop yet.
        assert!(!handle.kill());
        channels.release.send(()).unwrap();
        channels
    });
    assert!(matches!(
        sb.call_guest_function::<i32>("wait_in_host", ()),
        Err(Error::ExecutionCancelledByHost {
            reason: CancelReason::Killed
        })
    ));
    let channels = killer.join().unwrap();
    // Without a kill the same call completes.
    channels.release.send(()).unwrap();
    assert_eq!(
        sb.call_guest_function::<i32>("wait_in_host", ()).unwrap(),
        7
    );
}

#[test]
fn kill_with_no_call_running_does_nothing() {
    let (mut sb, _) = sandbox(SandboxBuilder::new());
    let handle = sb.interrupt_handle();
    assert!(!handle.kill());
    still_works(&mut sb);
    assert!(!handle.kill());
    still_works(&mut sb);
    // The handle outlives the sandbox harmlessly.
    let clone = handle.clone();
    drop(sb);
    assert!(!clone.kill());
}

#[test]
fn the_interrupt_handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<hyperlight_wasm::InterruptHandle>();
}

#[test]
fn memory_grow_past_the_heap_returns_minus_one_and_the_call_goes_on() {
    // `grow` grows 16 pages at a time until memory.grow returns -1, then
    // returns memory.size: the heap (8 MiB, 128 pages) ends the growth, not
    // the call.
    let builder = SandboxBuilder::new().with_guest_heap_size(8 << 20);
    let (mut sb, _) = sandbox(builder);
    sb.call_guest_function::<()>("store", 99).unwrap();
    let pages = sb.call_guest_function::<i32>("grow", ()).unwrap();
    assert!((2..128).contains(&pages), "{pages} pages");
    still_works(&mut sb);
    assert_eq!(sb.call_guest_function::<i32>("load", ()).unwrap(), 0);
}

#[test]
fn memory_grow_past_the_declared_maximum_returns_minus_one() {
    let mut sb = loaded(
        r#"(module (memory 1 64)
            (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
            (func (export "size") (result i32) (memory.size)))"#,
    );
    assert_eq!(sb.call_guest_function::<i32>("grow", 100).unwrap(), -1);
    assert_eq!(sb.call_guest_function::<i32>("grow", 64).unwrap(), -1);
    assert_eq!(sb.call_guest_function::<i32>("grow", 63).unwrap(), 1);
    // Past what any heap holds (4 GiB of pages), and then within it again.
    let mut sb = loaded(
        r#"(module (memory 1)
            (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
            (func (export "grow_twice") (result i32)
              (drop (memory.grow (i32.const 65535)))
              (memory.grow (i32.const 1))))"#,
    );
    assert_eq!(sb.call_guest_function::<i32>("grow", 65535).unwrap(), -1);
    assert_eq!(sb.call_guest_function::<i32>("grow_twice", ()).unwrap(), 1);
}

#[test]
fn a_module_whose_memory_does_not_fit_the_heap_fails_to_load() {
    require_kvm();
    // 256 pages (16 MiB) in an 8 MiB heap: running out of heap outside
    // memory.grow stays an error.
    let wasm = wat::parse_str("(module (memory 256))").unwrap();
    let result = SandboxBuilder::new()
        .with_guest_heap_size(8 << 20)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(&wasm);
    assert!(
        matches!(
            result,
            Err(Error::Instantiation { .. } | Error::GuestOutOfMemory { .. })
        ),
        "{result:?}"
    );
}

#[test]
fn by_default_every_call_starts_from_a_fresh_instance() {
    let (mut sb, _) = sandbox(SandboxBuilder::new());
    for _ in 0..5 {
        assert_eq!(sb.call_guest_function::<i32>("count", ()).unwrap(), 1);
    }
    // Memory written by one call is invisible to the next.
    sb.call_guest_function::<()>("store", 0x5ec7e7).unwrap();
    assert_eq!(sb.call_guest_function::<i32>("load", ()).unwrap(), 0);
}

#[test]
fn persistent_state_carries_over_and_snapshots_bring_it_back() {
    let (mut sb, _) = sandbox(
        SandboxBuilder::new()
            .with_persistent_state(true)
            .with_guest_function_call_max_execution_time_millis(100),
    );
    for want in 1..=3 {
        assert_eq!(sb.call_guest_function::<i32>("count", ()).unwrap(), want);
    }
    sb.call_guest_function::<()>("store", 1234).unwrap();
    let snapshot = sb.snapshot().unwrap();
    assert!(snapshot.memory_bytes() > 0);
    for want in 4..=6 {
        assert_eq!(sb.call_guest_function::<i32>("count", ()).unwrap(), want);
    }
    sb.call_guest_function::<()>("store", 5678).unwrap();
    sb.restore(&snapshot).unwrap();
    assert_eq!(sb.call_guest_function::<i32>("load", ()).unwrap(), 1234);
    assert_eq!(sb.call_guest_function::<i32>("count", ()).unwrap(), 4);
    // Restoring twice lands in the same place.
    sb.restore(&snapshot).unwrap();
    assert_eq!(sb.call_guest_function::<i32>("count", ()).unwrap(), 4);
    // A fault or a cancellation goes back to the state after load_module.
    sb.call_guest_function::<()>("spin", ()).unwrap_err();
    assert_eq!(sb.call_guest_function::<i32>("count", ()).unwrap(), 1);
    assert_eq!(sb.call_guest_function::<i32>("load", ()).unwrap(), 0);
}

#[test]
fn a_snapshot_of_another_sandbox_is_refused() {
    let (mut a, _) = sandbox(SandboxBuilder::new().with_persistent_state(true));
    let (mut b, _) = sandbox(SandboxBuilder::new().with_persistent_state(true));
    let snapshot = a.snapshot().unwrap();
    assert!(matches!(b.restore(&snapshot), Err(Error::SnapshotMismatch)));
    still_works(&mut b);
}

#[test]
fn unload_returns_to_the_post_runtime_state() {
    let (mut sb, _) = sandbox(SandboxBuilder::new().with_persistent_state(true));
    assert_eq!(sb.call_guest_function::<i32>("count", ()).unwrap(), 1);
    assert_eq!(sb.call_guest_function::<i32>("count", ()).unwrap(), 2);
    // The host functions stay registered: the same module loads again, as
    // a fresh instance.
    let mut sb = sb
        .unload_module()
        .unwrap()
        .load_module_from_buffer(module().as_bytes())
        .unwrap();
    assert_eq!(sb.call_guest_function::<i32>("count", ()).unwrap(), 1);
}
