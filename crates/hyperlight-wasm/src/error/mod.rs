//! The errors of this crate: one [`Error`] type, with a variant per way a
//! step can fail, and the detail types some variants carry.

mod details;

use std::path::PathBuf;

use hyperlight_wasm_protocol::message::ErrorCode;

pub use self::details::{CancelReason, FaultCause, GuestException, ProtocolError, TrapKind};

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from a dependency, kept as the `source` of ours.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// KVM cannot be used in this process.
    #[error("no usable hypervisor: {reason}")]
    HypervisorUnavailable {
        /// What is missing and how to fix it.
        reason: String,
        /// The OS error, if there was one.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A KVM call failed.
    #[error("KVM operation {operation} failed")]
    Kvm {
        /// The ioctl or step that failed.
        operation: &'static str,
        /// The error KVM returned.
        #[source]
        source: std::io::Error,
    },
    /// An operating-system call other than KVM failed.
    #[error("cannot {operation}")]
    Os {
        /// What the host tried to do.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded guest image is unusable (a build problem).
    #[error("the embedded guest image is invalid: {message}")]
    InvalidGuestImage {
        /// What is wrong with it.
        message: String,
    },
    /// A [`crate::SandboxBuilder`] setting is out of range.
    #[error("invalid sandbox configuration: {setting} = {value} {reason}")]
    InvalidConfiguration {
        /// The setting's builder method.
        setting: &'static str,
        /// The value given.
        value: u64,
        /// The allowed range.
        reason: String,
    },
    /// The module file could not be read.
    #[error("cannot read module file {}", path.display())]
    ReadModule {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are neither a WebAssembly module (binary or text) nor a
    /// precompiled module.
    #[error("not a WebAssembly module: {reason}")]
    NotWasm {
        /// What the bytes look like instead.
        reason: String,
    },
    /// The module is larger than [`crate::set_max_module_size`] allows; it
    /// was not parsed or compiled.
    #[error(
        "the module is {size} bytes, more than the limit of {limit} bytes \
         (hyperlight_wasm::set_max_module_size)"
    )]
    ModuleTooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes handed to a safe loader are a precompiled module.
    /// Precompiled code runs in the guest without any check, so only the
    /// `unsafe` [`crate::WasmSandbox::load_precompiled_module_from_buffer`]
    /// (or, for artifacts made by [`crate::compile_module_authenticated`],
    /// [`crate::WasmSandbox::load_authenticated_module_from_buffer`]) loads
    /// it.
    #[error(
        "the bytes are a precompiled module, and precompiled code runs in the guest unchecked: \
         load it with the unsafe WasmSandbox::load_precompiled_module(_from_buffer), or make it \
         with compile_module_authenticated and load it with load_authenticated_module"
    )]
    PrecompiledModuleNeedsUnsafeLoader,
    /// An artifact handed to the authenticated loader failed its check.
    #[error("the artifact is not authentic: {reason}")]
    ArtifactNotAuthentic {
        /// Why.
        reason: String,
    },
    /// The host's compiler could not be set up (a build or platform
    /// problem, not the module's fault).
    #[error("the compiler could not be set up: {reason}")]
    CompilerUnavailable {
        /// wasmtime's error.
        reason: String,
    },
    /// The compiler panicked on this module (a compiler bug the module
    /// triggers); the host goes on.
    #[error("the compiler panicked compiling the module: {message}")]
    CompilerPanicked {
        /// The panic message.
        message: String,
    },
    /// The directory given to [`crate::set_module_cache_dir`] is unusable
    /// or not private to this user.
    #[error("cannot use {} as the module cache: {reason}", path.display())]
    ModuleCacheDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The thread that enforces time limits cannot be started; no call runs
    /// without its time limit. A later call tries again.
    #[error("cannot start the thread that enforces time limits")]
    WatchdogUnavailable {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The signal that stops running guests is taken by a handler the
    /// application installed; choose another with
    /// [`crate::set_interrupt_signal`].
    #[error(
        "signal {signal} already has a handler that hyperlight-wasm did not install; \
         choose a free signal with hyperlight_wasm::set_interrupt_signal"
    )]
    InterruptSignalInUse {
        /// The signal number.
        signal: i32,
    },
    /// The WebAssembly module does not parse, validate or compile.
    #[error("the WebAssembly module is invalid")]
    InvalidModule {
        /// wasmtime's diagnosis.
        #[source]
        source: BoxError,
    },
    /// A precompiled module was produced by another wasmtime version or
    /// configuration, or for another CPU, and cannot run here.
    #[error("the precompiled module cannot be used by this sandbox: {message}")]
    IncompatibleModule {
        /// Why, as the guest's wasmtime reported it.
        message: String,
    },
    /// The module imports something the sandbox does not provide.
    #[error("cannot load the module: {message}")]
    UnknownImport {
        /// Names the import.
        message: String,
    },
    /// Instantiating the module failed.
    #[error("cannot instantiate the module: {message}")]
    Instantiation {
        /// Why.
        message: String,
    },
    /// A component resource handle that is not live in the sandbox: dropped
    /// already, given back to the component, or from an earlier state.
    #[error("invalid resource handle: {message}")]
    InvalidResource {
        /// Which handle, and why.
        message: String,
    },
    /// The module exports no function of that name.
    #[error("the module has no exported function `{function}`")]
    GuestFunctionNotFound {
        /// The name called.
        function: String,
    },
    /// The call passed a different number of arguments than the function
    /// takes.
    #[error("wrong number of arguments for guest function `{function}`: {message}")]
    GuestFunctionParameterCountMismatch {
        /// The function called.
        function: String,
        /// Expected and given counts.
        message: String,
    },
    /// An argument's type does not match the function's parameter.
    #[error("wrong argument type for guest function `{function}`: {message}")]
    GuestFunctionParameterTypeMismatch {
        /// The function called.
        function: String,
        /// Which argument, and the types.
        message: String,
    },
    /// The requested return type does not match the function's result.
    #[error("wrong return type for guest function `{function}`: {message}")]
    GuestFunctionReturnTypeMismatch {
        /// The function called.
        function: String,
        /// The types.
        message: String,
    },
    /// The wasm code trapped. The sandbox stays usable.
    #[error("guest function `{function}` trapped: {kind}")]
    GuestTrap {
        /// The function called (or "the start function" during a load).
        function: String,
        /// What kind of trap.
        kind: TrapKind,
        /// wasmtime's description, with the wasm backtrace.
        message: String,
    },
    /// A host function registered under this name already exists.
    #[error("a host function named `{name}` is already registered")]
    HostFunctionAlreadyRegistered {
        /// The name.
        name: String,
    },
    /// A host function returned an error; the guest call failed with it.
    #[error("host function `{function}` failed")]
    HostFunctionFailed {
        /// The host function.
        function: String,
        /// Its error.
        #[source]
        source: BoxError,
    },
    /// A host function panicked; the guest call failed, the host goes on.
    #[error("host function `{function}` panicked: {message}")]
    HostFunctionPanicked {
        /// The host function.
        function: String,
        /// The panic message.
        message: String,
    },
    /// The module imports a host function (or a WASI function) with another
    /// signature than the sandbox provides.
    #[error("cannot load the module: {message}")]
    ImportTypeMismatch {
        /// Names the import and both signatures.
        message: String,
    },
    /// The call needs an export the module lacks (`memory`, `malloc`).
    #[error("the module lacks an export the call needs: {message}")]
    MissingExport {
        /// Which export, and why.
        message: String,
    },
    /// The module handed back a pointer or length outside its memory.
    #[error("the module handed back an invalid pointer: {message}")]
    BadGuestPointer {
        /// Which value, where.
        message: String,
    },
    /// The module handed back a string that is not valid UTF-8.
    #[error("the module handed back invalid UTF-8: {message}")]
    InvalidUtf8 {
        /// Which value.
        message: String,
    },
    /// The module called WASI `proc_exit`.
    #[error("the module exited with code {code} (WASI proc_exit)")]
    GuestExited {
        /// The exit code.
        code: i32,
    },
    /// The guest ran out of heap.
    #[error("the guest ran out of memory: {message}")]
    GuestOutOfMemory {
        /// What failed.
        message: String,
    },
    /// The guest reported a failure no other variant describes.
    #[error("the guest failed ({code}): {message}")]
    GuestFailed {
        /// The guest's error code.
        code: ErrorCode,
        /// Its description.
        message: String,
    },
    /// The guest stopped for good (a panic in the guest runtime).
    #[error("the guest aborted ({code}): {message}")]
    GuestAborted {
        /// The guest's error code.
        code: ErrorCode,
        /// Its description.
        message: String,
    },
    /// The guest raised a CPU exception.
    #[error("{0}")]
    GuestException(GuestException),
    /// The guest's CPU shut down (a triple fault): an exception occurred while
    /// the guest could not even report one.
    #[error("the guest triple-faulted (CPU shutdown) at RIP {rip:#x}")]
    TripleFault {
        /// Where the guest was.
        rip: u64,
    },
    /// The guest accessed guest-physical memory that does not exist.
    #[error(
        "the guest accessed guest-physical address {gpa:#x}, outside its memory, at RIP {rip:#x}"
    )]
    GuestMemoryViolation {
        /// The address.
        gpa: u64,
        /// Where the guest was.
        rip: u64,
    },
    /// The vCPU stopped for a reason the protocol does not allow.
    #[error("the guest caused an unexpected VM exit ({exit}) at RIP {rip:#x}")]
    UnexpectedExit {
        /// The exit, as KVM reported it.
        exit: String,
        /// Where the guest was.
        rip: u64,
    },
    /// A request cannot be encoded or does not fit the guest's input buffer.
    #[error("cannot send the request to the guest: {reason}")]
    RequestTooLarge {
        /// Why.
        reason: String,
    },
    /// The guest wrote something the protocol does not allow.
    #[error("the guest broke the host-guest protocol")]
    Protocol(#[from] ProtocolError),
    /// The call was cancelled: by [`crate::InterruptHandle::kill`] or because
    /// it ran past its time limit. The sandbox was restored to its state
    /// after `load_module` and can be used again.
    #[error("the guest call was cancelled by the host: {reason}")]
    ExecutionCancelledByHost {
        /// Why.
        reason: CancelReason,
    },
    /// The snapshot was taken of another sandbox.
    #[error("the snapshot belongs to another sandbox")]
    SnapshotMismatch,
    /// [`crate::set_metrics_registry`] was already called.
    #[error("the metrics registry was already set")]
    MetricsRegistryAlreadySet,
    /// [`crate::set_metrics_registry`] was called after the metrics were
    /// registered (in the default registry, when the first sandbox was
    /// created); call it before creating sandboxes.
    #[error("the metrics are already registered; set the registry before creating sandboxes")]
    MetricsAlreadyRegistered,
    /// One of hyperlight-wasm's own invariants did not hold (a bug, never
    /// the guest's doing); the sandbox is poisoned.
    #[error("internal error in hyperlight-wasm: {reason}")]
    Internal {
        /// What did not hold.
        reason: String,
    },
    /// A preopened directory of the [`crate::WasiConfig`] cannot be opened.
    #[error("cannot open the preopened directory {}", path.display())]
    PreopenedDir {
        /// The host directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An earlier failure left the sandbox unusable.
    #[error("the sandbox is unusable after an earlier failure: {reason}")]
    Poisoned {
        /// The failure that poisoned it.
        reason: String,
    },
}

/// What a failed request leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aftermath {
    /// The guest reported the failure in an orderly way (a trap, a missing
    /// export): its state is consistent.
    Clean,
    /// The guest stopped in an unknown state (a fault, an abort, a broken
    /// protocol, a cancellation): the host must restore it from a snapshot.
    Restore,
    /// The host itself failed (KVM, the OS): the sandbox cannot be trusted.
    Poison,
}

