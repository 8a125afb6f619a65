//! The vCPU state a guest finds at its first instruction.
//!
//! Two entry modes: the 64-bit Linux boot protocol (long mode, identity
//! paging, `%rsi` = boot_params) and PVH (32-bit protected mode, paging off,
//! `%ebx` = hvm_start_info).

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{self, kvm_segment_from_gdt};
use super::layout;
use crate::kvm::{KvmError, VcpuHandle};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot {0} into guest memory")]
    GuestWrite(&'static str, #[source] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
}

/// How the guest's first instruction is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol: long mode at `entry`, `%rsi` = zero page.
    Linux64 { entry: u64 },
    /// PVH: 32-bit protected mode at `entry`, `%ebx` = start_info.
    Pvh { entry: u64 },
}

/// Sets every register a vCPU needs for its first instruction, writing the
/// GDT and (for long mode) page tables into guest memory.
/// `lapic` is false when the VM has no in-kernel irqchip (so no LAPIC).
pub fn setup_boot_vcpu(
    vcpu: &VcpuHandle,
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    lapic: bool,
) -> Result<(), RegsError> {
    write_gdt(mem)?;
    let mut sregs = vcpu.sregs()?;
    let regs = match mode {
        EntryMode::Linux64 { entry } => {
            write_identity_page_tables(mem)?;
            long_mode_sregs(&mut sregs);
            kvm_regs {
                rflags: 0x2,
                rip: entry,
                rsp: layout::BOOT_STACK_POINTER,
                rbp: layout::BOOT_STACK_POINTER,
                rsi: layout::ZERO_PAGE_START,
                ..Default::default()
            }
        }
        EntryMode::Pvh { entry } => {
            protected_mode_sregs(&mut sregs);
            kvm_regs {
                rflags: 0x2,
                rip: entry,
                rbx: layout::PVH_INFO_START,
                ..Default::default()
            }
        }
    };
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&regs)?;
    setup_fpu(vcpu)?;
    setup_msrs(vcpu)?;
    if lapic {
        setup_lint(vcpu)?;
    }
    Ok(())
}

fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in gdt::BOOT_GDT.iter().enumerate() {
        let addr = GuestAddress(layout::GDT_START + 8 * i as u64);
        mem.write_obj(*entry, addr)
            .map_err(|e| RegsError::GuestWrite("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::IDT_START))
        .map_err(|e| RegsError::GuestWrite("IDT", e))
}

fn load_segments(sregs: &mut kvm_sregs, code_index: u8) {
    let code = kvm_segment_from_gdt(gdt::BOOT_GDT[usize::from(code_index)], code_index);
    let data = kvm_segment_from_gdt(gdt::DATA, gdt::DATA_INDEX);
    let tss = kvm_segment_from_gdt(gdt::TSS, gdt::TSS_INDEX);
    sregs.gdt.base = layout::GDT_START;
    sregs.gdt.limit = u16::try_from(gdt::BOOT_GDT.len() * 8 - 1).unwrap_or(u16::MAX);
    sregs.idt.base = layout::IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
}

fn long_mode_sregs(sregs: &mut kvm_sregs) {
    load_segments(sregs, gdt::CODE64_INDEX);
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
}

fn protected_mode_sregs(sregs: &mut kvm_sregs) {
    load_segments(sregs, gdt::CODE32_INDEX);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// Identity-maps the low 1 GiB with 2 MiB pages: enough for the kernel,
/// boot_params, cmdline and initramfs until Linux builds its own tables.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|e| RegsError::GuestWrite("page tables", e))
    };
    w(layout::PDPT_START | 0x03, layout::PML4_START)?;
    w(layout::PD_START | 0x03, layout::PDPT_START)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, layout::PD_START + i * 8)?;
    }
    Ok(())
}

fn setup_fpu(vcpu: &VcpuHandle) -> Result<(), KvmError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
}

fn setup_msrs(vcpu: &VcpuHandle) -> Result<(), KvmError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ];
    let msrs = Msrs::from_entries(&entries)
        .map_err(|_| KvmError::MissingCap("room for the boot MSR list"))?;
    vcpu.set_msrs(&msrs)
}

/// Routes LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a PC BIOS would.
fn setup_lint(vcpu: &VcpuHandle) -> Result<(), KvmError> {
    let mut lapic = vcpu.lapic()?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i].to_ne_bytes()[0]);
        let value = u32::from_le_bytes(bytes);
        let value = (value & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = i8::from_ne_bytes([*b]);
        }
    }
    vcpu.set_lapic(&lapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn identity_tables_map_the_first_gigabyte_with_large_pages() {
        let m = mem();

        write_identity_page_tables(&m).unwrap();

        let pml4: u64 = m.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        let pdpt: u64 = m.read_obj(GuestAddress(layout::PDPT_START)).unwrap();
        let last: u64 = m
            .read_obj(GuestAddress(layout::PD_START + 511 * 8))
            .unwrap();
        assert_eq!(pml4, layout::PDPT_START | 3);
        assert_eq!(pdpt, layout::PD_START | 3);
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn idt_lies_past_the_end_of_the_gdt() {
        let gdt_end = layout::GDT_START + 8 * gdt::BOOT_GDT.len() as u64;

        assert!(layout::IDT_START >= gdt_end);
    }

    #[test]
    fn gdt_in_memory_matches_the_boot_table() {
        let m = mem();

        write_gdt(&m).unwrap();

        for (i, e) in gdt::BOOT_GDT.iter().enumerate() {
            let got: u64 = m
                .read_obj(GuestAddress(layout::GDT_START + 8 * i as u64))
                .unwrap();
            assert_eq!(got, *e);
        }
    }

    #[test]
    fn protected_mode_state_has_paging_off_and_a_32_bit_code_segment() {
        let mut s = kvm_sregs::default();

        protected_mode_sregs(&mut s);

        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr0 & X86_CR0_PE, 1);
        assert_eq!((s.cs.db, s.cs.l, s.cs.selector), (1, 0, 0x20));
    }
}
