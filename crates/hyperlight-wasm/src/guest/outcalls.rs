//! The host's services to a running guest: registered host functions,
//! printing, clocks and randomness. [`HostServices`] owns them and serves
//! one out-call at a time through two narrow functions ([`HostServices::decode`]
//! and [`HostServices::serve`]) that unit tests call without a VM, the way
//! hyperlight tests `handle_outb` and Firecracker `handle_kvm_exit`.
//!
//! A host function's error or panic, and a panicking print function, fail
//! the guest call, not the host: the guest gets a `Failed` reply, and the
//! original error is kept for the caller ([`HostServices::take_failure`]).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hyperlight_wasm_protocol::message::{OutCall, OutCallReply, Value};
use hyperlight_wasm_protocol::wire;

use super::errors::{panic_message, unexpected};
use crate::component::host_functions::ComponentFunctions;
use crate::component::types::ComponentImportedFunction;
use crate::error::{self, Error, ProtocolError, Result};
use crate::sandbox::host_functions::{HostFunctions, ImportName};
use crate::sandbox::{OutputStream, WasiConfig};
use hyperlight_wasm_protocol::component::ComponentImport;

/// Receives what the module prints, and from which output. Shared by every
/// sandbox built from one [`crate::SandboxBuilder`] (and its clones); calls
/// are serialized.
pub(crate) type PrintFn = Arc<Mutex<dyn FnMut(OutputStream, &str) + Send>>;

/// A print function that drops what it is given (for raw-guest tests and
/// the fuzz targets).
#[cfg(any(test, feature = "__fuzz"))]
pub(crate) fn quiet() -> PrintFn {
    Arc::new(Mutex::new(|_: OutputStream, _: &str| {}))
}

/// The WASI configuration a sandbox grants, and how far stdin was read.
#[derive(Debug, Default)]
pub(crate) struct WasiState {
    args: Vec<String>,
    /// `KEY=VALUE`.
    environ: Vec<String>,
    stdin: Vec<u8>,
    stdin_read: usize,
}

impl WasiState {
    pub(crate) fn new(config: &WasiConfig) -> WasiState {
        WasiState {
            args: config.args.clone(),
            environ: config.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            stdin: config.stdin.clone(),
            stdin_read: 0,
        }
    }
}

/// Sleeps for a guest (WASI `poll_oneoff`) unless its call is cancelled
/// first; returns whether it was.
pub(crate) type SleepFn = Box<dyn Fn(std::time::Duration) -> bool + Send>;

/// What the host serves a guest.
pub(crate) struct HostServices {
    functions: HostFunctions,
    print: PrintFn,
    sleep: SleepFn,
    wasi: WasiState,
    files: super::files::FileTable,
    components: ComponentFunctions,
    /// The error of the host function (or print function) that failed
    /// during the current request, reported when the guest call fails
    /// because of it.
    failure: Option<Error>,
}

