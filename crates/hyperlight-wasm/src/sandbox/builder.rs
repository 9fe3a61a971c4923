//! [`SandboxBuilder`]: the sizes of a sandbox's guest memory regions.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::guest::{Guest, PrintFn};
use crate::sandbox::{ModuleAbi, OutputStream, ProtoWasmSandbox, WasiConfig};
use crate::vm::layout::Sizes;
use crate::vm::{CallLimits, Vm};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Configures and creates sandboxes.
///
/// Every size is in bytes and is rounded up to whole 4 KiB pages. Guest
/// memory is mapped lazily: a sandbox only costs the pages its guest
/// touches, so generous sizes are cheap. Values outside the documented
/// ranges make [`SandboxBuilder::build`] fail; nothing is clamped.
///
/// ```no_run
/// use hyperlight_wasm::SandboxBuilder;
///
/// let sandbox = SandboxBuilder::new()
///     .with_guest_heap_size(128 * 1024 * 1024)
///     .with_guest_stack_size(2 * 1024 * 1024)
///     .build()?
///     .load_runtime()?;
/// # drop(sandbox);
/// # Ok::<(), hyperlight_wasm::Error>(())
/// ```
///
/// A builder is [`Clone`]: clones share its print function (one function,
/// called for every sandbox built from any of them, one call at a time).
#[must_use]
#[derive(Clone)]
pub struct SandboxBuilder {
    heap_size: u64,
    stack_size: u64,
    input_buffer_size: u64,
    output_buffer_size: u64,
    /// The time limit, and the setter that set it (for errors).
    max_execution_time: (Duration, &'static str),
    /// How long `kill` waits, and the setter that set it.
    max_cancel_wait: (Duration, &'static str),
    persistent: bool,
    print: Option<PrintFn>,
    abi: ModuleAbi,
    wasi: WasiConfig,
}

impl std::fmt::Debug for SandboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBuilder")
            .field("heap_size", &self.heap_size)
            .field("stack_size", &self.stack_size)
            .field("input_buffer_size", &self.input_buffer_size)
            .field("output_buffer_size", &self.output_buffer_size)
            .field("max_execution_time", &self.max_execution_time.0)
            .field("max_cancel_wait", &self.max_cancel_wait.0)
            .field("persistent", &self.persistent)
            .field("abi", &self.abi)
            .field("wasi", &self.wasi)
            .field("print", &self.print.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        SandboxBuilder::new()
    }
}

impl SandboxBuilder {
    /// Default guest heap: 64 MiB. It holds the runtime, the loaded module's
    /// code and its linear memories.
    pub const DEFAULT_GUEST_HEAP_SIZE: u64 = 64 * MIB;
    /// Smallest guest heap: 4 MiB.
    pub const MIN_GUEST_HEAP_SIZE: u64 = 4 * MIB;
    /// Largest guest heap: 3 GiB (guest memory stays below the 4 GiB mark,
    /// where KVM keeps pages of its own on some Intel hosts; a wasm32 module
    /// cannot use more than 4 GiB anyway).
    pub const MAX_GUEST_HEAP_SIZE: u64 = 3 * GIB;
    /// Default guest stack: 1 MiB. WebAssembly code may use all of it but
    /// 64 KiB, which the runtime keeps for itself.
    pub const DEFAULT_GUEST_STACK_SIZE: u64 = MIB;
    /// Smallest guest stack: 128 KiB.
    pub const MIN_GUEST_STACK_SIZE: u64 = 128 * KIB;
    /// Largest guest stack: 256 MiB.
    pub const MAX_GUEST_STACK_SIZE: u64 = 256 * MIB;
    /// Default size of each of the two message buffers: 256 KiB. A call's
    /// arguments must fit the input buffer, its result the output buffer.
    pub const DEFAULT_BUFFER_SIZE: u64 = 256 * KIB;
    /// Smallest message buffer: 16 KiB.
    pub const MIN_BUFFER_SIZE: u64 = 16 * KIB;
    /// Largest message buffer: 256 MiB.
    pub const MAX_BUFFER_SIZE: u64 = 256 * MIB;
    /// Default time limit of a guest call: 1000 ms.
    pub const DEFAULT_MAX_EXECUTION_TIME_MILLIS: u64 = 1000;
    /// Longest time limit of a guest call: one hour.
    pub const MAX_MAX_EXECUTION_TIME_MILLIS: u64 = 3_600_000;
    /// Default time `InterruptHandle::kill` waits for a call to stop: 100 ms.
    pub const DEFAULT_MAX_CANCEL_WAIT_MILLIS: u64 = 100;
    /// Longest time `InterruptHandle::kill` may wait: one minute.
    pub const MAX_MAX_CANCEL_WAIT_MILLIS: u64 = 60_000;

