//! Stopping a running guest call from another thread, and time limits.
//!
//! A call is stopped by kicking its vCPU out of `KVM_RUN`: the killer sets a
//! cancel flag, sets `immediate_exit` in the vCPU's `kvm_run` page and sends
//! a real-time signal (with a no-op handler) to the thread running the call.
//! `immediate_exit` closes the race with a signal that lands just before
//! `KVM_RUN` is entered (the signal is then lost, but `KVM_RUN` returns at
//! once); the signal stops a `KVM_RUN` already in progress. The run loop
//! checks the flag whenever `KVM_RUN` returns `EINTR` and before every entry,
//! so a call that is waiting on a host function stops as soon as that
//! returns.
//!
//! Race windows, and why each is harmless:
//! 1. Kill before a call starts, or after it ended: the slot says "not
//!    running" (checked under the slot lock), nothing is touched.
//! 2. Kill while the call starts: `begin` clears the flag under the lock, so
//!    a kill either happens before (no effect) or after (cancels this call).
//! 3. Kill while the call ends: `end` takes the lock, so the killer either
//!    sees the call running (the vCPU mapping and the thread are still alive,
//!    the cancel has no effect on a call that already returned) or not.
//! 4. The signal arrives while the thread is outside `KVM_RUN` (in the host,
//!    between exits): the handler does nothing, `immediate_exit` makes the
//!    next `KVM_RUN` return at once.
//!
//! Time limits use one process-wide watchdog thread that sleeps until the
//! earliest deadline of the calls running now and kills the calls whose
//! deadline passed; there is no thread per sandbox.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::error::{CancelReason, Error, Result};

/// The offset from `SIGRTMIN` of the signal that kicks a vCPU.
const KICK_SIGNAL_OFFSET: libc::c_int = 6;

const NOT_CANCELLED: u8 = 0;
const KILLED: u8 = 1;
const TIMED_OUT: u8 = 2;

/// What the killer and the vCPU thread share about the current call.
#[derive(Debug)]
struct Slot {
    running: bool,
    /// Counts calls, so that a stale deadline cannot stop a later call.
    generation: u64,
    /// Kernel thread id of the thread running the call.
    tid: libc::pid_t,
}

#[derive(Debug)]
pub(crate) struct Shared {
    slot: Mutex<Slot>,
    ended: Condvar,
    /// Why the current call must stop ([`NOT_CANCELLED`] if it need not).
    cancel: AtomicU8,
    /// Whether the vCPU thread is in (or about to enter) `KVM_RUN`: only
    /// then is it sent the signal, so that a host function's blocking
    /// system calls are never interrupted.
    in_guest: AtomicBool,
    /// `kvm_run.immediate_exit` of the vCPU. Only dereferenced while a call
    /// runs (the `Vm`, which owns the mapping, is alive and in a call), under
    /// the slot lock or by the vCPU thread itself.
    immediate_exit: *mut u8,
    /// How long `kill` waits for the call to stop.
    cancel_wait: Duration,
}

// SAFETY: the raw pointer is only dereferenced under the rules described on
// the field (while the owning Vm is alive and in a call, serialized by the
// slot lock against the end of the call), through atomic accesses.
unsafe impl Send for Shared {}
// SAFETY: as above; every other field is Sync.
unsafe impl Sync for Shared {}

/// Stops the guest call a sandbox is running, from any thread.
///
/// Get one with [`crate::LoadedWasmSandbox::interrupt_handle`]; it is cheap
/// to clone and stays valid (and harmless) after the sandbox is gone.
#[derive(Debug, Clone)]
pub struct InterruptHandle {
    shared: Arc<Shared>,
}

