//! The host's side of the guest protocol: it writes requests into the input
//! buffer, runs the VM, serves the guest's out-calls and decodes its
//! responses, checking every byte the guest wrote.
//!
//! State: after boot and after a module load the host takes a snapshot of
//! the VM, and shares it through the image cache ([`crate::vm::images`]) when
//! every sandbox of the configuration reaches that state the same way; the
//! next sandbox maps the image instead of booting or loading again. Unless
//! the sandbox keeps state (persistent mode), every call is
//! followed by a restore of the post-load snapshot, so each call starts from
//! a fresh instance. A failure that leaves the guest in an unknown state (a
//! fault, an abort, a broken protocol, a cancellation; see
//! [`Error::aftermath`]) is followed by that restore in either mode. Only a
//! failure of the host itself (KVM, the OS, a failed restore) poisons the
//! [`Guest`]: every later request then fails with [`Error::Poisoned`].

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hyperlight_wasm_protocol::PROTOCOL_VERSION;
use hyperlight_wasm_protocol::message::{
    Abort, ErrorCode, GuestError, HostFunctionSignature, OutCall, OutCallReply, Request, Response,
    Value, ValueType,
};
use hyperlight_wasm_protocol::wire::{self, HEADER_LEN};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::compile::artifact::Exports;
use crate::error::{Aftermath, Error, ProtocolError, Result, TrapKind};
use crate::sandbox::host_functions::{self, HostFunctions};
use crate::vm::images::{self, ImageKey};
use crate::vm::interrupt::InterruptHandle;
use crate::vm::memory::OutOfBounds;
use crate::vm::reaper::Reaped;
use crate::vm::snapshot::{Sharing, Snapshot};
use crate::vm::{GuestExit, Vm};

/// Receives what the module prints.
pub(crate) type PrintFn = Box<dyn FnMut(&str) + Send>;

/// A guest VM, the host's side of its imports, and the state of the
/// conversation with it.
pub(crate) struct Guest {
    /// Torn down on the reaper thread when the sandbox goes away.
    vm: Reaped<Vm>,
    poisoned: Option<String>,
    functions: HostFunctions,
    print: PrintFn,
    /// The error of the host function that failed during the current
    /// request, reported when the guest call fails because of it.
    host_failure: Option<Error>,
    /// Whether calls keep the state they leave (else each call starts from
    /// the post-load snapshot).
    persistent: bool,
    /// The VM right after boot.
    runtime_snapshot: Option<Arc<Snapshot>>,
    /// The VM right after the module loaded.
    module_snapshot: Option<Arc<Snapshot>>,
    /// The loaded module's exported functions, as the host compiled (or,
    /// for a precompiled module, was told) them; `None` when no module
    /// the host knows is loaded (test guests).
    exports: Option<Arc<Exports>>,
    /// Whether the current request stopped the guest in the middle (at an
    /// out-call).
    mid_request: bool,
    /// Out-calls that asked the host for something (anything but the
    /// artifact's bytes) since the count was last reset: a state reached
    /// with such answers is not shared with other sandboxes.
    questions: u64,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("vm", &self.vm)
            .field("poisoned", &self.poisoned)
            .field("functions", &self.functions)
            .finish_non_exhaustive()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // Freeing the snapshots' pages is work too: do it off the caller's
        // thread, with the VM.
        crate::vm::reaper::reap((self.runtime_snapshot.take(), self.module_snapshot.take()));
    }
}

impl From<OutOfBounds> for Error {
    fn from(e: OutOfBounds) -> Error {
        Error::Protocol(ProtocolError::OutOfBounds {
            addr: e.addr,
            len: e.len,
        })
    }
}

/// What a module being loaded still needs copied in.
struct Artifact<'a> {
    bytes: &'a [u8],
    copied: bool,
}

impl Guest {
    /// Wraps a VM that has not run yet.
    pub(crate) fn new(vm: Vm, print: PrintFn, persistent: bool) -> Guest {
        Guest {
            vm: Reaped::new(vm),
            poisoned: None,
            functions: HostFunctions::new(),
            print,
            host_failure: None,
            persistent,
            runtime_snapshot: None,
            module_snapshot: None,
            exports: None,
            mid_request: false,
            questions: 0,
        }
    }

    /// A handle that stops the running call from other threads.
    pub(crate) fn interrupt_handle(&self) -> InterruptHandle {
        self.vm.interrupt_handle()
    }

    /// Takes a snapshot of the sandbox as it is now.
    pub(crate) fn snapshot(&mut self) -> Result<Arc<Snapshot>> {
        self.check_usable()?;
        let snapshot = self.vm.snapshot(Sharing::Private);
        self.poison_on_error(snapshot)
    }

    /// Puts the sandbox back to `snapshot`.
    pub(crate) fn restore(&mut self, snapshot: &Arc<Snapshot>) -> Result<()> {
        self.check_usable()?;
        let restored = self.vm.restore(snapshot);
        if matches!(restored, Err(Error::SnapshotMismatch)) {
            return restored;
        }
        self.poison_on_error(restored)
    }

    /// The host functions modules may import.
    pub(crate) fn host_functions_mut(&mut self) -> &mut HostFunctions {
        &mut self.functions
    }

    /// Brings the guest's runtime up: maps the configuration's shared
    /// post-runtime image if there is one, else runs the guest from its
    /// entry point until its runtime is ready and takes that image.
    pub(crate) fn boot(&mut self) -> Result<()> {
        let key = self.vm.image_key(None);
        if let Some(image) = key.as_ref().and_then(images::get) {
            self.adopt(&image)?;
            self.runtime_snapshot = Some(image);
            return Ok(());
        }
        if self.vm.runs_embedded_guest() {
            let booted = self.vm.boot_embedded();
            self.poison_on_error(booted)?;
        }
        self.questions = 0;
        self.guarded(false, |guest| match guest.run_to_done(None)? {
            Response::Ready { protocol_version } if protocol_version == PROTOCOL_VERSION => Ok(()),
            Response::Ready { protocol_version } => Err(ProtocolError::VersionMismatch {
                guest: protocol_version,
                host: PROTOCOL_VERSION,
            }
            .into()),
            other => Err(guest.unexpected_response("the ready message", other, None)),
        })?;
        self.runtime_snapshot = Some(self.take_image(key)?);
        Ok(())
    }

