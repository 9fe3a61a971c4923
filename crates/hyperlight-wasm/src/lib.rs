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
//! accept WebAssembly binaries (`.wasm`), WebAssembly text, and modules
//! precompiled with [`compile_module`]. Binaries and text are compiled on the
//! host with Cranelift; the guest only runs compiled code.
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

mod compile;
mod error;
mod guest;
mod metrics;
mod sandbox;
mod vm;

pub use compile::{compile_module, set_module_cache_dir};
pub use error::{CancelReason, Error, FaultCause, GuestException, ProtocolError, Result, TrapKind};
pub use hyperlight_wasm_protocol::message::ErrorCode as GuestErrorCode;
pub use metrics::set_metrics_registry;
pub use sandbox::{
    HostFunction, HostParameterType, HostReturnType, HostValue, LoadedWasmSandbox, ParameterTuple,
    ParameterValue, ProtoWasmSandbox, ReturnType, ReturnValue, SandboxBuilder, Snapshot,
    SupportedParameterType, SupportedReturnType, WasmSandbox,
};
pub use vm::images::clear as clear_image_cache;
pub use vm::interrupt::InterruptHandle;
pub use vm::is_hypervisor_present;
/// Raw KVM figures the benchmarks compare against; not a stable API.
#[doc(hidden)]
pub use vm::limits as __limits;
pub use vm::reaper::wait_for_teardown;
