//! [`LoadedWasmSandbox`]: a sandbox with a module, ready for calls.

use std::marker::PhantomData;

use hyperlight_wasm_protocol::message::{ValueType, WasmAbi};

use crate::compile::artifact::{ExportedFunction, WasmType};
use crate::error::{Error, ProtocolError, Result};
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
        let _span = tracing::debug_span!("call_guest_function", function = name).entered();
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
        let _span = tracing::debug_span!("call_guest_function_dynamic", function = name).entered();
        let args = args.iter().cloned().map(Into::into).collect();
        let value = self.guest.call(name, args, returns.into())?;
        Ok(value.into())
    }

    /// The module's exported functions with their WebAssembly signatures,
    /// by name, as the host read them from the module when it compiled it
    /// (no guest round trip). Empty for a module the host knows nothing of.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(sandbox: &hyperlight_wasm::LoadedWasmSandbox) {
    /// for export in sandbox.exports() {
    ///     println!("{}: {:?} -> {:?}", export.name(), export.params(), export.results());
    /// }
    /// # }
    /// ```
    pub fn exports(&self) -> Vec<&ExportedFunction> {
        let mut exports: Vec<&ExportedFunction> = self
            .guest
            .exports()
            .map(|exports| exports.values().collect())
            .unwrap_or_default();
        exports.sort_by(|a, b| a.name.cmp(&b.name));
        exports
    }

    /// The export `name` as a function taking `P` and returning `R`, its
    /// signature checked once, here, against the module's:
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(sandbox: &mut hyperlight_wasm::LoadedWasmSandbox) -> hyperlight_wasm::Result<()> {
    /// let add = sandbox.typed_function::<(i32, i32), i32>("add")?;
    /// assert_eq!(add.call(sandbox, (1, 2))?, 3);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`crate::Error::GuestFunctionNotFound`] when the module exports no
    /// such function, [`crate::Error::GuestFunctionParameterTypeMismatch`]
    /// or [`crate::Error::GuestFunctionReturnTypeMismatch`] when `P` or `R`
    /// do not fit its signature (see [`crate::SupportedParameterType`] for
    /// the wasm types each Rust type is passed as).
    pub fn typed_function<P: ParameterTuple, R: SupportedReturnType>(
        &self,
        name: &str,
    ) -> Result<TypedGuestFunction<P, R>> {
        let not_found = || Error::GuestFunctionNotFound {
            function: name.to_owned(),
        };
        let export = self
            .guest
            .exports()
            .ok_or_else(not_found)?
            .get(name)
            .ok_or_else(not_found)?;
        let params: Vec<WasmAbi> = P::types()
            .iter()
            .flat_map(|ty| ty.wasm_params().iter().copied())
            .collect();
        if params.len() != export.params.len() {
            return Err(Error::GuestFunctionParameterCountMismatch {
                function: name.to_owned(),
                message: format!(
                    "the export takes {} wasm values; {} are passed as {}",
                    export.params.len(),
                    type_list(&P::types()),
                    params.len()
                ),
            });
        }
        if !same_shape(&params, &export.params) {
            return Err(Error::GuestFunctionParameterTypeMismatch {
                function: name.to_owned(),
                message: format!(
                    "the export takes {:?}; {} are passed as {params:?}",
                    export.params,
                    type_list(&P::types())
                ),
            });
        }
        let result = R::TYPE.wasm_result();
        if !same_shape(result, &export.results) {
            return Err(Error::GuestFunctionReturnTypeMismatch {
                function: name.to_owned(),
                message: format!(
                    "the export returns {:?}; {} is returned as {result:?}",
                    export.results,
                    R::TYPE
                ),
            });
        }
        Ok(TypedGuestFunction {
            name: name.to_owned(),
            types: PhantomData,
        })
    }

    /// Copies `len` bytes at `offset` out of the module's memory (the
    /// export [`crate::ModuleAbi`] names, `memory` by default), for modules
    /// that leave their output there.
    ///
    /// With fresh state per call (the default) memory is as the last call
    /// left it *before* its reset, i.e. the post-load state plus whatever
    /// [`LoadedWasmSandbox::write_memory`] wrote since; in persistent mode,
    /// as the last call left it. Reads larger than the output buffer are
    /// split into as many requests as they need.
    ///
    /// # Errors
    ///
    /// [`crate::Error::BadGuestPointer`] when the range lies outside the
    /// memory, [`crate::Error::MissingExport`] when the module exports no
    /// such memory.
    pub fn read_memory(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        let _span = tracing::debug_span!("read_memory", offset, len).entered();
        self.guest.read_memory(offset, len)
    }

    /// Writes `bytes` at `offset` into the module's memory, for modules
    /// that take their input there.
    ///
    /// With fresh state per call (the default) the next call sees what was
    /// written, and the reset after that call removes it (as it removes
    /// everything the call changed); in persistent mode it stays. Writes
    /// larger than the input buffer are split.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(sandbox: &mut hyperlight_wasm::LoadedWasmSandbox) -> hyperlight_wasm::Result<()> {
    /// sandbox.write_memory(1024, b"input")?;
    /// let sum: i32 = sandbox.call_guest_function("checksum", (1024, 5))?;
    /// # let _ = sum; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`LoadedWasmSandbox::read_memory`].
    pub fn write_memory(&mut self, offset: u32, bytes: &[u8]) -> Result<()> {
        let _span = tracing::debug_span!("write_memory", offset, len = bytes.len()).entered();
        self.guest.write_memory(offset, bytes)
    }

    /// Whether an earlier failure of the host's own machinery (KVM, the OS,
    /// a failed restore) left the sandbox unusable: every call then fails
    /// with [`crate::Error::Poisoned`], and the sandbox should be dropped.
    /// Guest faults, traps and cancellations do not poison it (the host
    /// restores the sandbox after them).
    pub fn is_poisoned(&self) -> bool {
        self.guest.poisoned().is_some()
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
        let _span = tracing::debug_span!("unload_module").entered();
        crate::metrics::metrics()
            .unloads_of_loaded_wasm_sandboxes
            .inc();
        self.guest.unload_module()?;
        Ok(WasmSandbox::new(self.guest))
    }
}

