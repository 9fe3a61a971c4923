//! A guest session: one VM running our guest, the host's side of the
//! conversation with it, and its lifecycle (boot, module load and unload,
//! calls, recovery).
//!
//! - [`channel`]: request and response framing over guest memory.
//! - [`outcalls`]: the services the host gives a running guest.
//! - [`errors`]: what the guest reported, as the public error.
//! - [`images`]: which states are shared with other sandboxes.
//! - this file: the lifecycle, [`Guest::guarded`] and poisoning.
//!
//! State: after boot and after a module load the host takes a snapshot of
//! the VM, and shares it through the image cache ([`crate::vm::images`]) when
//! every sandbox of the configuration reaches that state the same way; the
//! next sandbox maps the image instead of booting or loading again. Unless
//! the sandbox keeps state (persistent mode), every call is followed by a
//! restore of the post-load snapshot, so each call starts from a fresh
//! instance. A failure that leaves the guest in an unknown state (a fault,
//! an abort, a broken protocol, a cancellation; see [`Error::aftermath`]) is
//! followed by that restore in either mode. Only a failure of the host
//! itself (KVM, the OS, a failed restore) poisons the [`Guest`]: every later
//! request then fails with [`Error::Poisoned`].

mod channel;
pub(crate) mod errors;
mod files;
#[cfg(feature = "__fuzz")]
pub mod fuzzing;
#[cfg(test)]
mod hostile;
mod images;
mod outcalls;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use hyperlight_wasm_protocol::PROTOCOL_VERSION;
use hyperlight_wasm_protocol::message::{
    ErrorCode, ModuleAbi, OutCall, OutCallReply, Request, Response, Value, ValueType,
};
use serde::Serialize;

use self::outcalls::HostServices;
pub(crate) use self::outcalls::PrintFn;
use crate::compile::artifact::Exports;
use crate::component::compile::CompiledComponent;
use crate::component::host_functions::ComponentFunctions;
use crate::component::types::ParamError;
use crate::component::{ResourceHandle, Val};
use crate::error::{self, Aftermath, Error, ProtocolError, Result};
use crate::sandbox::host_functions::{self, HostFunctions};
use crate::vm::error::VmError;
use crate::vm::images::ImageKey;
use crate::vm::interrupt::InterruptHandle;
use crate::vm::reaper::Reaped;
use crate::vm::snapshot::{Sharing, Snapshot};
use crate::vm::{GuestExit, Vm};
use hyperlight_wasm_protocol::component::MAX_HELD_RESOURCES;

/// A guest VM, the host's side of its imports, and the state of the
/// conversation with it.
pub(crate) struct Guest {
    /// Torn down on the reaper thread when the sandbox goes away.
    vm: Reaped<Vm>,
    poisoned: Option<String>,
    services: HostServices,
    /// Whether calls keep the state they leave (else each call starts from
    /// the post-load snapshot).
    persistent: bool,
    /// The VM right after boot.
    runtime_snapshot: Option<Arc<Snapshot>>,
    /// The VM right after the module loaded.
    module_snapshot: Option<Arc<Snapshot>>,
    /// The loaded module's exported functions, as the host compiled (or,
    /// for a precompiled module, was told) them; `None` when no module
    /// the host knows is loaded (test guests).
    exports: Option<Arc<Exports>>,
    /// The loaded component, if a component (not a module) is loaded.
    component: Option<Arc<CompiledComponent>>,
    /// The resources the component handed out in the current state.
    resources: LiveResources,
    /// Whether the current request stopped the guest in the middle (at an
    /// out-call).
    mid_request: bool,
    /// Whether an out-call answered since the last boot or load made the
    /// state reached private (see [`images::makes_state_private`]).
    state_private: bool,
    /// The exports a loaded module's strings and buffers go through.
    abi: ModuleAbi,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("vm", &self.vm)
            .field("poisoned", &self.poisoned)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // Freeing the snapshots' pages is work too: do it off the caller's
        // thread, with the VM.
        crate::vm::reaper::reap((self.runtime_snapshot.take(), self.module_snapshot.take()));
    }
}

/// What a module being loaded still needs copied in.
struct Artifact<'a> {
    bytes: &'a [u8],
    copied: bool,
}

