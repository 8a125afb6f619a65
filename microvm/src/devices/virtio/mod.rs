//! virtio-mmio transport and virtio devices.
//!
//! The guest reaches the host only through these devices, so every byte that
//! comes out of a virtqueue is hostile until checked. The layering:
//!
//! - [`mmio`]: the virtio-mmio (version 2) register file, the device status
//!   state machine, and activation. Runs on the vCPU thread, per access.
//! - [`interrupt`]: the interrupt status register and the irqfd behind it.
//! - [`chain`]: turns a [`virtio_queue::DescriptorChain`] into checked buffer
//!   lists (loops, direction, bounds, lengths).
//! - [`queue`]: the pop / add-used / notify cycle shared by every device.
//! - [`worker`]: the epoll thread each activated device runs on.
//! - [`persist`]: what a snapshot keeps of each device.
//! - [`vsock`], [`rng`], [`block`]: the devices.

pub mod block;
pub mod chain;
pub mod interrupt;
pub mod mmio;
pub mod persist;
pub mod queue;
pub mod rng;
pub mod vsock;
pub mod worker;

use std::fmt;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::VirtioInterrupt;
pub use mmio::MmioTransport;
pub use persist::VirtioDeviceState;
pub use queue::QueuePosition;

/// Device IDs from virtio 1.2 section 5.
pub mod device_type {
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const VSOCK: u32 = 19;
}

/// Feature bits that are not device specific (virtio 1.2 section 6).
pub mod features {
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

    pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    pub const RING_INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
    pub const RING_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
    /// What every device here offers: modern only, indirect tables, event idx.
    pub const TRANSPORT: u64 = VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX;
}

/// Everything a device needs to start serving its queues.
///
/// The transport builds this at DRIVER_OK from the registers the driver
/// wrote; each queue has already been checked against guest memory.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    /// One per queue, in queue order. Duplicates of the transport's, so an
    /// ioeventfd registered on the transport's fd wakes the worker.
    pub queue_evts: Vec<EventFd>,
    pub interrupt: Arc<VirtioInterrupt>,
    pub acked_features: u64,
}

impl fmt::Debug for ActivateContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivateContext")
            .field("queues", &self.queues)
            .field(
                "acked_features",
                &format_args!("{:#x}", self.acked_features),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device is already active")]
    AlreadyActive,
    #[error("expected {expected} queues, driver set up {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("cannot duplicate a device file descriptor")]
    Dup(#[source] std::io::Error),
    #[error("cannot start the device worker")]
    Worker(#[from] worker::WorkerError),
}

/// A virtio device behind a transport.
///
/// The transport owns the register state machine; the device owns its
/// config space and, once activated, a worker thread that serves the queues.
pub trait VirtioDevice: Send + fmt::Debug {
    /// virtio device ID ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Features the device offers, transport bits included.
    fn avail_features(&self) -> u64;
    /// Largest size of each queue; the length is the number of queues.
    /// Every entry is a power of two no larger than 32768.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device config space. Bytes past the end of the config read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space. The devices here have no writable fields,
    /// so the default drops the write.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio: dropped {}-byte config write at {offset:#x}",
            data.len()
        );
    }
    /// Starts serving the queues on a worker thread.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the worker (joining it) and returns to the Inactive state.
    fn reset(&mut self);
    fn is_activated(&self) -> bool;
    /// Parks the worker of an active device so that nothing touches its
    /// queues or guest memory until [`Self::resume`], and returns where each
    /// queue stands. `None` when the device is not active. Idempotent.
    fn pause(&mut self) -> Result<Option<Vec<QueuePosition>>, worker::WorkerError>;
    /// Starts a worker parked by [`Self::pause`] again; does nothing to a
    /// running or inactive device.
    fn resume(&mut self) -> Result<(), worker::WorkerError>;
    /// The device's own state, for a snapshot.
    fn device_state(&self) -> VirtioDeviceState;
}

/// Reads `data.len()` bytes of `config` at `offset`, zero-filling what lies
/// past its end. Offsets come from the guest, so nothing here can overflow.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_read_past_end_is_zero_filled() {
        let cfg = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 4];

        read_config_bytes(&cfg, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);

        read_config_bytes(&cfg, u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }
}
