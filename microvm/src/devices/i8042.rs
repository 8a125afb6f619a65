//! The part of the i8042 keyboard controller that Linux uses to reboot
//! (`reboot=k`): command 0xfe pulses the CPU reset line.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::lifecycle::{GuestExit, Lifecycle};

const CMD_RESET_CPU: u8 = 0xfe;

#[derive(Debug)]
pub struct I8042 {
    lifecycle: Arc<Lifecycle>,
}

impl I8042 {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
    }
}

impl BusDevice for I8042 {
    /// Status register: output buffer empty, input buffer empty, so the
    /// guest's "wait until ready" loops finish at once.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&CMD_RESET_CPU) {
            self.lifecycle.finish(Ok(GuestExit::Reset));
        }
    }
}
