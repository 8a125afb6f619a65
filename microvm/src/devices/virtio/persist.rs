//! What a snapshot keeps of a virtio device beyond its transport registers
//! ([`super::mmio::MmioState`]): which device it was, and that device's own
//! state. Each device restores through its [`crate::snapshot::Persist`]
//! impl, with constructor arguments that give a clone its own host
//! resources (a reopened disk, a new vsock socket and CID).

use serde::{Deserialize, Serialize};

use super::block::BlockState;
use super::device_type;
use super::rng::RngState;
use super::vsock::VsockState;

/// One device's own state, tagged by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    Rng(RngState),
    Block(BlockState),
    Vsock(VsockState),
}

impl VirtioDeviceState {
    /// The virtio device ID of the device this state belongs to.
    pub fn device_type(&self) -> u32 {
        match self {
            VirtioDeviceState::Rng(_) => device_type::RNG,
            VirtioDeviceState::Block(_) => device_type::BLOCK,
            VirtioDeviceState::Vsock(_) => device_type::VSOCK,
        }
    }

    /// The device's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            VirtioDeviceState::Rng(_) => "virtio-rng",
            VirtioDeviceState::Block(_) => "virtio-blk",
            VirtioDeviceState::Vsock(_) => "virtio-vsock",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_names_its_device_type() {
        let states = [
            VirtioDeviceState::Rng(RngState::default()),
            VirtioDeviceState::Block(BlockState::default()),
            VirtioDeviceState::Vsock(VsockState::default()),
        ];

        let types: Vec<u32> = states.iter().map(VirtioDeviceState::device_type).collect();

        assert_eq!(
            types,
            [device_type::RNG, device_type::BLOCK, device_type::VSOCK]
        );
    }
}
