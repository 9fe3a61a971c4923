//! [`Snapshot`]: a saved state of a sandbox.

use std::sync::Arc;

use crate::vm::snapshot;

/// A saved state of a [`crate::LoadedWasmSandbox`] (its guest memory and CPU
/// state), from [`crate::LoadedWasmSandbox::snapshot`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Snapshot {
    inner: Arc<snapshot::Snapshot>,
}

impl Snapshot {
    pub(crate) fn new(inner: Arc<snapshot::Snapshot>) -> Snapshot {
        Snapshot { inner }
    }

    pub(crate) fn inner(&self) -> &Arc<snapshot::Snapshot> {
        &self.inner
    }

    /// Bytes of guest memory the snapshot keeps a copy of.
    pub fn memory_bytes(&self) -> usize {
        self.inner.memory_bytes()
    }
}
