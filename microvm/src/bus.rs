//! The PIO and MMIO buses that devices register on.
//!
//! A vCPU exit names an address; the bus finds the device whose range holds
//! it and hands the device the offset into that range. Ranges never overlap,
//! which `insert` enforces, so a lookup is one ordered-map probe.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A device that answers guest accesses to a range of addresses.
///
/// `offset` is relative to the start of the range the device was registered
/// with. `data.len()` is the access width (1, 2, 4 or 8 bytes). A device must
/// never panic on any offset or width: the guest picks both.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Shared handle to a registered device; vCPU threads lock it per access.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
    #[error("range {base:#x}+{len:#x} overlaps a registered device")]
    Overlap { base: u64, len: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

/// An address space (port I/O or MMIO) with devices on disjoint ranges.
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, (Range, SharedDevice)>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.devices
                    .values()
                    .map(|(r, _)| format!("{:#x}+{:#x}", r.base, r.len)),
            )
            .finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` on `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        // Only the nearest range below `end` can overlap, since ranges are disjoint.
        if let Some((_, (r, _))) = self.devices.range(..end).next_back() {
            if r.base + r.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (Range { base, len }, device));
        Ok(())
    }

    fn resolve(&self, addr: u64, width: usize) -> Option<(u64, &SharedDevice)> {
        let (_, (r, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - r.base;
        // The whole access must fit inside the range.
        let last = offset.checked_add(u64::try_from(width).ok()?)?;
        (last <= r.len).then_some((offset, dev))
    }

    /// Dispatches a read. Returns false when no device claims the whole access;
    /// the caller then answers with all-ones, as open bus hardware does.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write. Returns false when no device claims the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// A device that panicked while holding its lock has already been reported;
/// later accesses still reach it rather than poisoning the whole VM.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset & 0xff).unwrap());
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn access_reaches_device_with_offset_into_its_range() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x1000, 0x100).unwrap();

        let mut buf = [0u8; 4];
        assert!(bus.read(0x1010, &mut buf));
        assert!(bus.write(0x10fc, &[1, 2, 3, 4]));

        assert_eq!(buf, [0x10; 4]);
        assert_eq!(dev.lock().unwrap().writes, vec![(0xfc, vec![1, 2, 3, 4])]);
    }

    #[test]
    fn access_straddling_the_end_of_a_range_is_unclaimed() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x100)
            .unwrap();

        assert!(!bus.write(0x10fe, &[0; 4]));
        assert!(!bus.read(0xfff, &mut [0; 1]));
        assert!(!bus.read(u64::MAX, &mut [0; 8]));
    }

    #[test]
    fn overlapping_or_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        let d = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(d(), 0x1000, 0x100).unwrap();

        assert_eq!(
            bus.insert(d(), 0x10ff, 1),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(d(), 0xf00, 0x101),
            Err(BusError::Overlap {
                base: 0xf00,
                len: 0x101
            })
        );
        assert_eq!(
            bus.insert(d(), 0x2000, 0),
            Err(BusError::BadRange {
                base: 0x2000,
                len: 0
            })
        );
        assert_eq!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::BadRange {
                base: u64::MAX,
                len: 2
            })
        );
        bus.insert(d(), 0x1100, 0x100).unwrap();
    }
}
