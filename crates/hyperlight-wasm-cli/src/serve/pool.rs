//! A module's sandboxes: worker threads that each own one instance, fed by
//! a bounded queue. Guest calls run here, never on the async executor's
//! threads, and each vCPU stays on the thread that created it.
//!
//! What an instance is comes from a [`Backend`]: the hyperlight-wasm
//! sandbox here, and in the load benchmark an in-process wasmtime one.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use hyperlight_wasm::component::{ComponentFunction, Val};
use hyperlight_wasm::{ExportedFunction, ParameterValue, ReturnType, ReturnValue};
use tokio::sync::oneshot;

use super::error::{CallError, ErrorKind};
use crate::cli::Strategy;

/// Makes the instances of one module.
pub trait Backend: Send + Sync + 'static {
    /// The module's exported functions.
    fn exports(&self) -> &[ExportedFunction];

    /// A component's exported functions (`None` for a core module).
    fn component_exports(&self) -> Option<&[ComponentFunction]> {
        None
    }

    /// A new instance, made on the worker thread that will use it:
    /// `persistent` keeps its state across calls, else each call starts
    /// from the freshly loaded module's state.
    fn instantiate(&self, persistent: bool) -> Result<Box<dyn Instance>, CallError>;
}

/// One loaded module, used by one thread.
pub trait Instance {
    /// Calls `function`.
    fn call(
        &mut self,
        function: &str,
        args: &[ParameterValue],
        result: ReturnType,
    ) -> Result<ReturnValue, CallError>;

    /// Calls a component's `function` (only instances of a backend with
    /// [`Backend::component_exports`] have any).
    fn call_component(&mut self, function: &str, args: &[Val]) -> Result<Vec<Val>, CallError> {
        let _ = (function, args);
        Err(CallError::new(
            ErrorKind::Internal,
            "a component call on a module's instance",
        ))
    }

    /// Whether it must be replaced before another call.
    fn is_broken(&self) -> bool;
}

/// What a call passes: a module's typed arguments and result type, or a
/// component's values.
#[derive(Debug)]
pub enum CallArgs {
    /// A core module's export.
    Module {
        /// The arguments.
        args: Vec<ParameterValue>,
        /// The result type.
        result: ReturnType,
    },
    /// A component's export.
    Component(Vec<Val>),
}

/// What a call returned.
#[derive(Debug)]
pub enum Answer {
    /// A core module's result.
    Module(ReturnValue),
    /// A component's results.
    Component(Vec<Val>),
}

/// A call waiting for a sandbox.
struct Job {
    function: String,
    args: CallArgs,
    reply: oneshot::Sender<Result<Answer, CallError>>,
    /// Counts the call as admitted until it is answered (dropped).
    admitted: Admitted,
}

