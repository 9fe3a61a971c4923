//! The detail types some [`super::Error`] variants carry: why a call was
//! cancelled, how the guest broke the protocol, which trap, which CPU
//! exception.

use std::fmt;

use hyperlight_wasm_protocol::message::ErrorCode;
use hyperlight_wasm_protocol::wire::WireError;

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
/// guest writes; after any of these the host restores the sandbox to its
/// post-load state (the guest's own state is unknown).
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