impl Guest {
    /// Wraps a VM that has not run yet.
    pub(crate) fn new(vm: Vm, print: PrintFn, persistent: bool) -> Guest {
        let handle = vm.interrupt_handle();
        let sleep = Box::new(move |duration| handle.sleep(duration));
        Guest {
            vm: Reaped::new(vm),
            poisoned: None,
            services: HostServices::new(print, sleep),
            persistent,
            runtime_snapshot: None,
            module_snapshot: None,
            exports: None,
            component: None,
            resources: LiveResources::default(),
            mid_request: false,
            state_private: false,
            abi: ModuleAbi::default(),
        }
    }

    /// Grants the WASI configuration `wasi` (opening its preopened
    /// directories).
    ///
    /// # Errors
    ///
    /// [`Error::PreopenedDir`] when one cannot be opened.
    pub(crate) fn set_wasi(&mut self, wasi: &crate::sandbox::WasiConfig) -> Result<()> {
        let files = files::FileTable::new(wasi)
            .map_err(|(path, source)| Error::PreopenedDir { path, source })?;
        self.services
            .set_wasi(outcalls::WasiState::new(wasi), files);
        Ok(())
    }

    /// Names the exports the next module's strings and buffers go through.
    pub(crate) fn set_module_abi(&mut self, abi: ModuleAbi) {
        self.abi = abi;
    }

    /// A handle that stops the running call from other threads.
    pub(crate) fn interrupt_handle(&self) -> InterruptHandle {
        self.vm.interrupt_handle()
    }

    /// Why the guest is unusable, if it is.
    pub(crate) fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// The loaded module's exports, if the host knows them.
    pub(crate) fn exports(&self) -> Option<&Arc<Exports>> {
        self.exports.as_ref()
    }

    /// Takes a snapshot of the sandbox as it is now.
    pub(crate) fn snapshot(&mut self) -> Result<Arc<Snapshot>> {
        self.check_usable()?;
        let snapshot = self.vm.snapshot(Sharing::Private);
        self.poison_on_error(snapshot)
    }

    /// Puts the sandbox back to `snapshot`.
    pub(crate) fn restore(&mut self, snapshot: &Arc<Snapshot>) -> Result<()> {
        self.check_usable()?;
        match self.vm.restore(snapshot) {
            // Checked before anything changed: the sandbox is as it was.
            Err(VmError::SnapshotMismatch) => Err(Error::SnapshotMismatch),
            restored => self.poison_on_error(restored),
        }
    }

    /// The host functions modules may import.
    pub(crate) fn host_functions_mut(&mut self) -> &mut HostFunctions {
        self.services.functions_mut()
    }

    /// The host functions components may import.
    pub(crate) fn component_functions_mut(&mut self) -> &mut ComponentFunctions {
        self.services.components_mut()
    }

    /// Brings the guest's runtime up: maps the configuration's shared
    /// post-runtime image if there is one, else runs the guest from its
    /// entry point until its runtime is ready and takes that image.
    pub(crate) fn boot(&mut self) -> Result<()> {
        let key = self.vm.image_key(None);
        if let Some(image) = key.as_ref().and_then(crate::vm::images::get) {
            tracing::debug!("runtime mapped from the shared image");
            self.adopt(&image)?;
            self.runtime_snapshot = Some(image);
            return Ok(());
        }
        if self.vm.runs_embedded_guest() {
            let booted = self.vm.boot_embedded();
            self.poison_on_error(booted)?;
        }
        self.state_private = false;
        self.guarded(false, |guest| match guest.run_to_done(None)? {
            Response::Ready { protocol_version } if protocol_version == PROTOCOL_VERSION => Ok(()),
            Response::Ready { protocol_version } => Err(ProtocolError::VersionMismatch {
                guest: protocol_version,
                host: PROTOCOL_VERSION,
            }
            .into()),
            other => Err(guest.unexpected_response("the ready message", other, None)),
        })?;
        self.runtime_snapshot = Some(self.take_image(key)?);
        Ok(())
    }