impl InterruptHandle {
    /// Cancels the guest call running now, if any: it returns
    /// [`Error::ExecutionCancelledByHost`] and the sandbox is restored to its
    /// state after `load_module`. A call waiting on a host function stops
    /// when that returns. With no call running this does nothing.
    ///
    /// Waits up to the sandbox's maximum cancel wait
    /// ([`crate::SandboxBuilder::with_guest_function_call_max_cancel_wait_millis`])
    /// for the call to stop, and returns whether a call was running and has
    /// stopped.
    pub fn kill(&self) -> bool {
        let Some(generation) = self.shared.request_cancel(KILLED, None) else {
            return false;
        };
        self.shared.wait_for_end(generation)
    }
}

impl Shared {
    /// Requests cancellation of the running call (of `generation`, if
    /// given); returns the generation it applied to.
    fn request_cancel(&self, reason: u8, generation: Option<u64>) -> Option<u64> {
        let slot = self.lock();
        if !slot.running || generation.is_some_and(|g| g != slot.generation) {
            return None;
        }
        let _ =
            self.cancel
                .compare_exchange(NOT_CANCELLED, reason, Ordering::SeqCst, Ordering::SeqCst);
        // SAFETY: the call is running (checked under the lock, which `end`
        // needs before the call can return), so the vCPU's kvm_run mapping
        // is alive; the byte is only accessed atomically.
        unsafe { AtomicU8::from_ptr(self.immediate_exit) }.store(1, Ordering::SeqCst);
        // If the vCPU thread is not in KVM_RUN (it runs a host function, or
        // is between exits), `immediate_exit` stops the next entry; the
        // SeqCst order of `cancel`, `immediate_exit` and `in_guest` on both
        // sides means that a thread that enters after this check sees them.
        if self.in_guest.load(Ordering::SeqCst) {
            // SAFETY: tgkill with our own pid and a thread id of ours; the
            // thread cannot exit while it is in the call (it would have to
            // take the lock we hold in `end`). The handler does nothing.
            unsafe {
                libc::syscall(libc::SYS_tgkill, libc::getpid(), slot.tid, kick_signal());
            }
        }
        Some(slot.generation)
    }

