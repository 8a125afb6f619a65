//! The block device as the transport sees it.

use std::fs::File;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};

use super::event_handler::BlockHandler;
use super::{DEFAULT_ID, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX};
use crate::devices::virtio::worker::{DeviceState, WorkerError};
use crate::devices::virtio::{
    device_type, features, read_config_bytes, ActivateContext, ActivateError, QueuePosition,
    VirtioDevice, VirtioDeviceState,
};

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot read the size of the disk file")]
    Metadata(#[source] std::io::Error),
    #[error(
        "the snapshot's disk has {saved} sectors and the disk given has {found}; \
         the guest would see another disk"
    )]
    CapacityMismatch { saved: u64, found: u64 },
    #[error("the snapshot's disk was {}, the disk given is {}", mode(*.saved), mode(!*.saved))]
    ReadOnlyMismatch { saved: bool },
    #[error("the snapshot's disk serial is {0} bytes; at most 20 fit")]
    DiskId(usize),
}

fn mode(read_only: bool) -> &'static str {
    if read_only {
        "read-only"
    } else {
        "writable"
    }
}

/// virtio-blk over a host file.
#[derive(Debug)]
pub struct BlockDevice {
    disk: File,
    pub(super) read_only: bool,
    pub(super) capacity_sectors: u64,
    pub(super) id: [u8; 20],
    config: [u8; 16],
    state: DeviceState<BlockHandler>,
    pub(super) acked_features: u64,
}

impl BlockDevice {
    /// A disk over `file`. The capacity is the file size in whole sectors;
    /// a partial last sector is not visible to the guest.
    pub fn new(disk: File, read_only: bool) -> Result<Self, BlockError> {
        let len = disk.metadata().map_err(BlockError::Metadata)?.len();
        if len % SECTOR_SIZE != 0 {
            log::warn!("virtio-blk: disk size {len} is not whole sectors; the tail is hidden");
        }
        let capacity_sectors = len / SECTOR_SIZE;
        // struct virtio_blk_config: capacity, size_max (unused), seg_max.
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        config[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Self {
            disk,
            read_only,
            capacity_sectors,
            id: *DEFAULT_ID,
            config,
            state: DeviceState::Inactive,
            acked_features: 0,
        })
    }

    /// Sets the serial returned by GET_ID (at most 20 bytes are kept).
    pub fn with_id(mut self, id: &[u8]) -> Self {
        self.id = [0; 20];
        let n = id.len().min(20);
        self.id[..n].copy_from_slice(&id[..n]);
        self
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn avail_features(&self) -> u64 {
        let mode = if self.read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            1 << VIRTIO_BLK_F_FLUSH
        };
        features::TRANSPORT | 1 << VIRTIO_BLK_F_SEG_MAX | mode
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.is_activated() {
            return Err(ActivateError::AlreadyActive);
        }
        let disk = self.disk.try_clone().map_err(ActivateError::Dup)?;
        let acked = ctx.acked_features;
        let handler = BlockHandler::new(ctx, disk, self.read_only, self.capacity_sectors, self.id)?;
        self.state.activate("virtio-blk", handler)?;
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
        VirtioDeviceState::Block(self.state_for_snapshot())
    }
}