    /// Loads a precompiled module (`hash` identifies it): maps the shared
    /// post-load image for it if there is one; else the guest allocates room
    /// for it, the host copies it there, the guest deserializes, links and
    /// instantiates it, and the host takes that image.
    pub(crate) fn load_module(
        &mut self,
        artifact: &[u8],
        hash: &[u8; 32],
        exports: &Arc<Exports>,
    ) -> Result<()> {
        let signatures = host_functions::signatures(self.services.functions());
        let abi = self.abi.clone();
        let link = (&signatures, &abi);
        let request = Request::LoadModule {
            artifact_len: artifact.len() as u64,
            host_functions: signatures.clone(),
            abi: self.abi.clone(),
        };
        self.load(&request, artifact, hash, &link)?;
        self.exports = Some(Arc::clone(exports));
        Ok(())
    }

    /// Loads a compiled component, its imports linked to the host's
    /// component functions, as [`Guest::load_module`] loads a module.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownImport`] for an import no host function was
    /// registered for, and the errors of a module load.
    pub(crate) fn load_component(&mut self, component: &Arc<CompiledComponent>) -> Result<()> {
        let imports = self.services.link_component(&component.imports)?;
        let request = Request::LoadComponent {
            artifact_len: component.code.len() as u64,
            imports: imports.clone(),
        };
        self.load(
            &request,
            &component.code,
            &component.hash,
            &("component", &imports),
        )?;
        self.component = Some(Arc::clone(component));
        Ok(())
    }

    /// Maps the shared post-load image for the artifact whose hash is
    /// `hash`, linked as `link` says, if there is one; else sends `request`,
    /// copies the artifact in when the guest asks for it, and takes that
    /// image.
    fn load(
        &mut self,
        request: &Request,
        artifact: &[u8],
        hash: &[u8; 32],
        link: &impl Serialize,
    ) -> Result<()> {
        let runtime = self.runtime_image()?;
        let key = images::module_key(&self.vm, &runtime, hash, link)?;
        if let Some(image) = key.as_ref().and_then(crate::vm::images::get) {
            tracing::debug!("module mapped from the shared image");
            self.adopt(&image)?;
            self.module_snapshot = Some(image);
            return Ok(());
        }
        self.state_private = false;
        self.guarded(false, |guest| {
            guest.send(request)?;
            let mut artifact = Artifact {
                bytes: artifact,
                copied: false,
            };
            match guest.run_to_done(Some(&mut artifact))? {
                Response::ModuleLoaded if artifact.copied => Ok(()),
                other => Err(guest.unexpected_response("the module-loaded message", other, None)),
            }
        })?;
        self.module_snapshot = Some(self.take_image(key)?);
        Ok(())
    }

    /// The loaded component's exports, sorted by name (empty without one).
    pub(crate) fn component_exports(&self) -> &[crate::component::ComponentFunction] {
        self.component.as_deref().map_or(&[], |c| &c.exports)
    }

    /// Calls the loaded component's export `function` (`name` or
    /// `interface#name`) with `args`, checked against its type here, and
    /// checks its results as they come back.
    pub(crate) fn call_component(&mut self, function: &str, args: &[Val]) -> Result<Vec<Val>> {
        let fail = |e: Error| {
            crate::metrics::record_error(&e);
            Err(e)
        };
        if let Err(e) = self.check_usable() {
            return fail(e);
        }
        let Some(component) = self.component.clone() else {
            return fail(Error::Internal {
                reason: String::from("a component call without a loaded component"),
            });
        };
        let Some(export) = component.export(function) else {
            return fail(Error::GuestFunctionNotFound {
                function: function.to_owned(),
            });
        };
        if let Some(kind) = export.ty.params.iter().find_map(|(_, t)| t.unsupported()) {
            return fail(Error::GuestFunctionParameterTypeMismatch {
                function: function.to_owned(),
                message: format!(
                    "it takes a value of type {kind}, which cannot cross the boundary yet"
                ),
            });
        }
        if let Some(kind) = export
            .ty
            .results
            .iter()
            .find_map(crate::component::Type::unsupported)
        {
            return fail(Error::GuestFunctionReturnTypeMismatch {
                function: function.to_owned(),
                message: format!(
                    "it returns a value of type {kind}, which cannot cross the boundary yet"
                ),
            });
        }
        if let Err(e) = export.ty.check_params(args) {
            return fail(match e {
                ParamError::Count(message) => Error::GuestFunctionParameterCountMismatch {
                    function: function.to_owned(),
                    message,
                },
                ParamError::Type(message) => Error::GuestFunctionParameterTypeMismatch {
                    function: function.to_owned(),
                    message,
                },
            });
        }
        let given = match self.check_handles(function, &export.ty, args) {
            Ok(given) => given,
            Err(e) => return fail(e),
        };
        let nodes = match hyperlight_wasm_protocol::component::flatten(args) {
            Ok(nodes) => nodes,
            Err(e) => {
                return fail(Error::GuestFunctionParameterTypeMismatch {
                    function: function.to_owned(),
                    message: e.to_string(),
                });
            }
        };
        let reset = !self.persistent;
        #[cfg(feature = "function_call_metrics")]
        let start = std::time::Instant::now();
        let result = self.guarded(reset, |guest| {
            guest.send(&Request::CallComponent {
                function: function.to_owned(),
                args: nodes,
            })?;
            match guest.run_to_done(None)? {
                Response::ComponentReturned(nodes) => {
                    let results = export.ty.results.len();
                    let mut vals =
                        hyperlight_wasm_protocol::component::unflatten_exact(nodes, results)
                            .map_err(|e| errors::unexpected("well-formed component values", &e))?;
                    export
                        .ty
                        .check_results(&vals)
                        .map_err(|e| errors::unexpected("results of the function's type", &e))?;
                    guest.take_handles(&given, &export.ty, &mut vals)?;
                    Ok(vals)
                }
                other => {
                    Err(guest.unexpected_response("the function's results", other, Some(function)))
                }
            }
        });
        // The name is one the component exports (checked above).
        #[cfg(feature = "function_call_metrics")]
        crate::metrics::record_guest_call(function, start.elapsed().as_secs_f64() * 1e6);
        self.after_failed_component_call(reset, &result);
        result
    }