    /// Loads a precompiled module (`hash` identifies it): maps the shared
    /// post-load image for it if there is one; else the guest allocates room
    /// for it, the host copies it there, the guest deserializes, links and
    /// instantiates it, and the host takes that image.
    pub(crate) fn load_module(
        &mut self,
        artifact: &[u8],
        hash: &[u8; 32],
        exports: &Arc<Exports>,
    ) -> Result<()> {
        let signatures = host_functions::signatures(&self.functions);
        let key = self.module_key(hash, &signatures)?;
        if let Some(image) = key.as_ref().and_then(images::get) {
            self.adopt(&image)?;
            self.module_snapshot = Some(image);
            self.exports = Some(Arc::clone(exports));
            return Ok(());
        }
        self.questions = 0;
        self.guarded(false, |guest| {
            guest.send(&Request::LoadModule {
                artifact_len: artifact.len() as u64,
                host_functions: signatures,
            })?;
            let mut artifact = Artifact {
                bytes: artifact,
                copied: false,
            };
            match guest.run_to_done(Some(&mut artifact))? {
                Response::ModuleLoaded if artifact.copied => Ok(()),
                other => Err(guest.unexpected_response("the module-loaded message", other, None)),
            }
        })?;
        self.module_snapshot = Some(self.take_image(key)?);
        self.exports = Some(Arc::clone(exports));
        Ok(())
    }

    /// The image key of the state after loading module `hash` linked
    /// against `signatures`, from this sandbox's post-runtime state.
    fn module_key(
        &self,
        hash: &[u8; 32],
        signatures: &[HostFunctionSignature],
    ) -> Result<Option<ImageKey>> {
        let runtime = self.runtime_image()?;
        let signatures = wire::encode_to_vec(&signatures).map_err(|e| Error::RequestTooLarge {
            reason: e.to_string(),
        })?;
        let mut digest = Sha256::new();
        digest.update(runtime.id().to_le_bytes());
        digest.update(hash);
        digest.update(&signatures);
        Ok(self.vm.image_key(Some(digest.finalize().into())))
    }

    /// The post-runtime image, if the guest is usable and booted.
    fn runtime_image(&self) -> Result<Arc<Snapshot>> {
        self.check_usable()?;
        self.runtime_snapshot
            .clone()
            .ok_or_else(|| Error::Poisoned {
                reason: String::from("the guest never finished booting"),
            })
    }

    /// Maps `image` over the VM (see [`Vm::adopt`]) unless the guest is
    /// poisoned; poisons it if that fails.
    fn adopt(&mut self, image: &Arc<Snapshot>) -> Result<()> {
        self.check_usable()?;
        let adopted = self.vm.adopt(image);
        self.poison_on_error(adopted)
    }

    /// Takes the snapshot of a state just reached, and shares it as the
    /// image for `key` if the guest asked the host nothing on the way.
    fn take_image(&mut self, key: Option<ImageKey>) -> Result<Arc<Snapshot>> {
        let snapshot = self.vm.snapshot(Sharing::Shared);
        let snapshot = self.poison_on_error(snapshot)?;
        if let Some(key) = key.filter(|_| self.questions == 0) {
            images::insert(key, Arc::clone(&snapshot));
        }
        Ok(snapshot)
    }

    /// Calls an exported function.
    pub(crate) fn call(
        &mut self,
        function: &str,
        args: Vec<Value>,
        returns: ValueType,
    ) -> Result<Value> {
        let reset = !self.persistent;
        // The host knows what the module exports: a name it does not
        // export never reaches the guest.
        let exported = match &self.exports {
            Some(exports) if self.poisoned.is_none() => {
                if !exports.contains_key(function) {
                    let e = Error::GuestFunctionNotFound {
                        function: function.to_owned(),
                    };
                    crate::metrics::record_error(&e);
                    return Err(e);
                }
                true
            }
            _ => false,
        };
        #[cfg(feature = "function_call_metrics")]
        let start = std::time::Instant::now();
        let result = self.guarded(reset, |guest| {
            guest.send(&Request::Call {
                function: function.to_owned(),
                args,
                returns,
            })?;
            match guest.run_to_done(None)? {
                Response::Returned(value) if value.ty() == returns => Ok(value),
                other => {
                    Err(guest.unexpected_response("the function's result", other, Some(function)))
                }
            }
        });
        // Only functions the host knows the module exports get a series:
        // neither callers calling made-up names nor a guest answering for
        // them can create label values.
        #[cfg(feature = "function_call_metrics")]
        if exported {
            crate::metrics::record_guest_call(function, start.elapsed().as_secs_f64() * 1e6);
        }
        #[cfg(not(feature = "function_call_metrics"))]
        let _ = exported;
        result
    }

    /// Drops the loaded module: the VM goes back to the post-runtime
    /// snapshot (the host resets it; the guest has no say).
    pub(crate) fn unload_module(&mut self) -> Result<()> {
        // Mapping the image again copies nothing and frees every page the
        // module used.
        let runtime = self.runtime_image()?;
        self.adopt(&runtime)?;
        self.module_snapshot = None;
        self.exports = None;
        Ok(())
    }

    /// The error for a response other than the one a request expects: the
    /// guest's reported failure, the module's exit, or a protocol error.
    fn unexpected_response(
        &mut self,
        expected: &'static str,
        response: Response,
        function: Option<&str>,
    ) -> Error {
        match response {
            Response::Failed(e) => {
                let host_failure = self.host_failure.take();
                match (e.code, host_failure) {
                    (ErrorCode::HostFunctionFailed, Some(failure)) => failure,
                    _ => guest_error(e, function),
                }
            }
            Response::Exited { code } => Error::GuestExited { code },
            other => unexpected(expected, &other),
        }
    }

    fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(Error::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Poisons the guest if `result` is an error (a failure of the host's
    /// own machinery: the VM can no longer be trusted).
    fn poison_on_error<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            self.poisoned = Some(error_chain(e));
        }
        result
    }

    /// Runs one guest request (under the call's time limit and interrupt
    /// handle) unless the guest is poisoned. Afterwards restores the latest
    /// state snapshot if `reset` asks for it or the failure left the guest
    /// in an unknown state; poisons the guest if the host itself failed.
    fn guarded<T>(&mut self, reset: bool, step: impl FnOnce(&mut Guest) -> Result<T>) -> Result<T> {
        if let Err(e) = self.check_usable() {
            crate::metrics::record_error(&e);
            return Err(e);
        }
        self.host_failure = None;
        self.mid_request = false;
        if let Err(e) = self.vm.begin_call() {
            crate::metrics::record_error(&e);
            return Err(e);
        }
        // A panic (in the print function, or a bug of ours) must not leave
        // the call marked running or the guest half-way through a request.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(self)));
        self.vm.end_call();
        let result = match outcome {
            Ok(result) => result,
            Err(payload) => {
                let target = self
                    .module_snapshot
                    .clone()
                    .or_else(|| self.runtime_snapshot.clone());
                let restored = target.map(|snapshot| self.vm.restore(&snapshot));
                if !matches!(restored, Some(Ok(()))) {
                    self.poisoned = Some(format!(
                        "a panic interrupted a guest call: {}",
                        panic_message(&*payload)
                    ));
                }
                std::panic::resume_unwind(payload);
            }
        };
        if let Err(e) = &result {
            crate::metrics::record_error(e);
        }
        let aftermath = match &result {
            Ok(_) => Aftermath::Clean,
            // The guest was stopped in the middle of the request (waiting for
            // the answer to an out-call): whatever the error, its state is
            // not one to continue from.
            Err(e) if self.mid_request && e.aftermath() == Aftermath::Clean => Aftermath::Restore,
            Err(e) => e.aftermath(),
        };
        if aftermath == Aftermath::Poison {
            if let Err(e) = &result {
                self.poisoned = Some(error_chain(e));
            }
            return result;
        }
        if reset || aftermath == Aftermath::Restore {
            let target = self
                .module_snapshot
                .clone()
                .or_else(|| self.runtime_snapshot.clone());
            let restored = match target {
                Some(snapshot) => self.vm.restore(&snapshot),
                None => Err(Error::Poisoned {
                    reason: String::from("there is no state to restore yet"),
                }),
            };
            if let Err(restore_error) = restored {
                let cause = match &result {
                    Err(e) => format!("{}; restoring the sandbox then failed: ", error_chain(e)),
                    Ok(_) => String::from("resetting the sandbox after a call failed: "),
                };
                self.poisoned = Some(cause + &error_chain(&restore_error));
                return result.and(Err(restore_error));
            }
        }
        result
    }

