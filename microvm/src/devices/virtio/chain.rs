//! Checks a descriptor chain before a device touches its buffers.
//!
//! virtio-queue walks the ring, follows indirect tables and stops a walk
//! that runs past the queue size or past 4 GiB, but it stops silently: a
//! looping chain just looks shorter. [`CheckedChain::check`] walks the
//! chain once more and turns every way a driver can break the rules into an
//! error, so that devices read and write through virtio-queue's
//! [`Reader`]/[`Writer`] only for chains that are whole:
//!
//! - a chain that ends on a descriptor that still says NEXT was cut short by
//!   a loop, an index past the queue size, an unreadable descriptor table or
//!   a total past 4 GiB (virtio 1.2, 2.7.5.2);
//! - a device-readable descriptor after a device-writable one (2.7.4.2);
//! - a buffer outside guest memory;
//! - a chain with no descriptors (empty or malformed indirect table);
//! - more descriptors than the device accepts.

use std::ops::Deref;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Upper bound on descriptors in one chain, indirect tables included. The
/// ring format allows 65535 in one indirect table; no driver needs that many.
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("chain has no descriptors")]
    Empty,
    #[error("chain was cut short: loop, index past the queue, bad table or over 4 GiB")]
    Truncated,
    #[error("chain has more than {max} descriptors")]
    TooLong { max: usize },
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfBounds { addr: u64, len: u32 },
    #[error("cannot map the chain's buffers")]
    Map(#[source] virtio_queue::Error),
}

/// The shape of a chain that passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckedChain {
    pub head: u16,
    pub descriptors: usize,
    /// Total bytes in device-readable buffers.
    pub readable_len: u32,
    /// Total bytes in device-writable buffers.
    pub writable_len: u32,
}

impl CheckedChain {
    /// Walks `chain` (a clone of it; the chain itself is left for the
    /// reader and writer) and checks it against `mem`.
    pub fn check<M>(chain: &DescriptorChain<M>, mem: &GuestMemoryMmap) -> Result<Self, ChainError>
    where
        M: Deref<Target = GuestMemoryMmap> + Clone,
    {
        let mut descriptors = 0usize;
        let mut last_has_next = false;
        let mut seen_writable = false;
        // virtio-queue already stops a walk at 4 GiB; u64 keeps this sum
        // exact regardless.
        let mut readable: u64 = 0;
        let mut writable: u64 = 0;
        for desc in chain.clone() {
            descriptors += 1;
            if descriptors > MAX_CHAIN_DESCRIPTORS {
                return Err(ChainError::TooLong {
                    max: MAX_CHAIN_DESCRIPTORS,
                });
            }
            last_has_next = desc.has_next();
            let len = desc.len();
            let perm = if desc.is_write_only() {
                seen_writable = true;
                writable += u64::from(len);
                Permissions::Write
            } else {
                if seen_writable {
                    return Err(ChainError::ReadableAfterWritable);
                }
                readable += u64::from(len);
                Permissions::Read
            };
            if len > 0 && !in_memory(mem, desc.addr(), len, perm) {
                return Err(ChainError::OutOfBounds {
                    addr: desc.addr().0,
                    len,
                });
            }
        }
        if descriptors == 0 {
            return Err(ChainError::Empty);
        }
        if last_has_next {
            return Err(ChainError::Truncated);
        }
        let too_long = || ChainError::Truncated;
        Ok(Self {
            head: chain.head_index(),
            descriptors,
            readable_len: u32::try_from(readable).map_err(|_| too_long())?,
            writable_len: u32::try_from(writable).map_err(|_| too_long())?,
        })
    }
}

fn in_memory(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32, perm: Permissions) -> bool {
    usize::try_from(len).is_ok_and(|len| GuestMemory::check_range(mem, addr, len, perm))
}

/// virtio-queue's reader over the device-readable buffers of a checked chain.
pub fn reader<'a, M>(
    chain: DescriptorChain<M>,
    mem: &'a GuestMemoryMmap,
) -> Result<Reader<'a>, ChainError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    Reader::new(mem, chain).map_err(ChainError::Map)
}

