//! [`LoadedComponentSandbox`]: a sandbox with a component, ready for calls.

use super::typed::{ComponentParams, ComponentValue, from_results};
use super::{ComponentFunction, ResourceHandle, Val};
use crate::error::{Error, Result};
use crate::guest::Guest;
use crate::metrics::{Live, SandboxKind};
use crate::sandbox::{Snapshot, WasmSandbox};
use crate::vm::interrupt::InterruptHandle;

/// A sandbox with a loaded, instantiated component (see
/// [`crate::component`]).
#[derive(Debug)]
pub struct LoadedComponentSandbox {
    guest: Guest,
    _live: Live,
}

impl LoadedComponentSandbox {
    pub(crate) fn new(guest: Guest) -> LoadedComponentSandbox {
        LoadedComponentSandbox {
            guest,
            _live: Live::new(SandboxKind::Loaded),
        }
    }

    /// Calls the export `name` (a world-level function, `add`, or an
    /// interface's, `my:pkg/iface#add`) with `args` and returns its results
    /// (none or one).
    ///
    /// The arguments are checked against the export's WIT type before the
    /// guest runs, and the results when they come back. With fresh state
    /// per call (the default) the next call starts from the state right
    /// after the load again. In persistent mode a call that fails in the
    /// guest (a trap, a host function's error) also puts the sandbox back
    /// to the state right after the load: wasmtime never enters a component
    /// instance again after a failed call.
    ///
    /// # Errors
    ///
    /// [`Error::GuestFunctionNotFound`] for a name the component does not
    /// export, [`Error::GuestFunctionParameterCountMismatch`] and
    /// [`Error::GuestFunctionParameterTypeMismatch`] for arguments that do
    /// not fit, [`Error::GuestTrap`] when the component traps (also when the
    /// values it hands over are out of its memory or not UTF-8), and the
    /// errors of [`crate::LoadedWasmSandbox::call_guest_function`].
    pub fn call(&mut self, name: &str, args: &[Val]) -> Result<Vec<Val>> {
        let _span = tracing::debug_span!("call_component", function = name).entered();
        self.guest.call_component(name, args)
    }

    /// Calls the export `name` with Rust values: `args` is `()` or a tuple
    /// of [`ComponentValue`]s, the result `()` or one.
    ///
    /// # Errors
    ///
    /// As [`LoadedComponentSandbox::call`], and
    /// [`Error::GuestFunctionReturnTypeMismatch`] when `R` is not the
    /// export's result type.
    pub fn call_typed<P: ComponentParams, R: ComponentValue>(
        &mut self,
        name: &str,
        args: P,
    ) -> Result<R> {
        let results = self.call(name, &args.into_vals())?;
        from_results(results).ok_or_else(|| Error::GuestFunctionReturnTypeMismatch {
            function: name.to_owned(),
            message: match self
                .guest
                .component_exports()
                .iter()
                .find(|f| f.name == name)
            {
                Some(export) => format!(
                    "the export is `{export}`; the result is not a {}",
                    std::any::type_name::<R>()
                ),
                None => format!("the result is not a {}", std::any::type_name::<R>()),
            },
        })
    }

