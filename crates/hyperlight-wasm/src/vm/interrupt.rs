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
//! The signal reaches the vCPU thread whatever that thread's signal mask:
//! `KVM_SET_SIGNAL_MASK` gives `KVM_RUN` the thread's own mask minus the
//! kick signal (set again whenever the thread's mask changes), so a thread
//! that blocks every signal still gets kicked out of the guest; a kick left
//! pending because the thread blocks it is consumed with `sigtimedwait`
//! after `KVM_RUN` returns, so it cannot stop the next entry. The signal is
//! `SIGRTMIN + 6` unless the application chose another with
//! [`set_interrupt_signal`]; a handler the application installed for it is
//! never replaced (creating a sandbox fails instead).
//!
//! Time limits use one process-wide watchdog thread ([`super::watchdog`]).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::error::{RunError, VmError};
use super::watchdog::{disarm, watchdog};
use crate::error::{CancelReason, Error, Result};

/// The offset from `SIGRTMIN` of the signal that kicks a vCPU, unless the
/// application chose another.
const KICK_SIGNAL_OFFSET: libc::c_int = 6;

const NOT_CANCELLED: u8 = 0;
const KILLED: u8 = 1;
pub(super) const TIMED_OUT: u8 = 2;

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
    /// Wakes a host-side sleep of the running call when it is cancelled.
    woken: Condvar,
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

impl InterruptHandle {
    /// Sleeps for `duration` on behalf of the running call, or until it is
    /// cancelled (by `kill()` or its time limit); returns whether it was.
    pub(crate) fn sleep(&self, duration: Duration) -> bool {
        let cancelled = || self.shared.cancel.load(Ordering::SeqCst) != NOT_CANCELLED;
        let slot = self.shared.lock();
        let _slot = self
            .shared
            .woken
            .wait_timeout_while(slot, duration, |_| !cancelled())
            .unwrap_or_else(|e| e.into_inner());
        cancelled()
    }
}

impl Shared {
    /// Requests cancellation of the running call (of `generation`, if
    /// given); returns the generation it applied to.
    pub(super) fn request_cancel(&self, reason: u8, generation: Option<u64>) -> Option<u64> {
        let slot = self.lock();
        if !slot.running || generation.is_some_and(|g| g != slot.generation) {
            return None;
        }
        let _ =
            self.cancel
                .compare_exchange(NOT_CANCELLED, reason, Ordering::SeqCst, Ordering::SeqCst);
        // A call sleeping on the host (WASI `poll_oneoff`) wakes up; it
        // checks `cancel` under the lock we hold, so no wakeup is lost.
        self.woken.notify_all();
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
    /// The signal mask `KVM_RUN` runs with, as last given to
    /// `KVM_SET_SIGNAL_MASK` (`None`: never set).
    kvm_mask: Option<u64>,
    /// Whether the thread running the current call blocks the kick signal
    /// (then a kick stays pending after `KVM_RUN` and must be consumed).
    thread_blocks_kick: bool,
}

impl Interrupts {
    /// Sets up interruption of the vCPU whose `kvm_run.immediate_exit` is at
    /// `immediate_exit` (which must stay valid as long as this lives).
    pub(crate) fn new(
        immediate_exit: *mut u8,
        time_limit: Duration,
        cancel_wait: Duration,
    ) -> Result<Interrupts, VmError> {
        install_signal_handler()?;
        // A sandbox is never created without the thread that enforces its
        // time limits.
        watchdog()?;
        Ok(Interrupts {
            shared: Arc::new(Shared {
                slot: Mutex::new(Slot {
                    running: false,
                    generation: 0,
                    tid: 0,
                }),
                ended: Condvar::new(),
                woken: Condvar::new(),
                cancel: AtomicU8::new(NOT_CANCELLED),
                in_guest: AtomicBool::new(false),
                immediate_exit,
                cancel_wait,
            }),
            time_limit,
            watchdog_entry: None,
            kvm_mask: None,
            thread_blocks_kick: false,
        })
    }