    /// The live resources of the current state (forgetting those of an
    /// earlier one).
    fn live_resources(&mut self) -> &mut LiveResources {
        let epoch = self.vm.state_epoch();
        if self.resources.epoch != epoch {
            self.resources = LiveResources {
                epoch,
                ..LiveResources::default()
            };
        }
        &mut self.resources
    }

    /// Checks that every resource handle in `args` is live in this sandbox's
    /// current state and of the resource its parameter names, that none is
    /// given away twice, and that none is both lent and given away. Returns
    /// the ones passed `own`.
    fn check_handles(
        &mut self,
        function: &str,
        ty: &crate::component::FuncType,
        args: &[Val],
    ) -> Result<Vec<u64>> {
        let mut handles = Vec::new();
        for ((_, param), arg) in ty.params.iter().zip(args) {
            param.handles(arg, &mut handles);
        }
        let epoch = self.vm.state_epoch();
        let live = self.live_resources();
        let invalid = |id: u64, why: &str| Error::InvalidResource {
            message: format!("resource handle {id} passed to `{function}` {why}"),
        };
        let (mut given, mut lent) = (Vec::new(), Vec::new());
        for found in &handles {
            let id = found.handle.id();
            if found.handle.epoch() != epoch {
                return Err(invalid(
                    id,
                    "is not one of this sandbox's current state (handles end when the \
                     sandbox's state is reset: after every call with fresh state, after a \
                     restore or a failed call; resources need persistent mode)",
                ));
            }
            match live.types.get(&id) {
                Some(resource) if *resource == type_key(found.resource) => {}
                Some(_) => {
                    return Err(Error::GuestFunctionParameterTypeMismatch {
                        function: function.to_owned(),
                        message: format!(
                            "resource handle {id} is not a `{}`: it is of another resource type",
                            found.resource
                        ),
                    });
                }
                None => return Err(invalid(id, "was dropped or given back to the component")),
            }
            if found.own {
                if given.contains(&id) {
                    return Err(invalid(id, "is given away twice"));
                }
                given.push(id);
            } else {
                lent.push(id);
            }
        }
        if let Some(id) = given.iter().find(|id| lent.contains(id)) {
            return Err(invalid(*id, "is both lent and given away"));
        }
        Ok(given)
    }