    /// Runs a WASI 0.2 command (a `wasm32-wasip2` program's `main`): calls
    /// its `wasi:cli/run` export and returns the exit code, 0 when `run`
    /// returns `ok`, 1 when it returns `err`, and the code the component
    /// passed to `wasi:cli/exit` when it exited (`std::process::exit`).
    ///
    /// The command sees what the sandbox's [`crate::WasiConfig`] grants,
    /// as a WASI preview 1 module does: arguments, environment, stdin,
    /// preopened directories; stdout and stderr go to the host output
    /// function.
    ///
    /// # Errors
    ///
    /// [`Error::GuestFunctionNotFound`] when the component exports no
    /// `wasi:cli/run@0.2.*#run`, and those of
    /// [`LoadedComponentSandbox::call`] (a trap is [`Error::GuestTrap`]).
    pub fn run(&mut self) -> Result<i32> {
        let name = self
            .exports()
            .iter()
            .map(|f| f.name.as_str())
            .find(|name| is_cli_run(name))
            .map(str::to_owned)
            .ok_or_else(|| Error::GuestFunctionNotFound {
                function: String::from("wasi:cli/run@0.2.*#run (the component is not a command)"),
            })?;
        match self.call(&name, &[]) {
            Ok(results) => match results.as_slice() {
                [Val::Result(Ok(_))] => Ok(0),
                [Val::Result(Err(_))] => Ok(1),
                _ => Err(Error::GuestFunctionReturnTypeMismatch {
                    function: name,
                    message: String::from("`run` must return `result`"),
                }),
            },
            Err(Error::GuestExited { code }) => Ok(code),
            Err(e) => Err(e),
        }
    }

    /// The component's exported functions with their WIT types, sorted by
    /// name, as the host read them when it compiled the component.
    pub fn exports(&self) -> &[ComponentFunction] {
        self.guest.component_exports()
    }

    /// Drops a resource the component returned: the component's
    /// destructor for it runs (and may trap), and the handle is dead.
    ///
    /// Resources live in the sandbox's state: a handle works until that
    /// state is reset (after each call with fresh state per call, so use
    /// resources with [`crate::SandboxBuilder::with_persistent_state`];
    /// after [`LoadedComponentSandbox::restore`] or a failed call). Passing
    /// a handle as an `own` argument gives the resource back to the
    /// component, and ends the handle too.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidResource`] for a handle that is not live here, and
    /// [`Error::GuestTrap`] when the destructor traps.
    pub fn drop_resource(&mut self, handle: ResourceHandle) -> Result<()> {
        self.guest.drop_resource(handle)
    }

    /// Whether an earlier failure of the host's own machinery left the
    /// sandbox unusable (see [`crate::LoadedWasmSandbox::is_poisoned`]).
    pub fn is_poisoned(&self) -> bool {
        self.guest.poisoned().is_some()
    }

    /// A handle that cancels the call this sandbox is running, from any
    /// thread (see [`crate::LoadedWasmSandbox::interrupt_handle`]).
    pub fn interrupt_handle(&self) -> InterruptHandle {
        self.guest.interrupt_handle()
    }

    /// Saves the sandbox's state as it is now (for persistent mode; see
    /// [`crate::LoadedWasmSandbox::snapshot`]).
    ///
    /// # Errors
    ///
    /// Fails if the sandbox is unusable or KVM fails.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        self.guest.snapshot().map(Snapshot::new)
    }

    /// Brings back a state saved by [`LoadedComponentSandbox::snapshot`] of
    /// this sandbox.
    ///
    /// # Errors
    ///
    /// [`Error::SnapshotMismatch`] for a snapshot of another sandbox; fails
    /// if the sandbox is unusable or KVM fails.
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.guest.restore(snapshot.inner())
    }

    /// Unloads the component: the VM goes back to its state right after
    /// `load_runtime`, ready for another module or component.
    ///
    /// # Errors
    ///
    /// Fails if the guest is unusable; the sandbox is consumed either way.
    pub fn unload(mut self) -> Result<WasmSandbox> {
        let _span = tracing::debug_span!("unload_component").entered();
        crate::metrics::metrics()
            .unloads_of_loaded_wasm_sandboxes
            .inc();
        self.guest.unload_module()?;
        Ok(WasmSandbox::new(self.guest))
    }
}

/// Whether `name` is WASI 0.2's `wasi:cli/run@0.2.N#run`.
fn is_cli_run(name: &str) -> bool {
    name.split_once('#').is_some_and(|(interface, function)| {
        function == "run"
            && interface
                .strip_prefix("wasi:cli/run@0.2.")
                .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
    })
}
