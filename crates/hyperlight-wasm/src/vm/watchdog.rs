//! The process-wide watchdog that enforces time limits: one thread that
//! sleeps until the earliest deadline of the calls running now and cancels
//! the calls whose deadline passed; there is no thread per sandbox.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use super::error::VmError;
use super::interrupt::{Shared, TIMED_OUT};

/// Deadlines of the running calls: (deadline, entry id) to the call's
/// shared state and generation.
type Deadlines = BTreeMap<(Instant, u64), (Weak<Shared>, u64)>;

/// What the watchdog thread knows.
#[derive(Default)]
struct WatchdogState {
    deadlines: Deadlines,
    /// When the thread wakes up next by itself (`None`: only when told).
    /// A call whose deadline is not earlier does not wake it: it checks
    /// then, and sleeps until the earliest deadline left. So a sandbox
    /// making call after call wakes it about once per time limit, not
    /// once per call.
    wakes_at: Option<Instant>,
}

/// The process-wide watchdog: deadlines of the running calls.
pub(super) struct Watchdog {
    state: Mutex<WatchdogState>,
    changed: Condvar,
    next_id: AtomicU64,
    /// Whether its thread runs (set once it was started).
    running: AtomicBool,
    /// Serializes attempts to start the thread.
    starting: Mutex<()>,
}

static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();

/// The watchdog, its thread started. If the thread cannot start, time
/// limits cannot be enforced: the error goes to the caller (no call runs
/// without its limit), and the next caller tries again.
pub(super) fn watchdog() -> Result<&'static Watchdog, VmError> {
    let watchdog = WATCHDOG.get_or_init(Watchdog::new);
    watchdog.ensure_started(|watchdog| {
        std::thread::Builder::new()
            .name(String::from("hyperlight-wasm-watchdog"))
            .spawn(move || watchdog.run())
            .map(drop)
    })?;
    Ok(watchdog)
}

/// Removes a deadline (only ever armed on a started watchdog).
pub(super) fn disarm(deadline: Instant, id: u64) {
    if let Some(watchdog) = WATCHDOG.get() {
        watchdog.disarm(deadline, id);
    }
}

impl Watchdog {
    fn new() -> Watchdog {
        Watchdog {
            state: Mutex::new(WatchdogState::default()),
            changed: Condvar::new(),
            next_id: AtomicU64::new(0),
            running: AtomicBool::new(false),
            starting: Mutex::new(()),
        }
    }

    /// Starts the thread with `spawn` unless it runs.
    fn ensure_started(
        &'static self,
        spawn: impl FnOnce(&'static Watchdog) -> std::io::Result<()>,
    ) -> Result<(), VmError> {
        if self.running.load(Ordering::Acquire) {
            return Ok(());
        }
        let _starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if self.running.load(Ordering::Acquire) {
            return Ok(());
        }
        spawn(self).map_err(VmError::Watchdog)?;
        self.running.store(true, Ordering::Release);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, WatchdogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn arm(&self, deadline: Instant, shared: Weak<Shared>, generation: u64) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state.deadlines.insert((deadline, id), (shared, generation));
        let wake = state.wakes_at.is_none_or(|wakes_at| deadline < wakes_at);
        if wake {
            // Not notified twice for the same change.
            state.wakes_at = Some(deadline);
        }
        drop(state);
        if wake {
            self.changed.notify_one();
        }
        id
    }

    fn disarm(&self, deadline: Instant, id: u64) {
        self.lock().deadlines.remove(&(deadline, id));
    }

    fn run(&self) {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            let expired: Vec<_> = state
                .deadlines
                .range(..=(now, u64::MAX))
                .map(|(key, _)| *key)
                .collect();
            for key in expired {
                if let Some((shared, generation)) = state.deadlines.remove(&key)
                    && let Some(shared) = shared.upgrade()
                {
                    shared.request_cancel(TIMED_OUT, Some(generation));
                }
            }
            let next = state.deadlines.keys().next().map(|(deadline, _)| *deadline);
            state.wakes_at = next;
            let wait = next.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            state = match wait {
                Some(wait) => self
                    .changed
                    .wait_timeout(state, wait)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|e| e.into_inner().0),
                None => self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watchdog_that_cannot_start_is_an_error_and_is_retried() {
        let watchdog: &'static Watchdog = Box::leak(Box::new(Watchdog::new()));
        let refused = watchdog.ensure_started(|_| Err(std::io::Error::other("no threads left")));
        assert!(matches!(refused, Err(VmError::Watchdog(_))));
        assert!(!watchdog.running.load(Ordering::SeqCst));
        // The next caller tries again, and once it runs nobody starts it
        // twice.
        let mut spawned = 0;
        watchdog
            .ensure_started(|_| {
                spawned += 1;
                Ok(())
            })
            .unwrap();
        watchdog
            .ensure_started(|_| -> std::io::Result<()> { panic!("started twice") })
            .unwrap();
        assert_eq!(spawned, 1);
    }
}
