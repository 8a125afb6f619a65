//! VM backends: each starts a guest from the guest image for one task and
//! hands back the byte stream to its shim, already past `Ready`.
//!
//! A fresh VM per task is the product's model: the caller starts a VM, takes
//! its [`GuestChannel`], serves the task, then shuts the VM down or drops it
//! (which kills it). Backends: [`kvm`] (the project's own VMM, where
//! `vitrine-vmm probe` says this host runs full Linux guests) and [`qemu`]
//! (QEMU `-M microvm`, TCG or KVM, for every other host).

pub mod channel;
pub mod image;
pub mod kvm;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod runtime_dir;
pub mod select;
mod startup;
pub mod template;

use std::process::ExitStatus;
use std::time::Duration;

use vitrine_shim::protocol::Ready;

pub use channel::{ChannelError, GuestChannel};
pub use image::{GuestImage, ImageError};

/// How the guest's vCPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation; runs anywhere, seconds per task.
    Tcg,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
}

/// What one VM is started with.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel, initramfs and command line.
    pub image: GuestImage,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Accelerator.
    pub accel: Accel,
    /// Longest wait from start to the shim's `Ready`.
    pub ready_timeout: Duration,
    /// Appended to the image's kernel command line (for example the CPUID
    /// masks a nested KVM host needs).
    pub extra_cmdline: String,
}

impl VmConfig {
    /// Defaults for `image`: 512 MiB, one vCPU, TCG, 60 s to `Ready`.
    pub fn new(image: GuestImage) -> Self {
        Self {
            image,
            memory_mib: 512,
            vcpus: 1,
            accel: Accel::Tcg,
            ready_timeout: Duration::from_secs(60),
            extra_cmdline: String::new(),
        }
    }
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The VM process exited by itself (the guest powered off, or crashed).
    Exited(ExitStatus),
    /// The wall-clock limit ran out and the VM was killed.
    Killed,
}

/// Starts VMs.
pub trait Backend {
    /// A running VM.
    type Vm: GuestVm;
    /// Why a VM did not start.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Short name for logs and benchmarks ("qemu-tcg").
    fn name(&self) -> String;

    /// Starts a VM and waits for its shim's `Ready`.
    fn start(&self, config: &VmConfig) -> Result<Self::Vm, Self::Error>;
}

/// A VM whose shim said `Ready`. Dropping it kills the VM and removes its
/// files.
pub trait GuestVm {
    /// Why an operation on the VM failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The shim's `Ready` message.
    fn ready(&self) -> &Ready;

    /// Time from start to `Ready` (boot or restore).
    fn boot_time(&self) -> Duration;

    /// The framed stream to the shim. Can be taken once.
    fn take_channel(&mut self) -> Result<GuestChannel, Self::Error>;

    /// Waits up to `limit` for the VM to end by itself, then kills it.
    fn wait_or_kill(&mut self, limit: Duration) -> Result<VmExit, Self::Error>;

    /// Kills the VM now; a VM that already ended is left as it is.
    fn kill(&mut self);

    /// What the guest wrote to its serial console so far (lossy UTF-8).
    fn serial_log(&self) -> String;

    /// How the VM came to be, for a task's details: `booted`, or `cloned
    /// from template ID`.
    fn origin(&self) -> String {
        "booted".to_owned()
    }
}
