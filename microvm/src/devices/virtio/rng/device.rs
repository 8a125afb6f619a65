//! The rng device as the transport sees it.

use super::event_handler::RngHandler;
use super::persist::RngState;
use super::QUEUE_SIZE;
use crate::devices::virtio::worker::{self, Worker};
use crate::devices::virtio::{device_type, features, ActivateContext, ActivateError, VirtioDevice};

#[derive(Debug)]
enum DeviceState {
    Inactive,
    Activated(ActiveState),
}

#[derive(Debug)]
struct ActiveState {
    /// Stopped and joined on reset, or when dropped at teardown.
    worker: Worker,
}

/// virtio-rng. Requests are served from getrandom on a worker thread.
#[derive(Debug)]
pub struct RngDevice {
    state: DeviceState,
    acked_features: u64,
}

impl Default for RngDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl RngDevice {
    pub fn new() -> Self {
        Self {
            state: DeviceState::Inactive,
            acked_features: 0,
        }
    }

    pub fn save_state(&self) -> RngState {
        RngState {
            acked_features: self.acked_features,
        }
    }
}

impl VirtioDevice for RngDevice {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn avail_features(&self) -> u64 {
        features::TRANSPORT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no config space.
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.is_activated() {
            return Err(ActivateError::AlreadyActive);
        }
        let acked = ctx.acked_features;
        let handler = RngHandler::new(ctx)?;
        let worker = worker::spawn("virtio-rng", handler)?;
        self.acked_features = acked;
        self.state = DeviceState::Activated(ActiveState { worker });
        Ok(())
    }

    fn reset(&mut self) {
        if let DeviceState::Activated(mut active) =
            std::mem::replace(&mut self.state, DeviceState::Inactive)
        {
            active.worker.stop();
        }
        self.acked_features = 0;
    }

    fn is_activated(&self) -> bool {
        matches!(self.state, DeviceState::Activated(_))
    }
}
