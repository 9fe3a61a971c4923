//! The errors of this crate: one [`Error`] type, with a variant per way a
//! step can fail, and the detail types some variants carry.

use std::fmt;
use std::path::PathBuf;

use hyperlight_wasm_protocol::message::ErrorCode;
use hyperlight_wasm_protocol::wire::WireError;

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
        /// The OS or KVM error, if there was one.
        #[source]
        source: Option<kvm_ioctls::Error>,
    },
    /// A KVM call failed.
    #[error("KVM operation {operation} failed")]
    Kvm {
        /// The ioctl or step that failed.
        operation: &'static str,
        /// The error KVM returned.
        #[source]
        source: kvm_ioctls::Error,
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
    /// An earlier failure left the sandbox unusable.
    #[error("the sandbox is unusable after an earlier failure: {reason}")]
    Poisoned {
        /// The failure that poisoned it.
        reason: String,
    },
}

/// Why a call was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelReason {
    /// [`crate::InterruptHandle::kill`] was called.
    Killed,
    /// The call ran longer than this limit
    /// ([`crate::SandboxBuilder::with_guest_function_call_max_execution_time_millis`]).
    TimeLimit(std::time::Duration),
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CancelReason::Killed => f.write_str("killed through its interrupt handle"),
            CancelReason::TimeLimit(limit) => write!(f, "it ran past its time limit of {limit:?}"),
        }
    }
}

/// Ways the guest can break the protocol. The host checks everything the
/// guest writes; any of these makes the sandbox unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message in the output buffer is malformed.
    #[error("malformed {what} in the output buffer")]
    Malformed {
        /// Which message was expected.
        what: &'static str,
        /// How it is malformed.
        #[source]
        source: WireError,
    },
    /// The guest sent a message that does not belong at this point.
    #[error("the guest sent {got} while the host expected {expected}")]
    UnexpectedMessage {
        /// What the host was waiting for.
        expected: &'static str,
        /// What came instead.
        got: String,
    },
    /// The guest named memory it does not own.
    #[error("the guest asked the host to use {len} bytes at {addr:#x}, outside its heap")]
    OutOfBounds {
        /// Start address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The guest asked for a buffer of the wrong size.
    #[error("the guest offered {offered} bytes for a {needed}-byte module")]
    WrongLength {
        /// Bytes the guest offered.
        offered: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// The guest speaks another protocol version.
    #[error("the guest speaks protocol version {guest}, the host version {host}")]
    VersionMismatch {
        /// The guest's version.
        guest: u32,
        /// The host's version.
        host: u32,
    },
}

/// The kinds of WebAssembly trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TrapKind {
    /// `unreachable` was executed.
    Unreachable,
    /// Integer division by zero.
    IntegerDivisionByZero,
    /// Integer overflow (e.g. `i32::MIN / -1`).
    IntegerOverflow,
    /// A float-to-integer conversion of NaN or an out-of-range value.
    BadConversionToInteger,
    /// Linear memory access out of bounds.
    MemoryOutOfBounds,
    /// Table access out of bounds.
    TableOutOfBounds,
    /// Indirect call through a null table entry.
    IndirectCallToNull,
    /// Indirect call with the wrong signature.
    BadSignature,
    /// The wasm call stack is exhausted.
    StackOverflow,
    /// A misaligned atomic access.
    HeapMisaligned,
    /// Another trap; the message says which.
    Other,
}

impl TrapKind {
    /// The trap kind for a guest error code, if the code is a trap.
    pub(crate) fn from_code(code: ErrorCode) -> Option<TrapKind> {
        Some(match code {
            ErrorCode::TrapUnreachable => TrapKind::Unreachable,
            ErrorCode::TrapIntegerDivisionByZero => TrapKind::IntegerDivisionByZero,
            ErrorCode::TrapIntegerOverflow => TrapKind::IntegerOverflow,
            ErrorCode::TrapBadConversionToInteger => TrapKind::BadConversionToInteger,
            ErrorCode::TrapMemoryOutOfBounds => TrapKind::MemoryOutOfBounds,
            ErrorCode::TrapTableOutOfBounds => TrapKind::TableOutOfBounds,
            ErrorCode::TrapIndirectCallToNull => TrapKind::IndirectCallToNull,
            ErrorCode::TrapBadSignature => TrapKind::BadSignature,
            ErrorCode::TrapStackOverflow => TrapKind::StackOverflow,
            ErrorCode::TrapHeapMisaligned => TrapKind::HeapMisaligned,
            ErrorCode::TrapOther => TrapKind::Other,
            _ => return None,
        })
    }
}

