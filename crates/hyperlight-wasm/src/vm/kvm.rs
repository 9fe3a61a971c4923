//! The process-wide handle to `/dev/kvm`, opened and checked once.

use std::sync::OnceLock;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use crate::error::{Error, Result};

/// `/dev/kvm`, checked for what the VMM needs, and the CPUID it hands every
/// vCPU.
#[derive(Debug)]
pub(crate) struct KvmHandle {
    pub kvm: Kvm,
    pub cpuid: CpuId,
    /// Whether KVM takes vCPU registers through the `kvm_run` page
    /// (`KVM_CAP_SYNC_REGS`), which saves an ioctl for each register set.
    pub sync_regs: bool,
    /// Whether KVM write-protects pages for the dirty log only when asked
    /// (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`).
    pub manual_dirty_log_protect: bool,
}

/// Capabilities the VMM relies on.
const REQUIRED_CAPS: [(Cap, &str); 3] = [
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
];

/// The handle, opened on first use. A failure is not cached: a process can
/// be given access to `/dev/kvm` later.
pub(crate) fn kvm() -> Result<&'static KvmHandle> {
    static HANDLE: OnceLock<KvmHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle);
    }
    let handle = open()?;
    Ok(HANDLE.get_or_init(|| handle))
}

fn open() -> Result<KvmHandle> {
    let kvm = Kvm::new().map_err(|e| Error::HypervisorUnavailable {
        reason: format!(
            "cannot open /dev/kvm ({e}); hyperlight-wasm needs Linux with KVM: check that \
             /dev/kvm exists and that this user may read and write it"
        ),
        source: Some(e),
    })?;
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(Error::HypervisorUnavailable {
                reason: format!("this KVM lacks {name}, which hyperlight-wasm needs"),
                source: None,
            });
        }
    }
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| Error::Kvm {
            operation: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let sync_regs = kvm.check_extension(Cap::SyncRegs);
    let manual = kvm.check_extension_raw(libc::c_ulong::from(
        kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    ));
    let manual_dirty_log_protect =
        manual > 0 && manual as u32 & kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE != 0;
    Ok(KvmHandle {
        kvm,
        cpuid,
        sync_regs,
        manual_dirty_log_protect,
    })
}

/// Whether this process can create sandboxes: `/dev/kvm` opens and offers
/// what hyperlight-wasm needs.
pub fn is_hypervisor_present() -> bool {
    kvm().is_ok()
}
