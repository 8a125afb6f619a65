//! virtio-vsock (virtio 1.2, section 5.10) with the host side on Unix
//! sockets, following Firecracker's hybrid vsock convention (see
//! [`muxer`]).

pub mod connection;
mod device;
pub mod event_handler;
pub mod muxer;
pub mod packet;
mod persist;

pub use device::{VsockDevice, VsockError};
pub use event_handler::{VsockHandler, VsockStats, VsockToken};
pub use muxer::VsockMuxer;
pub use persist::{VsockConstructorArgs, VsockState};

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