    /// Writes a message into the input buffer.
    fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        let input = self.vm.layout().input;
        let bytes = wire::encode_to_vec(msg).map_err(|e| Error::RequestTooLarge {
            reason: e.to_string(),
        })?;
        if bytes.len() as u64 > input.size {
            return Err(Error::RequestTooLarge {
                reason: format!(
                    "it takes {} bytes and the guest's input buffer holds {}; raise that with \
                     SandboxBuilder::with_guest_input_buffer_size",
                    bytes.len(),
                    input.size
                ),
            });
        }
        self.vm.memory_mut().write(input.addr, &bytes)?;
        Ok(())
    }

    /// Runs the guest until it answers, serving its out-calls; `artifact` is
    /// the module being loaded, if any.
    fn run_to_done(&mut self, mut artifact: Option<&mut Artifact<'_>>) -> Result<Response> {
        loop {
            match self.vm.run()? {
                GuestExit::Done => return self.read_output("a response"),
                GuestExit::OutCall => {
                    self.mid_request = true;
                    let call = self.read_out_call()?;
                    let reply = self.serve(call, artifact.as_deref_mut())?;
                    match self.send(&reply) {
                        Ok(()) => {}
                        // A host function's result that does not fit: the
                        // guest call fails with that error.
                        Err(e @ Error::RequestTooLarge { .. }) => {
                            let message = format!("the host's answer cannot be sent: {e}");
                            self.host_failure = Some(e);
                            self.send(&OutCallReply::Failed(message))?;
                        }
                        Err(e) => return Err(e),
                    }
                    self.mid_request = false;
                }
                GuestExit::Abort => return Err(self.abort_error()),
            }
        }
    }

    /// Answers an out-call.
    fn serve(
        &mut self,
        call: OutCall,
        artifact: Option<&mut Artifact<'_>>,
    ) -> Result<OutCallReply> {
        if !matches!(call, OutCall::ArtifactBuffer { .. }) {
            self.questions += 1;
        }
        match call {
            OutCall::ArtifactBuffer { addr, len } => {
                let Some(artifact) = artifact.filter(|a| !a.copied) else {
                    return Err(unexpected(
                        "no artifact request",
                        &OutCall::ArtifactBuffer { addr, len },
                    ));
                };
                let needed = artifact.bytes.len() as u64;
                if len != needed {
                    return Err(ProtocolError::WrongLength {
                        offered: len,
                        needed,
                    }
                    .into());
                }
                // The guest names the buffer; it must lie in its heap.
                if !self.vm.layout().heap.contains_range(addr, len) {
                    return Err(ProtocolError::OutOfBounds { addr, len }.into());
                }
                self.vm.memory_mut().write(addr, artifact.bytes)?;
                artifact.copied = true;
                Ok(OutCallReply::Done)
            }
            OutCall::CallHost { function, args } => self.call_host(function, args),
            OutCall::Print { text } => {
                let print = &mut self.print;
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| print(&text))) {
                    Ok(()) => Ok(OutCallReply::Done),
                    Err(payload) => {
                        let message = panic_message(&*payload);
                        let reply = format!("the print function panicked: {message}");
                        self.host_failure = Some(Error::HostFunctionPanicked {
                            function: String::from("<print function>"),
                            message,
                        });
                        Ok(OutCallReply::Failed(reply))
                    }
                }
            }
            OutCall::Clock { realtime } => Ok(OutCallReply::Time(clock_ns(realtime))),
            OutCall::Random { len } => {
                // The reply must fit the input buffer.
                let limit = self.vm.layout().input.size.saturating_sub(64);
                if u64::from(len) > limit {
                    return Err(unexpected(
                        "a random request that fits the input buffer",
                        &len,
                    ));
                }
                Ok(OutCallReply::Random(random_bytes(len as usize)?))
            }
        }
    }

    /// Calls a registered host function for the guest. Its arguments are
    /// checked against its signature first (the guest is not trusted to);
    /// its errors and panics fail the guest call, not the host.
    fn call_host(&mut self, function: String, args: Vec<Value>) -> Result<OutCallReply> {
        // `read_out_call` checked the name and the arguments' types.
        let Some(registered) = self.functions.get_mut(&function) else {
            return Err(unexpected(
                "a call to a registered host function",
                &function,
            ));
        };
        let call = &mut registered.call;
        #[cfg(feature = "function_call_metrics")]
        let start = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(args)));
        #[cfg(feature = "function_call_metrics")]
        crate::metrics::record_host_call(&function, start.elapsed().as_secs_f64() * 1e6);
        match outcome {
            Ok(Ok(value)) => Ok(OutCallReply::Returned(value)),
            Ok(Err(source)) => {
                let message = format!(
                    "host function `{function}` failed: {}",
                    error_chain(&*source)
                );
                self.host_failure = Some(Error::HostFunctionFailed { function, source });
                Ok(OutCallReply::Failed(message))
            }
            Err(payload) => {
                let message = panic_message(&*payload);
                let reply = format!("host function `{function}` panicked: {message}");
                self.host_failure = Some(Error::HostFunctionPanicked { function, message });
                Ok(OutCallReply::Failed(reply))
            }
        }
    }

    /// Reads an out-call. A host call's name and arity are checked against
    /// the registered functions before any argument is decoded, and each
    /// argument's type as it is: what the host allocates is bounded by the
    /// bytes the guest wrote, whatever count it claims.
    fn read_out_call(&self) -> Result<OutCall> {
        const WHAT: &str = "an out-call";
        let malformed =
            |source| -> Error { ProtocolError::Malformed { what: WHAT, source }.into() };
        let payload = self.read_output_payload(WHAT)?;
        let Some(head) = wire::decode_call_host_head(&payload).map_err(malformed)? else {
            return wire::decode(&payload).map_err(malformed);
        };
        let Some(registered) = self.functions.get(head.function) else {
            return Err(unexpected(
                "a call to a registered host function",
                &head.function,
            ));
        };
        if head.arg_count != registered.params.len() {
            return Err(unexpected(
                "host function arguments matching its signature",
                &format_args!(
                    "{} arguments for `{}`, which takes {}",
                    head.arg_count,
                    head.function,
                    registered.params.len()
                ),
            ));
        }
        let mut args = Vec::with_capacity(registered.params.len());
        let mut rest = head.args;
        for (i, ty) in registered.params.iter().enumerate() {
            let (value, after) = wire::take_value(rest).map_err(malformed)?;
            if value.ty() != *ty {
                return Err(unexpected(
                    "host function arguments matching its signature",
                    &format_args!(
                        "argument {i} of `{}` of type {}, which takes {ty} there",
                        head.function,
                        value.ty()
                    ),
                ));
            }
            args.push(value);
            rest = after;
        }
        if !rest.is_empty() {
            return Err(malformed(wire::WireError::TrailingBytes(rest.len())));
        }
        Ok(OutCall::CallHost {
            function: head.function.to_owned(),
            args,
        })
    }

    /// Copies the message in the output buffer out of guest memory, checks
    /// its length against the buffer, and decodes it.
    fn read_output<T: DeserializeOwned>(&self, what: &'static str) -> Result<T> {
        let payload = self.read_output_payload(what)?;
        wire::decode(&payload).map_err(|source| ProtocolError::Malformed { what, source }.into())
    }

    fn read_output_payload(&self, what: &'static str) -> Result<Vec<u8>> {
        let output = self.vm.layout().output;
        let mut header = [0u8; HEADER_LEN];
        self.vm.memory().read(output.addr, &mut header)?;
        let len = wire::payload_len(&header, output.size as usize)
            .map_err(|source| ProtocolError::Malformed { what, source })?;
        Ok(self
            .vm
            .memory()
            .read_vec(output.addr + HEADER_LEN as u64, len)?)
    }

    /// The error for a guest that exited on the abort port.
    fn abort_error(&self) -> Error {
        let payload = match self.read_output_payload("an abort message") {
            Ok(payload) => payload,
            Err(e) => return unreadable_abort(&e),
        };
        match wire::decode::<Abort<'_>>(&payload) {
            Ok(abort) if abort.code == ErrorCode::OutOfMemory => Error::GuestOutOfMemory {
                message: abort.message.to_owned(),
            },
            Ok(abort) => Error::GuestAborted {
                code: abort.code,
                message: abort.message.to_owned(),
            },
            Err(source) => unreadable_abort(&Error::Protocol(ProtocolError::Malformed {
                what: "an abort message",
                source,
            })),
        }
    }
}

/// How much of a guest's message an error quotes.
const QUOTE_LIMIT: usize = 200;