    /// After a call returned: forgets the resources given away, and stamps
    /// and records those the results hold: new handles, in increasing
    /// numbers (the guest never reuses one), no more than the guest may
    /// hold.
    fn take_handles(
        &mut self,
        given: &[u64],
        ty: &crate::component::FuncType,
        results: &mut [Val],
    ) -> Result<()> {
        let epoch = self.vm.state_epoch();
        let live = self.live_resources();
        for id in given {
            live.types.remove(id);
        }
        for (ty, result) in ty.results.iter().zip(results.iter_mut()) {
            let mut handles = Vec::new();
            ty.handles(result, &mut handles);
            for found in &handles {
                let id = found.handle.id();
                if !found.own {
                    return Err(errors::unexpected(
                        "resources returned as own",
                        &"a borrowed resource",
                    ));
                }
                if id < live.next {
                    return Err(errors::unexpected(
                        "a resource number not used before",
                        &format!("resource {id} (numbers from {} on are new)", live.next),
                    ));
                }
                if live.types.len() >= MAX_HELD_RESOURCES {
                    return Err(errors::unexpected(
                        "no more resources than the guest may hold",
                        &format!("a resource past {MAX_HELD_RESOURCES}"),
                    ));
                }
                live.types.insert(id, type_key(found.resource));
                live.next = id.saturating_add(1);
            }
            stamp(result, epoch);
        }
        Ok(())
    }

    /// Drops a resource the component handed out (see
    /// [`crate::LoadedComponentSandbox::drop_resource`]).
    pub(crate) fn drop_resource(&mut self, handle: ResourceHandle) -> Result<()> {
        let id = handle.id();
        let epoch = self.vm.state_epoch();
        let known = handle.epoch() == epoch && self.live_resources().types.contains_key(&id);
        if !known {
            let e = Error::InvalidResource {
                message: format!(
                    "resource handle {id} is not live in this sandbox (dropped, given back, or \
                     from an earlier state)"
                ),
            };
            crate::metrics::record_error(&e);
            return Err(e);
        }
        let reset = !self.persistent;
        let result = self.guarded(reset, |guest| {
            guest.send(&Request::DropResource { id })?;
            match guest.run_to_done(None)? {
                Response::ComponentReturned(nodes) if nodes.is_empty() => Ok(()),
                other => Err(guest.unexpected_response("the resource dropped", other, None)),
            }
        });
        self.live_resources().types.remove(&id);
        self.after_failed_component_call(reset, &result);
        result
    }

    /// wasmtime never enters a component instance again after a call of it
    /// failed (a trap, a host function's error, a destructor's trap): a
    /// persistent sandbox goes back to the post-load state, where a fresh
    /// one already is.
    fn after_failed_component_call<T>(&mut self, reset: bool, result: &Result<T>) {
        if let Err(e) = result
            && !reset
            && e.aftermath() == Aftermath::Clean
            && let Some(snapshot) = self.reset_target()
        {
            let restored = self.vm.restore(&snapshot);
            let _poisoned_if_failed = self.poison_on_error(restored);
        }
    }

    /// The post-runtime image, if the guest is usable and booted.
    fn runtime_image(&self) -> Result<Arc<Snapshot>> {
        self.check_usable()?;
        self.runtime_snapshot
            .clone()
            .ok_or_else(|| Error::Poisoned {
                reason: String::from("the guest never finished booting"),
            })
    }

    /// Maps `image` over the VM (see [`Vm::adopt`]) unless the guest is
    /// poisoned; poisons it if that fails.
    fn adopt(&mut self, image: &Arc<Snapshot>) -> Result<()> {
        self.check_usable()?;
        let adopted = self.vm.adopt(image);
        self.poison_on_error(adopted)
    }

    /// Takes the snapshot of a state just reached, and shares it as the
    /// image for `key` unless an out-call on the way made it private.
    fn take_image(&mut self, key: Option<ImageKey>) -> Result<Arc<Snapshot>> {
        let snapshot = self.vm.snapshot(Sharing::Shared);
        let snapshot = self.poison_on_error(snapshot)?;
        if let Some(key) = key.filter(|_| !self.state_private) {
            crate::vm::images::insert(key, Arc::clone(&snapshot));
        }
        Ok(snapshot)
    }

