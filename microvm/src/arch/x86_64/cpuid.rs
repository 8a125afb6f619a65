//! CPUID passed through from KVM's supported set, with per-vCPU topology
//! and an optional mask of features to hide from the guest.
//!
//! Masking exists because some hosts (this project's CI among them: nested
//! KVM without VT-x) cannot emulate instructions that a feature advertises.

use std::fmt;
use std::str::FromStr;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Ebx,
    Ecx,
    Edx,
}

/// A CPUID feature flag the VMM knows how to hide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    leaf: u32,
    subleaf: u32,
    reg: Reg,
    bit: u8,
}

const fn f(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

/// Names follow Linux's `/proc/cpuinfo` (and `clearcpuid=`) spelling.
pub const FEATURES: &[Feature] = &[
    f("sse3", 1, 0, Reg::Ecx, 0),
    f("pclmulqdq", 1, 0, Reg::Ecx, 1),
    f("ssse3", 1, 0, Reg::Ecx, 9),
    f("fma", 1, 0, Reg::Ecx, 12),
    f("cx16", 1, 0, Reg::Ecx, 13),
    f("pcid", 1, 0, Reg::Ecx, 17),
    f("sse4_1", 1, 0, Reg::Ecx, 19),
    f("sse4_2", 1, 0, Reg::Ecx, 20),
    f("x2apic", 1, 0, Reg::Ecx, 21),
    f("movbe", 1, 0, Reg::Ecx, 22),
    f("popcnt", 1, 0, Reg::Ecx, 23),
    f("aes", 1, 0, Reg::Ecx, 25),
    f("xsave", 1, 0, Reg::Ecx, 26),
    f("avx", 1, 0, Reg::Ecx, 28),
    f("f16c", 1, 0, Reg::Ecx, 29),
    f("rdrand", 1, 0, Reg::Ecx, 30),
    f("fsgsbase", 7, 0, Reg::Ebx, 0),
    f("bmi1", 7, 0, Reg::Ebx, 3),
    f("avx2", 7, 0, Reg::Ebx, 5),
    f("smep", 7, 0, Reg::Ebx, 7),
    f("bmi2", 7, 0, Reg::Ebx, 8),
    f("erms", 7, 0, Reg::Ebx, 9),
    f("invpcid", 7, 0, Reg::Ebx, 10),
    f("avx512f", 7, 0, Reg::Ebx, 16),
    f("rdseed", 7, 0, Reg::Ebx, 18),
    f("adx", 7, 0, Reg::Ebx, 19),
    f("smap", 7, 0, Reg::Ebx, 20),
    f("clflushopt", 7, 0, Reg::Ebx, 23),
    f("sha_ni", 7, 0, Reg::Ebx, 29),
    f("umip", 7, 0, Reg::Ecx, 2),
    f("pku", 7, 0, Reg::Ecx, 3),
    f("fsrm", 7, 0, Reg::Edx, 4),
];

/// The features this project's nested-KVM CI host must hide for a Linux
/// guest to boot (see shared/guest-kernel-notes.md).
pub const NESTED_SAFE_MASK: &[&str] = &[
    "cx16", "popcnt", "avx", "avx2", "bmi1", "bmi2", "movbe", "smap", "smep", "pku", "umip",
    "fsgsbase", "rdrand", "rdseed", "erms", "fsrm", "xsave",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    #[error("unknown CPUID feature '{0}' (known: {known})", known = known_names())]
    UnknownFeature(String),
}

fn known_names() -> String {
    FEATURES
        .iter()
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A set of features to hide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuidMask(Vec<Feature>);

impl CpuidMask {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn features(&self) -> impl Iterator<Item = &Feature> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn hides(&self, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> bool {
        self.0
            .iter()
            .any(|f| f.leaf == leaf && f.subleaf == subleaf && f.reg == reg && f.bit == bit)
    }
}

impl FromStr for CpuidMask {
    type Err = CpuidError;

    /// Comma-separated names, or `nested-safe` for [`NESTED_SAFE_MASK`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "nested-safe" {
                out.extend(NESTED_SAFE_MASK.iter().filter_map(|n| lookup(n)));
                continue;
            }
            out.push(lookup(name).ok_or_else(|| CpuidError::UnknownFeature(name.to_string()))?);
        }
        out.dedup();
        Ok(Self(out))
    }
}

impl fmt::Display for CpuidMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.0.iter().map(|x| x.name).collect();
        f.write_str(&names.join(","))
    }
}