/// The error for a message the protocol does not allow here, quoting at
/// most [`QUOTE_LIMIT`] bytes of it: the message is formatted into a
/// bounded buffer, never whole (a hostile guest's message can be as large
/// as the output buffer, and its `Debug` form several times larger).
fn unexpected(expected: &'static str, got: &dyn std::fmt::Debug) -> Error {
    use std::fmt::Write;
    let mut quote = Bounded {
        text: String::new(),
        limit: QUOTE_LIMIT,
    };
    // An error from the writer only means the quote is full.
    if write!(quote, "{got:?}").is_err() {
        quote.text.push_str("...");
    }
    Error::Protocol(ProtocolError::UnexpectedMessage {
        expected,
        got: quote.text,
    })
}

/// A `fmt::Write` that keeps at most `limit` bytes and then fails, which
/// stops the formatting.
struct Bounded {
    text: String,
    limit: usize,
}

impl std::fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.limit - self.text.len();
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let cut = (0..=room)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        self.text.push_str(&s[..cut]);
        Err(std::fmt::Error)
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        String::from("<non-string panic payload>")
    }
}

/// Nanoseconds on the realtime clock (since the Unix epoch) or on a
/// monotonic clock (since this process first asked).
fn clock_ns(realtime: bool) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = if realtime {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    } else {
        START.get_or_init(Instant::now).elapsed()
    };
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

/// Random bytes from the operating system.
fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        // SAFETY: the pointer and length describe the unfilled tail of
        // `bytes`, which getrandom only writes.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), len - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Os {
                operation: "get random bytes for the guest",
                source: e,
            });
        }
        filled += n as usize;
    }
    Ok(bytes)
}

fn unreadable_abort(e: &Error) -> Error {
    Error::GuestAborted {
        code: ErrorCode::Other,
        message: format!(
            "the guest aborted without a readable reason: {}",
            error_chain(e)
        ),
    }
}

/// An error and its sources, as one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Maps a failure the guest reported to the public error.
fn guest_error(e: GuestError, function: Option<&str>) -> Error {
    let GuestError { code, message } = e;
    let function = || function.unwrap_or("the start function").to_owned();
    if let Some(kind) = TrapKind::from_code(code) {
        return Error::GuestTrap {
            function: function(),
            kind,
            message,
        };
    }
    match code {
        ErrorCode::FunctionNotFound => Error::GuestFunctionNotFound {
            function: function(),
        },
        ErrorCode::ParameterCountMismatch => Error::GuestFunctionParameterCountMismatch {
            function: function(),
            message,
        },
        ErrorCode::ParameterTypeMismatch => Error::GuestFunctionParameterTypeMismatch {
            function: function(),
            message,
        },
        ErrorCode::ReturnTypeMismatch => Error::GuestFunctionReturnTypeMismatch {
            function: function(),
            message,
        },
        ErrorCode::IncompatibleArtifact => Error::IncompatibleModule { message },
        ErrorCode::UnknownImport => Error::UnknownImport { message },
        ErrorCode::InstantiationFailed => Error::Instantiation { message },
        ErrorCode::OutOfMemory => Error::GuestOutOfMemory { message },
        ErrorCode::ImportTypeMismatch => Error::ImportTypeMismatch { message },
        ErrorCode::MissingExport => Error::MissingExport { message },
        ErrorCode::BadGuestPointer => Error::BadGuestPointer { message },
        ErrorCode::InvalidUtf8 => Error::InvalidUtf8 { message },
        code => Error::GuestFailed { code, message },
    }
}

#[cfg(test)]
mod tests {
    use hyperlight_wasm_protocol::message::{Abort, ErrorCode, OutCall, Response};
    use hyperlight_wasm_protocol::port::Port;
    use hyperlight_wasm_protocol::wire::{HEADER_MAGIC, encode_to_vec};

    use super::*;
    use crate::vm::testing::{RawGuest, layout};
    use crate::{LoadedWasmSandbox, SandboxBuilder};

