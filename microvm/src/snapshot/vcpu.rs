//! One vCPU's complete KVM state.
//!
//! Saved in the order KVM documents as safe to read (mp_state first, so a
//! halted vCPU's state is not disturbed by the reads after it); restored in
//! the order KVM needs to accept it: CPUID before anything that depends on
//! it, sregs before xsave and MSRs, LAPIC before the events that inject
//! into it.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};

use super::Persist;
use crate::kvm::{KvmError, VcpuHandle, VmHandle};

#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    /// `None` when the VM has no in-kernel irqchip.
    pub lapic: Option<kvm_lapic_state>,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub vcpu_events: kvm_vcpu_events,
}

impl<'a> Persist<'a> for VcpuHandle {
    type State = VcpuState;
    /// The VM to create the restored vCPU in.
    type ConstructorArgs = &'a VmHandle;
    type Error = KvmError;

    fn save(&self) -> Result<VcpuState, KvmError> {
        let mp_state = self.mp_state()?;
        let regs = self.regs()?;
        let sregs = self.sregs()?;
        let xsave = self.xsave()?;
        let xcrs = self.xcrs()?;
        let debug_regs = self.debug_regs()?;
        let lapic = if self.has_lapic() {
            Some(self.lapic()?)
        } else {
            None
        };
        let cpuid = self.cpuid()?;
        let msrs = self.msrs(self.msr_indices())?;
        let vcpu_events = self.vcpu_events()?;
        Ok(VcpuState {
            id: self.id(),
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            cpuid,
            msrs,
            vcpu_events,
        })
    }

    /// Creates vCPU `state.id` in `vm` and loads `state` into it.
    fn restore(vm: &'a VmHandle, state: &VcpuState) -> Result<Self, KvmError> {
        let v = vm.create_vcpu(state.id)?;
        v.set_cpuid_entries(&state.cpuid)?;
        v.set_mp_state(state.mp_state)?;
        v.set_regs(&state.regs)?;
        v.set_sregs(&state.sregs)?;
        v.set_xsave(&state.xsave)?;
        v.set_xcrs(&state.xcrs)?;
        v.set_debug_regs(&state.debug_regs)?;
        if let Some(lapic) = &state.lapic {
            v.set_lapic(lapic)?;
        }
        v.set_msr_entries(&state.msrs)?;
        v.set_vcpu_events(&state.vcpu_events)?;
        Ok(v)
    }
}
