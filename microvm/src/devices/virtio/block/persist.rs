//! What a block device needs to come back after a snapshot. The backing
//! file itself cannot be serialised: the caller reopens it and passes it
//! in, and restore checks that it is the disk the guest already knows
//! (same size in sectors, same read-only mode, which decided the features
//! the driver accepted).

use std::fs::File;

use serde::{Deserialize, Serialize};

use super::{BlockDevice, BlockError};
use crate::snapshot::Persist;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub read_only: bool,
    pub capacity_sectors: u64,
    pub disk_id: Vec<u8>,
    pub acked_features: u64,
}

/// The host resources a restored block device gets.
#[derive(Debug)]
pub struct BlockConstructorArgs {
    /// The disk image, reopened by the caller.
    pub disk: File,
    /// Must match the saved mode.
    pub read_only: bool,
}

impl BlockDevice {
    pub(super) fn state_for_snapshot(&self) -> BlockState {
        BlockState {
            read_only: self.read_only,
            capacity_sectors: self.capacity_sectors,
            disk_id: self.id.to_vec(),
            acked_features: self.acked_features,
        }
    }
}

impl Persist<'_> for BlockDevice {
    type State = BlockState;
    type ConstructorArgs = BlockConstructorArgs;
    type Error = BlockError;

    fn save(&self) -> Result<BlockState, BlockError> {
        Ok(self.state_for_snapshot())
    }

    /// An inactive device over `args.disk`; the transport activates it
    /// again if it was.
    fn restore(args: BlockConstructorArgs, state: &BlockState) -> Result<Self, BlockError> {
        if args.read_only != state.read_only {
            return Err(BlockError::ReadOnlyMismatch {
                saved: state.read_only,
            });
        }
        if state.disk_id.len() > 20 {
            return Err(BlockError::DiskId(state.disk_id.len()));
        }
        let mut device = BlockDevice::new(args.disk, args.read_only)?;
        if device.capacity_sectors != state.capacity_sectors {
            return Err(BlockError::CapacityMismatch {
                saved: state.capacity_sectors,
                found: device.capacity_sectors,
            });
        }
        device.id = [0; 20];
        device.id[..state.disk_id.len()].copy_from_slice(&state.disk_id);
        device.acked_features = state.acked_features;
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(sectors: u64) -> File {
        let f = tempfile::tempfile().unwrap();
        f.set_len(sectors * 512).unwrap();
        f
    }

    fn saved() -> BlockState {
        BlockState {
            read_only: true,
            capacity_sectors: 2048,
            disk_id: b"vitrine-disk\0\0\0\0\0\0\0\0".to_vec(),
            acked_features: 1 << 32 | 1 << 5,
        }
    }

    #[test]
    fn state_round_trips_through_serde() {
        let state = saved();
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<BlockState>(&json).unwrap(), state);
    }

    #[test]
    fn state_round_trips_through_restore_and_save() {
        let state = saved();
        let args = BlockConstructorArgs {
            disk: disk(2048),
            read_only: true,
        };

        let device = BlockDevice::restore(args, &state).unwrap();

        assert_eq!(device.save().unwrap(), state);
    }

    #[test]
    fn a_disk_of_another_size_is_refused() {
        let args = BlockConstructorArgs {
            disk: disk(1024),
            read_only: true,
        };

        let err = BlockDevice::restore(args, &saved()).unwrap_err();

        assert!(matches!(
            err,
            BlockError::CapacityMismatch {
                saved: 2048,
                found: 1024
            }
        ));
    }

    #[test]
    fn a_disk_in_the_other_mode_is_refused() {
        let args = BlockConstructorArgs {
            disk: disk(2048),
            read_only: false,
        };

        let err = BlockDevice::restore(args, &saved()).unwrap_err();

        assert_eq!(
            err.to_string(),
            "the snapshot's disk was read-only, the disk given is writable"
        );
    }

    #[test]
    fn an_overlong_serial_is_refused() {
        let mut state = saved();
        state.disk_id = vec![b'x'; 21];
        let args = BlockConstructorArgs {
            disk: disk(2048),
            read_only: true,
        };

        let err = BlockDevice::restore(args, &state).unwrap_err();

        assert!(matches!(err, BlockError::DiskId(21)));
    }
}