    #[test]
    fn a_call_costs_one_exit_plus_one_per_host_call() {
        for persistent in [false, true] {
            let mut proto = SandboxBuilder::new()
                .with_persistent_state(persistent)
                .build()
                .unwrap();
            proto.register("inc", |x: i32| x + 1).unwrap();
            let mut sb = proto
                .load_runtime()
                .unwrap()
                .load_module_from_buffer(
                    br#"(module (import "env" "inc" (func $inc (param i32) (result i32)))
                    (func (export "add") (param i32 i32) (result i32)
                        (i32.add (local.get 0) (local.get 1)))
                    (func (export "inc_twice") (param i32) (result i32)
                        (call $inc (call $inc (local.get 0)))))"#,
                )
                .unwrap();
            for _ in 0..3 {
                let before = sb.guest().vm.entries();
                assert_eq!(sb.call_guest_function::<i32>("add", (1, 2)).unwrap(), 3);
                let after_add = sb.guest().vm.entries();
                assert_eq!(sb.call_guest_function::<i32>("inc_twice", 1).unwrap(), 3);
                let after_inc = sb.guest().vm.entries();
                assert_eq!(after_add - before, 1, "persistent: {persistent}");
                assert_eq!(after_inc - after_add, 3, "persistent: {persistent}");
            }
        }
    }

    #[test]
    fn sandboxes_of_one_configuration_share_their_images() {
        let load = |module: &str| -> LoadedWasmSandbox {
            let mut proto = SandboxBuilder::new().build().unwrap();
            proto.register("answer", || 42).unwrap();
            proto
                .load_runtime()
                .unwrap()
                .load_module_from_buffer(module.as_bytes())
                .unwrap()
        };
        let same = |a: &Option<Arc<Snapshot>>, b: &Option<Arc<Snapshot>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        let quiet = r#"(module (func (export "f") (result i32) i32.const 5))"#;
        let (a, b) = (load(quiet), load(quiet));
        let (a, b) = (a.guest(), b.guest());
        assert!(same(&a.runtime_snapshot, &b.runtime_snapshot));
        assert!(same(&a.module_snapshot, &b.module_snapshot));
        // A start function that asks the host: each sandbox loads it itself.
        let asking = r#"(module (import "env" "answer" (func $a (result i32)))
            (global $g (mut i32) (i32.const 0))
            (func $s (global.set $g (call $a))) (start $s))"#;
        let (c, d) = (load(asking), load(asking));
        let (c, d) = (c.guest(), d.guest());
        assert!(same(&c.runtime_snapshot, &a.runtime_snapshot));
        assert!(!same(&c.module_snapshot, &d.module_snapshot));
        // Test guests never share.
        let raw = || {
            let mut g = guest(RawGuest::new().send_output(&ready(), Port::Done));
            g.boot().unwrap();
            g
        };
        assert!(!same(&raw().runtime_snapshot, &raw().runtime_snapshot));
    }

    fn guest(raw: RawGuest) -> Guest {
        Guest::new(raw.vm(), Box::new(|_| {}), false)
    }

    fn framed<T: Serialize>(msg: &T) -> Vec<u8> {
        encode_to_vec(msg).unwrap()
    }

    fn header(len: u32) -> Vec<u8> {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        bytes
    }

    fn ready() -> Vec<u8> {
        framed(&Response::Ready {
            protocol_version: PROTOCOL_VERSION,
        })
    }

    /// Boots, expecting a protocol error, then checks the guest is poisoned.
    fn boot_fails(mut g: Guest) -> ProtocolError {
        let err = g.boot().unwrap_err();
        assert!(matches!(g.boot(), Err(Error::Poisoned { .. })));
        assert!(matches!(
            g.call("f", Vec::new(), ValueType::Void),
            Err(Error::Poisoned { .. })
        ));
        match err {
            Error::Protocol(e) => e,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn a_well_behaved_raw_guest_boots() {
        let mut g = guest(RawGuest::new().send_output(&ready(), Port::Done).spin());
        g.boot().unwrap();
    }

    #[test]
    fn garbage_instead_of_a_response_is_rejected() {
        let g = guest(RawGuest::new().send_output(&[0xab; 64], Port::Done));
        assert!(matches!(
            boot_fails(g),
            ProtocolError::Malformed {
                source: wire::WireError::BadMagic { .. },
                ..
            }
        ));
    }

    #[test]
    fn a_length_beyond_the_buffer_is_rejected() {
        for len in [u32::MAX, layout().output.size as u32] {
            let g = guest(RawGuest::new().send_output(&header(len), Port::Done));
            assert!(matches!(
                boot_fails(g),
                ProtocolError::Malformed {
                    source: wire::WireError::TooLarge { .. },
                    ..
                }
            ));
        }
    }

    #[test]
    fn a_malformed_payload_is_rejected() {
        let cases: [&[u8]; 4] = [
            &[0x7f],             // no such variant
            &[0x00],             // Ready without its version
            &[0x03, 0x00, 0x05], // Failed, its message promised but missing
            &[],                 // nothing at all
        ];
        for payload in cases {
            let mut msg = header(payload.len() as u32);
            msg.extend_from_slice(payload);
            let g = guest(RawGuest::new().send_output(&msg, Port::Done));
            assert!(
                matches!(
                    boot_fails(g),
                    ProtocolError::Malformed {
                        source: wire::WireError::Malformed(_),
                        ..
                    }
                ),
                "{payload:?}"
            );
        }
        // A valid message with junk after it.
        let mut msg = ready();
        msg[0] += 2;
        msg.extend_from_slice(&[1, 2]);
        let g = guest(RawGuest::new().send_output(&msg, Port::Done));
        assert!(matches!(
            boot_fails(g),
            ProtocolError::Malformed {
                source: wire::WireError::TrailingBytes(2),
                ..
            }
        ));
    }

    #[test]
    fn the_wrong_message_or_version_is_rejected() {
        let g = guest(RawGuest::new().send_output(&framed(&Response::ModuleLoaded), Port::Done));
        assert!(matches!(
            boot_fails(g),
            ProtocolError::UnexpectedMessage { .. }
        ));
        let other_version = framed(&Response::Ready {
            protocol_version: PROTOCOL_VERSION + 1,
        });
        let g = guest(RawGuest::new().send_output(&other_version, Port::Done));
        assert!(matches!(
            boot_fails(g),
            ProtocolError::VersionMismatch { .. }
        ));
        // An out-call where none is expected.
        let call = framed(&OutCall::ArtifactBuffer { addr: 0, len: 0 });
        let g = guest(RawGuest::new().send_output(&call, Port::OutCall));
        assert!(matches!(
            boot_fails(g),
            ProtocolError::UnexpectedMessage { .. }
        ));
    }

    #[test]
    fn a_result_of_another_type_than_requested_is_rejected() {
        let wrong = framed(&Response::Returned(Value::I64(1)));
        let mut g = guest(
            RawGuest::new()
                .send_output(&ready(), Port::Done)
                .send_output(&wrong, Port::Done),
        );
        g.boot().unwrap();
        assert!(matches!(
            g.call("f", Vec::new(), ValueType::I32),
            Err(Error::Protocol(ProtocolError::UnexpectedMessage { .. }))
        ));
    }

    /// A guest that boots, then answers the module load with `call`.
    fn load_with(call: OutCall) -> Result<()> {
        let mut g = guest(
            RawGuest::new()
                .send_output(&ready(), Port::Done)
                .send_output(&framed(&call), Port::OutCall)
                .send_output(&framed(&Response::ModuleLoaded), Port::Done),
        );
        g.boot().unwrap();
        g.load_module(&[7u8; 100], &[0; 32], &Arc::default())
    }

    #[test]
    fn the_artifact_buffer_must_lie_in_the_heap_and_fit() {
        let heap = layout().heap;
        load_with(OutCall::ArtifactBuffer {
            addr: heap.addr,
            len: 100,
        })
        .unwrap();
        for (addr, len) in [
            (0x1000, 100),              // the GDT
            (layout().stack.addr, 100), // the stack
            (heap.end() - 50, 100),     // runs past the heap
            (u64::MAX - 10, 100),       // wraps around
        ] {
            assert!(
                matches!(
                    load_with(OutCall::ArtifactBuffer { addr, len }),
                    Err(Error::Protocol(ProtocolError::OutOfBounds { .. }))
                ),
                "{addr:#x}"
            );
        }
        assert!(matches!(
            load_with(OutCall::ArtifactBuffer {
                addr: heap.addr,
                len: 99
            }),
            Err(Error::Protocol(ProtocolError::WrongLength { .. }))
        ));
    }

    #[test]
    fn the_artifact_buffer_is_filled_once_only() {
        let heap = layout().heap;
        let call = framed(&OutCall::ArtifactBuffer {
            addr: heap.addr,
            len: 4,
        });
        let mut g = guest(
            RawGuest::new()
                .send_output(&ready(), Port::Done)
                .send_output(&call, Port::OutCall)
                .send_output(&call, Port::OutCall),
        );
        g.boot().unwrap();
        assert!(matches!(
            g.load_module(&[1, 2, 3, 4], &[0; 32], &Arc::default()),
            Err(Error::Protocol(ProtocolError::UnexpectedMessage { .. }))
        ));
    }

    #[test]
    fn an_abort_reports_its_reason() {
        let abort = framed(&Abort {
            code: ErrorCode::Panic,
            message: "boom",
        });
        let mut g = guest(RawGuest::new().send_output(&abort, Port::Abort));
        match g.boot() {
            Err(Error::GuestAborted { code, message }) => {
                assert_eq!((code, message.as_str()), (ErrorCode::Panic, "boom"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(g.boot(), Err(Error::Poisoned { reason }) if reason.contains("boom")));
        // Out of memory is its own error.
        let abort = framed(&Abort {
            code: ErrorCode::OutOfMemory,
            message: "no heap",
        });
        let mut g = guest(RawGuest::new().send_output(&abort, Port::Abort));
        assert!(matches!(g.boot(), Err(Error::GuestOutOfMemory { .. })));
    }

    #[test]
    fn an_abort_with_garbage_is_still_an_abort() {
        let mut g = guest(RawGuest::new().send_output(&[0xff; 32], Port::Abort));
        match g.boot() {
            Err(Error::GuestAborted { code, message }) => {
                assert_eq!(code, ErrorCode::Other);
                assert!(message.contains("without a readable reason"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_fault_after_boot_is_undone_by_restoring_the_snapshot() {
        // Boots, then faults on every request: each call must see the same
        // fault, proving the VM went back to its post-boot state (otherwise
        // it would be stuck spinning in the exception stub).
        let mut g = guest(
            RawGuest::new()
                .send_output(&ready(), Port::Done)
                .code(&[0x0f, 0x0b]),
        );
        g.boot().unwrap();
        for _ in 0..3 {
            match g.call("f", Vec::new(), ValueType::Void) {
                Err(Error::GuestException(e)) => assert_eq!(e.vector, 6),
                other => panic!("{other:?}"),
            }
        }
        // So does a guest that breaks the protocol.
        let mut g = guest(
            RawGuest::new()
                .send_output(&ready(), Port::Done)
                .send_output(&[0xee; 40], Port::Done),
        );
        g.boot().unwrap();
        for _ in 0..3 {
            assert!(matches!(
                g.call("f", Vec::new(), ValueType::Void),
                Err(Error::Protocol(ProtocolError::Malformed { .. }))
            ));
        }
    }

    #[test]
    fn a_guest_that_never_answers_is_stopped_by_the_time_limit() {
        let limits = crate::vm::CallLimits {
            time_limit: std::time::Duration::from_millis(100),
            cancel_wait: std::time::Duration::ZERO,
        };
        let raw = RawGuest::new().send_output(&ready(), Port::Done).spin();
        let mut g = Guest::new(raw.vm_with(limits), Box::new(|_| {}), false);
        g.boot().unwrap();
        for _ in 0..3 {
            assert!(matches!(
                g.call("f", Vec::new(), ValueType::Void),
                Err(Error::ExecutionCancelledByHost { .. })
            ));
        }
    }

    #[test]
    fn a_guest_exception_poisons_the_guest() {
        let mut g = guest(RawGuest::new().code(&[0x0f, 0x0b]));
        assert!(matches!(g.boot(), Err(Error::GuestException(_))));
        assert!(matches!(g.boot(), Err(Error::Poisoned { reason }) if reason.contains("#UD")));
    }

    /// A guest with the largest output buffer that boots, then answers
    /// the next request with `prefix` (a header claiming the whole buffer,
    /// and the start of a message) on `port`: the rest of the buffer is
    /// zeros, which decode as `Value::Void`s, or bytes of a `Vec<u8>`.
    fn largest_buffer_guest(prefix: impl Fn(usize) -> Vec<u8>, port: Port) -> Guest {
        let sizes = crate::vm::layout::Sizes {
            output: SandboxBuilder::MAX_BUFFER_SIZE,
            ..crate::vm::testing::SIZES
        };
        let output = crate::vm::layout::Layout::new(&sizes).unwrap().output;
        let payload = output.size as usize - HEADER_LEN;
        let mut bytes = header(payload as u32);
        bytes.extend(prefix(payload));
        let ready = framed(&Response::Ready {
            protocol_version: PROTOCOL_VERSION,
        });
        let raw =
            RawGuest::new()
                .send(output.addr, &ready, Port::Done)
                .send(output.addr, &bytes, port);
        let mut g = Guest::new(
            raw.vm_sized(&sizes, crate::vm::CallLimits::default()),
            Box::new(|_| {}),
            false,
        );
        g.boot().unwrap();
        g
    }

    /// `head` followed by a varint count such that the message fills a
    /// payload of `payload` bytes.
    fn filling(head: &[u8], payload: usize) -> Vec<u8> {
        let mut count = payload - head.len();
        loop {
            let varint = encode_varint(count);
            let fitted = payload - head.len() - varint.len();
            if fitted == count {
                return [head, &varint].concat();
            }
            count = fitted;
        }
    }

    fn encode_varint(value: usize) -> Vec<u8> {
        postcard::to_allocvec(&value).unwrap()
    }

    #[test]
    fn a_host_call_claiming_millions_of_arguments_allocates_nothing_for_them() {
        // CallHost (variant 1), function "f", then ~268 million arguments
        // that are each one zero byte (Void): decoded first, they would
        // take 32 bytes each, 8 GiB in all.
        let head = [&[1u8][..], &encode_varint(1), b"f"].concat();
        // Unknown, then registered with two parameters.
        for register in [false, true] {
            let mut g = largest_buffer_guest(|payload| filling(&head, payload), Port::OutCall);
            if register {
                g.host_functions_mut().insert(
                    String::from("f"),
                    host_functions::Registered::new(|a: i32, b: i32| a + b),
                );
            }
            let (result, peak) =
                crate::allocations::peak_during(|| g.call("anything", Vec::new(), ValueType::Void));
            assert!(
                matches!(
                    result,
                    Err(Error::Protocol(ProtocolError::UnexpectedMessage { .. }))
                ),
                "{result:?}"
            );
            // The copy of the buffer, and little else.
            let buffer = SandboxBuilder::MAX_BUFFER_SIZE as usize;
            assert!(
                peak < buffer + buffer / 4,
                "{peak} bytes for a {buffer}-byte buffer"
            );
        }
    }

    #[test]
    fn an_unexpected_message_is_quoted_without_formatting_it_whole() {
        // Returned (2) a Vec<u8> (9) as large as the buffer holds, where the
        // call asked for an i32: the error quotes it. Its Debug form would
        // take three bytes per byte (768 MiB).
        let mut g = largest_buffer_guest(|payload| filling(&[2, 9], payload), Port::Done);
        let (result, peak) =
            crate::allocations::peak_during(|| g.call("f", Vec::new(), ValueType::I32));
        match result {
            Err(Error::Protocol(ProtocolError::UnexpectedMessage { got, .. })) => {
                assert!(got.len() <= QUOTE_LIMIT + 3, "{} bytes", got.len());
                assert!(got.ends_with("..."), "{got}");
            }
            other => panic!("{other:?}"),
        }
        // The copy of the buffer and the decoded bytes: two buffers' worth.
        let buffer = SandboxBuilder::MAX_BUFFER_SIZE as usize;
        assert!(
            peak < 2 * buffer + buffer / 2,
            "{peak} bytes for a {buffer}-byte buffer"
        );
    }

    #[test]
    fn host_calls_are_checked_against_the_registry_before_they_run() {
        let call = |function: &str, args: Vec<Value>| {
            framed(&OutCall::CallHost {
                function: String::from(function),
                args,
            })
        };
        let cases = [
            call("missing", vec![]),
            call("add", vec![Value::I32(1)]),
            call("add", vec![Value::I32(1), Value::I64(2)]),
            call("add", vec![Value::I32(1), Value::I32(2), Value::I32(3)]),
        ];
        for message in cases {
            let mut g = guest(
                RawGuest::new()
                    .send_output(&ready(), Port::Done)
                    .send_output(&message, Port::OutCall),
            );
            g.host_functions_mut().insert(
                String::from("add"),
                host_functions::Registered::new(|a: i32, b: i32| -> i32 {
                    panic!("called with {a} and {b}")
                }),
            );
            g.boot().unwrap();
            assert!(matches!(
                g.call("f", Vec::new(), ValueType::Void),
                Err(Error::Protocol(ProtocolError::UnexpectedMessage { .. }))
            ));
        }
    }

    #[test]
    fn only_functions_the_host_knows_are_exported_get_metric_series() {
        // A guest that answers "returned" to anything it is asked.
        let returned = framed(&Response::Returned(Value::Void));
        let mut raw = RawGuest::new().send_output(&ready(), Port::Done);
        for _ in 0..4 {
            raw = raw.send_output(&returned, Port::Done);
        }
        let mut g = guest(raw);
        g.boot().unwrap();
        let mut exports = Exports::new();
        exports.insert(
            String::from("known_export_1a2b"),
            crate::compile::artifact::ExportedFunction {
                name: String::from("known_export_1a2b"),
                params: Vec::new(),
                results: Vec::new(),
            },
        );
        g.exports = Some(Arc::new(exports));
        for name in ["made_up_1a2b", "another_made_up_1a2b"] {
            assert!(matches!(
                g.call(name, Vec::new(), ValueType::Void),
                Err(Error::GuestFunctionNotFound { .. })
            ));
        }
        g.call("known_export_1a2b", Vec::new(), ValueType::Void)
            .unwrap();
        let series: Vec<String> = prometheus::gather()
            .iter()
            .flat_map(|family| family.get_metric().to_vec())
            .flat_map(|metric| metric.get_label().to_vec())
            .map(|label| label.value().to_owned())
            .filter(|value| value.ends_with("1a2b"))
            .collect();
        if cfg!(feature = "function_call_metrics") {
            assert_eq!(series, ["known_export_1a2b"]);
        } else {
            assert!(series.is_empty());
        }
    }

    #[test]
    fn a_request_too_large_for_the_input_buffer_is_an_error() {
        let mut g = guest(
            RawGuest::new()
                .send_output(&ready(), Port::Done)
                .send_output(&framed(&Response::Returned(Value::Void)), Port::Done),
        );
        g.boot().unwrap();
        let name = "f".repeat(layout().input.size as usize);
        assert!(matches!(
            g.call(&name, Vec::new(), ValueType::Void),
            Err(Error::RequestTooLarge { .. })
        ));
        // Not the guest's fault: the guest is still usable.
        g.call("f", Vec::new(), ValueType::Void).unwrap();
    }
}
