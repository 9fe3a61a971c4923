//! [`SandboxPool`]: ready sandboxes for one module, made ahead of need on a
//! background thread, handed out in one lock and a pop, and taken back to be
//! reset and reused.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sandbox::{LoadedWasmSandbox, SandboxBuilder, Snapshot};

/// How long the refill thread waits before trying again after it could not
/// make a sandbox.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// A warm pool of ready sandboxes for one module.
///
/// The pool owns `size` sandboxes, ready or handed out; a background thread
/// makes them ahead of need. [`SandboxPool::get`] hands a ready one out (or,
/// when all `size` are out, makes one more on the spot); when the
/// [`PooledSandbox`] is dropped, the sandbox goes back to the pool, which
/// puts it back to the state right after the load (its snapshot, so
/// nothing of the previous user's state remains, even with persistent
/// state) and hands it out again. Sandboxes that are poisoned, cannot be
/// reset, or come back while the pool already owns `size` are dropped, so
/// the pool never keeps more than `size`; [`PooledSandbox::detach`] takes
/// one out of the pool for good, and the pool makes a replacement.
///
/// ```no_run
/// use hyperlight_wasm::{SandboxBuilder, SandboxPool};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = SandboxPool::new(SandboxBuilder::new(), std::fs::read("app.wasm")?, 8)?;
/// let mut sandbox = pool.get()?; // ready: loaded, nothing to wait for
/// let sum: i32 = sandbox.call_guest_function("add", (1, 2))?;
/// assert_eq!(sum, 3);
/// drop(sandbox); // back to the pool, reset
/// # Ok(()) }
/// ```
///
/// Host functions are registered by the builder's users before a sandbox
/// exists, so a pool takes a plain builder: the sandboxes have WASI and the
/// builder's settings, and no host functions.
pub struct SandboxPool {
    shared: Arc<Shared>,
    refill: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SandboxPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxPool")
            .field("size", &self.shared.size)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What a pool has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Sandboxes ready now.
    pub ready: usize,
    /// Sandboxes made (by the refill thread, or by `get` when none was
    /// ready).
    pub created: u64,
    /// Sandboxes `get` made itself because none was ready.
    pub cold: u64,
    /// Sandboxes taken back, reset and made ready again.
    pub reused: u64,
    /// Sandboxes taken back and dropped (poisoned, not resettable, or the
    /// pool was full).
    pub discarded: u64,
}

struct Shared {
    builder: SandboxBuilder,
    module: Vec<u8>,
    size: usize,
    state: Mutex<State>,
    /// Wakes the refill thread: a sandbox was taken or given back, or the
    /// pool is closing.
    work: Condvar,
    /// Wakes those waiting for ready sandboxes.
    filled: Condvar,
}

#[derive(Default)]
struct State {
    ready: Vec<Warm>,
    /// Given back, to be reset by the refill thread.
    returned: Vec<Warm>,
    /// Handed out and not yet given back or detached.
    lent: usize,
    closing: bool,
    /// Why the refill thread last failed to make a sandbox.
    last_error: Option<String>,
    stats: PoolStats,
}

/// A ready sandbox and the state it goes back to.
struct Warm {
    sandbox: LoadedWasmSandbox,
    clean: Snapshot,
}

impl State {
    /// The sandboxes the pool owns: ready, being reset, or handed out.
    fn owned(&self) -> usize {
        self.ready.len() + self.returned.len() + self.lent
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held left plain data behind: go on.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn make(&self) -> Result<Warm> {
        let mut sandbox = self
            .builder
            .clone()
            .build()?
            .load_runtime()?
            .load_module_from_buffer(&self.module)?;
        let clean = sandbox.snapshot()?;
        Ok(Warm { sandbox, clean })
    }
}

impl SandboxPool {
    /// A pool of `size` ready sandboxes of `module` (binary or text), built
    /// by `builder`. The first sandbox is made here, so that a module that
    /// does not load fails here; the rest are made on the pool's thread.
    ///
    /// # Errors
    ///
    /// The errors of building, loading the runtime and loading the module;
    /// [`Error::Internal`] for a `size` of 0 or when the thread cannot be
    /// started.
    pub fn new(builder: SandboxBuilder, module: impl Into<Vec<u8>>, size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::Internal {
                reason: String::from("a sandbox pool of size 0 holds nothing"),
            });
        }
        let shared = Arc::new(Shared {
            builder,
            module: module.into(),
            size,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            filled: Condvar::new(),
        });
        let first = shared.make()?;
        {
            let mut state = shared.lock();
            state.ready.push(first);
            state.stats.created = 1;
        }
        let weak = Arc::downgrade(&shared);
        let refill = std::thread::Builder::new()
            .name(String::from("sandbox-pool"))
            .spawn(move || refill(&weak))
            .map_err(|e| Error::Internal {
                reason: format!("cannot start the sandbox pool's thread: {e}"),
            })?;
        Ok(SandboxPool {
            shared,
            refill: Some(refill),
        })
    }

    /// A ready sandbox: one the pool made ahead, or (when none is ready) one
    /// made now.
    ///
    /// # Errors
    ///
    /// When none is ready, the errors of making one.
    pub fn get(&self) -> Result<PooledSandbox> {
        let warm = {
            let mut state = self.shared.lock();
            let warm = state.ready.pop();
            state.lent += 1;
            if warm.is_none() {
                state.stats.cold += 1;
                state.stats.created += 1;
            }
            warm
        };
        let warm = match warm {
            Some(warm) => warm,
            None => match self.shared.make() {
                Ok(warm) => warm,
                Err(e) => {
                    self.shared.lock().lent -= 1;
                    return Err(e);
                }
            },
        };
        Ok(PooledSandbox {
            warm: Some(warm),
            pool: Arc::downgrade(&self.shared),
        })
    }

    /// Waits until at least `n` (at most the pool's size) sandboxes are
    /// ready, for up to `timeout`; whether they are (warming up before
    /// traffic comes).
    pub fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        let n = n.min(self.shared.size);
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.ready.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = match self.shared.filled.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// What the pool has done so far, and how many sandboxes are ready.
    pub fn stats(&self) -> PoolStats {
        let state = self.shared.lock();
        PoolStats {
            ready: state.ready.len(),
            ..state.stats
        }
    }

    /// Why the pool's thread last failed to make a sandbox, if it did (it
    /// tries again).
    pub fn last_error(&self) -> Option<String> {
        self.shared.lock().last_error.clone()
    }
}