    pub(crate) fn handle(&self) -> InterruptHandle {
        InterruptHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Marks the start of a guest call on this thread and arms its time
    /// limit. Gives `KVM_RUN` this thread's signal mask minus the kick
    /// signal (through `vcpu`), so that the kick gets through whatever the
    /// thread blocks.
    ///
    /// # Errors
    ///
    /// [`VmError::Watchdog`] if the watchdog thread cannot be started
    /// (nothing is marked running then), [`VmError::Kvm`] if KVM refuses
    /// the signal mask.
    pub(crate) fn begin(&mut self, vcpu: &kvm_ioctls::VcpuFd) -> Result<(), VmError> {
        let kick = kick_bit(kick_signal());
        let mask = thread_signal_mask();
        let wanted = mask & !kick;
        if self.kvm_mask != Some(wanted) {
            set_kvm_signal_mask(vcpu, wanted)?;
            self.kvm_mask = Some(wanted);
        }
        self.start(mask & kick != 0)
    }

    /// The part of [`Interrupts::begin`] that needs no vCPU: marks the call
    /// running on this thread (which blocks the kick signal outside
    /// `KVM_RUN` if `thread_blocks_kick`) and arms its time limit.
    fn start(&mut self, thread_blocks_kick: bool) -> Result<(), VmError> {
        let watchdog = watchdog()?;
        self.thread_blocks_kick = thread_blocks_kick;
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
        let id = watchdog.arm(deadline, Arc::downgrade(&self.shared), generation);
        self.watchdog_entry = Some((deadline, id));
        Ok(())
    }

    /// Consumes kicks left pending on this thread (which blocks the kick
    /// signal outside `KVM_RUN`): else the next `KVM_RUN` would return at
    /// once, and every one after it.
    pub(crate) fn consume_pending_kicks(&self) {
        if !self.thread_blocks_kick {
            return;
        }
        // SAFETY: sigtimedwait with a set of one signal, no info wanted and
        // a zero timeout only dequeues a pending instance of that signal,
        // whose handler does nothing anyway.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, kick_signal());
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) > 0 {}
        }
    }

