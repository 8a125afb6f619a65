//! virtio-blk (virtio 1.2, section 5.2) over a host file, read-only unless
//! asked otherwise. The guest image lives here, so every request is checked
//! against the disk size with checked arithmetic before any I/O.

mod device;
mod event_handler;
mod persist;
pub mod request;

pub use device::{BlockDevice, BlockError};
pub use event_handler::{BlockHandler, BlockStats, BlockToken};
pub use persist::{BlockConstructorArgs, BlockState};

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request the device announces (VIRTIO_BLK_F_SEG_MAX):
/// the queue size less the header and status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
pub const SECTOR_SIZE: u64 = 512;
/// Serial number returned for VIRTIO_BLK_T_GET_ID, NUL padded.
pub const DEFAULT_ID: &[u8; 20] = b"vitrine-disk\0\0\0\0\0\0\0\0";
