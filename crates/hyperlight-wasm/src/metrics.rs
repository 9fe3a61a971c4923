//! Every metric of `docs/observability.md`, in one place.
//!
//! The names, types and help texts are the contract users were given; they
//! stay as they are even where they break today's Prometheus naming habits
//! (counters without `_total`, a counter ending in `_count`, microseconds).
//!
//! The metrics are registered on first use, in the registry the host passed
//! to [`set_metrics_registry`] before that, or else in
//! `prometheus::default_registry()`.
//!
//! Label cardinality is bounded: `hyperlight_guest_error_count` is labelled
//! with the error's variant name (`code`) and a fixed text for its kind
//! (`message`: the trap kind, the exception, the cancel reason, ...), never
//! with function names, addresses, durations or other data from the guest
//! or the caller. The function-call histograms are labelled with the
//! function's name, recorded only for exported functions that exist
//! (guest) and registered host functions (host).

use std::sync::{Mutex, MutexGuard, OnceLock};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::error::{CancelReason, Error, Result};

/// The registry the host chose, and whether the metrics were registered.
struct Choice {
    registry: Option<&'static Registry>,
    registered: bool,
}

fn choice() -> MutexGuard<'static, Choice> {
    static CHOICE: Mutex<Choice> = Mutex::new(Choice {
        registry: None,
        registered: false,
    });
    CHOICE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes hyperlight-wasm register its metrics in `registry` instead of
/// `prometheus::default_registry()`.
///
/// Call it once, before the first sandbox is created:
///
/// ```
/// # #![allow(unused_must_use)]
/// use hyperlight_wasm::set_metrics_registry;
/// use prometheus::Registry;
/// use lazy_static::lazy_static;
///
/// lazy_static! {
///     static ref REGISTRY: Registry = Registry::new();
/// }
///
/// set_metrics_registry(&REGISTRY);
/// ```
///
/// # Errors
///
/// [`Error::MetricsRegistryAlreadySet`] if it was called before, and
/// [`Error::MetricsAlreadyRegistered`] if the metrics were already registered
/// (a sandbox was created first): the metrics never end up split across two
/// registries.
pub fn set_metrics_registry(registry: &'static Registry) -> Result<()> {
    let mut choice = choice();
    if choice.registry.is_some() {
        return Err(Error::MetricsRegistryAlreadySet);
    }
    if choice.registered {
        return Err(Error::MetricsAlreadyRegistered);
    }
    choice.registry = Some(registry);
    Ok(())
}

/// Buckets for call durations in microseconds: 10 µs to 10 s.
#[cfg(feature = "function_call_metrics")]
const DURATION_BUCKETS_MICROSECONDS: &[f64] = &[
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    25_000.0,
    50_000.0,
    100_000.0,
    250_000.0,
    500_000.0,
    1_000_000.0,
    2_500_000.0,
    5_000_000.0,
    10_000_000.0,
];

/// The metrics.
pub(crate) struct Metrics {
    pub guest_error_count: IntCounterVec,
    pub cancelled_guest_executions: IntCounter,
    pub current_wasm_sandboxes: IntGauge,
    pub current_loaded_wasm_sandboxes: IntGauge,
    pub unloads_of_loaded_wasm_sandboxes: IntCounter,
    pub loads_of_wasm_sandboxes: IntCounter,
    pub current_proto_wasm_sandboxes: IntGauge,
    pub total_wasm_sandboxes: IntCounter,
    pub total_loaded_wasm_sandboxes: IntCounter,
    pub total_proto_wasm_sandboxes: IntCounter,
    #[cfg(feature = "function_call_metrics")]
    pub guest_function_call_duration: prometheus::HistogramVec,
    #[cfg(feature = "function_call_metrics")]
    pub host_function_call_duration: prometheus::HistogramVec,
}

/// The metrics, registered on first use.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut choice = choice();
        choice.registered = true;
        let registry = choice
            .registry
            .unwrap_or_else(|| prometheus::default_registry());
        Metrics::register(registry)
    })
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::with_opts(Opts::new(name, help)).unwrap_or_else(|e| invalid(name, &e));
    register(registry, name, Box::new(metric.clone()));
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::with_opts(Opts::new(name, help)).unwrap_or_else(|e| invalid(name, &e));
    register(registry, name, Box::new(metric.clone()));
    metric
}

