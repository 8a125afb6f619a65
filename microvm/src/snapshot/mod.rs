//! Snapshots: a paused VM's full state, saved once and restored into any
//! number of fresh clones.
//!
//! A snapshot is a directory holding `state` (this module's versioned,
//! checksummed file of [`VmState`]) and `mem` (guest RAM, sparse). Clones
//! map `mem` `MAP_PRIVATE`: they share its page cache, and their writes stay
//! their own.
//!
//! Virtio devices are in the state too: per slot its MMIO base and GSI,
//! the transport registers with the device's queue positions, and the
//! device's own state. A restore gives each device the clone's own host
//! resources (see [`crate::vmm::RestoreOptions`]).

pub mod file;
pub mod identity;
pub mod memory;
pub mod vcpu;

use serde::{Deserialize, Serialize};

use crate::devices::serial::SerialState;
use crate::devices::virtio::mmio::MmioState;
use crate::devices::virtio::VirtioDeviceState;
pub use vcpu::VcpuState;

/// Saving and restoring one part of a VM.
///
/// `State` is plain data that serde can write; `ConstructorArgs` is what a
/// restore needs beyond it (handles, file descriptors, a new identity).
pub trait Persist<'a>: Sized {
    type State;
    type ConstructorArgs;
    type Error;

    fn save(&self) -> Result<Self::State, Self::Error>;
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}

/// The in-kernel interrupt controllers and timer.
#[derive(Debug, Serialize, Deserialize)]
pub struct IrqchipState {
    pub chips: [kvm_bindings::kvm_irqchip; 3],
    pub pit: kvm_bindings::kvm_pit_state2,
}

/// Everything but guest RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    pub mem_size: u64,
    pub irqchip: Option<IrqchipState>,
    pub clock: kvm_bindings::kvm_clock_data,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialState,
    /// Identity generation of the VM that was saved; each restore adds one.
    pub generation: u64,
    /// Attached virtio devices, in the order they were attached.
    pub virtio: Vec<VirtioSlotState>,
}

/// One attached virtio device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioSlotState {
    pub mmio_base: u64,
    pub gsi: u32,
    pub transport: MmioState,
    pub device: VirtioDeviceState,
}

/// Names of the files in a snapshot directory.
pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "mem";
pub const WORKING_SET_FILE: &str = "working-set";
