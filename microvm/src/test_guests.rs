//! The integer-only test guests assembled by `build.rs` from `guests/*.S`.
//!
//! They are part of the library, not only of the tests, because
//! `vitrine-vmm probe` boots them to learn what this host's KVM can run.

use std::path::PathBuf;

include!(concat!(env!("VITRINE_GUEST_DIR"), "/table.rs"));

/// The ELF image of test guest `name`, if it exists.
pub fn image(name: &str) -> Option<&'static [u8]> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Path of test guest `name` in the build tree (for QEMU, benchmarks and
/// tests on the machine that built it).
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("VITRINE_GUEST_DIR")).join(format!("{name}.elf"))
}

/// Where the MMIO script guest reads its table and stores its results.
pub mod mmio_script {
    pub const TABLE: u64 = 0x20_0000;
    pub const RESULTS: u64 = 0x28_0000;

    /// One step of the script.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Step {
        Write { width: u32, addr: u64, value: u64 },
        Expect { width: u32, addr: u64, value: u64 },
        Store { width: u32, addr: u64 },
        PollUntil { width: u32, addr: u64, value: u64 },
    }

    /// The table as the guest reads it: 24-byte little-endian entries,
    /// ended by an all-zero one.
    pub fn encode(steps: &[Step]) -> Vec<u8> {
        let mut out = Vec::with_capacity((steps.len() + 1) * 24);
        for s in steps {
            let (op, width, addr, value) = match *s {
                Step::Write { width, addr, value } => (1u32, width, addr, value),
                Step::Expect { width, addr, value } => (2, width, addr, value),
                Step::Store { width, addr } => (3, width, addr, 0),
                Step::PollUntil { width, addr, value } => (4, width, addr, value),
            };
            out.extend_from_slice(&op.to_le_bytes());
            out.extend_from_slice(&width.to_le_bytes());
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&[0; 24]);
        out
    }
}

/// Parameters and results of the `counter` guest.
pub mod counter {
    pub const PARAMS: u64 = 0x20_0000;
    pub const COUNTER: u64 = 0x30_0000;
    pub const SEED_COPY: u64 = 0x30_0008;
    /// What the guest writes to the UART scratch register at start.
    pub const SCRATCH_MARK: u8 = 0xa5;

    /// The parameter block: count to `limit`, say ready at `ready_at`
    /// (`None`: never).
    pub fn params(ready_at: Option<u64>, limit: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(b"CNTRPARM");
        out.extend_from_slice(&ready_at.unwrap_or(u64::MAX).to_le_bytes());
        out.extend_from_slice(&limit.to_le_bytes());
        out
    }
}

/// What the `memtouch` guest dirties: every page of this many MiB of RAM,
/// from 16 MiB up. It needs at least [`memtouch::MIN_MEM_MIB`] of RAM.
pub mod memtouch {
    pub const TOUCHED_MIB: u32 = 256;
    pub const MIN_MEM_MIB: u32 = 16 + TOUCHED_MIB + 16;
}