impl TrapKind {
    /// What the trap means, in a few words.
    pub fn description(self) -> &'static str {
        match self {
            TrapKind::Unreachable => "unreachable code executed",
            TrapKind::IntegerDivisionByZero => "integer division by zero",
            TrapKind::IntegerOverflow => "integer overflow",
            TrapKind::BadConversionToInteger => "invalid conversion to integer",
            TrapKind::MemoryOutOfBounds => "out-of-bounds memory access",
            TrapKind::TableOutOfBounds => "out-of-bounds table access",
            TrapKind::IndirectCallToNull => "indirect call to a null table entry",
            TrapKind::BadSignature => "indirect call with the wrong signature",
            TrapKind::StackOverflow => "wasm stack overflow",
            TrapKind::HeapMisaligned => "misaligned memory access",
            TrapKind::Other => "other trap",
        }
    }
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl FaultCause {
    /// What the host makes of the exception, in a few words (`None` for
    /// [`FaultCause::Other`]: the vector says it all).
    pub fn description(self) -> Option<&'static str> {
        Some(match self {
            FaultCause::NullPointer => "null pointer dereference",
            FaultCause::StackOverflow => "guest stack overflow",
            FaultCause::UnmappedAddress => "unmapped address",
            FaultCause::ProtectionViolation => "page protection violation",
            FaultCause::PrivilegedInstruction => "instruction not allowed in the guest",
            FaultCause::Other => return None,
        })
    }
}

/// A CPU exception in the guest, as the host's exception stubs reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuestException {
    /// The exception vector (0-31).
    pub vector: u8,
    /// The CPU's error code, for the vectors that push one.
    pub error_code: Option<u64>,
    /// The guest instruction that faulted.
    pub rip: u64,
    /// For page faults, the address the guest accessed (CR2).
    pub fault_address: Option<u64>,
    /// What the host makes of it.
    pub cause: FaultCause,
    /// The guest function containing `rip`, if the guest image names it.
    pub function: Option<String>,
}

/// The host's reading of a [`GuestException`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultCause {
    /// An access to the unmapped first page: a null pointer.
    NullPointer,
    /// An access to the guard page below the stack: the guest's native stack
    /// overflowed.
    StackOverflow,
    /// An access to an address the guest has no mapping for.
    UnmappedAddress,
    /// An access the page's protection forbids (a write to read-only memory,
    /// user access to a supervisor page, a fetch from non-executable memory).
    ProtectionViolation,
    /// An instruction the guest may not execute (at CPL3: `hlt`, `in`, `out`
    /// to a port the protocol does not define, privileged instructions).
    PrivilegedInstruction,
    /// Any other exception; the vector says which.
    Other,
}

impl GuestException {
    /// The exception's short name, e.g. `#PF`.
    pub fn mnemonic(&self) -> &'static str {
        exception_mnemonic(self.vector)
    }
}

pub(crate) fn exception_mnemonic(vector: u8) -> &'static str {
    match vector {
        0 => "#DE (divide error)",
        1 => "#DB (debug)",
        2 => "NMI",
        3 => "#BP (breakpoint)",
        4 => "#OF (overflow)",
        5 => "#BR (bound range)",
        6 => "#UD (invalid opcode)",
        7 => "#NM (device not available)",
        8 => "#DF (double fault)",
        10 => "#TS (invalid TSS)",
        11 => "#NP (segment not present)",
        12 => "#SS (stack-segment fault)",
        13 => "#GP (general protection)",
        14 => "#PF (page fault)",
        16 => "#MF (x87 floating point)",
        17 => "#AC (alignment check)",
        18 => "#MC (machine check)",
        19 => "#XM (SIMD floating point)",
        20 => "#VE (virtualization)",
        21 => "#CP (control protection)",
        _ => "reserved exception",
    }
}

impl fmt::Display for GuestException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the guest raised {} (vector {}) at RIP {:#x}",
            self.mnemonic(),
            self.vector,
            self.rip
        )?;
        if let Some(function) = &self.function {
            write!(f, " in {function}")?;
        }
        if let Some(addr) = self.fault_address {
            write!(f, ", accessing {addr:#x}")?;
        }
        if let Some(code) = self.error_code {
            write!(f, ", error code {code:#x}")?;
        }
        match self.cause.description() {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
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
    /// What this error leaves behind.
    pub(crate) fn aftermath(&self) -> Aftermath {
        match self {
            Error::Kvm { .. } | Error::Os { .. } | Error::Poisoned { .. } => Aftermath::Poison,
            Error::GuestAborted { .. }
            | Error::GuestException(_)
            | Error::TripleFault { .. }
            | Error::GuestMemoryViolation { .. }
            | Error::UnexpectedExit { .. }
            | Error::Protocol(_)
            | Error::ExecutionCancelledByHost { .. } => Aftermath::Restore,
            // An out-of-memory abort too: the guest runtime may be half-way
            // through an allocation.
            Error::GuestOutOfMemory { .. } => Aftermath::Restore,
            _ => Aftermath::Clean,
        }
    }
}
