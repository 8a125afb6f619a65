//! The port a guest writes to say "ready": the template snapshot point.
//! The run pauses there, with the vCPU past the write.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::lifecycle::{GuestExit, Lifecycle};

#[derive(Debug)]
pub struct ReadyPort {
    lifecycle: Arc<Lifecycle>,
}

impl ReadyPort {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
    }
}

impl BusDevice for ReadyPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.lifecycle.finish(Ok(GuestExit::Ready));
    }
}
