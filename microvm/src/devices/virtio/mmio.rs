//! virtio-mmio transport, version 2 (virtio 1.2, section 4.2), modern only.
//!
//! The register file sits on the VMM's MMIO bus and runs on the vCPU thread
//! for each access; everything else happens on the device's worker thread.
//! The driver's side of the status state machine (3.1.1) is enforced here:
//! a step out of order is ignored, FEATURES_OK is refused without
//! VIRTIO_F_VERSION_1 or with a bit the device did not offer, a queue whose
//! size is not a power of two (or whose rings are not in guest memory) never
//! becomes ready, and a device that cannot start at DRIVER_OK reports
//! DEVICE_NEEDS_RESET.
//!
//! Wiring for the VMM:
//! - [`MmioTransport::interrupt_evt`]: register as an irqfd on the GSI.
//! - [`MmioTransport::queue_evts`]: register each as an ioeventfd at
//!   `base + NOTIFY_REG_OFFSET`, 4 bytes, datamatch = queue index. Without
//!   ioeventfd, the QueueNotify write lands in [`BusDevice::write`] and
//!   signals the same eventfd.
//! - [`MmioTransport::cmdline_entry`]: the `virtio_mmio.device=` argument.
//!
//! Snapshots go through [`Persist`]: saving parks the device's worker (so
//! the saved ring indices and guest memory agree) and restoring rebuilds
//! the registers and, for a device that was active, its queues at the
//! saved indices, then starts its worker again.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::features::{RING_EVENT_IDX, VERSION_1};
use super::interrupt::InterruptError;
use super::queue::QueuePosition;
use super::worker::WorkerError;
use super::{ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::bus::BusDevice;
use crate::snapshot::Persist;

/// Size of one device's MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of QueueNotify, for ioeventfd registration.
pub const NOTIFY_REG_OFFSET: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = u32::from_le_bytes(*b"VTRN");
/// Largest queue count a device may declare; keeps QueueSel checks trivial.
const MAX_QUEUES: usize = 16;
/// Largest split-queue size (virtio 1.2, 2.7).
const MAX_QUEUE_SIZE: u16 = 32768;

const S_ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const S_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const S_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const S_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const S_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const S_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("device declares {0} queues; 1 to {MAX_QUEUES} are supported")]
    QueueCount(usize),
    #[error("queue {index} maximum size {size} is not a power of two up to 32768")]
    QueueMaxSize { index: usize, size: u16 },
    #[error("cannot create a queue notification eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot create the interrupt")]
    Interrupt(#[from] InterruptError),
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    #[error("queue {0} layout is invalid")]
    QueueLayout(usize, #[source] virtio_queue::Error),
    #[error("queue {0} rings are outside guest memory")]
    QueueNotInMemory(usize),
    #[error("device failed to activate")]
    Activate(#[source] ActivateError),
    #[error("cannot pause or resume the device worker")]
    Worker(#[from] WorkerError),
    #[error("saved transport has {saved} queues; the device has {device}")]
    SavedQueueCount { saved: usize, device: usize },
    #[error("saved device status {0:#x} is not one a driver can reach")]
    SavedStatus(u32),
    #[error("saved acked features {0:#x} include some the device does not offer")]
    SavedFeatures(u64),
    #[error("saved queue {0} is ready but its layout does not fit the device and guest memory")]
    SavedQueue(usize),
    #[error("saved state says the device was active, but its status lacks DRIVER_OK")]
    SavedActivation,
}

/// The driver-written registers of one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegisters {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// Transport registers and, for an active device, where it stood in each
/// queue: what a snapshot keeps of the transport.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// As the driver wrote it; DEVICE_NEEDS_RESET is `needs_reset`.
    pub status: u32,
    pub acked_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub needs_reset: bool,
    pub queues: Vec<QueueRegisters>,
    /// `Some` when the device was active: its position in each queue, in
    /// queue order. Restore activates it again from there.
    pub active_queues: Option<Vec<QueuePosition>>,
}

/// One virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue_evts: Vec<EventFd>,
    queue_max: Vec<u16>,
    queues: Vec<QueueRegisters>,
    device_type: u32,
    avail_features: u64,
    status: u32,
    acked_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    config_generation: u32,
}

impl fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &format_args!("{:#x}", self.status))
            .field(
                "acked_features",
                &format_args!("{:#x}", self.acked_features),
            )
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, MmioError> {
        let (device_type, avail_features, queue_max) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.avail_features(),
                d.queue_max_sizes().to_vec(),
            )
        };
        if queue_max.is_empty() || queue_max.len() > MAX_QUEUES {
            return Err(MmioError::QueueCount(queue_max.len()));
        }
        for (index, &size) in queue_max.iter().enumerate() {
            if !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
                return Err(MmioError::QueueMaxSize { index, size });
            }
        }
        let queue_evts = queue_max
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let queues = vec![QueueRegisters::default(); queue_max.len()];
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new()?),
            queue_evts,
            queue_max,
            queues,
            device_type,
            avail_features,
            status: 0,
            acked_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            config_generation: 0,
        })
    }

    /// The eventfd to register as an irqfd on this device's GSI.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.interrupt.evt()
    }

    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// One eventfd per queue, index = queue index = ioeventfd datamatch.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The kernel command line argument that announces this device.
    pub fn cmdline_entry(&self, mmio_base: u64, irq: u32) -> String {
        format!(
            "virtio_mmio.device={}K@{mmio_base:#x}:{irq}",
            MMIO_SIZE / 1024
        )
    }

    /// Device status as the driver reads it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.needs_reset() {
            S_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub fn is_activated(&self) -> bool {
        lock(&self.device).is_activated()
    }

    /// Tells the driver that config space changed (e.g. a new vsock CID
    /// after a clone): bumps ConfigGeneration and, once the driver is up
    /// (DRIVER_OK), raises a config interrupt.
    pub fn notify_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & S_DRIVER_OK != 0 {
            self.interrupt.signal_config();
        }
    }

    /// The driver-written queue registers, in queue order.
    pub fn queue_registers(&self) -> &[QueueRegisters] {
        &self.queues
    }

    /// The registers as they are now, without pausing the device, so
    /// `active_queues` is `None`: a live view for tests and tools. A
    /// snapshot uses [`Persist::save`], which records the queue positions.
    pub fn save_state(&self) -> MmioState {
        MmioState {
            status: self.status,
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            queues: self.queues.clone(),
            active_queues: None,
        }
    }

    /// Parks the device's worker (see [`VirtioDevice::pause`]).
    pub fn pause_device(&self) -> Result<(), MmioError> {
        lock(&self.device).pause()?;
        Ok(())
    }

    /// Starts a worker parked by [`Self::pause_device`] again.
    pub fn resume_device(&self) -> Result<(), MmioError> {
        Ok(lock(&self.device).resume()?)
    }

    fn selected_queue(&mut self) -> Option<(usize, &mut QueueRegisters)> {
        let i = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(i).map(|q| (i, q))
    }

    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            reg::VIRTIO_MMIO_VERSION => VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device_type,
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => low(self.avail_features),
                1 => high(self.avail_features),
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => usize::try_from(self.queue_sel)
                .ok()
                .and_then(|i| self.queue_max.get(i))
                .map_or(0, |&m| u32::from(m)),
            reg::VIRTIO_MMIO_QUEUE_READY => usize::try_from(self.queue_sel)
                .ok()
                .and_then(|i| self.queues.get(i))
                .map_or(0, |q| u32::from(q.ready)),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            reg::VIRTIO_MMIO_STATUS => self.status(),
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // No shared memory regions: length and base read as all ones.
            reg::VIRTIO_MMIO_SHM_LEN_LOW
            | reg::VIRTIO_MMIO_SHM_LEN_HIGH
            | reg::VIRTIO_MMIO_SHM_BASE_LOW
            | reg::VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => {
                log::debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, v: u32) {
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(v),
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            reg::VIRTIO_MMIO_QUEUE_NUM => self.write_queue(|q| q.size = low16(v)),
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW => self.write_queue(|q| set_low(&mut q.desc_table, v)),
            reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                self.write_queue(|q| set_high(&mut q.desc_table, v))
            }
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.write_queue(|q| set_low(&mut q.avail_ring, v)),
            reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                self.write_queue(|q| set_high(&mut q.avail_ring, v))
            }
            reg::VIRTIO_MMIO_QUEUE_USED_LOW => self.write_queue(|q| set_low(&mut q.used_ring, v)),
            reg::VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue(|q| set_high(&mut q.used_ring, v)),
            reg::VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(v),
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => self.notify_queue(v),
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            reg::VIRTIO_MMIO_STATUS => self.write_status(v),
            reg::VIRTIO_MMIO_SHM_SEL => {}
            _ => log::debug!("virtio-mmio: write {v:#x} to read-only or unknown {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        // Features may only change between DRIVER and FEATURES_OK (3.1.1).
        if self.status != S_ACK | S_DRIVER {
            log::warn!(
                "virtio-mmio: driver features write in status {:#x} ignored",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
            1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32),
            sel => log::debug!("virtio-mmio: driver features select {sel} has no bits"),
        }
    }

    /// Queue layout registers are writable only while the driver sets up
    /// queues (before DRIVER_OK) and only for a queue that is not ready.
    fn write_queue(&mut self, f: impl FnOnce(&mut QueueRegisters)) {
        let status = self.status;
        let Some((i, q)) = self.selected_queue() else {
            log::warn!("virtio-mmio: queue register write with no such queue selected");
            return;
        };
        if status & S_DRIVER == 0 || status & (S_DRIVER_OK | S_FAILED) != 0 || q.ready {
            log::warn!("virtio-mmio: queue {i} layout write in status {status:#x} ignored");
            return;
        }
        f(q);
    }

    fn write_queue_ready(&mut self, v: u32) {
        let status = self.status;
        let mem = self.mem.clone();
        let Some((i, max)) = usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queue_max.get(i).map(|&m| (i, m)))
        else {
            return;
        };
        let q = &mut self.queues[i];
        if status & S_DRIVER == 0 || status & (S_DRIVER_OK | S_FAILED) != 0 {
            log::warn!("virtio-mmio: QueueReady for queue {i} in status {status:#x} ignored");
            return;
        }
        if v == 0 {
            q.ready = false;
            return;
        }
        // Ready only if virtio-queue accepts the layout: a power-of-two size
        // up to the maximum, aligned rings, all of it in guest memory.
        match build_queue(q, max, false) {
            Ok(queue) if queue.is_valid(&mem) => q.ready = true,
            Ok(_) => log::warn!("virtio-mmio: queue {i} rings are outside guest memory"),
            Err(e) => log::warn!("virtio-mmio: queue {i} layout refused: {e}"),
        }
    }

    fn notify_queue(&mut self, v: u32) {
        // Before DRIVER_OK the device has nothing to notify (3.1.1); the
        // driver must not do it, so the write is dropped.
        if self.status & S_DRIVER_OK == 0 {
            log::warn!("virtio-mmio: queue notify before DRIVER_OK ignored");
            return;
        }
        match usize::try_from(v).ok().and_then(|i| self.queue_evts.get(i)) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    log::debug!("virtio-mmio: queue eventfd write: {e}");
                }
            }
            None => log::warn!("virtio-mmio: notify for queue {v}, which does not exist"),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & S_FAILED != 0 {
            log::warn!("virtio-mmio: driver set FAILED");
            self.status |= S_FAILED;
            return;
        }
        if self.status & S_FAILED != 0 {
            return;
        }
        let cleared = self.status & !v;
        if cleared != 0 {
            log::warn!(
                "virtio-mmio: driver tried to clear status bits {cleared:#x}; only a reset may"
            );
            return;
        }
        // Apply new bits one step at a time, in the order of 3.1.1.
        let new = v & !self.status;
        for (bit, prerequisite) in [
            (S_ACK, 0),
            (S_DRIVER, S_ACK),
            (S_FEATURES_OK, S_ACK | S_DRIVER),
            (S_DRIVER_OK, S_ACK | S_DRIVER | S_FEATURES_OK),
        ] {
            if new & bit == 0 {
                continue;
            }
            if self.status != prerequisite {
                log::warn!(
                    "virtio-mmio: status bit {bit:#x} out of order (status {:#x})",
                    self.status
                );
                return;
            }
            match bit {
                S_FEATURES_OK if !self.features_acceptable() => return,
                S_DRIVER_OK => {
                    self.status |= bit;
                    if let Err(e) = self.activate() {
                        log::error!(
                            "virtio-mmio: device type {} failed to start: {e}",
                            self.device_type
                        );
                        self.interrupt.signal_needs_reset();
                    }
                    return;
                }
                _ => self.status |= bit,
            }
        }
        let unknown = new & !(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        if unknown != 0 {
            log::warn!("virtio-mmio: unknown status bits {unknown:#x} ignored");
        }
    }

    fn features_acceptable(&self) -> bool {
        let unoffered = self.acked_features & !self.avail_features;
        if self.acked_features & VERSION_1 == 0 {
            log::warn!(
                "virtio-mmio: driver did not accept VIRTIO_F_VERSION_1; FEATURES_OK refused"
            );
            false
        } else if unoffered != 0 {
            log::warn!("virtio-mmio: driver accepted unoffered features {unoffered:#x}; FEATURES_OK refused");
            false
        } else {
            true
        }
    }

    fn activate(&mut self) -> Result<(), MmioError> {
        let start = vec![QueuePosition::default(); self.queues.len()];
        self.activate_at(&start)
    }

    /// Starts the device with each queue at `positions` (all zero for a
    /// driver's DRIVER_OK; the saved indices on restore).
    fn activate_at(&mut self, positions: &[QueuePosition]) -> Result<(), MmioError> {
        if positions.len() != self.queues.len() {
            return Err(MmioError::SavedQueueCount {
                saved: positions.len(),
                device: self.queues.len(),
            });
        }
        let event_idx = self.acked_features & RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, ((regs, &max), &at)) in self
            .queues
            .iter()
            .zip(&self.queue_max)
            .zip(positions)
            .enumerate()
        {
            if !regs.ready {
                return Err(MmioError::QueueNotReady(i));
            }
            let mut queue =
                build_queue(regs, max, event_idx).map_err(|e| MmioError::QueueLayout(i, e))?;
            queue.set_next_avail(at.next_avail);
            queue.set_next_used(at.next_used);
            if !queue.is_valid(&self.mem) {
                return Err(MmioError::QueueNotInMemory(i));
            }
            queues.push(queue);
        }
        let queue_evts = self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| MmioError::Activate(ActivateError::Dup(e)))?;
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        lock(&self.device)
            .activate(ctx)
            .map_err(MmioError::Activate)
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.queues.fill(QueueRegisters::default());
        self.interrupt.reset();
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
    }
}

