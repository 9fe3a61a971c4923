//! The wasmtime configuration host and guest share.
//!
//! The host compiles modules with Cranelift for [`TARGET`]; the guest runs
//! the result with wasmtime's `no_std` runtime. wasmtime only accepts a
//! precompiled module produced with the same version, target, tunables, wasm
//! features and CPU features, so both sides start from [`shared_config`] and
//! add only settings that do not change the compiled code: the host picks
//! the target and the CPU features (see [`ISA_FEATURES`]), the guest its code
//! memory, feature detection and stack limit.

use wasmtime::{Config, WasmFeatures};

/// The target the guest runs on and host-side compilation produces code for.
pub const TARGET: &str = "x86_64-unknown-none";

/// CPU features the host compiles for when the CPU has them, as pairs of
/// (Cranelift flag, wasmtime feature name). The guest reports these features
/// from `cpuid` (inside the VM it sees the host CPU's own features). Only
/// features that need no operating system support are listed: the guest does
/// not enable XSAVE, so AVX and later are left out.
pub const ISA_FEATURES: &[(&str, &str)] = &[
    ("has_sse3", "sse3"),
    ("has_ssse3", "ssse3"),
    ("has_sse41", "sse4.1"),
    ("has_sse42", "sse4.2"),
    ("has_popcnt", "popcnt"),
    ("has_lzcnt", "lzcnt"),
    ("has_bmi1", "bmi1"),
    ("has_bmi2", "bmi2"),
    ("has_cmpxchg16b", "cmpxchg16b"),
];

/// The settings that must be identical wherever a module is compiled or run.
pub fn shared_config() -> Config {
    let mut config = Config::new();
    config
        // The guest has no signal handlers: every trap is an explicit check.
        .signals_based_traps(false)
        // Linear memories are plain heap allocations in the guest: no
        // virtual-memory reservations, guard regions or copy-on-write images.
        .memory_reservation(0)
        .memory_guard_size(0)
        .memory_reservation_for_growth(0)
        .memory_init_cow(false)
        // Proposals that need runtime support the guest does not build
        // (threads, GC, exceptions, components) stay off on both sides,
        // whatever cargo features the host's wasmtime happens to have.
        .wasm_features(
            WasmFeatures::THREADS
                | WasmFeatures::SHARED_EVERYTHING_THREADS
                | WasmFeatures::GC
                | WasmFeatures::GC_TYPES
                | WasmFeatures::EXCEPTIONS
                | WasmFeatures::LEGACY_EXCEPTIONS
                | WasmFeatures::STACK_SWITCHING
                | WasmFeatures::COMPONENT_MODEL
                | WasmFeatures::MEMORY64,
            false,
        );
    config
}
