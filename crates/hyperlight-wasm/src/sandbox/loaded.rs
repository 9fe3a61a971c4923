//! [`LoadedWasmSandbox`]: a sandbox with a module, ready for calls.

use hyperlight_wasm_protocol::message::ValueType;

use crate::error::{ProtocolError, Result};
use crate::guest::Guest;
use crate::metrics::{Live, SandboxKind};
use crate::sandbox::{
    ParameterTuple, ParameterValue, ReturnType, ReturnValue, Snapshot, SupportedReturnType,
    WasmSandbox,
};
use crate::vm::interrupt::InterruptHandle;

/// A sandbox with a loaded, instantiated module.
#[derive(Debug)]
pub struct LoadedWasmSandbox {
    guest: Guest,
    _live: Live,
}

impl LoadedWasmSandbox {
    pub(crate) fn new(guest: Guest) -> LoadedWasmSandbox {
        LoadedWasmSandbox {
            guest,
            _live: Live::new(SandboxKind::Loaded),
        }
    }

    #[cfg(test)]
    pub(crate) fn guest(&self) -> &Guest {
        &self.guest
    }

    /// Calls the module's exported function `name` with `args` and returns
    /// its result as `R`.
    ///
    /// `args` is `()`, a single value or a tuple of up to 12 values; see
    /// [`crate::SupportedParameterType`] for how each maps to a wasm type.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(sandbox: &mut hyperlight_wasm::LoadedWasmSandbox) -> hyperlight_wasm::Result<()> {
    /// let sum: i32 = sandbox.call_guest_function("add", (1i32, 2i32))?;
    /// let fib = sandbox.call_guest_function::<i64>("fib", 30i64)?;
    /// sandbox.call_guest_function::<()>("reset", ())?;
    /// println!("{sum} {fib}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`crate::Error::GuestFunctionNotFound`],
    /// [`crate::Error::GuestFunctionParameterCountMismatch`],
    /// [`crate::Error::GuestFunctionParameterTypeMismatch`] and
    /// [`crate::Error::GuestFunctionReturnTypeMismatch`] when the call does
    /// not fit the export; [`crate::Error::GuestTrap`] when the code traps
    /// (the sandbox stays usable). Errors that leave the guest in an unknown
    /// state (a CPU exception, a broken protocol) make this and every later
    /// call fail, later ones with [`crate::Error::Poisoned`].
    pub fn call_guest_function<R: SupportedReturnType>(
        &mut self,
        name: &str,
        args: impl ParameterTuple,
    ) -> Result<R> {
        let value = self.guest.call(name, args.into_values(), R::TYPE)?;
        R::from_value(value).ok_or_else(|| {
            ProtocolError::UnexpectedMessage {
                expected: "a result of the requested type",
                got: format!("a result that is not {}", ValueType::name(R::TYPE)),
            }
            .into()
        })
    }

    /// Calls the module's exported function `name` with arguments and a
    /// result type chosen at run time.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(sandbox: &mut hyperlight_wasm::LoadedWasmSandbox) -> hyperlight_wasm::Result<()> {
    /// use hyperlight_wasm::{ParameterValue, ReturnType, ReturnValue};
    ///
    /// let echoed = sandbox.call_guest_function_dynamic(
    ///     "Echo",
    ///     &[ParameterValue::String("hi".into())],
    ///     ReturnType::String,
    /// )?;
    /// assert_eq!(echoed, ReturnValue::String("hi".into()));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`LoadedWasmSandbox::call_guest_function`].
    pub fn call_guest_function_dynamic(
        &mut self,
        name: &str,
        args: &[ParameterValue],
        returns: ReturnType,
    ) -> Result<ReturnValue> {
        let args = args.iter().cloned().map(Into::into).collect();
        let value = self.guest.call(name, args, returns.into())?;
        Ok(value.into())
    }

    /// A handle that cancels the call this sandbox is running, from any
    /// thread. Cheap to clone, `Send + Sync`, harmless after the sandbox is
    /// gone or when no call runs.
    pub fn interrupt_handle(&self) -> InterruptHandle {
        self.guest.interrupt_handle()
    }

    /// Saves the sandbox's state (guest memory and CPU state) as it is now.
    ///
    /// Meant for persistent mode
    /// ([`crate::SandboxBuilder::with_persistent_state`]); by default every
    /// call starts from the post-load state anyway.
    ///
    /// # Errors
    ///
    /// Fails if the sandbox is unusable or KVM fails.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        self.guest.snapshot().map(Snapshot::new)
    }

    /// Brings back a state saved by [`LoadedWasmSandbox::snapshot`] of this
    /// sandbox.
    ///
    /// # Errors
    ///
    /// [`crate::Error::SnapshotMismatch`] for a snapshot of another sandbox;
    /// fails if the sandbox is unusable or KVM fails.
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.guest.restore(snapshot.inner())
    }

    /// Unloads the module: the host puts the VM back to its state right
    /// after `load_runtime`, and the sandbox can load another module.
    ///
    /// # Errors
    ///
    /// Fails if the guest is unusable; the sandbox is consumed either way.
    pub fn unload_module(mut self) -> Result<WasmSandbox> {
        crate::metrics::metrics()
            .unloads_of_loaded_wasm_sandboxes
            .inc();
        self.guest.unload_module()?;
        Ok(WasmSandbox::new(self.guest))
    }
}
