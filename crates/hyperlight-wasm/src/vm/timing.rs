//! Where a call's time goes, for the limits bench (feature `__limits`):
//! each part of a call is timed where it happens and summed for the
//! process. Without the feature, [`time`] runs its closure and nothing
//! else: no clock is read.

/// A part of a guest call, as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Encoding the request and writing it to the input buffer.
    Request,
    /// `KVM_RUN`: the exit round trip and the guest's work (decode, the
    /// wasm call, encode), until the guest answers or calls out.
    Run,
    /// Reading and decoding the response.
    Response,
    /// The reset: completing what KVM left pending at the last exit.
    Drain,
    /// The reset: reading the dirty log (which pages the call wrote).
    DirtyLog,
    /// The reset: copying those pages back from the snapshot.
    PageCopies,
    /// The reset: the general, system and event registers.
    Registers,
    /// The reset: the FPU/XSAVE state (`KVM_SET_XSAVE`).
    Fpu,
    /// The reset: the hot-page bookkeeping after a restore.
    Bookkeeping,
}

#[cfg_attr(
    not(feature = "__limits"),
    allow(dead_code, reason = "the limits bench reads them")
)]
impl Part {
    /// Every part, in the order of a call.
    pub const ALL: [Part; 9] = [
        Part::Request,
        Part::Run,
        Part::Response,
        Part::Drain,
        Part::DirtyLog,
        Part::PageCopies,
        Part::Registers,
        Part::Fpu,
        Part::Bookkeeping,
    ];

    /// Its name in the bench's table.
    pub fn name(self) -> &'static str {
        match self {
            Part::Request => "write the request",
            Part::Run => "KVM_RUN (exit + guest work)",
            Part::Response => "read the response",
            Part::Drain => "reset: pending emulation",
            Part::DirtyLog => "reset: dirty log",
            Part::PageCopies => "reset: page copies",
            Part::Registers => "reset: registers",
            Part::Fpu => "reset: XSAVE",
            Part::Bookkeeping => "reset: hot-page bookkeeping",
        }
    }
}

#[cfg(feature = "__limits")]
mod sums {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::Part;

    static NANOS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];
    static COUNTS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];

    fn index(part: Part) -> usize {
        Part::ALL.iter().position(|p| *p == part).unwrap_or(0)
    }

    pub(super) fn add(part: Part, nanos: u64) {
        NANOS[index(part)].fetch_add(nanos, Ordering::Relaxed);
        COUNTS[index(part)].fetch_add(1, Ordering::Relaxed);
    }

    /// The sums since the last take, per part (total ns, times), and zero.
    pub fn take() -> Vec<(Part, u64, u64)> {
        Part::ALL
            .iter()
            .map(|&part| {
                let i = index(part);
                (
                    part,
                    NANOS[i].swap(0, Ordering::Relaxed),
                    COUNTS[i].swap(0, Ordering::Relaxed),
                )
            })
            .collect()
    }
}

#[cfg(feature = "__limits")]
pub use sums::take;

/// Runs `f`, timing it as `part` with the feature `__limits`.
#[inline]
pub(crate) fn time<T>(part: Part, f: impl FnOnce() -> T) -> T {
    #[cfg(feature = "__limits")]
    {
        let start = std::time::Instant::now();
        let result = f();
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        sums::add(part, nanos);
        result
    }
    #[cfg(not(feature = "__limits"))]
    {
        let _ = part;
        f()
    }
}
