//! QEMU's isa-debug-exit, so that one test guest ends the same way on both
//! VMMs: a write of code `v` ends the run with `v`.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::lifecycle::{GuestExit, Lifecycle};

#[derive(Debug)]
pub struct DebugExit {
    lifecycle: Arc<Lifecycle>,
}

impl DebugExit {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(code) = data.first() {
            self.lifecycle.finish(Ok(GuestExit::DebugExit(*code)));
        }
    }
}