    /// Calls an exported function.
    pub(crate) fn call(
        &mut self,
        function: &str,
        args: Vec<Value>,
        returns: ValueType,
    ) -> Result<Value> {
        let reset = !self.persistent;
        // The host knows what the module exports: a name it does not
        // export never reaches the guest.
        let exported = match &self.exports {
            Some(exports) if self.poisoned.is_none() => {
                if !exports.contains_key(function) {
                    let e = Error::GuestFunctionNotFound {
                        function: function.to_owned(),
                    };
                    crate::metrics::record_error(&e);
                    return Err(e);
                }
                true
            }
            _ => false,
        };
        #[cfg(feature = "function_call_metrics")]
        let start = std::time::Instant::now();
        let result = self.guarded(reset, |guest| {
            guest.send(&Request::Call {
                function: function.to_owned(),
                args,
                returns,
            })?;
            match guest.run_to_done(None)? {
                Response::Returned(value) if value.ty() == returns => Ok(value),
                // A WASI command that exits with 0 succeeded.
                Response::Exited { code: 0 } if returns == ValueType::Void => Ok(Value::Void),
                other => {
                    Err(guest.unexpected_response("the function's result", other, Some(function)))
                }
            }
        });
        // Only functions the host knows the module exports get a series:
        // neither callers calling made-up names nor a guest answering for
        // them can create label values.
        #[cfg(feature = "function_call_metrics")]
        if exported {
            crate::metrics::record_guest_call(function, start.elapsed().as_secs_f64() * 1e6);
        }
        #[cfg(not(feature = "function_call_metrics"))]
        let _ = exported;
        result
    }

    /// Copies `len` bytes at `offset` out of the module's memory, in as
    /// many requests as the output buffer needs. Runs like a call, but
    /// without the reset after it: memory is read as the last call (or
    /// write) left it.
    pub(crate) fn read_memory(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        check_memory_range(offset, len)?;
        let chunk = self.transfer_chunk(self.vm.layout().output.size);
        let mut bytes = Vec::new();
        while bytes.len() < len as usize {
            let done = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            let want = (len - done).min(chunk);
            let request = Request::ReadMemory {
                offset: offset + done,
                len: want,
            };
            let piece = self.guarded(false, |guest| {
                guest.send(&request)?;
                match guest.run_to_done(None)? {
                    Response::Returned(Value::Bytes(piece)) if piece.len() == want as usize => {
                        Ok(piece)
                    }
                    other => Err(guest.unexpected_response("the memory's bytes", other, None)),
                }
            })?;
            bytes.extend_from_slice(&piece);
        }
        Ok(bytes)
    }

    /// Writes `bytes` at `offset` into the module's memory, in as many
    /// requests as the input buffer needs; no reset follows (the next call
    /// sees the bytes, and its own reset removes them unless the sandbox is
    /// persistent).
    pub(crate) fn write_memory(&mut self, offset: u32, bytes: &[u8]) -> Result<()> {
        let len = u32::try_from(bytes.len()).map_err(|_| Error::BadGuestPointer {
            message: format!("{} bytes do not fit a 32-bit module memory", bytes.len()),
        })?;
        check_memory_range(offset, len)?;
        let chunk = self.transfer_chunk(self.vm.layout().input.size) as usize;
        let mut done = 0usize;
        for piece in bytes.chunks(chunk.max(1)) {
            let at = offset + u32::try_from(done).unwrap_or(u32::MAX);
            let request = Request::WriteMemory {
                offset: at,
                bytes: piece.to_vec(),
            };
            self.guarded(false, |guest| {
                guest.send(&request)?;
                match guest.run_to_done(None)? {
                    Response::Returned(Value::Void) => Ok(()),
                    other => Err(guest.unexpected_response("the write's end", other, None)),
                }
            })?;
            done += piece.len();
        }
        Ok(())
    }

    /// The bytes one message through a buffer of `size` bytes carries,
    /// leaving room for the message around them.
    fn transfer_chunk(&self, size: u64) -> u32 {
        u32::try_from(size.saturating_sub(1024).max(1)).unwrap_or(u32::MAX)
    }

    /// Drops the loaded module: the VM goes back to the post-runtime
    /// snapshot (the host resets it; the guest has no say).
    pub(crate) fn unload_module(&mut self) -> Result<()> {
        // Mapping the image again copies nothing and frees every page the
        // module used.
        let runtime = self.runtime_image()?;
        self.adopt(&runtime)?;
        self.module_snapshot = None;
        self.exports = None;
        self.component = None;
        // The guest can no longer call the component's imports.
        self.services.components_mut().unlink();
        Ok(())
    }

