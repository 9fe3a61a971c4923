//! The process-wide handle to `/dev/kvm`, opened and checked once.

use std::sync::OnceLock;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use super::error::VmError;

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
pub(crate) fn kvm() -> Result<&'static KvmHandle, VmError> {
    static HANDLE: OnceLock<KvmHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle);
    }
    let handle = open()?;
    Ok(HANDLE.get_or_init(|| handle))
}

fn open() -> Result<KvmHandle, VmError> {
    let kvm = Kvm::new().map_err(|e| VmError::Unavailable {
        reason: String::from(
            "cannot open /dev/kvm (hyperlight-wasm needs Linux with KVM: check that /dev/kvm \
             exists and that this user may read and write it)",
        ),
        source: Some(std::io::Error::from_raw_os_error(e.errno())),
    })?;
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(VmError::Unavailable {
                reason: format!("this KVM lacks {name}, which hyperlight-wasm needs"),
                source: None,
            });
        }
    }
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmError::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    expose_host_features(&mut cpuid);
    let sync_regs = kvm.check_extension(Cap::SyncRegs);
    let manual = kvm.check_extension_raw(libc::c_ulong::from(
        kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    ));
    let manual_dirty_log_protect =
        // KVM answers with the flags it supports (0: none, negative: never).
        u32::try_from(manual)
            .is_ok_and(|flags| flags & kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE != 0);
    Ok(KvmHandle {
        kvm,
        cpuid,
        sync_regs,
        manual_dirty_log_protect,
    })
}

impl KvmHandle {
    /// Whether the vCPUs, which get [`KvmHandle::cpuid`], see CPU feature
    /// `feature` (a wasmtime feature name from
    /// `hyperlight_wasm_protocol::engine::ISA_FEATURES`): what the guest's
    /// wasmtime will find when it checks a module's features with `cpuid`.
    /// This is not always what the host CPU has: a KVM may hide features
    /// (seen: a nested KVM without LZCNT on a CPU with it).
    pub(crate) fn vcpu_has_feature(&self, feature: &str) -> bool {
        let Some(&(_, leaf, register, bit)) = FEATURE_BITS.iter().find(|f| f.0 == feature) else {
            return false;
        };
        let entry = |function: u32| {
            self.cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == function && e.index == 0)
        };
        // The guest's cpuid reader only looks at leaves up to the maximum
        // the CPU reports (leaf 0, or 0x8000_0000 for extended leaves).
        let max = entry(leaf & 0x8000_0000).map_or(0, |e| e.eax);
        if max < leaf {
            return false;
        }
        entry(leaf).is_some_and(|e| {
            let value = [e.eax, e.ebx, e.ecx, e.edx][register];
            value >> bit & 1 == 1
        })
    }
}

const EBX: usize = 1;
const ECX: usize = 2;

/// Where CPUID reports each of `ISA_FEATURES`: (wasmtime feature name,
/// leaf, register, bit).
const FEATURE_BITS: [(&str, u32, usize, u32); 9] = [
    ("sse3", 1, ECX, 0),
    ("ssse3", 1, ECX, 9),
    ("cmpxchg16b", 1, ECX, 13),
    ("sse4.1", 1, ECX, 19),
    ("sse4.2", 1, ECX, 20),
    ("popcnt", 1, ECX, 23),
    ("bmi1", 7, EBX, 3),
    ("bmi2", 7, EBX, 8),
    ("lzcnt", 0x8000_0001, ECX, 5),
];

/// Sets, in the CPUID the vCPUs get, the bits of `FEATURE_BITS` that this
/// process's own CPUID reports.
///
/// Some KVMs leave these out of `KVM_GET_SUPPORTED_CPUID` although the CPU
/// has them (seen here: a nested KVM reporting neither SSE3, SSSE3, SSE4.1,
/// SSE4.2 nor POPCNT on a CPU with all of them). They are plain user-mode
/// instructions that no hypervisor intercepts, so the vCPU, running on the
/// CPU this process runs on, executes them whatever CPUID says. Without
/// them the host would compile for a CPU without SSE4.1, and Cranelift
/// would call wasmtime's float-rounding library functions, which the
/// guest's soft-float build cannot be called with (`f32.floor` returned its
/// argument; the spec suite found it).
fn expose_host_features(cpuid: &mut CpuId) {
    for &(feature, leaf, register, bit) in &FEATURE_BITS {
        if !host_has_feature(feature) {
            continue;
        }
        if let Some(entry) = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == leaf && e.index == 0)
        {
            match register {
                EBX => entry.ebx |= 1 << bit,
                _ => entry.ecx |= 1 << bit,
            }
        }
    }
}

/// Whether this process's CPU reports `feature` (a name from
/// `ISA_FEATURES`) in its own CPUID.
pub(crate) fn host_has_feature(feature: &str) -> bool {
    let Some(&(_, leaf, register, bit)) = FEATURE_BITS.iter().find(|f| f.0 == feature) else {
        return false;
    };
    // Leaves beyond the maximum return other leaves' values: checked.
    if std::arch::x86_64::__cpuid(leaf & 0x8000_0000).eax < leaf {
        return false;
    }
    let host = std::arch::x86_64::__cpuid_count(leaf, 0);
    [host.eax, host.ebx, host.ecx, host.edx][register] >> bit & 1 == 1
}

/// Whether this process can create sandboxes: `/dev/kvm` opens and offers
/// what hyperlight-wasm needs.
pub fn is_hypervisor_present() -> bool {
    kvm().is_ok()
}