impl Error {
    /// What this error leaves behind. Every variant is named: a new one
    /// must say whether it skips the restore.
    pub(crate) fn aftermath(&self) -> Aftermath {
        match self {
            Error::Kvm { .. } | Error::Os { .. } | Error::Internal { .. } | Error::Poisoned { .. } => {
                Aftermath::Poison
            }
            Error::GuestAborted { .. }
            | Error::GuestException(_)
            | Error::TripleFault { .. }
            | Error::GuestMemoryViolation { .. }
            | Error::UnexpectedExit { .. }
            | Error::Protocol(_)
            | Error::ExecutionCancelledByHost { .. }
            // An out-of-memory abort too: the guest runtime may be half-way
            // through an allocation.
            | Error::GuestOutOfMemory { .. } => Aftermath::Restore,
            // The guest reported these in an orderly way, or they happened
            // before the guest ran at all.
            Error::HypervisorUnavailable { .. }
            | Error::InvalidGuestImage { .. }
            | Error::InvalidConfiguration { .. }
            | Error::ReadModule { .. }
            | Error::NotWasm { .. }
            | Error::ModuleTooLarge { .. }
            | Error::PrecompiledModuleNeedsUnsafeLoader
            | Error::ArtifactNotAuthentic { .. }
            | Error::CompilerUnavailable { .. }
            | Error::CompilerPanicked { .. }
            | Error::ModuleCacheDir { .. }
            | Error::PreopenedDir { .. }
            | Error::WatchdogUnavailable { .. }
            | Error::InterruptSignalInUse { .. }
            | Error::InvalidModule { .. }
            | Error::IncompatibleModule { .. }
            | Error::UnknownImport { .. }
            | Error::Instantiation { .. }
            | Error::GuestFunctionNotFound { .. }
            | Error::InvalidResource { .. }
            | Error::GuestFunctionParameterCountMismatch { .. }
            | Error::GuestFunctionParameterTypeMismatch { .. }
            | Error::GuestFunctionReturnTypeMismatch { .. }
            | Error::GuestTrap { .. }
            | Error::HostFunctionAlreadyRegistered { .. }
            | Error::HostFunctionFailed { .. }
            | Error::HostFunctionPanicked { .. }
            | Error::ImportTypeMismatch { .. }
            | Error::MissingExport { .. }
            | Error::BadGuestPointer { .. }
            | Error::InvalidUtf8 { .. }
            | Error::GuestExited { .. }
            | Error::GuestFailed { .. }
            | Error::RequestTooLarge { .. }
            | Error::SnapshotMismatch
            | Error::MetricsRegistryAlreadySet
            | Error::MetricsAlreadyRegistered => Aftermath::Clean,
        }
    }
}

/// An error and its sources, as one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
