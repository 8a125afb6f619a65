//! A clone's identity page: what must differ between clones of one
//! template (the vsock CID, a fresh random seed, the wall clock) written
//! where the guest can read it, with a generation that changes on every
//! restore so the guest can tell it has become a new VM (the idea of
//! Linux's vmgenid, without ACPI).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::IDENTITY_PAGE;

pub const MAGIC: u64 = u64::from_le_bytes(*b"VTRNIDNT");

/// Laid out as the guest reads it: little-endian u64s, then the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloneIdentity {
    pub generation: u64,
    pub vsock_cid: u64,
    pub wall_clock_ns: u64,
    pub seed: [u8; 32],
}

impl CloneIdentity {
    /// A new identity: fresh seed from the host's CSPRNG, current time.
    pub fn fresh(generation: u64, vsock_cid: u64) -> std::io::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(std::io::Error::other)?;
        let wall_clock_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Ok(Self {
            generation,
            vsock_cid,
            wall_clock_ns,
            seed,
        })
    }

    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
        let base = GuestAddress(IDENTITY_PAGE);
        mem.write_obj(MAGIC, base)?;
        mem.write_obj(self.generation, GuestAddress(IDENTITY_PAGE + 8))?;
        mem.write_obj(self.vsock_cid, GuestAddress(IDENTITY_PAGE + 16))?;
        mem.write_obj(self.wall_clock_ns, GuestAddress(IDENTITY_PAGE + 24))?;
        mem.write_slice(&self.seed, GuestAddress(IDENTITY_PAGE + 32))
    }

    pub fn read(mem: &GuestMemoryMmap) -> Option<Self> {
        let at = |o: u64| mem.read_obj::<u64>(GuestAddress(IDENTITY_PAGE + o)).ok();
        if at(0)? != MAGIC {
            return None;
        }
        let mut seed = [0u8; 32];
        mem.read_slice(&mut seed, GuestAddress(IDENTITY_PAGE + 32))
            .ok()?;
        Some(Self {
            generation: at(8)?,
            vsock_cid: at(16)?,
            wall_clock_ns: at(24)?,
            seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_guest_memory_and_seeds_differ() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let a = CloneIdentity::fresh(1, 3).unwrap();
        let b = CloneIdentity::fresh(1, 3).unwrap();

        a.write(&mem).unwrap();

        assert_eq!(CloneIdentity::read(&mem), Some(a));
        assert_ne!(a.seed, b.seed);
    }

    #[test]
    fn a_page_without_the_magic_has_no_identity() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();

        assert_eq!(CloneIdentity::read(&mem), None);
    }
}