    /// A builder with the default sizes.
    pub fn new() -> SandboxBuilder {
        SandboxBuilder {
            heap_size: Self::DEFAULT_GUEST_HEAP_SIZE,
            stack_size: Self::DEFAULT_GUEST_STACK_SIZE,
            input_buffer_size: Self::DEFAULT_BUFFER_SIZE,
            output_buffer_size: Self::DEFAULT_BUFFER_SIZE,
            max_execution_time: (
                Duration::from_millis(Self::DEFAULT_MAX_EXECUTION_TIME_MILLIS),
                EXECUTION_TIME_MILLIS,
            ),
            max_cancel_wait: (
                Duration::from_millis(Self::DEFAULT_MAX_CANCEL_WAIT_MILLIS),
                CANCEL_WAIT_MILLIS,
            ),
            persistent: false,
            print: None,
            abi: ModuleAbi::default(),
            wasi: WasiConfig::default(),
        }
    }

    /// Sets the time limit of each guest call (and of loading a module),
    /// between 1 ms and [`Self::MAX_MAX_EXECUTION_TIME_MILLIS`] (default
    /// [`Self::DEFAULT_MAX_EXECUTION_TIME_MILLIS`]). A call that runs longer
    /// is cancelled: it returns [`Error::ExecutionCancelledByHost`] and the
    /// sandbox is restored to its state after `load_module`.
    pub fn with_guest_function_call_max_execution_time_millis(
        mut self,
        millis: u64,
    ) -> SandboxBuilder {
        self.max_execution_time = (Duration::from_millis(millis), EXECUTION_TIME_MILLIS);
        self
    }

    /// [`Self::with_guest_function_call_max_execution_time_millis`] as a
    /// [`Duration`]: between 1 ms and one hour, to the microsecond.
    pub fn with_max_execution_time(mut self, limit: Duration) -> SandboxBuilder {
        self.max_execution_time = (limit, "with_max_execution_time");
        self
    }

    /// [`Self::with_guest_function_call_max_cancel_wait_millis`] as a
    /// [`Duration`]: up to one minute.
    pub fn with_max_cancel_wait(mut self, wait: Duration) -> SandboxBuilder {
        self.max_cancel_wait = (wait, "with_max_cancel_wait");
        self
    }

    /// Sets how long [`crate::InterruptHandle::kill`] waits for the call to
    /// stop before it returns, up to [`Self::MAX_MAX_CANCEL_WAIT_MILLIS`]
    /// (default [`Self::DEFAULT_MAX_CANCEL_WAIT_MILLIS`]; 0: do not wait).
    /// Code in the guest stops within microseconds; a call waiting on a
    /// host function stops when that returns.
    pub fn with_guest_function_call_max_cancel_wait_millis(
        mut self,
        millis: u64,
    ) -> SandboxBuilder {
        self.max_cancel_wait = (Duration::from_millis(millis), CANCEL_WAIT_MILLIS);
        self
    }