impl std::fmt::Debug for HostServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostServices")
            .field("functions", &self.functions)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl HostServices {
    pub(crate) fn new(print: PrintFn, sleep: SleepFn) -> HostServices {
        HostServices {
            functions: HostFunctions::new(),
            print,
            sleep,
            wasi: WasiState::default(),
            files: super::files::FileTable::default(),
            components: ComponentFunctions::default(),
            failure: None,
        }
    }

    /// Grants the WASI configuration `wasi`.
    pub(crate) fn set_wasi(&mut self, wasi: WasiState, files: super::files::FileTable) {
        self.wasi = wasi;
        self.files = files;
    }

    /// The host functions modules may import.
    pub(crate) fn functions(&self) -> &HostFunctions {
        &self.functions
    }

    /// The host functions, for registering.
    pub(crate) fn functions_mut(&mut self) -> &mut HostFunctions {
        &mut self.functions
    }

    /// The host functions components may import, for registering.
    pub(crate) fn components_mut(&mut self) -> &mut ComponentFunctions {
        &mut self.components
    }

    /// Links a component's imports to the registered component functions
    /// (see [`ComponentFunctions::link`]).
    pub(crate) fn link_component(
        &mut self,
        imports: &[ComponentImportedFunction],
    ) -> Result<Vec<ComponentImport>> {
        self.components.link(imports)
    }

    /// Forgets the failure of an earlier request.
    pub(crate) fn begin_request(&mut self) {
        self.failure = None;
    }

    /// The host-side failure the current request's guest call failed for.
    pub(crate) fn take_failure(&mut self) -> Option<Error> {
        self.failure.take()
    }

    /// Records that the answer to an out-call could not be sent: the guest
    /// call fails with `e`; returns the reply that tells the guest so.
    pub(crate) fn reply_unsendable(&mut self, e: Error) -> OutCallReply {
        let message = format!("the host's answer cannot be sent: {e}");
        self.failure = Some(e);
        OutCallReply::Failed(message)
    }

    /// Decodes an out-call's payload. A host call's name and arity are
    /// checked against the registered functions before any argument is
    /// decoded, and each argument's type as it is: what the host allocates
    /// is bounded by the bytes the guest wrote, whatever count it claims.
    pub(crate) fn decode(&self, payload: &[u8]) -> Result<OutCall> {
        const WHAT: &str = "an out-call";
        let malformed =
            |source| -> Error { ProtocolError::Malformed { what: WHAT, source }.into() };
        let Some(head) = wire::decode_call_host_head(payload).map_err(malformed)? else {
            return wire::decode(payload).map_err(malformed);
        };
        let import = ImportName::new(head.module, head.function);
        let Some(registered) = self.functions.get(&import) else {
            return Err(unexpected(
                "a call to a registered host function",
                &format_args!("{}::{}", head.module, head.function),
            ));
        };
        if head.arg_count != registered.params.len() {
            return Err(unexpected(
                "host function arguments matching its signature",
                &format_args!(
                    "{} arguments for `{}`, which takes {}",
                    head.arg_count,
                    import,
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
                        import,
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
            module: import.module,
            function: import.name,
            args,
        })
    }

    /// Answers an out-call; `reply_capacity` is what the input buffer holds
    /// for the reply. The artifact buffer of a module load is the session's
    /// business, not a service: here it is a message out of place.
    ///
    /// # Errors
    ///
    /// A protocol error for a call the guest may not make, or an OS error
    /// (no random bytes); a failing host function is a `Failed` reply.
    pub(crate) fn serve(&mut self, call: OutCall, reply_capacity: u64) -> Result<OutCallReply> {
        match call {
            OutCall::CallHost {
                module,
                function,
                args,
            } => self.call_host(ImportName::new(module, function), args),
            OutCall::CallComponentHost {
                interface,
                function,
                args,
            } => {
                let served = self.components.call(interface, function, args)?;
                if served.failure.is_some() {
                    self.failure = served.failure;
                }
                Ok(served.reply)
            }
            OutCall::Print { text, stderr } => {
                let stream = if stderr {
                    OutputStream::Stderr
                } else {
                    OutputStream::Stdout
                };
                Ok(self.print(stream, &text))
            }
            OutCall::Fs(call) => Ok(OutCallReply::Fs(
                self.files.serve(call, reply_room(reply_capacity)),
            )),
            OutCall::Args => Ok(OutCallReply::Strings(self.wasi.args.clone())),
            OutCall::Environ => Ok(OutCallReply::Strings(self.wasi.environ.clone())),
            OutCall::ReadStdin { max } => {
                let room = reply_room(reply_capacity);
                let wasi = &mut self.wasi;
                let left = wasi.stdin.len() - wasi.stdin_read;
                let n = left.min(max as usize).min(room);
                let bytes = wasi.stdin[wasi.stdin_read..wasi.stdin_read + n].to_vec();
                wasi.stdin_read += n;
                Ok(OutCallReply::Bytes(bytes))
            }
            OutCall::Clock { realtime } => Ok(OutCallReply::Time(clock_ns(realtime))),
            OutCall::Random { len } => {
                if len as usize > reply_room(reply_capacity) {
                    return Err(unexpected(
                        "a random request that fits the input buffer",
                        &len,
                    ));
                }
                Ok(OutCallReply::Random(random_bytes(len as usize)?))
            }
            OutCall::Sleep { ns } => {
                // Woken early by a cancellation: the next entry into the
                // guest stops the call.
                let _cancelled = (self.sleep)(std::time::Duration::from_nanos(ns));
                Ok(OutCallReply::Done)
            }
            call @ OutCall::ArtifactBuffer { .. } => Err(unexpected("no artifact request", &call)),
        }
    }

    fn print(&mut self, stream: OutputStream, text: &str) -> OutCallReply {
        let print = &self.print;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // A print function that panicked before leaves the lock
            // poisoned; it is called again all the same.
            let mut print = print.lock().unwrap_or_else(|e| e.into_inner());
            print(stream, text);
        }));
        match outcome {
            Ok(()) => OutCallReply::Done,
            Err(payload) => {
                let message = panic_message(&*payload);
                let reply = format!("the print function panicked: {message}");
                self.failure = Some(Error::HostFunctionPanicked {
                    function: String::from("<print function>"),
                    message,
                });
                OutCallReply::Failed(reply)
            }
        }
    }

    /// Calls a registered host function for the guest (its arguments were
    /// checked by [`HostServices::decode`]); its errors and panics fail the
    /// guest call, not the host.
    fn call_host(&mut self, import: ImportName, args: Vec<Value>) -> Result<OutCallReply> {
        let Some(registered) = self.functions.get_mut(&import) else {
            return Err(unexpected("a call to a registered host function", &import));
        };
        // `name` in `env`, `module::name` elsewhere: errors and the metric
        // label name it so.
        let function = import.to_string();
        let call = &mut registered.call;
        #[cfg(feature = "function_call_metrics")]
        let start = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(args)));
        #[cfg(feature = "function_call_metrics")]
        crate::metrics::record_host_call(&function, start.elapsed().as_secs_f64() * 1e6);
        Ok(match outcome {
            Ok(Ok(value)) => OutCallReply::Returned(value),
            Ok(Err(source)) => {
                let message = format!(
                    "host function `{function}` failed: {}",
                    error::chain(&*source)
                );
                tracing::debug!(function = %function, "host function failed");
                self.failure = Some(Error::HostFunctionFailed { function, source });
                OutCallReply::Failed(message)
            }
            Err(payload) => {
                let message = panic_message(&*payload);
                let reply = format!("host function `{function}` panicked: {message}");
                tracing::debug!(function = %function, "host function panicked");
                self.failure = Some(Error::HostFunctionPanicked { function, message });
                OutCallReply::Failed(reply)
            }
        })
    }
}

