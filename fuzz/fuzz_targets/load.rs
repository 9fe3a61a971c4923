//! Arbitrary and mutated module bytes (the seed corpus holds the fixtures)
//! through `load_module_from_buffer`: every outcome is a module or a typed
//! error, never a panic, a hang or a crash of the host.
#![no_main]

use hyperlight_wasm::{Error, SandboxBuilder};

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let sandbox = SandboxBuilder::new()
        .with_max_execution_time(std::time::Duration::from_secs(5))
        .build()
        .and_then(|proto| proto.load_runtime())
        .expect("a sandbox with the runtime");
    match sandbox.load_module_from_buffer(bytes) {
        Ok(_) => {}
        // What a module the host cannot trust may be refused with.
        Err(
            Error::NotWasm { .. }
            | Error::InvalidModule { .. }
            | Error::ModuleTooLarge { .. }
            | Error::PrecompiledModuleNeedsUnsafeLoader
            | Error::UnknownImport { .. }
            | Error::ImportTypeMismatch { .. }
            | Error::Instantiation { .. }
            | Error::GuestTrap { .. }
            | Error::GuestOutOfMemory { .. }
            | Error::ExecutionCancelledByHost { .. },
        ) => {}
        Err(e) => panic!("an unexpected error for a module: {e:?}"),
    }
});
