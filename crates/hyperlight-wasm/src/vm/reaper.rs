//! Tears VMs down off the caller's thread.
//!
//! Closing a VM that ran costs the kernel most of a millisecond here; a
//! dropped sandbox hands its VM to one background thread instead. The queue
//! is bounded: when it is full, the dropping thread tears the VM down itself,
//! so a burst of drops can never pile up unbounded work, memory or file
//! descriptors.

use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Condvar, Mutex, OnceLock};

/// VMs waiting for the reaper, at most.
const QUEUE: usize = 64;

struct Reaper {
    queue: Option<SyncSender<Box<dyn Send>>>,
    /// VMs handed over and not yet torn down.
    pending: Mutex<usize>,
    drained: Condvar,
}

fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let (queue, work) = mpsc::sync_channel::<Box<dyn Send>>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name(String::from("hyperlight-wasm-reaper"))
            .spawn(move || {
                for doomed in work {
                    drop(doomed);
                    let reaper = reaper();
                    let mut pending = reaper.lock();
                    *pending -= 1;
                    if *pending == 0 {
                        reaper.drained.notify_all();
                    }
                }
            });
        // Without the thread, every drop happens inline.
        Reaper::with_queue(spawned.ok().map(|_| queue))
    })
}

impl Reaper {
    fn with_queue(queue: Option<SyncSender<Box<dyn Send>>>) -> Reaper {
        Reaper {
            queue,
            pending: Mutex::new(0),
            drained: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dispose(&self, doomed: Box<dyn Send>) {
        let Some(queue) = &self.queue else {
            return drop(doomed);
        };
        *self.lock() += 1;
        match queue.try_send(doomed) {
            Ok(()) => {}
            Err(TrySendError::Full(doomed) | TrySendError::Disconnected(doomed)) => {
                drop(doomed);
                let mut pending = self.lock();
                *pending -= 1;
                if *pending == 0 {
                    self.drained.notify_all();
                }
            }
        }
    }
}

/// Drops `value` on the reaper thread (or here, if its queue is full).
pub(crate) fn reap<T: Send + 'static>(value: T) {
    reaper().dispose(Box::new(value));
}

/// Waits until every VM handed to the background thread is torn down.
pub fn wait_for_teardown() {
    let reaper = reaper();
    let pending = reaper.lock();
    let _unused = reaper
        .drained
        .wait_while(pending, |pending| *pending > 0)
        .unwrap_or_else(|e| e.into_inner());
}

/// A value whose drop happens on the reaper thread.
pub(crate) struct Reaped<T: Send + 'static>(ManuallyDrop<T>);

impl<T: Send + 'static> Reaped<T> {
    pub(crate) fn new(value: T) -> Reaped<T> {
        Reaped(ManuallyDrop::new(value))
    }
}

impl<T: Send + 'static> Deref for Reaped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Send + 'static> DerefMut for Reaped<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Send + std::fmt::Debug + 'static> std::fmt::Debug for Reaped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Send + 'static> Drop for Reaped<T> {
    fn drop(&mut self) {
        // SAFETY: the value is taken exactly once, here, and `self` is never
        // used again.
        let value = unsafe { ManuallyDrop::take(&mut self.0) };
        reaper().dispose(Box::new(value));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts its drops.
    struct Doomed(Arc<AtomicUsize>);

    impl Drop for Doomed {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn without_a_thread_values_are_dropped_inline() {
        let drops = Arc::new(AtomicUsize::new(0));
        let reaper = Reaper::with_queue(None);
        reaper.dispose(Box::new(Doomed(Arc::clone(&drops))));
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(*reaper.lock(), 0);
    }

    #[test]
    fn a_full_or_closed_queue_drops_inline() {
        let drops = Arc::new(AtomicUsize::new(0));
        // A queue of one that nobody works off.
        let (queue, work) = mpsc::sync_channel::<Box<dyn Send>>(1);
        let reaper = Reaper::with_queue(Some(queue));
        reaper.dispose(Box::new(Doomed(Arc::clone(&drops))));
        assert_eq!(drops.load(Ordering::SeqCst), 0, "queued");
        assert_eq!(*reaper.lock(), 1);
        reaper.dispose(Box::new(Doomed(Arc::clone(&drops))));
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the queue was full");
        assert_eq!(*reaper.lock(), 1);
        drop(work);
        drop(reaper);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            2,
            "the queued one, with the queue"
        );
        let (queue, work) = mpsc::sync_channel::<Box<dyn Send>>(4);
        drop(work);
        let reaper = Reaper::with_queue(Some(queue));
        reaper.dispose(Box::new(Doomed(Arc::clone(&drops))));
        assert_eq!(drops.load(Ordering::SeqCst), 3, "nobody listens");
        assert_eq!(*reaper.lock(), 0);
    }
}
