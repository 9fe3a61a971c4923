//! [`ProtoWasmSandbox`]: a sandbox whose VM exists but whose guest has not
//! started.

use crate::error::Result;
use crate::guest::Guest;
use crate::sandbox::WasmSandbox;

/// A sandbox created by [`crate::SandboxBuilder::build`]: its VM and memory
/// exist, its guest has not run yet.
#[derive(Debug)]
pub struct ProtoWasmSandbox {
    guest: Guest,
}

impl ProtoWasmSandbox {
    pub(crate) fn new(guest: Guest) -> ProtoWasmSandbox {
        ProtoWasmSandbox { guest }
    }

    /// Boots the guest and starts its WebAssembly runtime.
    ///
    /// # Errors
    ///
    /// Fails if the guest does not come up (for example a heap too small for
    /// the runtime: [`crate::Error::GuestOutOfMemory`]). The sandbox is
    /// consumed either way.
    pub fn load_runtime(mut self) -> Result<WasmSandbox> {
        self.guest.boot()?;
        Ok(WasmSandbox::new(self.guest))
    }
}
