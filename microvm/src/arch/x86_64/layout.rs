//! Guest physical memory layout.
//!
//! Low memory follows the PC conventions Linux expects; devices live in a
//! 768 MiB MMIO gap below 4 GiB, and RAM that does not fit below the gap
//! continues at 4 GiB.

/// Global descriptor table for the boot vCPU state.
pub const GDT_START: u64 = 0x500;
/// Boot interrupt descriptor table, right after the five GDT entries; it
/// stays empty: nothing runs before the guest installs its own.
pub const IDT_START: u64 = 0x540;
/// The clone identity page (snapshot::identity), in free low memory.
pub const IDENTITY_PAGE: u64 = 0x5000;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Boot stack top for the 64-bit Linux entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the 64-bit Linux entry: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Linux x86 `COMMAND_LINE_SIZE`, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Kernels load at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// Devices' MMIO window below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio slot; each device gets one page.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SLOT: u64 = 0x1000;
/// Legacy ports the VMM answers.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// QEMU's isa-debug-exit convention (iobase=0xf4) used by the test guests.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The guest writes here when it is ready to be snapshotted.
pub const READY_PORT: u16 = 0x0520;
/// i8042 command port: 0xfe written here resets the machine.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// First GSI handed to virtio devices (0-4 are legacy ISA).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
