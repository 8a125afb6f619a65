//! The rng device as the transport sees it.

use super::event_handler::RngHandler;
use super::QUEUE_SIZE;
use crate::devices::virtio::worker::{self, Worker, WorkerError};
use crate::devices::virtio::{
    device_type, features, ActivateContext, ActivateError, QueuePosition, VirtioDevice,
    VirtioDeviceState,
};
use crate::snapshot::Persist;

#[derive(Debug)]
enum DeviceState {
    Inactive,
    Activated(ActiveState),
}

#[derive(Debug)]
struct ActiveState {
    /// Stopped and joined on reset, or when dropped at teardown; parked
    /// while a snapshot is taken.
    worker: Worker<RngHandler>,
}

/// virtio-rng. Requests are served from getrandom on a worker thread.
#[derive(Debug)]
pub struct RngDevice {
    state: DeviceState,
    pub(super) acked_features: u64,
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

    fn pause(&mut self) -> Result<Option<Vec<QueuePosition>>, WorkerError> {
        match &mut self.state {
            DeviceState::Inactive => Ok(None),
            DeviceState::Activated(active) => {
                let handler = active.worker.pause()?;
                Ok(Some(vec![handler.queue().position()]))
            }
        }
    }

    fn resume(&mut self) -> Result<(), WorkerError> {
        match &mut self.state {
            DeviceState::Inactive => Ok(()),
            DeviceState::Activated(active) => active.worker.resume(),
        }
    }

    fn device_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Rng(Persist::save(self).unwrap_or_else(|never| match never {}))
    }
}
