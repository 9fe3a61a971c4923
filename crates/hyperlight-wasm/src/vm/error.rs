//! The VMM's own errors, and their conversion to the public
//! [`crate::Error`], in one place.
//!
//! Three kinds, because each asks for something else of the layer above:
//! - [`VmError`]: the host's machinery failed or refused (KVM, the OS, a
//!   broken invariant of ours, a setting that cannot work). Those that
//!   strike a VM in use (KVM, the OS, `Internal`) poison it; those that
//!   strike before anything ran (no `/dev/kvm`, a bad layout, no watchdog,
//!   a signal in use, a mismatched snapshot) leave it as it was.
//! - [`GuestFault`]: the guest did something the protocol does not allow (a
//!   CPU exception, a triple fault, an exit we do not serve). Its state is
//!   unknown: restore it from a snapshot.
//! - [`RunError`]: what running the vCPU can end in: one of those two, or
//!   a cancellation (also a restore).
//!
//! `Error::aftermath` decides from the public variant, and every variant
//! these convert into has exactly one aftermath. A failure in the middle of
//! the host's own work on the VM (mapping an image, restoring, taking a
//! snapshot) poisons the sandbox whatever its kind: the VM is half-way
//! between two states (`Guest::poison_on_error`).

use crate::error::{CancelReason, Error, GuestException};

/// A failure of the host's own machinery.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VmError {
    /// `/dev/kvm` is missing, inaccessible or lacks what the VMM needs.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        #[source]
        source: Option<std::io::Error>,
    },
    /// A KVM ioctl failed.
    #[error("KVM operation {operation} failed")]
    Kvm {
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Another operating-system call failed.
    #[error("cannot {operation}")]
    Os {
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The region sizes do not make a layout.
    #[error("{setting} = {value} {reason}")]
    Layout {
        setting: &'static str,
        value: u64,
        reason: String,
    },
    /// The embedded guest image is unusable (a build problem).
    #[error("the embedded guest image is invalid: {0}")]
    GuestImage(String),
    /// The watchdog thread cannot start.
    #[error("cannot start the watchdog thread")]
    Watchdog(#[source] std::io::Error),
    /// The kick signal has a handler the application installed.
    #[error("signal {0} has a handler of the application's")]
    SignalInUse(i32),
    /// A snapshot of another VM, or of another layout.
    #[error("the snapshot belongs to another sandbox")]
    SnapshotMismatch,
    /// One of the VMM's own invariants does not hold (a bug of ours, never
    /// the guest's doing: for example a host-side access outside guest
    /// memory).
    #[error("{0}")]
    Internal(String),
    /// What the guest did broke the host's own work on the VM (say, KVM
    /// had to leave `KVM_RUN` again while the host completed an exit).
    #[error(transparent)]
    Guest(GuestFault),
}

impl VmError {
    /// A failed KVM ioctl.
    pub(crate) fn kvm(operation: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
        move |e| VmError::Kvm {
            operation,
            source: std::io::Error::from_raw_os_error(e.errno()),
        }
    }

    /// A failed OS call, from `errno`.
    pub(crate) fn last_os(operation: &'static str) -> VmError {
        VmError::Os {
            operation,
            source: std::io::Error::last_os_error(),
        }
    }
}

impl From<super::memory::OutOfBounds> for VmError {
    fn from(e: super::memory::OutOfBounds) -> VmError {
        VmError::Internal(format!("host-side access outside guest memory: {e}"))
    }
}

/// What the guest did that the protocol does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GuestFault {
    /// A CPU exception, as the exception stubs reported it.
    #[error("{0}")]
    Exception(GuestException),
    /// The vCPU shut down.
    #[error("triple fault at RIP {rip:#x}")]
    TripleFault { rip: u64 },
    /// An access to guest-physical memory that does not exist.
    #[error("access to {gpa:#x} outside guest memory at RIP {rip:#x}")]
    MemoryViolation { gpa: u64, rip: u64 },
    /// Any other exit.
    #[error("unexpected exit ({exit}) at RIP {rip:#x}")]
    UnexpectedExit { exit: String, rip: u64 },
}

/// How running the vCPU can fail.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    Fault(#[from] GuestFault),
    #[error("cancelled: {0}")]
    Cancelled(CancelReason),
    #[error(transparent)]
    Vm(#[from] VmError),
}

impl From<VmError> for Error {
    fn from(e: VmError) -> Error {
        match e {
            VmError::Unavailable { reason, source } => {
                Error::HypervisorUnavailable { reason, source }
            }
            VmError::Kvm { operation, source } => Error::Kvm { operation, source },
            VmError::Os { operation, source } => Error::Os { operation, source },
            VmError::Layout {
                setting,
                value,
                reason,
            } => Error::InvalidConfiguration {
                setting,
                value,
                reason,
            },
            VmError::GuestImage(message) => Error::InvalidGuestImage { message },
            VmError::Watchdog(source) => Error::WatchdogUnavailable { source },
            VmError::SignalInUse(signal) => Error::InterruptSignalInUse { signal },
            VmError::SnapshotMismatch => Error::SnapshotMismatch,
            VmError::Internal(reason) => Error::Internal { reason },
            VmError::Guest(fault) => fault.into(),
        }
    }
}

impl From<GuestFault> for Error {
    fn from(fault: GuestFault) -> Error {
        match fault {
            GuestFault::Exception(e) => Error::GuestException(e),
            GuestFault::TripleFault { rip } => Error::TripleFault { rip },
            GuestFault::MemoryViolation { gpa, rip } => Error::GuestMemoryViolation { gpa, rip },
            GuestFault::UnexpectedExit { exit, rip } => Error::UnexpectedExit { exit, rip },
        }
    }
}

impl From<RunError> for Error {
    fn from(e: RunError) -> Error {
        match e {
            RunError::Fault(fault) => fault.into(),
            RunError::Cancelled(reason) => Error::ExecutionCancelledByHost { reason },
            RunError::Vm(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Aftermath;

    #[test]
    fn each_kind_of_vmm_error_has_its_aftermath() {
        let io = || std::io::Error::from_raw_os_error(libc::EIO);
        let poison = [
            VmError::Kvm {
                operation: "KVM_RUN",
                source: io(),
            },
            VmError::Os {
                operation: "map",
                source: io(),
            },
            VmError::Internal(String::from("bug")),
        ];
        for e in poison {
            assert_eq!(Error::from(e).aftermath(), Aftermath::Poison);
        }
        let restore = [
            GuestFault::TripleFault { rip: 1 },
            GuestFault::MemoryViolation { gpa: 1, rip: 2 },
            GuestFault::UnexpectedExit {
                exit: String::from("hlt"),
                rip: 3,
            },
        ];
        for fault in restore {
            assert_eq!(Error::from(fault).aftermath(), Aftermath::Restore);
        }
        let cancelled = RunError::Cancelled(CancelReason::Killed);
        assert_eq!(Error::from(cancelled).aftermath(), Aftermath::Restore);
        // Nothing ran: the sandbox is as it was.
        assert_eq!(
            Error::from(VmError::Watchdog(io())).aftermath(),
            Aftermath::Clean
        );
    }

    #[test]
    fn the_kvm_error_is_not_printed_twice() {
        let e = Error::from(VmError::Unavailable {
            reason: String::from("cannot open /dev/kvm"),
            source: Some(std::io::Error::from_raw_os_error(libc::ENOENT)),
        });
        let chain = crate::error::chain(&e);
        assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
    }
}
