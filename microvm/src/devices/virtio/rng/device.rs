//! The rng device as the transport sees it.

use super::event_handler::RngHandler;
use super::QUEUE_SIZE;
use crate::devices::virtio::worker::{DeviceState, WorkerError};
use crate::devices::virtio::{
    device_type, features, ActivateContext, ActivateError, QueuePosition, VirtioDevice,
    VirtioDeviceState,
};
use crate::snapshot::Persist;

/// virtio-rng. Requests are served from getrandom on a worker thread.
#[derive(Debug)]
pub struct RngDevice {
    state: DeviceState<RngHandler>,
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
        self.state.activate("virtio-rng", handler)?;
        self.acked_features = acked;
        Ok(())
    }

    fn reset(&mut self) {
        self.state.deactivate();
        self.acked_features = 0;
    }

    fn is_activated(&self) -> bool {
        self.state.is_activated()
    }

    fn pause(&mut self) -> Result<Option<Vec<QueuePosition>>, WorkerError> {
        self.state.pause(|h| vec![h.queue().position()])
    }

    fn resume(&mut self) -> Result<(), WorkerError> {
        self.state.resume()
    }

    fn device_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Rng(Persist::save(self).unwrap_or_else(|never| match never {}))
    }
}