fn lookup(name: &str) -> Option<Feature> {
    FEATURES.iter().copied().find(|f| f.name == name)
}

const LEAF_FEATURES: u32 = 1;
const LEAF_EXTENDED_TOPOLOGY: u32 = 0xb;
const LEAF_XSAVE: u32 = 0xd;
const ECX_HYPERVISOR_BIT: u32 = 1 << 31;
const ECX_OSXSAVE_BIT: u32 = 1 << 27;

/// Adjusts KVM's supported CPUID for vCPU `id` of `count`, hiding `mask`.
pub fn configure(cpuid: &mut CpuId, id: u8, count: u8, mask: &CpuidMask) {
    let hide_xsave = mask.0.iter().any(|f| f.name == "xsave");
    for entry in cpuid.as_mut_slice() {
        apply_entry(entry, id, count, mask, hide_xsave);
    }
}

fn apply_entry(e: &mut kvm_cpuid_entry2, id: u8, count: u8, mask: &CpuidMask, hide_xsave: bool) {
    for (reg, value) in [
        (Reg::Ebx, &mut e.ebx),
        (Reg::Ecx, &mut e.ecx),
        (Reg::Edx, &mut e.edx),
    ] {
        for bit in 0..32u8 {
            if mask.hides(e.function, e.index, reg, bit) {
                *value &= !(1u32 << bit);
            }
        }
    }
    match e.function {
        LEAF_FEATURES => {
            // APIC id in EBX[31:24], logical count in EBX[23:16].
            e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
            e.ecx |= ECX_HYPERVISOR_BIT;
            if hide_xsave {
                e.ecx &= !ECX_OSXSAVE_BIT;
            }
        }
        LEAF_EXTENDED_TOPOLOGY => e.edx = u32::from(id),
        LEAF_XSAVE if hide_xsave => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn masked_features_are_cleared_and_others_kept() {
        let mut cpuid = CpuId::from_entries(&[
            leaf(1, 0, 0, u32::MAX, u32::MAX),
            leaf(7, 0, u32::MAX, u32::MAX, u32::MAX),
        ])
        .unwrap();
        let mask: CpuidMask = "popcnt,avx2,fsrm".parse().unwrap();

        configure(&mut cpuid, 0, 1, &mask);

        let e = cpuid.as_slice();
        assert_eq!(e[0].ecx & (1 << 23), 0, "popcnt hidden");
        assert_ne!(e[0].ecx & (1 << 13), 0, "cx16 kept");
        assert_eq!(e[1].ebx & (1 << 5), 0, "avx2 hidden");
        assert_eq!(e[1].edx & (1 << 4), 0, "fsrm hidden");
        assert_ne!(e[1].ebx & (1 << 3), 0, "bmi1 kept");
    }

    #[test]
    fn each_vcpu_gets_its_own_apic_id_and_the_hypervisor_bit() {
        let mut cpuid =
            CpuId::from_entries(&[leaf(1, 0, 0xffff_ffff, 0, 0), leaf(0xb, 0, 0, 0, 0)]).unwrap();

        configure(&mut cpuid, 3, 4, &CpuidMask::none());

        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR_BIT, 0);
        assert_eq!(e[1].edx, 3);
    }

    #[test]
    fn nested_safe_expands_and_unknown_names_are_refused() {
        let mask: CpuidMask = "nested-safe".parse().unwrap();
        assert_eq!(mask.features().count(), NESTED_SAFE_MASK.len());

        let err = "popcnt,sse9".parse::<CpuidMask>().unwrap_err();
        assert_eq!(err, CpuidError::UnknownFeature("sse9".into()));
        assert!(err.to_string().contains("known: sse3"));
    }

    #[test]
    fn hiding_xsave_clears_the_xsave_leaf() {
        let mut cpuid = CpuId::from_entries(&[
            leaf(1, 0, 0, u32::MAX, 0),
            kvm_cpuid_entry2 {
                function: 0xd,
                eax: 7,
                ebx: 0x340,
                ..Default::default()
            },
        ])
        .unwrap();

        configure(&mut cpuid, 0, 1, &"xsave".parse().unwrap());

        let e = cpuid.as_slice();
        assert_eq!(e[0].ecx & (ECX_OSXSAVE_BIT | (1 << 26)), 0);
        assert_eq!((e[1].eax, e[1].ebx), (0, 0));
    }
}
