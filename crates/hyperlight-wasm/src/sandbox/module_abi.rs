//! [`ModuleAbi`]: which exports a module's strings and buffers go through.

use hyperlight_wasm_protocol::message::ModuleAbi as Names;

/// The exports through which the runtime passes strings and byte buffers
/// to a module and reads them back: its memory, an allocator
/// `(i32) -> i32` and a deallocator `(i32)`. By default `memory`, `malloc`
/// and `free`; modules built otherwise name them differently:
///
/// ```no_run
/// use hyperlight_wasm::{ModuleAbi, SandboxBuilder};
///
/// let builder = SandboxBuilder::new()
///     .with_module_abi(ModuleAbi::default().malloc("walloc").free("wfree").memory("mem"));
/// # drop(builder);
/// ```
///
/// A module without the allocator it names can still be called with
/// numbers; a string or buffer argument then fails with
/// [`crate::Error::MissingExport`], naming the export it looked for. The
/// deallocator is optional (memory is then never freed, which the reset
/// after each call makes harmless unless the sandbox is persistent).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ModuleAbi {
    names: Names,
}

impl ModuleAbi {
    /// The memory export (default `memory`).
    #[must_use]
    pub fn memory(mut self, export: impl Into<String>) -> ModuleAbi {
        self.names.memory = export.into();
        self
    }

    /// The allocator export, `(i32) -> i32` (default `malloc`).
    #[must_use]
    pub fn malloc(mut self, export: impl Into<String>) -> ModuleAbi {
        self.names.malloc = export.into();
        self
    }

    /// The deallocator export, `(i32)` (default `free`).
    #[must_use]
    pub fn free(mut self, export: impl Into<String>) -> ModuleAbi {
        self.names.free = export.into();
        self
    }

    /// The names, as the guest receives them.
    pub(crate) fn names(&self) -> &Names {
        &self.names
    }
}
