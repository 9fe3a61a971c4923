//! [`ProtoWasmSandbox`]: a sandbox whose VM exists but whose guest has not
//! started.

use crate::error::{Error, Result};
use crate::guest::Guest;
use crate::metrics::{Live, SandboxKind};
use crate::sandbox::WasmSandbox;
use crate::sandbox::host_functions::{HostFunction, ImportName, Registered};

/// A sandbox created by [`crate::SandboxBuilder::build`]: its VM and memory
/// exist, its guest has not run yet.
#[derive(Debug)]
pub struct ProtoWasmSandbox {
    guest: Guest,
    _live: Live,
}

impl ProtoWasmSandbox {
    pub(crate) fn new(guest: Guest) -> ProtoWasmSandbox {
        ProtoWasmSandbox {
            guest,
            _live: Live::new(SandboxKind::Proto),
        }
    }

    /// Registers a host function that modules import from module `env`
    /// under `name`.
    ///
    /// `function` is any closure of up to 12 parameters of
    /// [`crate::HostParameterType`]s returning a [`crate::HostReturnType`]:
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(mut proto: hyperlight_wasm::ProtoWasmSandbox) -> hyperlight_wasm::Result<()> {
    /// proto.register("add", |a: i32, b: i32| a + b)?;
    /// proto.register("greet", |name: String| format!("hello, {name}"))?;
    /// proto.register("parse", |s: String| s.parse::<i64>())?;
    /// # Ok(()) }
    /// ```
    ///
    /// If the function returns an error or panics, the guest call that
    /// called it fails with [`Error::HostFunctionFailed`] or
    /// [`Error::HostFunctionPanicked`]; the host goes on.
    ///
    /// # Errors
    ///
    /// [`Error::HostFunctionAlreadyRegistered`] if `name` is taken.
    pub fn register<Args, Output>(
        &mut self,
        name: impl Into<String>,
        function: impl HostFunction<Args, Output>,
    ) -> Result<()> {
        self.register_in(ImportName::ENV, name, function)
    }

    /// Registers a host function that modules import from module `module`
    /// under `name`: for modules that import from `"emscripten"`, `"host"`
    /// or the spec suite's `"spectest"`. [`ProtoWasmSandbox::register`] is
    /// `register_in("env", ..)`.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(mut proto: hyperlight_wasm::ProtoWasmSandbox) -> hyperlight_wasm::Result<()> {
    /// proto.register_in("spectest", "print_i32", |x: i32| println!("{x}"))?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::HostFunctionAlreadyRegistered`] if `module` already has a
    /// function `name` (named `module::name` unless `module` is `env`).
    pub fn register_in<Args, Output>(
        &mut self,
        module: impl Into<String>,
        name: impl Into<String>,
        function: impl HostFunction<Args, Output>,
    ) -> Result<()> {
        let import = ImportName::new(module, name);
        let functions = self.guest.host_functions_mut();
        if functions.contains_key(&import) {
            return Err(Error::HostFunctionAlreadyRegistered {
                name: import.to_string(),
            });
        }
        functions.insert(import, Registered::new(function));
        Ok(())
    }

    /// Boots the guest and starts its WebAssembly runtime.
    ///
    /// # Errors
    ///
    /// Fails if the guest does not come up (for example a heap too small for
    /// the runtime: [`crate::Error::GuestOutOfMemory`]). The sandbox is
    /// consumed either way.
    pub fn load_runtime(mut self) -> Result<WasmSandbox> {
        let _span = tracing::debug_span!("load_runtime").entered();
        self.guest.boot()?;
        Ok(WasmSandbox::new(self.guest))
    }
}