/// A metric definition that the prometheus crate rejects is a bug in this
/// file (the names and labels are constants), caught by every test.
fn invalid(name: &str, e: &prometheus::Error) -> ! {
    panic!("hyperlight-wasm defines metric {name} wrongly: {e}")
}

/// Registers a metric. If the registry already has a metric of that name
/// (the host registered one itself), ours still counts but is not exported
/// there; the host chose the registry and its names.
fn register(registry: &Registry, name: &str, metric: Box<dyn prometheus::core::Collector>) {
    if let Err(e) = registry.register(metric) {
        tracing::warn!(metric = name, error = %e, "cannot register metric");
    }
}

impl Metrics {
    fn register(registry: &Registry) -> Metrics {
        let guest_error_count = IntCounterVec::new(
            Opts::new(
                "hyperlight_guest_error_count",
                "Number of guest errors, by error code and message",
            ),
            &["code", "message"],
        )
        .unwrap_or_else(|e| invalid("hyperlight_guest_error_count", &e));
        register(
            registry,
            "hyperlight_guest_error_count",
            Box::new(guest_error_count.clone()),
        );
        #[cfg(feature = "function_call_metrics")]
        let histogram = |name: &str, help: &str| {
            let metric = prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(name, help)
                    .buckets(DURATION_BUCKETS_MICROSECONDS.to_vec()),
                &["function_name"],
            )
            .unwrap_or_else(|e| invalid(name, &e));
            register(registry, name, Box::new(metric.clone()));
            metric
        };
        Metrics {
            guest_error_count,
            cancelled_guest_executions: counter(
                registry,
                "hyperlight_number_of_cancelled_guest_execution",
                "Number of guest executions that have been cancelled because the execution time \
                 exceeded the time allowed (or an interrupt handle killed them)",
            ),
            current_wasm_sandboxes: gauge(
                registry,
                "current_number_of_wasm_sandboxes",
                "Current number of wasm sandboxes in this process",
            ),
            current_loaded_wasm_sandboxes: gauge(
                registry,
                "current_number_of_loaded_wasm_sandboxes",
                "Current number of loaded wasm sandboxes in this process",
            ),
            unloads_of_loaded_wasm_sandboxes: counter(
                registry,
                "number_of_unloads_of_loaded_wasm_sandboxes",
                "Number of times that unload_module has been called on a LoadedWasmSandbox",
            ),
            loads_of_wasm_sandboxes: counter(
                registry,
                "number_of_loads_of_wasm_sandboxes",
                "Number of times that load_module has been called on a WasmSandbox",
            ),
            current_proto_wasm_sandboxes: gauge(
                registry,
                "current_number_of_proto_wasm_sandboxes",
                "Current number of proto wasm sandboxes in this process",
            ),
            total_wasm_sandboxes: counter(
                registry,
                "total_number_of_wasm_sandboxes",
                "Total number of wasm sandboxes that have been created by this process",
            ),
            total_loaded_wasm_sandboxes: counter(
                registry,
                "total_number_of_loaded_wasm_sandboxes",
                "Total number of loaded wasm sandboxes that have been created by this process",
            ),
            total_proto_wasm_sandboxes: counter(
                registry,
                "total_number_of_proto_wasm_sandboxes",
                "Total number of proto wasm sandboxes that have been created by this process",
            ),
            #[cfg(feature = "function_call_metrics")]
            guest_function_call_duration: histogram(
                "hyperlight_guest_function_call_duration_microseconds",
                "Execution time of guest functions in microseconds, by function name",
            ),
            #[cfg(feature = "function_call_metrics")]
            host_function_call_duration: histogram(
                "hyperlight_host_function_calls_duration_microseconds",
                "Execution time of host functions in microseconds, by function name",
            ),
        }
    }
}

/// Which gauge a sandbox state counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SandboxKind {
    Proto,
    Wasm,
    Loaded,
}

/// Counts a live sandbox in its state's gauge (and total) while it exists:
/// every way a sandbox value goes away (a transition, a failed transition,
/// a drop, a panic unwinding) drops this and decrements the gauge.
#[derive(Debug)]
pub(crate) struct Live(SandboxKind);