    /// Whether guest calls keep the state they leave behind (globals,
    /// memory, tables) for the next call. By default (`false`) every call
    /// starts from the state right after `load_module`: each call sees a
    /// fresh instance. With `true`, state persists across calls and
    /// [`crate::LoadedWasmSandbox::snapshot`] and
    /// [`crate::LoadedWasmSandbox::restore`] save and bring back states.
    /// Either way a call that faults or is cancelled leaves the sandbox in
    /// its state after `load_module`.
    pub fn with_persistent_state(mut self, persistent: bool) -> SandboxBuilder {
        self.persistent = persistent;
        self
    }

    /// Sets the function that receives what the module prints (its writes
    /// to stdout and stderr through WASI `fd_write`), both streams alike. By
    /// default stdout goes to the host process's stdout and stderr to its
    /// stderr. Invalid UTF-8 in printed output is replaced with U+FFFD.
    /// Sandboxes built from clones of this builder share the
    /// function, and call it one at a time: it must not call into another
    /// sandbox built from the same builder (that would wait for itself),
    /// and a slow one holds up the others' output.
    pub fn with_host_print_fn(
        mut self,
        mut print: impl FnMut(&str) + Send + 'static,
    ) -> SandboxBuilder {
        self.print = Some(Arc::new(Mutex::new(move |_: OutputStream, text: &str| {
            print(text);
        })));
        self
    }

    /// [`Self::with_host_print_fn`] for a function that tells stdout from
    /// stderr.
    pub fn with_host_output_fn(
        mut self,
        output: impl FnMut(OutputStream, &str) + Send + 'static,
    ) -> SandboxBuilder {
        self.print = Some(Arc::new(Mutex::new(output)));
        self
    }

    /// Grants a WASI module arguments, environment variables and stdin
    /// (see [`WasiConfig`]; by default none of them).
    pub fn with_wasi(mut self, wasi: WasiConfig) -> SandboxBuilder {
        self.wasi = wasi;
        self
    }

    /// Names the exports strings and buffers go through, for modules that
    /// do not export `memory`, `malloc` and `free` (see [`ModuleAbi`]).
    pub fn with_module_abi(mut self, abi: ModuleAbi) -> SandboxBuilder {
        self.abi = abi;
        self
    }

    /// Sets the guest heap size, between [`Self::MIN_GUEST_HEAP_SIZE`] and
    /// [`Self::MAX_GUEST_HEAP_SIZE`] (default
    /// [`Self::DEFAULT_GUEST_HEAP_SIZE`]).
    pub fn with_guest_heap_size(mut self, bytes: u64) -> SandboxBuilder {
        self.heap_size = bytes;
        self
    }

    /// Sets the guest stack size, between [`Self::MIN_GUEST_STACK_SIZE`] and
    /// [`Self::MAX_GUEST_STACK_SIZE`] (default
    /// [`Self::DEFAULT_GUEST_STACK_SIZE`]).
    pub fn with_guest_stack_size(mut self, bytes: u64) -> SandboxBuilder {
        self.stack_size = bytes;
        self
    }

    /// Sets the size of the host-to-guest buffer (function names and
    /// arguments), between [`Self::MIN_BUFFER_SIZE`] and
    /// [`Self::MAX_BUFFER_SIZE`] (default [`Self::DEFAULT_BUFFER_SIZE`]).
    pub fn with_guest_input_buffer_size(mut self, bytes: u64) -> SandboxBuilder {
        self.input_buffer_size = bytes;
        self
    }

    /// Sets the size of the guest-to-host buffer (results and error
    /// messages), between [`Self::MIN_BUFFER_SIZE`] and
    /// [`Self::MAX_BUFFER_SIZE`] (default [`Self::DEFAULT_BUFFER_SIZE`]).
    pub fn with_guest_output_buffer_size(mut self, bytes: u64) -> SandboxBuilder {
        self.output_buffer_size = bytes;
        self
    }