    /// The error for a response other than the one a request expects: the
    /// guest's reported failure, the module's exit, or a protocol error.
    fn unexpected_response(
        &mut self,
        expected: &'static str,
        response: Response,
        function: Option<&str>,
    ) -> Error {
        match response {
            Response::Failed(e) => {
                let host_failure = self.services.take_failure();
                match (e.code, host_failure) {
                    (ErrorCode::HostFunctionFailed, Some(failure)) => failure,
                    _ => errors::guest_error(e, function),
                }
            }
            Response::Exited { code } => Error::GuestExited { code },
            other => errors::unexpected(expected, &other),
        }
    }

    fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(Error::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Poisons the guest if `result` is an error (a failure of the host's
    /// own machinery: the VM can no longer be trusted).
    fn poison_on_error<T>(&mut self, result: Result<T, VmError>) -> Result<T> {
        result.map_err(|e| {
            let e = Error::from(e);
            self.poisoned = Some(error::chain(&e));
            tracing::warn!(reason = %error::chain(&e), "sandbox poisoned");
            e
        })
    }

    /// The snapshot a failed or finished request goes back to.
    fn reset_target(&self) -> Option<Arc<Snapshot>> {
        self.module_snapshot
            .clone()
            .or_else(|| self.runtime_snapshot.clone())
    }

    /// Runs one guest request (under the call's time limit and interrupt
    /// handle) unless the guest is poisoned. Afterwards restores the latest
    /// state snapshot if `reset` asks for it or the failure left the guest
    /// in an unknown state; poisons the guest if the host itself failed.
    fn guarded<T>(&mut self, reset: bool, step: impl FnOnce(&mut Guest) -> Result<T>) -> Result<T> {
        if let Err(e) = self.check_usable() {
            crate::metrics::record_error(&e);
            return Err(e);
        }
        self.services.begin_request();
        self.mid_request = false;
        if let Err(e) = self.vm.begin_call() {
            let e = Error::from(e);
            crate::metrics::record_error(&e);
            return Err(e);
        }
        // A panic (in the print function, or a bug of ours) must not leave
        // the call marked running or the guest half-way through a request.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(self)));
        self.vm.end_call();
        let result = match outcome {
            Ok(result) => result,
            Err(payload) => {
                let restored = self.reset_target().map(|s| self.vm.restore(&s));
                if !matches!(restored, Some(Ok(()))) {
                    self.poisoned = Some(format!(
                        "a panic interrupted a guest call: {}",
                        errors::panic_message(&*payload)
                    ));
                }
                std::panic::resume_unwind(payload);
            }
        };
        if let Err(e) = &result {
            crate::metrics::record_error(e);
            // Bounded fields only: the error's kind, never the guest's text.
            let (kind, what) = crate::metrics::labels(e);
            tracing::debug!(kind, what, "guest request failed");
        }
        let aftermath = match &result {
            Ok(_) => Aftermath::Clean,
            // The guest was stopped in the middle of the request (waiting for
            // the answer to an out-call): whatever the error, its state is
            // not one to continue from.
            Err(e) if self.mid_request && e.aftermath() == Aftermath::Clean => Aftermath::Restore,
            Err(e) => e.aftermath(),
        };
        if aftermath == Aftermath::Poison {
            if let Err(e) = &result {
                self.poisoned = Some(error::chain(e));
                tracing::warn!(reason = %error::chain(e), "sandbox poisoned");
            }
            return result;
        }
        if reset || aftermath == Aftermath::Restore {
            let restored = match self.reset_target() {
                Some(snapshot) => self.vm.restore(&snapshot).map_err(Error::from),
                None => Err(Error::Poisoned {
                    reason: String::from("there is no state to restore yet"),
                }),
            };
            if let Err(restore_error) = restored {
                let cause = match &result {
                    Err(e) => format!("{}; restoring the sandbox then failed: ", error::chain(e)),
                    Ok(_) => String::from("resetting the sandbox after a call failed: "),
                };
                tracing::warn!(reason = %error::chain(&restore_error), "restore failed: sandbox poisoned");
                self.poisoned = Some(cause + &error::chain(&restore_error));
                return result.and(Err(restore_error));
            }
        }
        result
    }

    /// Writes a message into the input buffer.
    fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        let input = self.vm.layout().input;
        crate::vm::timing::time(crate::vm::timing::Part::Request, || {
            channel::send(self.vm.memory_mut(), input, msg)
        })
    }

    /// The payload of the message in the output buffer.
    fn read_output_payload(&self, what: &'static str) -> Result<Vec<u8>> {
        channel::read_payload(self.vm.memory(), self.vm.layout().output, what)
    }

    /// Runs the guest until it answers, serving its out-calls; `artifact` is
    /// the module being loaded, if any.
    fn run_to_done(&mut self, mut artifact: Option<&mut Artifact<'_>>) -> Result<Response> {
        loop {
            match self.vm.run()? {
                GuestExit::Done => {
                    return crate::vm::timing::time(crate::vm::timing::Part::Response, || {
                        channel::read(self.vm.memory(), self.vm.layout().output, "a response")
                    });
                }
                GuestExit::OutCall => {
                    self.mid_request = true;
                    let payload = self.read_output_payload("an out-call")?;
                    let call = self.services.decode(&payload)?;
                    self.state_private |= images::makes_state_private(&call);
                    let reply = match call {
                        OutCall::ArtifactBuffer { addr, len } => {
                            self.copy_artifact(addr, len, artifact.as_deref_mut())?
                        }
                        call => {
                            let capacity = self.vm.layout().input.size;
                            self.services.serve(call, capacity)?
                        }
                    };
                    match self.send(&reply) {
                        Ok(()) => {}
                        // A host function's result that does not fit: the
                        // guest call fails with that error.
                        Err(e @ Error::RequestTooLarge { .. }) => {
                            let reply = self.services.reply_unsendable(e);
                            self.send(&reply)?;
                        }
                        Err(e) => return Err(e),
                    }
                    self.mid_request = false;
                }
                GuestExit::Abort => {
                    return Err(errors::abort_error(
                        self.read_output_payload("an abort message"),
                    ));
                }
            }
        }
    }

    /// Copies the module being loaded into the buffer the guest named.
    fn copy_artifact(
        &mut self,
        addr: u64,
        len: u64,
        artifact: Option<&mut Artifact<'_>>,
    ) -> Result<OutCallReply> {
        let Some(artifact) = artifact.filter(|a| !a.copied) else {
            return Err(errors::unexpected(
                "no artifact request",
                &OutCall::ArtifactBuffer { addr, len },
            ));
        };
        let needed = artifact.bytes.len() as u64;
        if len != needed {
            return Err(ProtocolError::WrongLength {
                offered: len,
                needed,
            }
            .into());
        }
        // The guest names the buffer; it must lie in its heap.
        if !self.vm.layout().heap.contains_range(addr, len) {
            return Err(ProtocolError::OutOfBounds { addr, len }.into());
        }
        self.vm.memory_mut().write(addr, artifact.bytes)?;
        artifact.copied = true;
        Ok(OutCallReply::Done)
    }
}

/// Refuses a range that runs past the 4 GiB a 32-bit memory can have.
fn check_memory_range(offset: u32, len: u32) -> Result<()> {
    if u64::from(offset) + u64::from(len) > 1 << 32 {
        return Err(Error::BadGuestPointer {
            message: format!(
                "{len} bytes at offset {offset:#x} run past the end of a 32-bit memory"
            ),
        });
    }
    Ok(())
}

/// Stamps the state's `epoch` on every resource handle in `val`.
fn stamp(val: &mut Val, epoch: u64) {
    match val {
        Val::Resource(handle) => *handle = ResourceHandle::new(handle.id(), epoch),
        Val::List(items) | Val::Tuple(items) => items.iter_mut().for_each(|v| stamp(v, epoch)),
        Val::Record(fields) => fields.iter_mut().for_each(|(_, v)| stamp(v, epoch)),
        Val::Variant(_, Some(v))
        | Val::Option(Some(v))
        | Val::Result(Ok(Some(v)) | Err(Some(v))) => {
            stamp(v, epoch);
        }
        _ => {}
    }
}

/// The resources a component handed out in one state of its sandbox.
#[derive(Debug, Default)]
struct LiveResources {
    /// The state ([`Vm::state_epoch`]).
    epoch: u64,
    /// The lowest number a new resource may have.
    next: u64,
    /// By number: a key of the resource type's name ([`type_key`]).
    types: HashMap<u64, u64>,
}

/// A fixed-size key for a resource type's name (names can be long; the
/// guest's wasmtime checks the real types again when it lowers a handle).
fn type_key(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish()
}
