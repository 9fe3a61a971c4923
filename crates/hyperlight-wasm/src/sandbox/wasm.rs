//! [`WasmSandbox`]: a sandbox with a running guest and no module.

use std::path::Path;

use crate::compile;
use crate::error::{Error, Result};
use crate::guest::Guest;
use crate::metrics::{Live, SandboxKind};
use crate::sandbox::LoadedWasmSandbox;

/// A sandbox whose guest runtime is up, ready to load a module.
#[derive(Debug)]
pub struct WasmSandbox {
    guest: Guest,
    _live: Live,
}

impl WasmSandbox {
    pub(crate) fn new(guest: Guest) -> WasmSandbox {
        WasmSandbox {
            guest,
            _live: Live::new(SandboxKind::Wasm),
        }
    }

    /// Loads the module in the file at `path`: a WebAssembly binary, module
    /// text, or a module precompiled with [`crate::compile_module`].
    ///
    /// # Errors
    ///
    /// [`Error::ReadModule`] if the file cannot be read, and everything
    /// [`WasmSandbox::load_module_from_buffer`] reports.
    pub fn load_module(self, path: impl AsRef<Path>) -> Result<LoadedWasmSandbox> {
        let path = path.as_ref();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(source) => {
                crate::metrics::metrics().loads_of_wasm_sandboxes.inc();
                return Err(Error::ReadModule {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        self.load_module_from_buffer(&bytes)
    }

    /// Loads a module from memory: a WebAssembly binary, module text, or a
    /// module precompiled with [`crate::compile_module`]. Binaries and text
    /// are compiled on the host first.
    ///
    /// # Errors
    ///
    /// [`Error::NotWasm`] for bytes that are none of these,
    /// [`Error::InvalidModule`] for a module that does not validate,
    /// [`Error::IncompatibleModule`] for a precompiled module from another
    /// version or configuration, [`Error::UnknownImport`] for a module that
    /// imports what the sandbox does not provide,
    /// [`Error::Instantiation`] or [`Error::GuestTrap`] if instantiation
    /// fails. The sandbox is consumed either way.
    pub fn load_module_from_buffer(mut self, bytes: &[u8]) -> Result<LoadedWasmSandbox> {
        crate::metrics::metrics().loads_of_wasm_sandboxes.inc();
        let artifact = compile::prepare(bytes)?;
        self.guest.load_module(artifact.bytes(), artifact.hash())?;
        Ok(LoadedWasmSandbox::new(self.guest))
    }
}
