//! The vCPU's state as a snapshot keeps it, and putting a vCPU back to it.
//!
//! Capture reads the general and special registers, the events and the
//! whole floating-point and vector state (the XSAVE area where KVM has it:
//! x87, SSE with MXCSR, AVX). Apply sets the general and special registers
//! and the events through the `kvm_run` page where KVM supports it (no
//! ioctl each: KVM applies them at the next entry), and the floating-point
//! state by ioctl.

use super::timing::{Part, time};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xsave};
use kvm_ioctls::{SyncReg, VcpuFd};

use super::error::VmError;
use super::run::KvmRun;

/// The vCPU's floating-point and vector state.
#[derive(Debug)]
enum FpuState {
    /// The whole XSAVE area: x87, SSE (XMM and MXCSR), AVX (the upper
    /// halves of YMM) and whatever else the CPU keeps there.
    Xsave(Box<kvm_xsave>),
    /// Where KVM has no XSAVE: x87 and XMM only (KVM_SET_FPU ignores MXCSR).
    Fpu(Box<kvm_fpu>),
}

/// How a VM's vCPU state is read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VcpuCaps {
    /// Whether registers are set through the `kvm_run` page
    /// (`KVM_CAP_SYNC_REGS`).
    pub sync_regs: bool,
    /// Whether the floating-point state is the whole XSAVE area (else
    /// x87 and XMM only, through KVM_GET/SET_FPU).
    pub use_xsave: bool,
}

/// Everything of a vCPU that a snapshot brings back.
#[derive(Debug)]
pub(crate) struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    fpu: FpuState,
    events: kvm_vcpu_events,
}

impl VcpuState {
    /// Reads `vcpu`'s state.
    pub(crate) fn capture(vcpu: &VcpuFd, caps: VcpuCaps) -> Result<VcpuState, VmError> {
        let regs = vcpu.get_regs().map_err(VmError::kvm("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(VmError::kvm("KVM_GET_SREGS"))?;
        let fpu = if caps.use_xsave {
            // KVM writes at most this VM's XSAVE size, checked in `Vm::new`
            // to fit `kvm_xsave`.
            FpuState::Xsave(Box::new(
                vcpu.get_xsave().map_err(VmError::kvm("KVM_GET_XSAVE"))?,
            ))
        } else {
            FpuState::Fpu(Box::new(
                vcpu.get_fpu().map_err(VmError::kvm("KVM_GET_FPU"))?,
            ))
        };
        let events = vcpu
            .get_vcpu_events()
            .map_err(VmError::kvm("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            regs,
            sregs,
            fpu,
            events,
        })
    }

    /// Whether this state was captured with [`VcpuCaps::use_xsave`].
    pub(crate) fn uses_xsave(&self) -> bool {
        matches!(self.fpu, FpuState::Xsave(_))
    }

    /// Puts `vcpu` (whose `kvm_run` page is `run`) back to this state.
    pub(crate) fn apply(&self, vcpu: &VcpuFd, run: &KvmRun, caps: VcpuCaps) -> Result<(), VmError> {
        time(Part::Registers, || self.apply_registers(vcpu, run, caps))?;
        time(Part::Fpu, || self.apply_fpu(vcpu))
    }

    fn apply_registers(&self, vcpu: &VcpuFd, run: &KvmRun, caps: VcpuCaps) -> Result<(), VmError> {
        if caps.sync_regs {
            let mut sync = run.sync_regs();
            sync.regs = self.regs;
            sync.sregs = self.sregs;
            sync.events = self.events;
            run.set_sync_regs(&sync);
            run.set_dirty_regs(
                run.dirty_regs()
                    | SyncReg::Register as u64
                    | SyncReg::SystemRegister as u64
                    | SyncReg::VcpuEvents as u64,
            );
        } else {
            vcpu.set_regs(&self.regs)
                .map_err(VmError::kvm("KVM_SET_REGS"))?;
            vcpu.set_sregs(&self.sregs)
                .map_err(VmError::kvm("KVM_SET_SREGS"))?;
            vcpu.set_vcpu_events(&self.events)
                .map_err(VmError::kvm("KVM_SET_VCPU_EVENTS"))?;
        }
        Ok(())
    }

    fn apply_fpu(&self, vcpu: &VcpuFd) -> Result<(), VmError> {
        match &self.fpu {
            FpuState::Xsave(xsave) => {
                // SAFETY: KVM copies at most the XSAVE size of this VM, which
                // `Vm::new` checked is at most the 4096 bytes of `kvm_xsave`
                // (`use_xsave` is false otherwise).
                unsafe { vcpu.set_xsave(xsave) }.map_err(VmError::kvm("KVM_SET_XSAVE"))?;
            }
            FpuState::Fpu(fpu) => vcpu.set_fpu(fpu).map_err(VmError::kvm("KVM_SET_FPU"))?,
        }
        Ok(())
    }
}

/// Applies registers still waiting in the `kvm_run` page with ioctls, so
/// that reading them back gives what was set. (KVM applies them on entry,
/// before it looks at `immediate_exit`, on the kernels we know; this covers
/// any that do not.)
pub(crate) fn apply_pending_registers(vcpu: &VcpuFd, run: &KvmRun) -> Result<(), VmError> {
    let pending = run.dirty_regs();
    if pending == 0 {
        return Ok(());
    }
    let sync = run.sync_regs();
    if pending & SyncReg::Register as u64 != 0 {
        vcpu.set_regs(&sync.regs)
            .map_err(VmError::kvm("KVM_SET_REGS"))?;
    }
    if pending & SyncReg::SystemRegister as u64 != 0 {
        vcpu.set_sregs(&sync.sregs)
            .map_err(VmError::kvm("KVM_SET_SREGS"))?;
    }
    if pending & SyncReg::VcpuEvents as u64 != 0 {
        vcpu.set_vcpu_events(&sync.events)
            .map_err(VmError::kvm("KVM_SET_VCPU_EVENTS"))?;
    }
    run.set_dirty_regs(0);
    Ok(())
}
