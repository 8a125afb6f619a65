//! The interrupt line of one virtio-mmio device.
//!
//! The worker sets bits in the InterruptStatus register and writes the
//! eventfd; the VMM registers that eventfd as an irqfd on the device's GSI,
//! so the in-kernel irqchip raises the line without a VMM round trip. The
//! driver reads InterruptStatus and writes InterruptACK through the
//! transport on the vCPU thread.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("cannot create the interrupt eventfd")]
    Create(#[source] std::io::Error),
}

/// InterruptStatus bits plus the irqfd they are delivered through.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    evt: EventFd,
}

impl VirtioInterrupt {
    pub fn new() -> Result<Self, InterruptError> {
        Ok(Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK).map_err(InterruptError::Create)?,
        })
    }

    /// The eventfd to register as an irqfd.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }

    /// Tells the driver that a used ring has new entries.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver that config space (or the device status) changed.
    pub fn signal_config(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// Puts the device in the DEVICE_NEEDS_RESET state (virtio 1.2, 2.1.2):
    /// the driver saw something it must not do and the device stops serving
    /// the queue rather than guess.
    pub fn signal_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::AcqRel) {
            log::warn!("virtio: device entered DEVICE_NEEDS_RESET");
            self.signal_config();
        }
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// Current InterruptStatus register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// InterruptACK: clears the bits the driver names.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Device reset: nothing pending, not in error.
    pub fn reset(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
        // Drain a pending count so a stale edge is not delivered after reset.
        let _ = self.evt.read();
    }

    /// Puts back a saved InterruptStatus and DEVICE_NEEDS_RESET, without
    /// firing the eventfd: a restored irqchip already holds the line.
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(
            status & (VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG),
            Ordering::Release,
        );
        self.needs_reset.store(needs_reset, Ordering::Release);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(e) = self.evt.write(1) {
            // Only EAGAIN at a counter of u64::MAX - 1 is possible: the line
            // is already pending, so nothing is lost.
            log::debug!("virtio: interrupt eventfd write: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_queue_signal_sets_status_and_fires_eventfd() {
        let irq = VirtioInterrupt::new().unwrap();

        irq.signal_used_queue();

        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.evt().read().unwrap(), 1);
    }

    #[test]
    fn ack_clears_only_named_bits() {
        let irq = VirtioInterrupt::new().unwrap();
        irq.signal_used_queue();
        irq.signal_config();

        irq.ack(VIRTIO_MMIO_INT_VRING);

        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn restore_sets_status_without_firing_the_eventfd() {
        let irq = VirtioInterrupt::new().unwrap();

        irq.restore(VIRTIO_MMIO_INT_VRING | 0x80, true);

        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        assert!(irq.needs_reset());
        assert!(irq.evt().read().is_err(), "nothing was signalled");
    }

    #[test]
    fn needs_reset_raises_config_interrupt_once() {
        let irq = VirtioInterrupt::new().unwrap();

        irq.signal_needs_reset();
        irq.signal_needs_reset();

        assert!(irq.needs_reset());
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.evt().read().unwrap(), 1);
        irq.reset();
        assert!(!irq.needs_reset());
        assert_eq!(irq.status(), 0);
    }
}
