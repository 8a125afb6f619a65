//! Segment descriptors for the boot GDT, in the encoding the CPU and
//! `kvm_segment` both need.

use kvm_bindings::kvm_segment;

/// One 8-byte GDT entry built from flags (bits 8..=15 access byte, 12..=15
/// of the upper nibble G/DB/L/AVL), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The `kvm_segment` that loading `entry` at GDT index `index` would give.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |shift: u32| u8::from((entry >> shift) & 1 == 1);
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let granular = bit(55);
    let limit = if granular == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        selector: u16::from(index) * 8,
        type_: u8::try_from((entry >> 40) & 0xf).unwrap_or(0),
        present: bit(47),
        dpl: u8::try_from((entry >> 45) & 0x3).unwrap_or(0),
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: granular,
        avl: bit(52),
        padding: 0,
        unusable: u8::from(bit(47) == 0),
    }
}

/// Flat 64-bit code segment.
pub const CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
/// Flat 32-bit code segment (PVH entry).
pub const CODE32: u64 = gdt_entry(0xc09b, 0, 0xfffff);
/// Flat data segment.
pub const DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
/// 64-bit TSS (busy), required by VMX for TR.
pub const TSS: u64 = gdt_entry(0x808b, 0, 0xfffff);

/// The boot GDT: null, code64, data, tss, code32.
pub const BOOT_GDT: [u64; 5] = [0, CODE64, DATA, TSS, CODE32];
pub const CODE64_INDEX: u8 = 1;
pub const DATA_INDEX: u8 = 2;
pub const TSS_INDEX: u8 = 3;
pub const CODE32_INDEX: u8 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_descriptor_decodes_to_a_long_mode_segment() {
        let seg = kvm_segment_from_gdt(CODE64, CODE64_INDEX);

        assert_eq!(CODE64, 0x00af_9b00_0000_ffff);
        assert_eq!((seg.selector, seg.type_, seg.l, seg.db), (0x8, 0xb, 1, 0));
        assert_eq!(
            (seg.present, seg.s, seg.g, seg.limit),
            (1, 1, 1, 0xffff_ffff)
        );
    }

    #[test]
    fn code32_descriptor_is_a_flat_protected_mode_segment() {
        let seg = kvm_segment_from_gdt(CODE32, CODE32_INDEX);

        assert_eq!((seg.base, seg.limit, seg.db, seg.l), (0, 0xffff_ffff, 1, 0));
    }

    #[test]
    fn null_descriptor_is_unusable() {
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }
}