/// virtio-queue's writer over the device-writable buffers of a checked chain.
pub fn writer<'a, M>(
    chain: DescriptorChain<M>,
    mem: &'a GuestMemoryMmap,
) -> Result<Writer<'a>, ChainError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    Writer::new(mem, chain).map_err(ChainError::Map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::Bytes;

    // VRING_DESC_F_* from virtio 1.2, 2.7.5.
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// Publishes `descs` starting at table index 0 as one chain and checks it.
    fn check(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<CheckedChain, ChainError> {
        let vq = MockSplitQueue::new(m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(m).unwrap().next().unwrap();
        CheckedChain::check(&chain, m)
    }

    #[test]
    fn well_formed_chain_reports_lengths() {
        let m = mem();
        let c = check(
            &m,
            &[
                desc(0x1000, 16, NEXT, 1),
                desc(0x2000, 512, NEXT | WRITE, 2),
                desc(0x3000, 1, WRITE, 0),
            ],
        )
        .unwrap();
        assert_eq!(
            (c.descriptors, c.readable_len, c.writable_len),
            (3, 16, 513)
        );
    }

    #[test]
    fn looping_chain_is_truncated() {
        let m = mem();
        assert!(matches!(
            check(&m, &[desc(0x1000, 16, NEXT, 1), desc(0x2000, 16, NEXT, 0)]),
            Err(ChainError::Truncated)
        ));
    }

    #[test]
    fn next_index_past_queue_size_is_truncated() {
        let m = mem();
        assert!(matches!(
            check(&m, &[desc(0x1000, 16, NEXT, 200)]),
            Err(ChainError::Truncated)
        ));
    }

    #[test]
    fn chain_over_4gib_is_truncated() {
        let m = mem();
        assert!(matches!(
            check(
                &m,
                &[desc(0x1000, 16, NEXT, 1), desc(0x2000, u32::MAX, 0, 0)]
            ),
            Err(ChainError::Truncated)
        ));
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let m = mem();
        assert!(matches!(
            check(
                &m,
                &[desc(0x1000, 16, NEXT | WRITE, 1), desc(0x2000, 16, 0, 0)]
            ),
            Err(ChainError::ReadableAfterWritable)
        ));
    }

    #[test]
    fn buffer_outside_memory_is_refused() {
        let m = mem();
        assert!(matches!(
            check(&m, &[desc(0xf_fff0, 0x20, 0, 0)]),
            Err(ChainError::OutOfBounds {
                addr: 0xf_fff0,
                len: 0x20
            })
        ));
    }

    #[test]
    fn empty_indirect_table_is_empty_chain() {
        let m = mem();
        assert!(matches!(
            check(&m, &[desc(0x8000, 0, INDIRECT, 0)]),
            Err(ChainError::Empty)
        ));
    }

    #[test]
    fn indirect_table_with_valid_entries_is_accepted() {
        let m = mem();
        // Two-entry indirect table at 0x8000.
        m.write_obj(desc(0x1000, 16, NEXT, 1), GuestAddress(0x8000))
            .unwrap();
        m.write_obj(desc(0x2000, 8, WRITE, 0), GuestAddress(0x8010))
            .unwrap();
        let c = check(&m, &[desc(0x8000, 32, INDIRECT, 0)]).unwrap();
        assert_eq!((c.descriptors, c.readable_len, c.writable_len), (2, 16, 8));
    }

    #[test]
    fn indirect_loop_is_truncated() {
        let m = mem();
        m.write_obj(desc(0x1000, 16, NEXT, 1), GuestAddress(0x8000))
            .unwrap();
        m.write_obj(desc(0x2000, 8, NEXT, 0), GuestAddress(0x8010))
            .unwrap();
        assert!(matches!(
            check(&m, &[desc(0x8000, 32, INDIRECT, 0)]),
            Err(ChainError::Truncated)
        ));
    }
}
