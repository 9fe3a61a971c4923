//! What wasmtime's `no_std` runtime needs from the platform, and the heap.
//!
//! - The allocator: talc over the heap region the host described in
//!   `BootInfo`.
//! - `wasmtime_tls_get` / `wasmtime_tls_set`: wasmtime's thread-local slots
//!   (the guest has a single thread).
//! - [`CodeMemory`]: all guest memory is mapped writable and executable by the
//!   host, so publishing compiled code needs no work.
//! - [`detect_host_feature`]: CPU features from `cpuid`, for wasmtime's check
//!   that a precompiled module only uses features this CPU has.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use hyperlight_wasm_protocol::boot::Region;
use talc::TalcLock;
use talc::source::Manual;

/// The guest allocator: talc, plus a note of the last failure so that the
/// panic handler can report heap exhaustion as such.
struct Heap {
    talc: TalcLock<spinning_top::RawSpinlock, Manual>,
    failed: AtomicBool,
}

#[global_allocator]
static HEAP: Heap = Heap {
    talc: TalcLock::new(Manual),
    failed: AtomicBool::new(false),
};

// SAFETY: every method forwards to talc's GlobalAlloc implementation, which
// upholds the trait's contract; recording a failure changes nothing about it.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract.
        let p = unsafe { self.talc.alloc(layout) };
        if p.is_null() {
            self.failed.store(true, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds GlobalAlloc::dealloc's contract.
        unsafe { self.talc.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc::alloc_zeroed's contract.
        let p = unsafe { self.talc.alloc_zeroed(layout) };
        if p.is_null() {
            self.failed.store(true, Ordering::Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc::realloc's contract.
        let p = unsafe { self.talc.realloc(ptr, layout, new_size) };
        if p.is_null() {
            self.failed.store(true, Ordering::Relaxed);
        }
        p
    }
}

/// Gives the heap region to the allocator.
///
/// # Safety
/// `heap` must be memory nothing else uses, and this must run once, before
/// the first allocation.
pub unsafe fn init_heap(heap: Region) {
    // SAFETY: the caller guarantees the region is ours alone.
    let claimed = unsafe {
        HEAP.talc
            .lock()
            .claim(heap.addr as *mut u8, crate::usize_from(heap.size))
    };
    if claimed.is_none() {
        crate::host::abort(
            hyperlight_wasm_protocol::message::ErrorCode::OutOfMemory,
            format_args!("the heap of {} bytes is too small to use", heap.size),
        );
    }
}

/// Whether an allocation has failed since the guest started, or since the
/// last [`forget_allocation_failure`].
pub fn allocation_failed() -> bool {
    HEAP.failed.load(Ordering::Relaxed)
}

/// Clears the note of a failed allocation (one that was handled: a failed
/// `memory.grow`, or one of an earlier request).
pub fn forget_allocation_failure() {
    HEAP.failed.store(false, Ordering::Relaxed);
}

// Wasmtime's thread-local slots. wasmtime 48 uses slot 0 for the runtime and
// slot 1 for component-model async; the guest has one thread.
const TLS_SLOTS: usize = 2;
static TLS: [AtomicPtr<u8>; TLS_SLOTS] = [const { AtomicPtr::new(ptr::null_mut()) }; TLS_SLOTS];

/// wasmtime's `no_std` platform hook: read thread-local slot `slot`.
#[unsafe(no_mangle)]
pub extern "C" fn wasmtime_tls_get(slot: usize) -> *mut u8 {
    TLS.get(slot)
        .map_or(ptr::null_mut(), |s| s.load(Ordering::Relaxed))
}

/// wasmtime's `no_std` platform hook: write thread-local slot `slot`.
#[unsafe(no_mangle)]
pub extern "C" fn wasmtime_tls_set(slot: usize, value: *mut u8) {
    if let Some(s) = TLS.get(slot) {
        s.store(value, Ordering::Relaxed);
    }
}

/// Code memory for wasmtime: the host maps the heap readable, writable and
/// executable, and x86 keeps instruction fetches coherent with stores, so
/// there is nothing to do when code is published or withdrawn.
#[derive(Debug)]
pub struct CodeMemory;

impl wasmtime::CustomCodeMemory for CodeMemory {
    fn required_alignment(&self) -> usize {
        1
    }

    fn publish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }

    fn unpublish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// wasmtime's CPU feature probe: answers from `cpuid` for the features named
/// in `hyperlight_wasm_protocol::engine::ISA_FEATURES`, `Some(false)` for the
/// AVX family (the guest does not enable XSAVE), `None` for anything else.
pub fn detect_host_feature(feature: &str) -> Option<bool> {
    let cpuid = raw_cpuid::CpuId::new();
    let basic = cpuid.get_feature_info();
    let extended = cpuid.get_extended_feature_info();
    let ext_fn = cpuid.get_extended_processor_and_feature_identifiers();
    match feature {
        "sse3" => basic.map(|f| f.has_sse3()),
        "ssse3" => basic.map(|f| f.has_ssse3()),
        "sse4.1" => basic.map(|f| f.has_sse41()),
        "sse4.2" => basic.map(|f| f.has_sse42()),
        "popcnt" => basic.map(|f| f.has_popcnt()),
        "cmpxchg16b" => basic.map(|f| f.has_cmpxchg16b()),
        "lzcnt" => ext_fn.map(|f| f.has_lzcnt()),
        "bmi1" => extended.map(|f| f.has_bmi1()),
        "bmi2" => extended.map(|f| f.has_bmi2()),
        "avx" | "avx2" | "fma" | "avxvnni" | "avx512bitalg" | "avx512dq" | "avx512f"
        | "avx512vl" | "avx512vbmi" | "avx512vnni" => Some(false),
        _ => None,
    }
}
