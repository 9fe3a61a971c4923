//! The wasmtime configuration host and guest share.
//!
//! The host compiles modules with Cranelift for [`TARGET`]; the guest runs
//! the result with wasmtime's `no_std` runtime. wasmtime only accepts a
//! precompiled module produced with the same version, target, tunables, wasm
//! features and CPU features, so both sides start from [`shared_config`] and
//! add only settings that do not change the compiled code: the host picks
//! the target and the CPU features (see [`ISA_FEATURES`]), the guest its code
//! memory, feature detection and stack limit.

use wasmtime::{Config, WasmBacktraceDetails, WasmFeatures};

/// The wasmtime version host and guest are built with (both pin it
/// exactly: precompiled code only loads into the version that produced it).
pub const WASMTIME_VERSION: &str = "48.0.8";

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

/// The WebAssembly proposals both sides enable: exactly these, whatever
/// defaults the cargo features of the host's wasmtime imply. Proposals that
/// need runtime support the guest does not build (threads, GC, exceptions,
/// stack switching) and `memory64` stay off; the component model is on.
pub const WASM_FEATURES: WasmFeatures = WasmFeatures::MUTABLE_GLOBAL
    .union(WasmFeatures::SATURATING_FLOAT_TO_INT)
    .union(WasmFeatures::SIGN_EXTENSION)
    .union(WasmFeatures::REFERENCE_TYPES)
    .union(WasmFeatures::MULTI_VALUE)
    .union(WasmFeatures::BULK_MEMORY)
    .union(WasmFeatures::BULK_MEMORY_OPT)
    .union(WasmFeatures::SIMD)
    .union(WasmFeatures::RELAXED_SIMD)
    .union(WasmFeatures::TAIL_CALL)
    .union(WasmFeatures::FLOATS)
    .union(WasmFeatures::MULTI_MEMORY)
    .union(WasmFeatures::EXTENDED_CONST)
    .union(WasmFeatures::FUNCTION_REFERENCES)
    .union(WasmFeatures::CALL_INDIRECT_OVERLONG)
    // Components: the guest runs them as it runs modules.
    .union(WasmFeatures::COMPONENT_MODEL);

/// The settings that must be identical wherever a module is compiled or run.
///
/// Every setting a compiled artifact records (wasmtime checks them when it
/// deserializes one) is set here explicitly, never left to a default: the
/// defaults depend on the cargo features of the wasmtime in the build, and a
/// host application that depends on wasmtime itself (with its default
/// features) would otherwise compile artifacts the guest's `no_std` wasmtime
/// refuses. `crates/host-with-wasmtime` in the repository is that application.
pub fn shared_config() -> Config {
    let mut config = Config::new();
    config
        // The guest has no signal handlers: every trap is an explicit check.
        .signals_based_traps(false)
        // Linear memories are plain heap allocations in the guest: no
        // virtual-memory reservations, guard regions or copy-on-write images,
        // and they move when they grow.
        .memory_reservation(0)
        .memory_guard_size(0)
        .memory_reservation_for_growth(0)
        .memory_init_cow(false)
        .memory_may_move(true)
        .guard_before_linear_memory(true)
        .table_lazy_init(true)
        // No fuel, no epochs: the host's time limits stop the vCPU.
        .consume_fuel(false)
        .epoch_interruption(false)
        // No native debug information; no DWARF parsing for backtraces
        // (the default reads WASMTIME_BACKTRACE_DETAILS from the host's
        // environment, which the guest does not have).
        .debug_info(false)
        .debug_symbols(true)
        .wasm_backtrace_details(WasmBacktraceDetails::Disable)
        .relaxed_simd_deterministic(false)
        // On by default when the host's wasmtime has `component-model-async`.
        .concurrency_support(false)
        // GC is off, but its heap settings are recorded all the same.
        .gc_heap_reservation(0)
        .gc_heap_guard_size(0)
        .gc_heap_reservation_for_growth(0)
        .gc_heap_may_move(true)
        .gc_heap_initial_size(0)
        .wasm_features(WasmFeatures::all(), false)
        .wasm_features(WASM_FEATURES, true);
    config
}
