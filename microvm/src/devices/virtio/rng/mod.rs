//! virtio-rng (virtio 1.2, section 5.4): one request queue, filled from the
//! host's getrandom.

mod device;
mod event_handler;
mod persist;

pub use device::RngDevice;
pub use event_handler::{RngHandler, RngToken, MAX_BYTES_PER_REQUEST};
pub use persist::{RngConstructorArgs, RngState};

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