/// What a restored transport is built from.
pub struct MmioConstructorArgs {
    pub mem: GuestMemoryMmap,
    /// The device, already restored from its own state, not yet active.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
}

impl fmt::Debug for MmioConstructorArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioConstructorArgs")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Whether `status` is one the driver's side of 3.1.1 can reach: each bit
/// only after the ones before it, FAILED at any point.
fn reachable_status(status: u32) -> bool {
    let steps = [
        0,
        S_ACK,
        S_ACK | S_DRIVER,
        S_ACK | S_DRIVER | S_FEATURES_OK,
        S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    ];
    steps.contains(&(status & !S_FAILED))
}

impl Persist<'_> for MmioTransport {
    type State = MmioState;
    type ConstructorArgs = MmioConstructorArgs;
    type Error = MmioError;

    /// Parks the device's worker first, if it runs, so that the saved
    /// queue positions are exact and stay so while the rest of the VM is
    /// saved. [`MmioTransport::resume_device`] starts it again.
    fn save(&self) -> Result<MmioState, MmioError> {
        let active_queues = lock(&self.device).pause()?;
        Ok(MmioState {
            active_queues,
            ..self.save_state()
        })
    }

    /// Rebuilds the registers, checking them as if the driver had just
    /// written them, and starts a device that was active again at its
    /// saved queue positions. The interrupt line itself is not raised
    /// again: the restored irqchip already holds whatever was pending.
    fn restore(args: MmioConstructorArgs, state: &MmioState) -> Result<Self, MmioError> {
        let mut t = MmioTransport::new(args.mem, args.device)?;
        if state.queues.len() != t.queue_max.len() {
            return Err(MmioError::SavedQueueCount {
                saved: state.queues.len(),
                device: t.queue_max.len(),
            });
        }
        if !reachable_status(state.status) {
            return Err(MmioError::SavedStatus(state.status));
        }
        let unoffered = state.acked_features & !t.avail_features;
        let needs_version_1 = state.status & S_FEATURES_OK != 0;
        if unoffered != 0 || (needs_version_1 && state.acked_features & VERSION_1 == 0) {
            return Err(MmioError::SavedFeatures(state.acked_features));
        }
        for (i, (regs, &max)) in state.queues.iter().zip(&t.queue_max).enumerate() {
            if !regs.ready {
                continue;
            }
            match build_queue(regs, max, false) {
                Ok(queue) if queue.is_valid(&t.mem) => {}
                _ => return Err(MmioError::SavedQueue(i)),
            }
        }
        t.status = state.status;
        t.acked_features = state.acked_features;
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.queue_sel = state.queue_sel;
        t.config_generation = state.config_generation;
        t.queues.clone_from(&state.queues);
        t.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        if let Some(positions) = &state.active_queues {
            if state.status & S_DRIVER_OK == 0 || state.status & S_FAILED != 0 {
                return Err(MmioError::SavedActivation);
            }
            t.activate_at(positions)?;
            // A notification the saved worker had not taken yet sat in the
            // old eventfds; one look at each queue catches up with it.
            for evt in &t.queue_evts {
                if let Err(e) = evt.write(1) {
                    log::debug!("virtio-mmio: queue eventfd write: {e}");
                }
            }
        }
        Ok(t)
    }
}