impl Live {
    pub(crate) fn new(kind: SandboxKind) -> Live {
        let m = metrics();
        let (gauge, total) = match kind {
            SandboxKind::Proto => (
                &m.current_proto_wasm_sandboxes,
                &m.total_proto_wasm_sandboxes,
            ),
            SandboxKind::Wasm => (&m.current_wasm_sandboxes, &m.total_wasm_sandboxes),
            SandboxKind::Loaded => (
                &m.current_loaded_wasm_sandboxes,
                &m.total_loaded_wasm_sandboxes,
            ),
        };
        gauge.inc();
        total.inc();
        Live(kind)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let m = metrics();
        match self.0 {
            SandboxKind::Proto => m.current_proto_wasm_sandboxes.dec(),
            SandboxKind::Wasm => m.current_wasm_sandboxes.dec(),
            SandboxKind::Loaded => m.current_loaded_wasm_sandboxes.dec(),
        }
    }
}

/// Counts a failed guest request: in `hyperlight_guest_error_count` with
/// bounded labels, and cancellations in their own counter.
pub(crate) fn record_error(e: &Error) {
    let m = metrics();
    if matches!(e, Error::ExecutionCancelledByHost { .. }) {
        m.cancelled_guest_executions.inc();
    }
    let (code, message) = labels(e);
    m.guest_error_count
        .with_label_values(&[code, message])
        .inc();
}

/// The error's labels: its variant name and a fixed text for its kind.
pub(crate) fn labels(e: &Error) -> (&'static str, &'static str) {
    match e {
        Error::GuestTrap { kind, .. } => ("GuestTrap", kind.description()),
        Error::GuestException(x) => (
            "GuestException",
            x.cause.description().unwrap_or_else(|| x.mnemonic()),
        ),
        Error::ExecutionCancelledByHost { reason } => (
            "ExecutionCancelledByHost",
            match reason {
                CancelReason::TimeLimit(_) => "the call ran past its time limit",
                _ => "killed through the interrupt handle",
            },
        ),
        Error::GuestAborted { code, .. } | Error::GuestFailed { code, .. } => {
            (variant_name(e), code.name())
        }
        other => (variant_name(other), "see the error's variant"),
    }
}

/// The error's variant name, a fixed set.
fn variant_name(e: &Error) -> &'static str {
    match e {
        Error::HypervisorUnavailable { .. } => "HypervisorUnavailable",
        Error::Kvm { .. } => "Kvm",
        Error::PreopenedDir { .. } => "PreopenedDir",
        Error::Os { .. } => "Os",
        Error::InvalidGuestImage { .. } => "InvalidGuestImage",
        Error::InvalidConfiguration { .. } => "InvalidConfiguration",
        Error::ReadModule { .. } => "ReadModule",
        Error::NotWasm { .. } => "NotWasm",
        Error::ModuleTooLarge { .. } => "ModuleTooLarge",
        Error::PrecompiledModuleNeedsUnsafeLoader => "PrecompiledModuleNeedsUnsafeLoader",
        Error::ArtifactNotAuthentic { .. } => "ArtifactNotAuthentic",
        Error::CompilerUnavailable { .. } => "CompilerUnavailable",
        Error::CompilerPanicked { .. } => "CompilerPanicked",
        Error::ModuleCacheDir { .. } => "ModuleCacheDir",
        Error::WatchdogUnavailable { .. } => "WatchdogUnavailable",
        Error::InterruptSignalInUse { .. } => "InterruptSignalInUse",
        Error::InvalidModule { .. } => "InvalidModule",
        Error::IncompatibleModule { .. } => "IncompatibleModule",
        Error::UnknownImport { .. } => "UnknownImport",
        Error::Instantiation { .. } => "Instantiation",
        Error::GuestFunctionNotFound { .. } => "GuestFunctionNotFound",
        Error::InvalidResource { .. } => "InvalidResource",
        Error::GuestFunctionParameterCountMismatch { .. } => "GuestFunctionParameterCountMismatch",
        Error::GuestFunctionParameterTypeMismatch { .. } => "GuestFunctionParameterTypeMismatch",
        Error::GuestFunctionReturnTypeMismatch { .. } => "GuestFunctionReturnTypeMismatch",
        Error::GuestTrap { .. } => "GuestTrap",
        Error::HostFunctionAlreadyRegistered { .. } => "HostFunctionAlreadyRegistered",
        Error::HostFunctionFailed { .. } => "HostFunctionFailed",
        Error::HostFunctionPanicked { .. } => "HostFunctionPanicked",
        Error::ImportTypeMismatch { .. } => "ImportTypeMismatch",
        Error::MissingExport { .. } => "MissingExport",
        Error::BadGuestPointer { .. } => "BadGuestPointer",
        Error::InvalidUtf8 { .. } => "InvalidUtf8",
        Error::GuestExited { .. } => "GuestExited",
        Error::GuestOutOfMemory { .. } => "GuestOutOfMemory",
        Error::GuestFailed { .. } => "GuestFailed",
        Error::GuestAborted { .. } => "GuestAborted",
        Error::GuestException(_) => "GuestException",
        Error::TripleFault { .. } => "TripleFault",
        Error::GuestMemoryViolation { .. } => "GuestMemoryViolation",
        Error::UnexpectedExit { .. } => "UnexpectedExit",
        Error::RequestTooLarge { .. } => "RequestTooLarge",
        Error::Protocol(_) => "Protocol",
        Error::ExecutionCancelledByHost { .. } => "ExecutionCancelledByHost",
        Error::SnapshotMismatch => "SnapshotMismatch",
        Error::Internal { .. } => "Internal",
        Error::Poisoned { .. } => "Poisoned",
        Error::MetricsRegistryAlreadySet => "MetricsRegistryAlreadySet",
        Error::MetricsAlreadyRegistered => "MetricsAlreadyRegistered",
    }
}

