//! [`WasmSandbox`]: a sandbox with a running guest and no module.

use std::io::Read;
use std::path::Path;

use crate::compile::{self, ArtifactKey, Origin, Prepared};
use crate::component::LoadedComponentSandbox;
use crate::error::{Error, Result};
use crate::guest::Guest;
use crate::metrics::{Live, SandboxKind};
use crate::sandbox::{LoadedWasmSandbox, SandboxBuilder};

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

    /// Loads the WebAssembly module (binary or text) in the file at `path`.
    ///
    /// A file larger than [`crate::set_max_module_size`] is rejected before
    /// it is read.
    ///
    /// # Errors
    ///
    /// [`Error::ReadModule`] if the file cannot be read,
    /// [`Error::ModuleTooLarge`] if it is too large, and everything
    /// [`WasmSandbox::load_module_from_buffer`] reports.
    pub fn load_module(self, path: impl AsRef<Path>) -> Result<LoadedWasmSandbox> {
        self.load_file(
            path.as_ref(),
            compile::max_module_size(),
            |sandbox, bytes| sandbox.load_module_from_buffer(bytes),
        )
    }

    /// Loads a WebAssembly module from memory: a binary or module text,
    /// compiled on the host first (or found in the compile cache).
    ///
    /// Precompiled modules are refused: their code runs in the guest
    /// without any check, so they need
    /// [`WasmSandbox::load_precompiled_module_from_buffer`] (`unsafe`) or,
    /// for artifacts made with [`crate::compile_module_authenticated`],
    /// [`WasmSandbox::load_authenticated_module_from_buffer`].
    ///
    /// # Errors
    ///
    /// [`Error::NotWasm`] for bytes that are not WebAssembly,
    /// [`Error::PrecompiledModuleNeedsUnsafeLoader`] for a precompiled
    /// module, [`Error::ModuleTooLarge`] past the size limit,
    /// [`Error::InvalidModule`] for a module that does not validate,
    /// [`Error::UnknownImport`] for a module that imports what the sandbox
    /// does not provide, [`Error::Instantiation`] or [`Error::GuestTrap`]
    /// if instantiation fails. The sandbox is consumed either way.
    pub fn load_module_from_buffer(mut self, bytes: &[u8]) -> Result<LoadedWasmSandbox> {
        crate::metrics::metrics().loads_of_wasm_sandboxes.inc();
        let prepared = compile::prepare(bytes)?;
        match self.load(&prepared) {
            // A cached artifact the guest refuses (say, a cache entry from a
            // build with the same version but other code): drop it, compile
            // again, and try once more from the post-runtime state.
            Err(Error::IncompatibleModule { .. }) if prepared.origin() == Origin::Cache => {
                compile::forget(&prepared);
                self.guest.unload_module()?;
                let prepared = compile::prepare(bytes)?;
                self.load(&prepared)?;
            }
            other => other?,
        }
        Ok(LoadedWasmSandbox::new(self.guest))
    }

    /// Loads the WebAssembly component (binary or component text) in the
    /// file at `path`; see [`crate::component`].
    ///
    /// # Errors
    ///
    /// [`Error::ReadModule`] if the file cannot be read,
    /// [`Error::ModuleTooLarge`] if it is too large, and everything
    /// [`WasmSandbox::load_component_from_buffer`] reports.
    pub fn load_component(self, path: impl AsRef<Path>) -> Result<LoadedComponentSandbox> {
        self.load_file(
            path.as_ref(),
            compile::max_module_size(),
            |sandbox, bytes| sandbox.load_component_from_buffer(bytes),
        )
    }

    /// Loads a WebAssembly component from memory (a binary or component
    /// text), compiled on the host first (or found in the in-memory cache).
    /// Modules and components load in the same sandboxes, one at a time.
    ///
    /// # Errors
    ///
    /// [`Error::NotWasm`] for bytes that are not a component (a core module
    /// is pointed to [`WasmSandbox::load_module_from_buffer`]),
    /// [`Error::ModuleTooLarge`] past the size limit,
    /// [`Error::InvalidModule`] for a component that does not validate,
    /// [`Error::UnknownImport`] naming an import (`interface#function`) no
    /// component host function was registered for, or that is not a
    /// function, and [`Error::Instantiation`] or [`Error::GuestTrap`] if
    /// instantiation fails. The sandbox is consumed either way.
    pub fn load_component_from_buffer(mut self, bytes: &[u8]) -> Result<LoadedComponentSandbox> {
        crate::metrics::metrics().loads_of_wasm_sandboxes.inc();
        let component = crate::component::compile::prepare(bytes)?;
        let _span = tracing::debug_span!("load_component", bytes = component.code.len()).entered();
        self.guest.load_component(&component)?;
        Ok(LoadedComponentSandbox::new(self.guest))
    }

    /// Loads a module precompiled with [`crate::compile_module`] from the
    /// file at `path`.
    ///
    /// # Safety
    ///
    /// The guest runs the artifact's machine code as it is: it is not
    /// WebAssembly, and nothing checks that it keeps to what a module may
    /// do. A forged or corrupted artifact runs arbitrary code inside the VM
    /// with every host function and WASI capability of the sandbox at hand,
    /// so the WebAssembly wall is gone and only the VM's remains. Call this
    /// only with artifacts that [`crate::compile_module`] of this version of
    /// hyperlight-wasm produced and that nobody else could change since
    /// (like wasmtime's `Module::deserialize`). Artifacts stored where
    /// others can write belong to
    /// [`WasmSandbox::load_authenticated_module`].
    ///
    /// # Errors
    ///
    /// [`Error::ReadModule`] if the file cannot be read, and everything
    /// [`WasmSandbox::load_precompiled_module_from_buffer`] reports.
    pub unsafe fn load_precompiled_module(
        self,
        path: impl AsRef<Path>,
    ) -> Result<LoadedWasmSandbox> {
        self.load_file(path.as_ref(), MAX_ARTIFACT_SIZE, |sandbox, bytes| {
            // SAFETY: the caller upholds this function's contract, which is
            // the same.
            unsafe { sandbox.load_precompiled_module_from_buffer(bytes) }
        })
    }

    /// Loads a module precompiled with [`crate::compile_module`] (or
    /// [`crate::compile_module_authenticated`], without checking its MAC).
    ///
    /// # Safety
    ///
    /// As [`WasmSandbox::load_precompiled_module`]: `bytes` must be an
    /// artifact this version of hyperlight-wasm produced, unchanged.
    ///
    /// # Errors
    ///
    /// [`Error::NotWasm`] for bytes that are not an artifact,
    /// [`Error::IncompatibleModule`] for an artifact from another version,
    /// engine configuration or CPU feature set, and the errors of
    /// instantiation. The sandbox is consumed either way.
    pub unsafe fn load_precompiled_module_from_buffer(
        mut self,
        bytes: &[u8],
    ) -> Result<LoadedWasmSandbox> {
        crate::metrics::metrics().loads_of_wasm_sandboxes.inc();
        let prepared = compile::prepare_precompiled(bytes)?;
        self.load(&prepared)?;
        Ok(LoadedWasmSandbox::new(self.guest))
    }

    /// Loads an artifact made by [`crate::compile_module_authenticated`]
    /// under `key` from the file at `path`, checking its MAC first.
    ///
    /// # Errors
    ///
    /// [`Error::ReadModule`] if the file cannot be read, and everything
    /// [`WasmSandbox::load_authenticated_module_from_buffer`] reports.
    pub fn load_authenticated_module(
        self,
        path: impl AsRef<Path>,
        key: &ArtifactKey,
    ) -> Result<LoadedWasmSandbox> {
        self.load_file(path.as_ref(), MAX_ARTIFACT_SIZE, |sandbox, bytes| {
            sandbox.load_authenticated_module_from_buffer(bytes, key)
        })
    }

    /// Loads an artifact made by [`crate::compile_module_authenticated`]
    /// under `key`. Its MAC is checked before anything else of it is read,
    /// so a changed or forged artifact never reaches the guest; see
    /// [`crate::compile_module_authenticated`] for what the MAC does and
    /// does not prove.
    ///
    /// # Errors
    ///
    /// [`Error::ArtifactNotAuthentic`] if the MAC does not hold (or the
    /// artifact has none), [`Error::IncompatibleModule`] for an artifact
    /// from another version or CPU feature set, and the errors of
    /// instantiation. The sandbox is consumed either way.
    pub fn load_authenticated_module_from_buffer(
        mut self,
        bytes: &[u8],
        key: &ArtifactKey,
    ) -> Result<LoadedWasmSandbox> {
        crate::metrics::metrics().loads_of_wasm_sandboxes.inc();
        let prepared = compile::prepare_authenticated(bytes, key)?;
        self.load(&prepared)?;
        Ok(LoadedWasmSandbox::new(self.guest))
    }

    /// Reads the file at `path` (at most `limit` bytes) and hands its bytes
    /// to `load`. A file that cannot be read still counts as a load.
    fn load_file<T>(
        self,
        path: &Path,
        limit: usize,
        load: impl FnOnce(WasmSandbox, &[u8]) -> Result<T>,
    ) -> Result<T> {
        match read_module(path, limit) {
            Ok(bytes) => load(self, &bytes),
            Err(e) => {
                crate::metrics::metrics().loads_of_wasm_sandboxes.inc();
                Err(e)
            }
        }
    }

    fn load(&mut self, prepared: &Prepared) -> Result<()> {
        let _span = tracing::debug_span!(
            "load_module",
            origin = ?prepared.origin(),
            bytes = prepared.code().len()
        )
        .entered();
        self.guest
            .load_module(prepared.code(), prepared.hash(), prepared.exports())
    }
}

/// The largest artifact file the precompiled loaders read: no artifact
/// larger than the largest guest heap can load.
#[allow(
    clippy::cast_possible_truncation,
    reason = "3 GiB fits the usize of x86_64, the only target"
)]
const MAX_ARTIFACT_SIZE: usize = SandboxBuilder::MAX_GUEST_HEAP_SIZE as usize;

/// Reads a module file of at most `limit` bytes, checking its size before
/// reading it.
fn read_module(path: &Path, limit: usize) -> Result<Vec<u8>> {
    let read_error = |source| Error::ReadModule {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > limit {
        return Err(Error::ModuleTooLarge { size, limit });
    }
    let mut bytes = Vec::with_capacity(size);
    // One byte more than the limit tells a file that grew since.
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > limit {
        return Err(Error::ModuleTooLarge {
            size: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}