    /// Marks the end of the guest call and clears any kick left behind.
    pub(crate) fn end(&mut self) {
        if let Some((deadline, id)) = self.watchdog_entry.take() {
            disarm(deadline, id);
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

    /// Called when `KVM_RUN` returned `EINTR`, and before every entry:
    /// clears the kick and says whether the call must stop.
    pub(crate) fn check(&self) -> Result<(), RunError> {
        // SAFETY: as in `end`.
        unsafe { AtomicU8::from_ptr(self.shared.immediate_exit) }.store(0, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        match self.shared.cancel.load(Ordering::SeqCst) {
            NOT_CANCELLED => Ok(()),
            TIMED_OUT => Err(RunError::Cancelled(CancelReason::TimeLimit(
                self.time_limit,
            ))),
            _ => Err(RunError::Cancelled(CancelReason::Killed)),
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        if let Some((deadline, id)) = self.watchdog_entry.take() {
            disarm(deadline, id);
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

/// Which signal kicks vCPUs, and whether its handler is installed.
#[derive(Debug)]
struct SignalChoice {
    /// The application's choice ([`set_interrupt_signal`]), if any.
    chosen: Option<libc::c_int>,
    installed: bool,
}

static SIGNAL: Mutex<SignalChoice> = Mutex::new(SignalChoice {
    chosen: None,
    installed: false,
});

/// The installed kick signal (0 before the first sandbox).
static KICK: AtomicI32 = AtomicI32::new(0);

fn kick_signal() -> libc::c_int {
    KICK.load(Ordering::Relaxed)
}

/// The bit of `signal` in a kernel signal mask.
fn kick_bit(signal: libc::c_int) -> u64 {
    match u32::try_from(signal - 1) {
        Ok(bit) if bit < 64 => 1 << bit,
        _ => 0,
    }
}

/// Chooses the real-time signal that stops running guests (default
/// `SIGRTMIN + 6`), for applications that use that one themselves. Call it
/// before creating the first sandbox; the signal then belongs to
/// hyperlight-wasm for the life of the process (its handler does nothing,
/// and it is only ever sent to threads that are running a guest).
///
/// # Errors
///
/// [`Error::InvalidConfiguration`] for a signal outside
/// `SIGRTMIN..=SIGRTMAX`, or when a sandbox was already created.
pub fn set_interrupt_signal(signal: i32) -> Result<()> {
    let mut choice = SIGNAL.lock().unwrap_or_else(|e| e.into_inner());
    let invalid = |reason: String| Error::InvalidConfiguration {
        setting: "set_interrupt_signal",
        value: u64::try_from(signal).unwrap_or(0),
        reason,
    };
    if choice.installed {
        return Err(invalid(String::from(
            "comes after the first sandbox was created; choose the signal before",
        )));
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if !(min..=max).contains(&signal) {
        return Err(invalid(format!(
            "is not a real-time signal ({min}..={max} here)"
        )));
    }
    choice.chosen = Some(signal);
    Ok(())
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the no-op handler for the kick signal, once per process,
/// unless the application has a handler of its own there.
fn install_signal_handler() -> Result<(), VmError> {
    let mut choice = SIGNAL.lock().unwrap_or_else(|e| e.into_inner());
    if choice.installed {
        return Ok(());
    }
    let signal = choice
        .chosen
        .unwrap_or_else(|| libc::SIGRTMIN() + KICK_SIGNAL_OFFSET);
    let os_error = || VmError::last_os("install the vCPU kick signal handler");
    // SAFETY: sigaction with a null new action only reads the current one
    // into a zeroed struct we own.
    let current = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
            return Err(os_error());
        }
        current
    };
    if current.sa_sigaction != libc::SIG_DFL {
        return Err(VmError::SignalInUse(signal));
    }
    // SAFETY: a zeroed sigaction is a valid starting point; the handler is
    // async-signal-safe (it does nothing). SA_RESTART keeps other system
    // calls of the thread (say, in a host function) from failing with
    // EINTR; KVM_RUN returns EINTR regardless.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(os_error());
        }
    }
    KICK.store(signal, Ordering::Relaxed);
    choice.installed = true;
    Ok(())
}

/// The calling thread's blocked signals, as a kernel signal mask (bit
/// `n - 1` for signal `n`).
fn thread_signal_mask() -> u64 {
    // SAFETY: pthread_sigmask with a null new set only reads the current
    // mask into a zeroed set we own; sigismember reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
        (1..=64).fold(0u64, |mask, signal| {
            if libc::sigismember(&set, signal) == 1 {
                mask | 1 << (signal - 1)
            } else {
                mask
            }
        })
    }
}

/// `KVM_SET_SIGNAL_MASK`: `_IOW(KVMIO, 0x8b, struct kvm_signal_mask)`, a
/// 4-byte header (the mask's length) followed by the kernel's 8-byte mask.
const KVM_SET_SIGNAL_MASK: libc::c_ulong = (1 << 30) | (4 << 16) | (0xae << 8) | 0x8b;

#[repr(C)]
struct KvmSignalMask {
    len: u32,
    sigset: [u8; 8],
}

/// Makes `KVM_RUN` on `vcpu` run with signal mask `mask`.
fn set_kvm_signal_mask(vcpu: &kvm_ioctls::VcpuFd, mask: u64) -> Result<(), VmError> {
    use std::os::fd::AsRawFd;
    let request = KvmSignalMask {
        len: 8,
        sigset: mask.to_le_bytes(),
    };
    // SAFETY: KVM_SET_SIGNAL_MASK on our own vCPU fd with a kvm_signal_mask
    // of the kernel's sigset size (8 bytes), which KVM only reads.
    let rc = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_SET_SIGNAL_MASK, &request) };
    if rc != 0 {
        return Err(VmError::Kvm {
            operation: "KVM_SET_SIGNAL_MASK",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `Interrupts` over a stand-in for `kvm_run.immediate_exit` (no
    /// vCPU: the state machine alone).
    fn interrupts(byte: &mut u8, time_limit: Duration) -> Interrupts {
        Interrupts::new(byte, time_limit, Duration::ZERO).unwrap()
    }

    fn immediate_exit(interrupts: &Interrupts) -> u8 {
        // SAFETY: the byte outlives the test's `Interrupts`.
        unsafe { AtomicU8::from_ptr(interrupts.shared.immediate_exit) }.load(Ordering::SeqCst)
    }

    #[test]
    fn a_kill_outside_a_call_does_nothing() {
        let mut byte = 0u8;
        let mut interrupts = interrupts(&mut byte, Duration::from_secs(60));
        let handle = interrupts.handle();
        assert!(!handle.kill());
        assert_eq!(immediate_exit(&interrupts), 0);
        interrupts.start(false).unwrap();
        assert!(interrupts.check().is_ok());
        interrupts.end();
        assert!(!handle.kill());
        interrupts.start(false).unwrap();
        assert!(
            interrupts.check().is_ok(),
            "an old kill never reaches a new call"
        );
        interrupts.end();
    }

    #[test]
    fn a_kill_during_a_call_cancels_it_once() {
        let mut byte = 0u8;
        let mut interrupts = interrupts(&mut byte, Duration::from_secs(60));
        let handle = interrupts.handle();
        interrupts.start(false).unwrap();
        // No wait (cancel_wait 0): the call has not stopped yet.
        assert!(!handle.kill());
        assert_eq!(
            immediate_exit(&interrupts),
            1,
            "the next entry returns at once"
        );
        assert!(matches!(
            interrupts.check(),
            Err(RunError::Cancelled(CancelReason::Killed))
        ));
        assert_eq!(immediate_exit(&interrupts), 0, "check clears the kick");
        interrupts.end();
        interrupts.start(false).unwrap();
        assert!(interrupts.check().is_ok());
        interrupts.end();
    }

    #[test]
    fn a_host_side_sleep_ends_when_the_call_is_cancelled() {
        let mut byte = 0u8;
        let mut interrupts = interrupts(&mut byte, Duration::from_secs(60));
        let handle = interrupts.handle();
        interrupts.start(false).unwrap();
        assert!(!handle.sleep(Duration::from_micros(10)), "not cancelled");
        // Cancelled from another thread while it sleeps (or before: the
        // sleep then returns at once). Only the kill can end an hour.
        let killer = {
            let handle = handle.clone();
            std::thread::spawn(move || handle.kill())
        };
        assert!(handle.sleep(Duration::from_secs(3600)));
        killer.join().unwrap();
        interrupts.end();
    }

    #[test]
    fn a_deadline_of_an_earlier_call_does_not_stop_a_later_one() {
        let mut byte = 0u8;
        let mut interrupts = interrupts(&mut byte, Duration::from_secs(60));
        interrupts.start(false).unwrap();
        let old = interrupts.shared.lock().generation;
        interrupts.end();
        interrupts.start(false).unwrap();
        assert_eq!(interrupts.shared.request_cancel(TIMED_OUT, Some(old)), None);
        assert!(interrupts.check().is_ok());
        interrupts.end();
    }

    #[test]
    fn the_watchdog_cancels_a_call_past_its_time_limit() {
        let mut byte = 0u8;
        let limit = Duration::from_millis(20);
        let mut interrupts = interrupts(&mut byte, limit);
        interrupts.start(false).unwrap();
        // Wait for the watchdog's verdict (it comes after `limit`); a
        // watchdog that never comes fails the test instead of hanging it.
        let give_up = Instant::now() + Duration::from_secs(120);
        let result = loop {
            match interrupts.check() {
                Ok(()) if Instant::now() < give_up => std::thread::yield_now(),
                other => break other,
            }
        };
        assert!(matches!(
            result,
            Err(RunError::Cancelled(CancelReason::TimeLimit(l))) if l == limit
        ));
        interrupts.end();
        // Disarmed: the next call starts with a clean slate.
        interrupts.start(false).unwrap();
        assert!(interrupts.check().is_ok());
        interrupts.end();
    }

    #[test]
    fn signal_bits_follow_the_kernel_mask() {
        assert_eq!(kick_bit(1), 1);
        assert_eq!(kick_bit(40), 1 << 39);
        assert_eq!(kick_bit(64), 1 << 63);
        assert_eq!(kick_bit(0), 0);
        assert_eq!(kick_bit(65), 0);
    }

    #[test]
    fn only_real_time_signals_can_be_chosen() {
        for signal in [0, libc::SIGINT, libc::SIGRTMAX() + 1] {
            assert!(matches!(
                set_interrupt_signal(signal),
                Err(Error::InvalidConfiguration { .. })
            ));
        }
    }
}