/// Records how long a guest function call took.
#[cfg(feature = "function_call_metrics")]
pub(crate) fn record_guest_call(function: &str, micros: f64) {
    metrics()
        .guest_function_call_duration
        .with_label_values(&[function])
        .observe(micros);
}

/// Records how long a host function call took.
#[cfg(feature = "function_call_metrics")]
pub(crate) fn record_host_call(function: &str, micros: f64) {
    metrics()
        .host_function_call_duration
        .with_label_values(&[function])
        .observe(micros);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{FaultCause, GuestException, TrapKind};

    #[test]
    fn setting_the_registry_after_the_metrics_exist_is_an_error() {
        // Unit tests use the default registry: registering now makes any
        // later choice come too late.
        let _ = metrics();
        static OTHER: OnceLock<Registry> = OnceLock::new();
        let other = OTHER.get_or_init(Registry::new);
        assert!(matches!(
            set_metrics_registry(other),
            Err(Error::MetricsAlreadyRegistered)
        ));
    }

    #[test]
    fn error_labels_carry_no_data_from_the_guest_or_the_caller() {
        let errors = [
            Error::GuestTrap {
                function: String::from("user_chosen_name_123"),
                kind: TrapKind::Unreachable,
                message: String::from("wasm backtrace: 0x1234"),
            },
            Error::GuestFunctionNotFound {
                function: String::from("anything at all"),
            },
            Error::GuestException(GuestException {
                vector: 14,
                error_code: Some(6),
                rip: 0xdead_beef,
                fault_address: Some(0x1234_5678),
                cause: FaultCause::UnmappedAddress,
                function: Some(String::from("guest::fn")),
            }),
            Error::ExecutionCancelledByHost {
                reason: CancelReason::TimeLimit(std::time::Duration::from_millis(1234)),
            },
            Error::HostFunctionPanicked {
                function: String::from("f"),
                message: String::from("at 0x7fff0000"),
            },
        ];
        for e in &errors {
            let (code, message) = labels(e);
            for text in [code, message] {
                assert!(!text.chars().any(|c| c.is_ascii_digit()), "{text}");
                assert!(
                    !text.contains("user_chosen") && !text.contains("anything"),
                    "{text}"
                );
            }
        }
        assert_eq!(
            labels(&errors[0]),
            ("GuestTrap", "unreachable code executed")
        );
        assert_eq!(labels(&errors[2]).1, "unmapped address");
    }
}
