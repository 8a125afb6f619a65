//! The pop / add-used / notify cycle every device runs on its queues.
//!
//! A driver that breaks the ring itself (an available index more than a
//! queue's worth ahead, a used ring it made unwritable) gets the device put
//! in DEVICE_NEEDS_RESET and the queue is not touched again until reset:
//! continuing would mean guessing which entries are real.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::VirtioInterrupt;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {index} is broken and waits for a device reset")]
    Broken { index: u16 },
    #[error("queue {index}: available index {avail} is more than {size} ahead of {next}")]
    AvailIndex {
        index: u16,
        avail: u16,
        next: u16,
        size: u16,
    },
    #[error("queue {index}: ring access failed")]
    Ring {
        index: u16,
        #[source]
        source: virtio_queue::Error,
    },
}

/// Where the device stands in one queue: the next available entry it will
/// take and the next used entry it will fill. The rings themselves live in
/// guest memory; these two indices are all a snapshot must add.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePosition {
    pub next_avail: u16,
    pub next_used: u16,
}

/// One virtqueue as the device side sees it.
#[derive(Debug)]
pub struct DeviceQueue {
    index: u16,
    queue: Queue,
    evt: EventFd,
    broken: bool,
}

impl DeviceQueue {
    pub fn new(index: u16, queue: Queue, evt: EventFd) -> Self {
        Self {
            index,
            queue,
            evt,
            broken: false,
        }
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    /// The notification eventfd (ioeventfd or QueueNotify writes).
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }

    pub fn size(&self) -> u16 {
        self.queue.size()
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The virtio-queue state, for snapshots and tests.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn position(&self) -> QueuePosition {
        QueuePosition {
            next_avail: self.queue.next_avail(),
            next_used: self.queue.next_used(),
        }
    }

    /// Clears a pending notification. The count does not matter: the device
    /// always drains the ring up to the available index it reads.
    pub fn consume_notification(&self) {
        let _ = self.evt.read();
    }

    /// Makes the worker look at this queue again on its next epoll round,
    /// used to yield after a bounded amount of work.
    pub fn requeue_notification(&self) {
        let _ = self.evt.write(1);
    }

    /// Takes the next available chain. When the ring looks empty, re-enables
    /// driver notifications (publishing `avail_event` with EVENT_IDX) and
    /// looks once more, so no buffer added in between is missed.
    pub fn pop<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
        irq: &VirtioInterrupt,
    ) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, QueueError> {
        if self.broken {
            return Err(QueueError::Broken { index: self.index });
        }
        if let Some(chain) = self.try_pop(mem, irq)? {
            return Ok(Some(chain));
        }
        match self.queue.enable_notification(mem) {
            Ok(true) => self.try_pop(mem, irq),
            Ok(false) => Ok(None),
            Err(source) => Err(self.fail(irq, source)),
        }
    }

    /// Puts the last popped chain back, for a device that found it has
    /// nothing to put in it after all.
    pub fn undo_pop(&mut self) {
        self.queue.go_to_previous_position();
    }

    /// Returns a chain to the driver with `len` bytes written into it.
    ///
    /// A head index past the queue size cannot go in the used ring; such a
    /// chain was never valid and is dropped without an entry.
    pub fn add_used(
        &mut self,
        mem: &GuestMemoryMmap,
        irq: &VirtioInterrupt,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        if self.broken {
            return Err(QueueError::Broken { index: self.index });
        }
        if head >= self.queue.size() {
            log::warn!(
                "virtio queue {}: dropped chain with head {head} past size {}",
                self.index,
                self.queue.size()
            );
            return Ok(());
        }
        self.queue
            .add_used(mem, head, len)
            .map_err(|source| self.fail(irq, source))
    }

    /// Serves what the driver has made available, at most two rings' worth
    /// per call (the rest waits for the next epoll round, with the
    /// notification re-armed): `handle` turns each chain into its used
    /// length, and one interrupt covers the batch.
    pub fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        irq: &VirtioInterrupt,
        mut handle: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
    ) {
        let mut budget = 2 * usize::from(self.size());
        let mut added = 0u32;
        loop {
            if budget == 0 {
                self.requeue_notification();
                break;
            }
            budget -= 1;
            let chain = match self.pop(mem, irq) {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            let head = chain.head_index();
            let len = handle(chain);
            if self.add_used(mem, irq, head, len).is_err() {
                break;
            }
            added += 1;
        }
        if added > 0 {
            self.notify(mem, irq);
        }
    }

    /// Raises the used-buffer interrupt if the driver asked for it.
    pub fn notify(&mut self, mem: &GuestMemoryMmap, irq: &VirtioInterrupt) {
        if self.broken {
            return;
        }
        match self.queue.needs_notification(mem) {
            Ok(true) => irq.signal_used_queue(),
            Ok(false) => {}
            Err(source) => {
                self.fail(irq, source);
            }
        }
    }

    fn try_pop<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
        irq: &VirtioInterrupt,
    ) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, QueueError> {
        match self.queue.iter(mem) {
            Ok(mut it) => Ok(it.next()),
            Err(virtio_queue::Error::InvalidAvailRingIndex) => {
                let avail = self
                    .queue
                    .avail_idx(mem, Ordering::Acquire)
                    .unwrap_or(Wrapping(0))
                    .0;
                let err = QueueError::AvailIndex {
                    index: self.index,
                    avail,
                    next: self.queue.next_avail(),
                    size: self.queue.size(),
                };
                log::warn!("virtio: {err}");
                self.broken = true;
                irq.signal_needs_reset();
                Err(err)
            }
            Err(source) => Err(self.fail(irq, source)),
        }
    }

    fn fail(&mut self, irq: &VirtioInterrupt, source: virtio_queue::Error) -> QueueError {
        log::warn!("virtio queue {}: {source}", self.index);
        self.broken = true;
        irq.signal_needs_reset();
        QueueError::Ring {
            index: self.index,
            source,
        }
    }
}