impl Drop for SandboxPool {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_all();
        if let Some(refill) = self.refill.take() {
            let _ = refill.join();
        }
    }
}

/// The pool's thread: resets what is given back, and makes sandboxes until
/// `size` are ready.
fn refill(shared: &Weak<Shared>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = shared.lock();
        if state.closing {
            return;
        }
        if let Some(mut warm) = state.returned.pop() {
            drop(state);
            let usable = !warm.sandbox.is_poisoned() && warm.sandbox.restore(&warm.clean).is_ok();
            let mut state = shared.lock();
            if usable {
                state.ready.push(warm);
                state.stats.reused += 1;
                shared.filled.notify_all();
            } else {
                state.stats.discarded += 1;
            }
            continue;
        }
        if state.owned() < shared.size {
            drop(state);
            let made = shared.make();
            let mut state = shared.lock();
            match made {
                Ok(warm) => {
                    state.stats.created += 1;
                    state.last_error = None;
                    state.ready.push(warm);
                    shared.filled.notify_all();
                }
                Err(e) => {
                    state.last_error = Some(crate::error::chain(&e));
                    let _unused = shared.work.wait_timeout(state, RETRY_AFTER);
                }
            }
            continue;
        }
        // Nothing to do until a sandbox is given back, detached or dropped.
        let _unused = shared.work.wait(state);
    }
}

/// A sandbox from a [`SandboxPool`]: use it as a [`LoadedWasmSandbox`];
/// dropping it gives it back to the pool.
pub struct PooledSandbox {
    warm: Option<Warm>,
    pool: Weak<Shared>,
}

impl std::fmt::Debug for PooledSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledSandbox").finish_non_exhaustive()
    }
}

impl PooledSandbox {
    /// The sandbox, no longer the pool's (it will not be given back).
    pub fn detach(mut self) -> LoadedWasmSandbox {
        if let Some(pool) = self.pool.upgrade() {
            pool.lock().lent -= 1;
            // A replacement.
            pool.work.notify_one();
        }
        match self.warm.take() {
            Some(warm) => warm.sandbox,
            // Only `Drop` takes it, and it has not run.
            None => unreachable_sandbox(),
        }
    }
}

#[allow(
    clippy::panic,
    reason = "a PooledSandbox holds its sandbox until dropped or detached"
)]
fn unreachable_sandbox() -> ! {
    panic!("a PooledSandbox without its sandbox")
}

impl std::ops::Deref for PooledSandbox {
    type Target = LoadedWasmSandbox;

    fn deref(&self) -> &LoadedWasmSandbox {
        match &self.warm {
            Some(warm) => &warm.sandbox,
            None => unreachable_sandbox(),
        }
    }
}

impl std::ops::DerefMut for PooledSandbox {
    fn deref_mut(&mut self) -> &mut LoadedWasmSandbox {
        match &mut self.warm {
            Some(warm) => &mut warm.sandbox,
            None => unreachable_sandbox(),
        }
    }
}

impl Drop for PooledSandbox {
    fn drop(&mut self) {
        let (Some(warm), Some(pool)) = (self.warm.take(), self.pool.upgrade()) else {
            return;
        };
        let mut state = pool.lock();
        state.lent -= 1;
        // Never more than `size` kept: the rest is dropped here (after the
        // lock is released: a VM's teardown is not quick).
        if state.closing || state.owned() >= pool.size {
            state.stats.discarded += 1;
            drop(state);
            drop(warm);
            return;
        }
        state.returned.push(warm);
        pool.work.notify_one();
    }
}