    fn wait_for_end(&self, generation: u64) -> bool {
        let slot = self.lock();
        let (slot, _) = self
            .ended
            .wait_timeout_while(slot, self.cancel_wait, |s| {
                s.running && s.generation == generation
            })
            .unwrap_or_else(|e| e.into_inner());
        !(slot.running && slot.generation == generation)
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The vCPU thread's side: one per VM.
#[derive(Debug)]
pub(crate) struct Interrupts {
    shared: Arc<Shared>,
    time_limit: Duration,
    watchdog_entry: Option<(Instant, u64)>,
}

impl Interrupts {
    /// Sets up interruption of the vCPU whose `kvm_run.immediate_exit` is at
    /// `immediate_exit` (which must stay valid as long as this lives).
    pub(crate) fn new(
        immediate_exit: *mut u8,
        time_limit: Duration,
        cancel_wait: Duration,
    ) -> Result<Interrupts> {
        install_signal_handler()?;
        Ok(Interrupts {
            shared: Arc::new(Shared {
                slot: Mutex::new(Slot {
                    running: false,
                    generation: 0,
                    tid: 0,
                }),
                ended: Condvar::new(),
                cancel: AtomicU8::new(NOT_CANCELLED),
                in_guest: AtomicBool::new(false),
                immediate_exit,
                cancel_wait,
            }),
            time_limit,
            watchdog_entry: None,
        })
    }

    pub(crate) fn handle(&self) -> InterruptHandle {
        InterruptHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Marks the start of a guest call on this thread and arms its time
    /// limit.
    pub(crate) fn begin(&mut self) {
        let generation = {
            let mut slot = self.shared.lock();
            slot.running = true;
            slot.generation += 1;
            // SAFETY: gettid has no preconditions.
            slot.tid = unsafe { libc::gettid() };
            self.shared.cancel.store(NOT_CANCELLED, Ordering::SeqCst);
            slot.generation
        };
        let deadline = Instant::now() + self.time_limit;
        let id = watchdog().arm(deadline, Arc::downgrade(&self.shared), generation);
        self.watchdog_entry = Some((deadline, id));
    }

    /// Marks the end of the guest call and clears any kick left behind.
    pub(crate) fn end(&mut self) {
        if let Some((deadline, id)) = self.watchdog_entry.take() {
            watchdog().disarm(deadline, id);
        }
        let mut slot = self.shared.lock();
        slot.running = false;
        self.shared.cancel.store(NOT_CANCELLED, Ordering::SeqCst);
        // SAFETY: the Vm that owns the mapping is alive (it owns us).
        unsafe { AtomicU8::from_ptr(self.shared.immediate_exit) }.store(0, Ordering::SeqCst);
        drop(slot);
        self.shared.ended.notify_all();
    }

    /// Marks the vCPU thread as entering (`true`) or leaving `KVM_RUN`.
    pub(crate) fn set_in_guest(&self, in_guest: bool) {
        self.shared.in_guest.store(in_guest, Ordering::SeqCst);
    }

    /// Sets `kvm_run.immediate_exit` (from the vCPU thread).
    pub(crate) fn set_immediate_exit(&self, set: bool) {
        // SAFETY: the Vm that owns the mapping owns us and is alive.
        unsafe { AtomicU8::from_ptr(self.shared.immediate_exit) }
            .store(u8::from(set), Ordering::SeqCst);
    }

    /// Called when `KVM_RUN` returned `EINTR`, and before every entry:
    /// clears the kick and says whether the call must stop.
    pub(crate) fn check(&self) -> Result<()> {
        // SAFETY: as in `end`.
        unsafe { AtomicU8::from_ptr(self.shared.immediate_exit) }.store(0, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        match self.shared.cancel.load(Ordering::SeqCst) {
            NOT_CANCELLED => Ok(()),
            TIMED_OUT => Err(Error::ExecutionCancelledByHost {
                reason: CancelReason::TimeLimit(self.time_limit),
            }),
            _ => Err(Error::ExecutionCancelledByHost {
                reason: CancelReason::Killed,
            }),
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        if let Some((deadline, id)) = self.watchdog_entry.take() {
            watchdog().disarm(deadline, id);
        }
        // The VM (and its kvm_run mapping) goes away with us: make sure no
        // handle believes a call is still running, even if the call was
        // abandoned by a panic.
        let mut slot = self.shared.lock();
        slot.running = false;
        drop(slot);
        self.shared.ended.notify_all();
    }
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the no-op handler for the kick signal, once per process.
fn install_signal_handler() -> Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler
        // is async-signal-safe (it does nothing). SA_RESTART keeps other
        // system calls of the thread (say, in a host function) from failing
        // with EINTR; KVM_RUN returns EINTR regardless.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
        }
        Ok(())
    });
    result.map_err(|errno| Error::Os {
        operation: "install the vCPU kick signal handler",
        source: std::io::Error::from_raw_os_error(errno),
    })
}

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
struct Watchdog {
    state: Mutex<WatchdogState>,
    changed: Condvar,
    next_id: AtomicU64,
    started: AtomicBool,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
    let watchdog = WATCHDOG.get_or_init(|| Watchdog {
        state: Mutex::new(WatchdogState::default()),
        changed: Condvar::new(),
        next_id: AtomicU64::new(0),
        started: AtomicBool::new(false),
    });
    if !watchdog.started.swap(true, Ordering::SeqCst) {
        // If the thread cannot be spawned, time limits cannot be enforced:
        // say so loudly rather than run calls without them.
        std::thread::Builder::new()
            .name(String::from("hyperlight-wasm-watchdog"))
            .spawn(move || watchdog.run())
            .unwrap_or_else(|e| panic!("hyperlight-wasm cannot start its watchdog thread: {e}"));
    }
    watchdog
}

impl Watchdog {
    fn lock(&self) -> MutexGuard<'_, WatchdogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arm(&self, deadline: Instant, shared: Weak<Shared>, generation: u64) -> u64 {
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
