//! x86-64: guest physical layout, boot-time CPU state, CPUID and MSRs.

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod regs;
