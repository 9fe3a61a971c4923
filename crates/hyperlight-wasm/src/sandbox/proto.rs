//! [`ProtoWasmSandbox`]: a sandbox whose VM exists but whose guest has not
//! started.

use crate::component::{ComponentParams, ComponentValue, Val};
use crate::error::{BoxError, Error, Result};
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

    /// Registers a host function for components: they import it as `name`
    /// from `interface` (`my:pkg/iface`), or directly from their world when
    /// `interface` is empty. `function` gets the arguments as [`Val`]s,
    /// already checked against the type the component imports it with, and
    /// returns the results (none or one), which are checked the same way.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(mut proto: hyperlight_wasm::ProtoWasmSandbox) -> hyperlight_wasm::Result<()> {
    /// use hyperlight_wasm::component::Val;
    ///
    /// proto.register_component_function("my:app/log", "len", |args: &[Val]| {
    ///     match args {
    ///         [Val::String(s)] => Ok(vec![Val::U32(s.len() as u32)]),
    ///         _ => Err("expected one string"),
    ///     }
    /// })?;
    /// # Ok(()) }
    /// ```
    ///
    /// An error or a panic of `function`, or results not of the imported
    /// type, fail the guest call with [`Error::HostFunctionFailed`] or
    /// [`Error::HostFunctionPanicked`].
    ///
    /// # Errors
    ///
    /// [`Error::HostFunctionAlreadyRegistered`] if `interface` already has
    /// a component function `name`.
    pub fn register_component_function<F, E>(
        &mut self,
        interface: impl Into<String>,
        name: impl Into<String>,
        mut function: F,
    ) -> Result<()>
    where
        F: FnMut(&[Val]) -> std::result::Result<Vec<Val>, E> + Send + 'static,
        E: Into<BoxError>,
    {
        self.guest.component_functions_mut().insert(
            interface.into(),
            name.into(),
            Box::new(move |args| function(args).map_err(Into::into)),
        )
    }

    /// Registers a host function for components with Rust types: `P` is
    /// `()` or a tuple of [`ComponentValue`]s, the result `()` or one (a
    /// `Result<T, E>` is WIT's `result<T, E>`).
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(mut proto: hyperlight_wasm::ProtoWasmSandbox) -> hyperlight_wasm::Result<()> {
    /// proto.register_component_typed("my:app/math", "add", |(a, b): (u32, u32)| a + b)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`ProtoWasmSandbox::register_component_function`].
    pub fn register_component_typed<P, R, F>(
        &mut self,
        interface: impl Into<String>,
        name: impl Into<String>,
        mut function: F,
    ) -> Result<()>
    where
        P: ComponentParams,
        R: ComponentValue,
        F: FnMut(P) -> R + Send + 'static,
    {
        self.register_component_function(interface, name, move |args: &[Val]| {
            let params = P::from_vals(args.to_vec())
                .ok_or("the arguments do not fit the host function's Rust parameter types")?;
            Ok::<_, BoxError>(crate::component::typed_results(function(params)))
        })
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