    /// Checks the settings and creates the sandbox's VM.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfiguration`] for a size out of range,
    /// [`Error::HypervisorUnavailable`] without a usable `/dev/kvm`,
    /// [`Error::Kvm`] or [`Error::Os`] if the VM cannot be created.
    pub fn build(self) -> Result<ProtoWasmSandbox> {
        let _span = tracing::debug_span!("build").entered();
        let sizes = self.sizes()?;
        let limits = self.limits()?;
        let vm = Vm::new(&sizes, limits)?;
        let print = self
            .print
            .unwrap_or_else(|| Arc::new(Mutex::new(print_to_stdout)));
        let wasi = self.wasi.clone();
        let mut guest = Guest::new(vm, print, self.persistent);
        guest.set_module_abi(self.abi.names().clone());
        guest.set_wasi(&wasi)?;
        Ok(ProtoWasmSandbox::new(guest))
    }

    /// The checked time limits.
    fn limits(&self) -> Result<CallLimits> {
        let (time_limit, time_setting) = self.max_execution_time;
        check_duration(
            time_setting,
            time_limit,
            Duration::from_millis(1),
            Duration::from_millis(Self::MAX_MAX_EXECUTION_TIME_MILLIS),
        )?;
        let (cancel_wait, wait_setting) = self.max_cancel_wait;
        check_duration(
            wait_setting,
            cancel_wait,
            Duration::ZERO,
            Duration::from_millis(Self::MAX_MAX_CANCEL_WAIT_MILLIS),
        )?;
        Ok(CallLimits {
            time_limit,
            cancel_wait,
        })
    }