/// An export of a loaded module, typed: its signature was checked against
/// `P` and `R` once, by [`LoadedWasmSandbox::typed_function`]. It holds no
/// reference to the sandbox; call it with the sandbox it came from (after
/// [`LoadedWasmSandbox::unload_module`] its module is gone, and calls fail).
pub struct TypedGuestFunction<P, R> {
    name: String,
    types: PhantomData<fn(P) -> R>,
}

impl<P, R> std::fmt::Debug for TypedGuestFunction<P, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedGuestFunction")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<P, R> Clone for TypedGuestFunction<P, R> {
    fn clone(&self) -> Self {
        TypedGuestFunction {
            name: self.name.clone(),
            types: PhantomData,
        }
    }
}

impl<P: ParameterTuple, R: SupportedReturnType> TypedGuestFunction<P, R> {
    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls the function in `sandbox`.
    ///
    /// # Errors
    ///
    /// As [`LoadedWasmSandbox::call_guest_function`].
    pub fn call(&self, sandbox: &mut LoadedWasmSandbox, args: P) -> Result<R> {
        sandbox.call_guest_function(&self.name, args)
    }
}

/// Whether the wasm values a Rust signature is passed as are the export's.
fn same_shape(abi: &[WasmAbi], export: &[WasmType]) -> bool {
    abi.len() == export.len()
        && abi.iter().zip(export).all(|(a, t)| {
            matches!(
                (a, t),
                (WasmAbi::I32, WasmType::I32)
                    | (WasmAbi::I64, WasmType::I64)
                    | (WasmAbi::F32, WasmType::F32)
                    | (WasmAbi::F64, WasmType::F64)
                    | (WasmAbi::V128, WasmType::V128)
            )
        })
}

fn type_list(types: &[ValueType]) -> String {
    let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
    format!("({})", names.join(", "))
}
