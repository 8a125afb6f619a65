//! What a vsock device needs to come back after a snapshot.
//!
//! A clone must not be the template: it gets its own CID and its own host
//! socket, passed in as constructor arguments, and the config space shows
//! the new CID. Connections do not survive a snapshot (their host ends
//! belong to the template's process): the restored device starts with
//! none, and once the transport activates it again it puts a
//! VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue (virtio 1.2,
//! 5.10.6.6), so the guest driver drops its sockets and rereads the CID.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{VsockDevice, VsockError};
use crate::snapshot::Persist;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The CID and socket of the VM that was saved; a clone gets its own.
    pub guest_cid: u64,
    pub uds_path: PathBuf,
    pub acked_features: u64,
}

/// The identity a restored vsock device gets.
#[derive(Clone, Debug)]
pub struct VsockConstructorArgs {
    /// The clone's CID (3 to 2^32 - 2).
    pub guest_cid: u64,
    /// The clone's host listener path; it must not exist yet.
    pub uds_path: PathBuf,
}

impl VsockDevice {
    pub(super) fn state_for_snapshot(&self) -> VsockState {
        VsockState {
            guest_cid: self.guest_cid(),
            uds_path: self.uds_path().to_path_buf(),
            acked_features: self.acked_features,
        }
    }
}

impl Persist<'_> for VsockDevice {
    type State = VsockState;
    type ConstructorArgs = VsockConstructorArgs;
    type Error = VsockError;

    fn save(&self) -> Result<VsockState, VsockError> {
        Ok(self.state_for_snapshot())
    }

    /// An inactive device with the new identity and no connections; its
    /// next activation sends the transport reset event.
    fn restore(args: VsockConstructorArgs, state: &VsockState) -> Result<Self, VsockError> {
        let mut device = VsockDevice::new(args.guest_cid, args.uds_path)?;
        device.acked_features = state.acked_features;
        device.transport_reset_pending = true;
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::VirtioDevice;

    #[test]
    fn state_round_trips_through_serde() {
        let state = VsockState {
            guest_cid: 3,
            uds_path: PathBuf::from("/run/vitrine/v.sock"),
            acked_features: 1 << 32,
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<VsockState>(&json).unwrap(), state);
    }

    #[test]
    fn state_round_trips_through_restore_and_save_with_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let state = VsockState {
            guest_cid: 9,
            uds_path: dir.path().join("v.sock"),
            acked_features: 1 << 32,
        };
        let args = VsockConstructorArgs {
            guest_cid: state.guest_cid,
            uds_path: state.uds_path.clone(),
        };

        let device = VsockDevice::restore(args, &state).unwrap();

        assert_eq!(device.save().unwrap(), state);
    }

    #[test]
    fn a_restored_device_shows_the_new_cid_in_config_space() {
        let dir = tempfile::tempdir().unwrap();
        let state = VsockState {
            guest_cid: 3,
            uds_path: dir.path().join("template.sock"),
            acked_features: 1 << 32,
        };
        let args = VsockConstructorArgs {
            guest_cid: 0x1234_5678,
            uds_path: dir.path().join("clone.sock"),
        };

        let device = VsockDevice::restore(args, &state).unwrap();
        let mut cid = [0u8; 8];
        device.read_config(0, &mut cid);

        assert_eq!(u64::from_le_bytes(cid), 0x1234_5678);
        assert!(dir.path().join("clone.sock").exists());
        assert_eq!(device.save().unwrap().guest_cid, 0x1234_5678);
    }

    #[test]
    fn a_reserved_cid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let args = VsockConstructorArgs {
            guest_cid: 2,
            uds_path: dir.path().join("v.sock"),
        };

        let err = VsockDevice::restore(args, &VsockState::default()).unwrap_err();

        assert!(matches!(err, VsockError::Cid(2)));
    }
}