/// One admitted call: the count goes down when it is dropped.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The sandboxes of one module and the queue in front of them.
pub struct ModulePool {
    name: String,
    backend: Arc<dyn Backend>,
    queue: Option<Sender<Job>>,
    /// Calls admitted and not yet answered, running or queued.
    admitted: Arc<AtomicUsize>,
    max_concurrency: usize,
    closing: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ModulePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModulePool")
            .field("name", &self.name)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl ModulePool {
    /// Starts `size` workers, each with an instance, and returns once all
    /// of them are ready (or the first error). At most `max_concurrency`
    /// calls are admitted at once, running or queued.
    pub fn start(
        name: &str,
        backend: Arc<dyn Backend>,
        strategy: Strategy,
        size: usize,
        max_concurrency: usize,
    ) -> Result<ModulePool, CallError> {
        if max_concurrency < size {
            return Err(CallError::new(
                ErrorKind::Internal,
                format!(
                    "the maximum concurrency ({max_concurrency}) is below the pool size ({size})"
                ),
            ));
        }
        // Admission is counted (`admitted`), so the queue never holds more
        // than `max_concurrency` calls and is never full when one is let in.
        let (queue, jobs) = crossbeam_channel::bounded(max_concurrency);
        let closing = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut pool = ModulePool {
            name: name.to_owned(),
            backend: Arc::clone(&backend),
            queue: Some(queue),
            admitted: Arc::new(AtomicUsize::new(0)),
            max_concurrency,
            closing: Arc::clone(&closing),
            workers: Vec::with_capacity(size),
        };
        for i in 0..size {
            let worker = Worker {
                backend: Arc::clone(&backend),
                strategy,
                jobs: jobs.clone(),
                closing: Arc::clone(&closing),
            };
            let ready = ready_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker.run(&ready));
            match spawned {
                Ok(handle) => pool.workers.push(handle),
                Err(e) => {
                    return Err(CallError::new(
                        ErrorKind::Internal,
                        format!("cannot start a worker thread: {e}"),
                    ));
                }
            }
        }
        drop(ready_tx);
        for _ in 0..size {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(CallError::new(
                        ErrorKind::Internal,
                        "a worker thread ended before its sandbox was ready",
                    ));
                }
            }
        }
        Ok(pool)
    }

    /// The module's exported functions.
    pub fn exports(&self) -> &[ExportedFunction] {
        self.backend.exports()
    }

    /// A component's exported functions (`None` for a core module).
    pub fn component_exports(&self) -> Option<&[ComponentFunction]> {
        self.backend.component_exports()
    }

    /// Queues a call; `Overloaded` if the module has as many calls as it
    /// admits.
    pub fn submit(
        &self,
        function: String,
        args: CallArgs,
    ) -> Result<oneshot::Receiver<Result<Answer, CallError>>, CallError> {
        let queue = self.queue.as_ref().ok_or_else(shutting_down)?;
        // Counted only if under the limit: a refused call never takes a
        // place another could have had.
        self.admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_concurrency).then_some(n + 1)
            })
            .map_err(|_| overloaded(&self.name))?;
        let admitted = Admitted(Arc::clone(&self.admitted));
        let (reply, answer) = oneshot::channel();
        let job = Job {
            function,
            args,
            reply,
            admitted,
        };
        match queue.try_send(job) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(overloaded(&self.name)),
            Err(TrySendError::Disconnected(_)) => Err(shutting_down()),
        }
    }

    /// Stops the workers: queued calls are answered `shutting_down`, running
    /// ones finish (each within its time limit). Waits for the threads.
    pub fn close(mut self) {
        self.closing.store(true, Ordering::SeqCst);
        self.queue = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn overloaded(module: &str) -> CallError {
    CallError::new(
        ErrorKind::Overloaded,
        format!(
            "module `{module}` has as many calls as it admits (--max-concurrency); try again later"
        ),
    )
}

fn shutting_down() -> CallError {
    CallError::new(ErrorKind::Unavailable, "the server is shutting down")
}

struct Worker {
    backend: Arc<dyn Backend>,
    strategy: Strategy,
    jobs: Receiver<Job>,
    closing: Arc<AtomicBool>,
}

impl Worker {
    fn instantiate(&self) -> Result<Box<dyn Instance>, CallError> {
        let persistent = self.strategy == Strategy::Reuse;
        std::panic::catch_unwind(AssertUnwindSafe(|| self.backend.instantiate(persistent)))
            .unwrap_or_else(|_| {
                Err(CallError::new(
                    ErrorKind::Internal,
                    "creating a sandbox panicked",
                ))
            })
    }

    fn run(self, ready: &std::sync::mpsc::Sender<Result<(), CallError>>) {
        let mut instance = match self.instantiate() {
            Ok(instance) => {
                let _ = ready.send(Ok(()));
                Some(instance)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        for job in &self.jobs {
            if self.closing.load(Ordering::SeqCst) {
                let _ = job.reply.send(Err(shutting_down()));
                continue;
            }
            if job.reply.is_closed() {
                // The client went away while the call waited.
                continue;
            }
            let current = match instance.take() {
                Some(current) => Ok(current),
                None => self.instantiate(),
            };
            let (answer, kept) = match current {
                Err(e) => (Err(e), None),
                Ok(mut current) => {
                    let answer = std::panic::catch_unwind(AssertUnwindSafe(|| match &job.args {
                        CallArgs::Module { args, result } => current
                            .call(&job.function, args, *result)
                            .map(Answer::Module),
                        CallArgs::Component(args) => current
                            .call_component(&job.function, args)
                            .map(Answer::Component),
                    }));
                    match answer {
                        Ok(answer) => {
                            let keep = self.strategy != Strategy::Renew && !current.is_broken();
                            (answer, keep.then_some(current))
                        }
                        Err(_) => (
                            Err(CallError::new(ErrorKind::Internal, "the call panicked")),
                            None,
                        ),
                    }
                }
            };
            // Uncounted before the answer goes out, so that a client that
            // sends its next call as soon as it has this answer fits.
            let Job {
                reply, admitted, ..
            } = job;
            drop(admitted);
            let _ = reply.send(answer);
            // The next call's instance is made now, between calls; a
            // failure is reported to that call.
            instance = match kept {
                Some(kept) => Some(kept),
                None => self.instantiate().ok(),
            };
        }
    }
}