fn build_queue(
    regs: &QueueRegisters,
    max_size: u16,
    event_idx: bool,
) -> Result<Queue, virtio_queue::Error> {
    Queue::try_from(QueueState {
        max_size,
        next_avail: 0,
        next_used: 0,
        event_idx_enabled: event_idx,
        size: regs.size,
        ready: true,
        desc_table: regs.desc_table,
        avail_ring: regs.avail_ring,
        used_ring: regs.used_ring,
    })
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(cfg) = offset.checked_sub(u64::from(reg::VIRTIO_MMIO_CONFIG)) {
            lock(&self.device).read_config(cfg, data);
            return;
        }
        // Control registers are 32-bit, aligned (4.2.2.2).
        match register_offset(offset) {
            Some(off) if data.len() == 4 => {
                data.copy_from_slice(&self.read_register(off).to_le_bytes());
            }
            _ => {
                log::warn!("virtio-mmio: bad register read at {offset:#x}");
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(cfg) = offset.checked_sub(u64::from(reg::VIRTIO_MMIO_CONFIG)) {
            lock(&self.device).write_config(cfg, data);
            return;
        }
        match (register_offset(offset), <[u8; 4]>::try_from(data)) {
            (Some(off), Ok(bytes)) => self.write_register(off, u32::from_le_bytes(bytes)),
            _ => log::warn!(
                "virtio-mmio: bad register write of {} bytes at {offset:#x}",
                data.len()
            ),
        }
    }
}

fn register_offset(offset: u64) -> Option<u32> {
    u32::try_from(offset).ok().filter(|o| o % 4 == 0)
}

fn lock(device: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

fn low(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

fn high(v: u64) -> u32 {
    u32::try_from(v >> 32).unwrap_or(0)
}

/// QueueNum is 32 bits wide; a value that does not fit a u16 can never be a
/// valid size, so it maps to 0, which virtio-queue refuses.
fn low16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(0)
}

fn set_low(r: &mut u64, v: u32) {
    *r = (*r & !0xffff_ffff) | u64::from(v);
}

fn set_high(r: &mut u64, v: u32) {
    *r = (*r & 0xffff_ffff) | (u64::from(v) << 32);
}