    /// The checked sizes.
    fn sizes(&self) -> Result<Sizes> {
        check(
            "with_guest_heap_size",
            self.heap_size,
            Self::MIN_GUEST_HEAP_SIZE,
            Self::MAX_GUEST_HEAP_SIZE,
        )?;
        check(
            "with_guest_stack_size",
            self.stack_size,
            Self::MIN_GUEST_STACK_SIZE,
            Self::MAX_GUEST_STACK_SIZE,
        )?;
        check(
            "with_guest_input_buffer_size",
            self.input_buffer_size,
            Self::MIN_BUFFER_SIZE,
            Self::MAX_BUFFER_SIZE,
        )?;
        check(
            "with_guest_output_buffer_size",
            self.output_buffer_size,
            Self::MIN_BUFFER_SIZE,
            Self::MAX_BUFFER_SIZE,
        )?;
        Ok(Sizes {
            heap: self.heap_size,
            stack: self.stack_size,
            input: self.input_buffer_size,
            output: self.output_buffer_size,
        })
    }
}

/// The default: the module's stdout to the host's stdout, its stderr to
/// the host's stderr.
fn print_to_stdout(stream: OutputStream, text: &str) {
    // Printing is best effort: a closed stdout must not fail guest calls.
    let _ = match stream {
        OutputStream::Stderr => {
            let mut out = std::io::stderr().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }
    };
}

const EXECUTION_TIME_MILLIS: &str = "with_guest_function_call_max_execution_time_millis";
const CANCEL_WAIT_MILLIS: &str = "with_guest_function_call_max_cancel_wait_millis";

/// Checks a duration setting; errors give it in whole milliseconds (or
/// microseconds, for a setter that takes a [`Duration`]).
fn check_duration(
    setting: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<()> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    let (value, min, max, unit) = if setting.ends_with("_millis") {
        (value.as_millis(), min.as_millis(), max.as_millis(), "ms")
    } else {
        (value.as_micros(), min.as_micros(), max.as_micros(), "µs")
    };
    Err(Error::InvalidConfiguration {
        setting,
        value: u64::try_from(value).unwrap_or(u64::MAX),
        reason: format!("is outside the allowed range {min}..={max} {unit}"),
    })
}

fn check(setting: &'static str, value: u64, min: u64, max: u64) -> Result<()> {
    check_range(setting, value, min, max, "bytes")
}

fn check_range(setting: &'static str, value: u64, min: u64, max: u64, unit: &str) -> Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidConfiguration {
            setting,
            value,
            reason: format!("is outside the allowed range {min}..={max} {unit}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_in_range() {
        SandboxBuilder::new().sizes().unwrap();
        let limits = SandboxBuilder::new().limits().unwrap();
        assert_eq!(limits.time_limit, Duration::from_secs(1));
    }

    #[test]
    fn out_of_range_sizes_are_errors_naming_the_setting() {
        let cases = [
            (
                SandboxBuilder::new().with_guest_heap_size(0),
                "with_guest_heap_size",
            ),
            (
                SandboxBuilder::new().with_guest_heap_size(SandboxBuilder::MAX_GUEST_HEAP_SIZE + 1),
                "with_guest_heap_size",
            ),
            (
                SandboxBuilder::new().with_guest_stack_size(4096),
                "with_guest_stack_size",
            ),
            (
                SandboxBuilder::new().with_guest_stack_size(u64::MAX),
                "with_guest_stack_size",
            ),
            (
                SandboxBuilder::new().with_guest_input_buffer_size(1),
                "with_guest_input_buffer_size",
            ),
            (
                SandboxBuilder::new().with_guest_output_buffer_size(1 << 40),
                "with_guest_output_buffer_size",
            ),
            (
                SandboxBuilder::new().with_guest_function_call_max_execution_time_millis(0),
                "with_guest_function_call_max_execution_time_millis",
            ),
            (
                SandboxBuilder::new().with_guest_function_call_max_execution_time_millis(u64::MAX),
                "with_guest_function_call_max_execution_time_millis",
            ),
            (
                SandboxBuilder::new().with_guest_function_call_max_cancel_wait_millis(3_600_000),
                "with_guest_function_call_max_cancel_wait_millis",
            ),
        ];
        for (builder, name) in cases {
            match builder.build() {
                Err(Error::InvalidConfiguration { setting, .. }) => assert_eq!(setting, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn durations_are_checked_like_their_millisecond_setters() {
        let limits = SandboxBuilder::new()
            .with_max_execution_time(Duration::from_micros(1500))
            .with_max_cancel_wait(Duration::ZERO)
            .limits()
            .unwrap();
        assert_eq!(limits.time_limit, Duration::from_micros(1500));
        assert_eq!(limits.cancel_wait, Duration::ZERO);
        for (builder, name) in [
            (
                SandboxBuilder::new().with_max_execution_time(Duration::from_micros(999)),
                "with_max_execution_time",
            ),
            (
                SandboxBuilder::new().with_max_cancel_wait(Duration::from_secs(61)),
                "with_max_cancel_wait",
            ),
        ] {
            match builder.limits() {
                Err(Error::InvalidConfiguration { setting, .. }) => assert_eq!(setting, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn clones_share_the_print_function() {
        let printed = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&printed);
        let builder = SandboxBuilder::new()
            .with_guest_heap_size(8 * MIB)
            .with_host_print_fn(move |text| sink.lock().unwrap().push(text.to_owned()));
        let clone = builder.clone().with_guest_heap_size(16 * MIB);
        assert_eq!(clone.sizes().unwrap().heap, 16 * MIB);
        assert_eq!(builder.sizes().unwrap().heap, 8 * MIB);
        for b in [&builder, &clone] {
            let print = b.print.as_ref().unwrap();
            (print.lock().unwrap())(OutputStream::Stdout, "x");
        }
        assert_eq!(*printed.lock().unwrap(), ["x", "x"]);
    }

    #[test]
    fn limits_are_inclusive() {
        let b = SandboxBuilder::new()
            .with_guest_heap_size(SandboxBuilder::MAX_GUEST_HEAP_SIZE)
            .with_guest_stack_size(SandboxBuilder::MIN_GUEST_STACK_SIZE)
            .with_guest_input_buffer_size(SandboxBuilder::MIN_BUFFER_SIZE)
            .with_guest_output_buffer_size(SandboxBuilder::MAX_BUFFER_SIZE);
        b.sizes().unwrap();
    }
}
