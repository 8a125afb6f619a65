//! The vsock device as the transport sees it.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::event_handler::VsockHandler;
use super::muxer::VsockMuxer;
use super::QUEUE_SIZE;
use crate::devices::virtio::worker::{DeviceState, WorkerError};
use crate::devices::virtio::{
    device_type, features, read_config_bytes, ActivateContext, ActivateError, QueuePosition,
    VirtioDevice, VirtioDeviceState,
};

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved or out of range (3 to 2^32 - 2)")]
    Cid(u64),
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// virtio-vsock with a host Unix listener at `uds_path`.
#[derive(Debug)]
pub struct VsockDevice {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    config: [u8; 8],
    state: DeviceState<VsockHandler>,
    pub(super) acked_features: u64,
    /// Set on a device restored from a snapshot: its next activation tells
    /// the driver that every connection it had is gone (a driver reset
    /// clears it, as a freshly set-up driver has nothing to drop).
    pub(super) transport_reset_pending: bool,
}

impl VsockDevice {
    /// Binds the host listener at `uds_path` (which must not exist yet).
    pub fn new(guest_cid: u64, uds_path: impl AsRef<Path>) -> Result<Self, VsockError> {
        // 0-2 are reserved; Linux CIDs are 32-bit and u32::MAX is "any".
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::Cid(guest_cid));
        }
        let uds_path = uds_path.as_ref().to_path_buf();
        let bind = |source| VsockError::Bind {
            path: uds_path.clone(),
            source,
        };
        let listener = UnixListener::bind(&uds_path).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        Ok(Self {
            guest_cid,
            config: guest_cid.to_le_bytes(),
            uds_path,
            listener,
            state: DeviceState::Inactive,
            acked_features: 0,
            transport_reset_pending: false,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn avail_features(&self) -> u64 {
        features::TRANSPORT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.is_activated() {
            return Err(ActivateError::AlreadyActive);
        }
        let listener = self.listener.try_clone().map_err(ActivateError::Dup)?;
        let muxer = VsockMuxer::new(self.guest_cid, self.uds_path.clone(), listener);
        let acked = ctx.acked_features;
        let mut handler = VsockHandler::new(ctx, muxer)?;
        if self.transport_reset_pending {
            handler.reset_transport();
        }
        self.state.activate("virtio-vsock", handler)?;
        self.transport_reset_pending = false;
        self.acked_features = acked;
        Ok(())
    }

    fn reset(&mut self) {
        self.state.deactivate();
        self.acked_features = 0;
        self.transport_reset_pending = false;
    }

    fn is_activated(&self) -> bool {
        self.state.is_activated()
    }

    fn pause(&mut self) -> Result<Option<Vec<QueuePosition>>, WorkerError> {
        self.state.pause(|h| h.queue_positions())
    }

    fn resume(&mut self) -> Result<(), WorkerError> {
        self.state.resume()
    }

    fn device_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Vsock(self.state_for_snapshot())
    }
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        // Stop the worker first so no connection outlives the socket path.
        self.reset();
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            log::debug!("vsock: cannot remove {}: {e}", self.uds_path.display());
        }
    }
}