/// The bytes of data a reply may carry so that it still fits an input
/// buffer of `capacity` bytes with the message around it.
fn reply_room(capacity: u64) -> usize {
    usize::try_from(capacity.saturating_sub(64)).unwrap_or(usize::MAX)
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
        // A negative count is an error; anything else is what was filled.
        let Ok(n) = usize::try_from(n) else {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Os {
                operation: "get random bytes for the guest",
                source: e,
            });
        };
        filled += n;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use hyperlight_wasm_protocol::wire::{HEADER_LEN, encode_to_vec};

    use super::*;
    use crate::sandbox::host_functions::{ImportName, Registered};

    fn services() -> (HostServices, Arc<Mutex<Vec<String>>>) {
        let printed = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&printed);
        let print: PrintFn = Arc::new(Mutex::new(move |stream: OutputStream, text: &str| {
            sink.lock().unwrap().push(format!("{stream:?}: {text}"));
        }));
        let mut services = HostServices::new(print, Box::new(|_| false));
        services.functions_mut().insert(
            ImportName::env("add"),
            Registered::new(|a: i32, b: i32| a + b),
        );
        services.functions_mut().insert(
            ImportName::new("host", "add"),
            Registered::new(|a: i64, b: i64| a * b),
        );
        services.functions_mut().insert(
            ImportName::env("fails"),
            Registered::new(|| -> std::result::Result<i32, std::io::Error> {
                Err(std::io::Error::other("no luck"))
            }),
        );
        services.functions_mut().insert(
            ImportName::env("panics"),
            Registered::new(|| -> i32 { panic!("host function panic") }),
        );
        (services, printed)
    }

    fn payload(call: &OutCall) -> Vec<u8> {
        encode_to_vec(call).unwrap()[HEADER_LEN..].to_vec()
    }

    fn call(function: &str, args: Vec<Value>) -> OutCall {
        call_in("env", function, args)
    }

    fn call_in(module: &str, function: &str, args: Vec<Value>) -> OutCall {
        OutCall::CallHost {
            module: String::from(module),
            function: String::from(function),
            args,
        }
    }

    #[test]
    fn a_host_call_is_decoded_checked_and_served() {
        let (mut services, _) = services();
        let decoded = services
            .decode(&payload(&call("add", vec![Value::I32(40), Value::I32(2)])))
            .unwrap();
        assert_eq!(
            services.serve(decoded, 4096).unwrap(),
            OutCallReply::Returned(Value::I32(42))
        );
        assert!(services.take_failure().is_none());
        // The same name in another module is another function.
        let decoded = services
            .decode(&payload(&call_in(
                "host",
                "add",
                vec![Value::I64(6), Value::I64(7)],
            )))
            .unwrap();
        assert_eq!(
            services.serve(decoded, 4096).unwrap(),
            OutCallReply::Returned(Value::I64(42))
        );
        assert!(
            services
                .decode(&payload(&call_in(
                    "elsewhere",
                    "add",
                    vec![Value::I32(1), Value::I32(2)]
                )))
                .is_err()
        );
    }

    #[test]
    fn host_calls_that_do_not_match_the_registry_are_refused_undecoded() {
        let (services, _) = services();
        for bad in [
            call("missing", vec![]),
            call("add", vec![Value::I32(1)]),
            call("add", vec![Value::I32(1), Value::I64(2)]),
            call("add", vec![Value::I32(1), Value::I32(2), Value::I32(3)]),
        ] {
            assert!(
                matches!(
                    services.decode(&payload(&bad)),
                    Err(Error::Protocol(ProtocolError::UnexpectedMessage { .. }))
                ),
                "{bad:?}"
            );
        }
        let mut trailing = payload(&call("add", vec![Value::I32(1), Value::I32(2)]));
        trailing.push(0);
        assert!(matches!(
            services.decode(&trailing),
            Err(Error::Protocol(ProtocolError::Malformed {
                source: wire::WireError::TrailingBytes(1),
                ..
            }))
        ));
        assert!(matches!(
            services.decode(&[0x7f]),
            Err(Error::Protocol(ProtocolError::Malformed { .. }))
        ));
    }

    #[test]
    fn failing_and_panicking_host_functions_fail_the_guest_call_only() {
        let (mut services, _) = services();
        for (name, expected) in [("fails", "no luck"), ("panics", "host function panic")] {
            match services.serve(call(name, vec![]), 4096).unwrap() {
                OutCallReply::Failed(message) => assert!(message.contains(expected), "{message}"),
                other => panic!("{other:?}"),
            }
            match services.take_failure() {
                Some(Error::HostFunctionFailed { function, .. })
                | Some(Error::HostFunctionPanicked { function, .. }) => assert_eq!(function, name),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn print_clock_and_random_are_served_and_bounded() {
        let (mut services, printed) = services();
        let reply = services.serve(
            OutCall::Print {
                text: String::from("hello"),
                stderr: false,
            },
            4096,
        );
        assert_eq!(reply.unwrap(), OutCallReply::Done);
        assert_eq!(*printed.lock().unwrap(), ["Stdout: hello"]);
        let reply = services.serve(
            OutCall::Print {
                text: String::from("oops"),
                stderr: true,
            },
            4096,
        );
        assert_eq!(reply.unwrap(), OutCallReply::Done);
        assert_eq!(printed.lock().unwrap()[1], "Stderr: oops");
        assert!(matches!(
            services.serve(OutCall::Clock { realtime: true }, 4096),
            Ok(OutCallReply::Time(t)) if t > 1_600_000_000 * 1_000_000_000
        ));
        match services.serve(OutCall::Random { len: 32 }, 4096).unwrap() {
            OutCallReply::Random(bytes) => assert_eq!(bytes.len(), 32),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            services.serve(OutCall::Random { len: 4096 }, 4096),
            Err(Error::Protocol(ProtocolError::UnexpectedMessage { .. }))
        ));
        let slept = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&slept);
        let mut sleeper = HostServices::new(
            Arc::new(Mutex::new(|_: OutputStream, _: &str| {})),
            Box::new(move |d| {
                seen.lock().unwrap().push(d);
                true
            }),
        );
        assert_eq!(
            sleeper.serve(OutCall::Sleep { ns: 1500 }, 4096).unwrap(),
            OutCallReply::Done
        );
        assert_eq!(
            *slept.lock().unwrap(),
            [std::time::Duration::from_nanos(1500)]
        );
        assert!(matches!(
            services.serve(OutCall::ArtifactBuffer { addr: 0, len: 1 }, 4096),
            Err(Error::Protocol(ProtocolError::UnexpectedMessage { .. }))
        ));
    }

    #[test]
    fn a_panicking_print_function_fails_the_call_and_stays_callable() {
        let calls = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&calls);
        let print: PrintFn = Arc::new(Mutex::new(move |_: OutputStream, _: &str| {
            *counter.lock().unwrap() += 1;
            panic!("print panics");
        }));
        let mut services = HostServices::new(print, Box::new(|_| false));
        for _ in 0..2 {
            let reply = services.serve(
                OutCall::Print {
                    text: String::from("x"),
                    stderr: false,
                },
                4096,
            );
            assert!(matches!(reply, Ok(OutCallReply::Failed(_))));
            assert!(matches!(
                services.take_failure(),
                Some(Error::HostFunctionPanicked { .. })
            ));
        }
        assert_eq!(*calls.lock().unwrap(), 2);
    }

    #[test]
    fn args_environment_and_stdin_are_served_as_configured() {
        let (mut services, _) = services();
        services.set_wasi(
            WasiState::new(
                &WasiConfig::new()
                    .args(["prog", "-v"])
                    .env("A", "1")
                    .env("B", "2")
                    .env("A", "3")
                    .stdin(b"0123456789".to_vec()),
            ),
            crate::guest::files::FileTable::default(),
        );
        assert_eq!(
            services.serve(OutCall::Args, 4096).unwrap(),
            OutCallReply::Strings(vec![String::from("prog"), String::from("-v")])
        );
        assert_eq!(
            services.serve(OutCall::Environ, 4096).unwrap(),
            OutCallReply::Strings(vec![String::from("B=2"), String::from("A=3")])
        );
        // Stdin in pieces of what was asked, bounded by the reply buffer,
        // then its end.
        let read = |services: &mut HostServices, max, capacity| match services
            .serve(OutCall::ReadStdin { max }, capacity)
            .unwrap()
        {
            OutCallReply::Bytes(bytes) => bytes,
            other => panic!("{other:?}"),
        };
        assert_eq!(read(&mut services, 4, 4096), b"0123");
        assert_eq!(read(&mut services, 100, 64 + 3), b"456");
        assert_eq!(read(&mut services, 100, 4096), b"789");
        assert!(read(&mut services, 100, 4096).is_empty());
    }
}
