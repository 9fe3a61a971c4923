//! Cancellation and the signal that stops running guests: a test binary of
//! its own, because the signal is chosen once per process, before the
//! first sandbox.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::sync::mpsc;
use std::time::Duration;

use hyperlight_wasm::{CancelReason, Error, SandboxBuilder, is_hypervisor_present};

const SPIN: &str = r#"(module
  (func (export "spin") (loop $l (br $l)))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))"#;

extern "C" fn applications_handler(_: libc::c_int) {}

/// Installs a handler of "the application's" for `signal`.
fn install_handler(signal: libc::c_int) {
    // SAFETY: a zeroed sigaction with a do-nothing handler.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = applications_handler as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(signal, &action, std::ptr::null_mut()), 0);
    }
}

/// Blocks every signal on the calling thread.
fn block_every_signal() {
    // SAFETY: a full set, applied to this thread only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()),
            0
        );
    }
}

/// Whether `signal` is pending on the calling thread.
fn pending(signal: libc::c_int) -> bool {
    // SAFETY: reads the pending set into one we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set);
        libc::sigismember(&set, signal) == 1
    }
}

fn loaded(time_limit_ms: u64) -> hyperlight_wasm::LoadedWasmSandbox {
    SandboxBuilder::new()
        .with_guest_function_call_max_execution_time_millis(time_limit_ms)
        .with_guest_function_call_max_cancel_wait_millis(10_000)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(SPIN.as_bytes())
        .unwrap()
}

/// One test, in order: the steps depend on process-wide state.
#[test]
fn the_interrupt_signal_is_never_taken_from_the_application_and_works_through_any_mask() {
    assert!(
        is_hypervisor_present(),
        "these tests need a usable /dev/kvm (Linux with KVM, read/write access for this user)"
    );
    // 1. The application handles the default signal itself: no sandbox
    //    silently takes it over.
    let default = libc::SIGRTMIN() + 6;
    install_handler(default);
    match SandboxBuilder::new().build() {
        Err(Error::InterruptSignalInUse { signal }) => assert_eq!(signal, default),
        other => panic!("{other:?}"),
    }
    // 2. It chooses another, and sandboxes work.
    let chosen = libc::SIGRTMIN() + 9;
    hyperlight_wasm::set_interrupt_signal(chosen).unwrap();
    let mut sb = loaded(200);
    assert_eq!(sb.call_guest_function::<i32>("add", (1, 2)).unwrap(), 3);
    // Too late to change it now.
    assert!(matches!(
        hyperlight_wasm::set_interrupt_signal(libc::SIGRTMIN() + 10),
        Err(Error::InvalidConfiguration { .. })
    ));

    // 3. A thread that blocks every signal: the time limit still stops an
    //    infinite loop, kill() too, and no kick is left pending after.
    let (killer_tx, killer_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        block_every_signal();
        let mut sb = loaded(200);
        match sb.call_guest_function::<()>("spin", ()) {
            Err(Error::ExecutionCancelledByHost {
                reason: CancelReason::TimeLimit(limit),
            }) => assert_eq!(limit, Duration::from_millis(200)),
            other => panic!("{other:?}"),
        }
        assert!(!pending(chosen), "a kick was left pending");
        assert_eq!(sb.call_guest_function::<i32>("add", (2, 2)).unwrap(), 4);

        let mut sb = loaded(3_600_000);
        killer_tx.send(sb.interrupt_handle()).unwrap();
        let killed = sb.call_guest_function::<()>("spin", ());
        assert!(!pending(chosen), "a kick was left pending");
        // Later calls run normally: no pending kick stops them at entry.
        for i in 0..100 {
            assert_eq!(sb.call_guest_function::<i32>("add", (i, 1)).unwrap(), i + 1);
        }
        killed
    });
    let handle = killer_rx.recv().unwrap();
    // kill() waits (up to 10 s) for the call to stop; it is a no-op until
    // the call is running, so try until it stops one.
    while !handle.kill() {
        std::thread::yield_now();
    }
    match worker.join().unwrap() {
        Err(Error::ExecutionCancelledByHost {
            reason: CancelReason::Killed,
        }) => {}
        other => panic!("{other:?}"),
    }
    // The application's own handler on the default signal is untouched.
    // SAFETY: reads the current action into a zeroed struct.
    let current = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(default, std::ptr::null(), &mut current);
        current.sa_sigaction
    };
    assert_eq!(
        current,
        applications_handler as extern "C" fn(libc::c_int) as usize
    );
}
