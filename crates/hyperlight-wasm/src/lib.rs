//! Run untrusted WebAssembly inside hardware-isolated micro-VMs.
//!
//! Every sandbox is a KVM virtual machine of its own, with one vCPU, no
//! devices and no operating system: a small `no_std` guest runs the module
//! with wasmtime inside it. Untrusted code has two walls to get through (the
//! Wasm sandbox, then the hypervisor) and the host and the guest share
//! nothing but a region of guest memory and VM exits.
//!
//! # Lifecycle
//!
//! A sandbox moves through typed states; each transition consumes the old
//! state:
//!
//! ```text
//! SandboxBuilder::build()  -> ProtoWasmSandbox   (sizes chosen, VM created)
//!   .load_runtime()        -> WasmSandbox        (guest booted, wasmtime ready)
//!   .load_module(..)       -> LoadedWasmSandbox  (module compiled, loaded, instantiated)
//!   .call_guest_function(..)                     (as often as you like)
//!   .unload_module()       -> WasmSandbox        (ready for another module)
//! ```
//!
//! # Example
//!
//! ```no_run
//! use hyperlight_wasm::{Result, SandboxBuilder};
//!
//! fn main() -> Result<()> {
//!     let wasm = r#"(module
//!         (func (export "add") (param i32 i32) (result i32)
//!             local.get 0 local.get 1 i32.add))"#;
//!     let mut sandbox = SandboxBuilder::new()
//!         .build()?
//!         .load_runtime()?
//!         .load_module_from_buffer(wasm.as_bytes())?;
//!     let sum: i32 = sandbox.call_guest_function("add", (40, 2))?;
//!     assert_eq!(sum, 42);
//!     Ok(())
//! }
//! ```
//!
//! # Modules
//!
//! [`WasmSandbox::load_module`] and [`WasmSandbox::load_module_from_buffer`]
//! accept WebAssembly binaries (`.wasm`) and WebAssembly text, compiled on
//! the host with Cranelift; the guest only runs compiled code.
//!
//! Precompiled modules are code: the guest runs them unchecked. Artifacts
//! from [`compile_module`] load only through the `unsafe`
//! [`WasmSandbox::load_precompiled_module`]; artifacts from
//! [`compile_module_authenticated`] load through the safe
//! [`WasmSandbox::load_authenticated_module`], which checks their MAC under
//! the application's [`ArtifactKey`] first.
//!
//! # Components
//!
//! [`WasmSandbox::load_component`] loads a WebAssembly component of any WIT
//! world into the same sandboxes: [`LoadedComponentSandbox::call`] takes
//! and returns [`component::Val`]s checked against the component's types,
//! and [`ProtoWasmSandbox::register_component_function`] gives it host
//! functions by interface. See [`component`].
//!
//! # Shared images
//!
//! The state right after `load_runtime` is one immutable memory image per
//! configuration, and the state right after `load_module` one per
//! configuration and module: the first sandbox to reach a state takes the
//! image, later ones map it copy-on-write instead of booting the guest or
//! loading the module again, and only the pages a sandbox writes are its
//! own. A load during which the guest asked the host anything (a host
//! function, a print, the clock, random bytes) is not shared. The cache is
//! bounded; [`clear_image_cache`] empties it.
//!
//! # Metrics
//!
//! Every sandbox state change, guest error and cancellation is counted in
//! Prometheus metrics (see `docs/observability.md` in the repository), in
//! `prometheus::default_registry()` or the registry given to
//! [`set_metrics_registry`]. With the default cargo feature
//! `function_call_metrics`, guest and host function calls are timed too.
//!
//! # Requirements
//!
//! Linux on x86-64 with KVM: `/dev/kvm` must exist and be readable and
//! writable by the process. [`is_hypervisor_present`] tells whether it is.
#![doc(test(attr(deny(warnings))))]
// Every cast that can lose bits or change sign says why it cannot here.
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
// Tests build their inputs with casts of small constants.
#![cfg_attr(
    test,
    allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

mod compile;
pub mod component;
mod error;
mod guest;
mod metrics;
mod sandbox;
mod vm;

pub use compile::artifact::{ExportedFunction, Import, ImportKind, WasmType};
pub use compile::inspect::{ArtifactInfo, Inspection, ModuleKind, inspect};
pub use compile::{
    ArtifactKey, DEFAULT_DISK_CACHE_BYTES, DEFAULT_MAX_MODULE_SIZE, compile_module,
    compile_module_authenticated, is_component, set_compile_threads, set_max_module_size,
    set_module_cache_dir, set_module_cache_max_bytes,
};
pub use component::LoadedComponentSandbox;
pub use error::{CancelReason, Error, FaultCause, GuestException, ProtocolError, Result, TrapKind};
/// The host's decoding and serving code with hostile input, for the fuzz
/// targets in `fuzz/`; not a stable API (only with the `__fuzz` feature).
#[cfg(feature = "__fuzz")]
#[doc(hidden)]
pub use guest::fuzzing as __fuzz;
pub use hyperlight_wasm_protocol::message::ErrorCode as GuestErrorCode;
pub use metrics::set_metrics_registry;
pub use sandbox::{
    DirAccess, HostFunction, HostParameterType, HostReturnType, LoadedWasmSandbox, ModuleAbi,
    OutputStream, ParameterTuple, ParameterValue, PoolStats, PooledSandbox, ProtoWasmSandbox,
    ReturnType, ReturnValue, SandboxBuilder, SandboxPool, Snapshot, SupportedParameterType,
    SupportedReturnType, TypedGuestFunction, WasiConfig, WasmSandbox,
};
pub use vm::images::clear as clear_image_cache;
pub use vm::interrupt::{InterruptHandle, set_interrupt_signal};
pub use vm::is_hypervisor_present;
/// Raw KVM figures the benchmarks compare against; not a stable API (only
/// with the `__limits` feature, which the limits benchmark turns on).
#[cfg(feature = "__limits")]
#[doc(hidden)]
pub use vm::limits as __limits;
pub use vm::reaper::wait_for_teardown;

/// Counts what each thread allocates, for tests that check that hostile
/// input cannot make the host allocate in proportion to what it claims.
#[cfg(test)]
pub(crate) mod allocations {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Meter;

    thread_local! {
        /// Bytes this thread holds (what it allocated minus what it freed;
        /// frees of other threads' memory make it drift, harmlessly).
        static HELD: Cell<isize> = const { Cell::new(0) };
        /// The most `HELD` reached since the last [`peak_during`] began.
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn account(delta: isize) {
        let _ = HELD.try_with(|held| {
            let now = held.get() + delta;
            held.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    // SAFETY: every method forwards to the system allocator, which upholds
    // GlobalAlloc's contract; the accounting touches no allocated memory
    // and allocates nothing.
    unsafe impl GlobalAlloc for Meter {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            account(layout.size() as isize);
            // SAFETY: the caller upholds alloc's contract.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            account(layout.size() as isize);
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            account(-(layout.size() as isize));
            // SAFETY: the caller upholds dealloc's contract.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            account(new_size as isize - layout.size() as isize);
            // SAFETY: the caller upholds realloc's contract.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static METER: Meter = Meter;

    /// Runs `f` and returns its result and the most bytes this thread held
    /// at once during it, beyond what it held before.
    pub(crate) fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let start = HELD.with(Cell::get);
        PEAK.with(|peak| peak.set(start));
        let result = f();
        let peak = PEAK.with(Cell::get);
        (result, (peak - start).max(0) as usize)
    }
}
