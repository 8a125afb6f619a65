//! Choosing the backend for this host: the project's VMM where `vitrine-vmm
//! probe` says full Linux guests run, QEMU everywhere else. [`HostBackend`]
//! is either, behind one type, so callers need not be generic.

use std::time::Duration;

use vitrine_shim::protocol::Ready;

use super::kvm::{HostSupport, KvmBackend, KvmError, KvmVm};
use super::qemu::{QemuBackend, QemuError, QemuVm};
use super::{Accel, Backend, GuestChannel, GuestVm, VmConfig, VmExit};

/// The backend chosen for this host, and why.
#[derive(Debug, Clone)]
pub enum HostBackend {
    /// The project's own VMM.
    Kvm(KvmBackend),
    /// QEMU, with the reason the project's VMM was not chosen.
    Qemu {
        /// The backend.
        backend: QemuBackend,
        /// Why not `kvm`.
        why_not_kvm: String,
    },
}

impl HostBackend {
    /// Probes this host once: `kvm` if full guests run, else QEMU (TCG,
    /// since a host whose KVM cannot run the guest cannot lend it to QEMU
    /// either).
    pub fn choose() -> Self {
        let kvm = KvmBackend::new();
        let why_not = match kvm.probe() {
            Ok(HostSupport::FullGuests) => return Self::Kvm(kvm),
            Ok(HostSupport::No(why)) => why,
            Err(e) => e.to_string(),
        };
        Self::Qemu {
            backend: QemuBackend::new(),
            why_not_kvm: why_not,
        }
    }

    /// The accelerator VMs of this backend get.
    pub fn accel(&self) -> Accel {
        match self {
            Self::Kvm(_) => Accel::Kvm,
            Self::Qemu { .. } => Accel::Tcg,
        }
    }

    /// One line for logs: which backend, and why.
    pub fn describe(&self) -> String {
        match self {
            Self::Kvm(k) => format!("kvm ({})", k.binary().display()),
            Self::Qemu { why_not_kvm, .. } => {
                format!("qemu-tcg (this host's KVM cannot run full guests: {why_not_kvm})")
            }
        }
    }
}

/// A VM of either backend.
#[derive(Debug)]
pub enum HostVm {
    /// Under the project's VMM.
    Kvm(KvmVm),
    /// Under QEMU.
    Qemu(QemuVm),
}

/// Why a VM of either backend failed.
#[derive(Debug, thiserror::Error)]
pub enum HostVmError {
    /// From the project's VMM.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// From QEMU.
    #[error(transparent)]
    Qemu(#[from] QemuError),
}

impl Backend for HostBackend {
    type Vm = HostVm;
    type Error = HostVmError;

    fn name(&self) -> String {
        match self {
            Self::Kvm(k) => k.name(),
            Self::Qemu { backend, .. } => backend.name(),
        }
    }

    fn start(&self, config: &VmConfig) -> Result<HostVm, HostVmError> {
        match self {
            Self::Kvm(k) => Ok(HostVm::Kvm(k.start(config)?)),
            Self::Qemu { backend, .. } => Ok(HostVm::Qemu(backend.start(config)?)),
        }
    }
}

impl HostVm {
    /// Process id of the VM's process.
    pub fn pid(&self) -> u32 {
        match self {
            Self::Kvm(v) => v.pid(),
            Self::Qemu(v) => v.pid(),
        }
    }
}

impl GuestVm for HostVm {
    type Error = HostVmError;

    fn ready(&self) -> &Ready {
        match self {
            Self::Kvm(v) => v.ready(),
            Self::Qemu(v) => v.ready(),
        }
    }

    fn boot_time(&self) -> Duration {
        match self {
            Self::Kvm(v) => v.boot_time(),
            Self::Qemu(v) => v.boot_time(),
        }
    }

    fn take_channel(&mut self) -> Result<GuestChannel, HostVmError> {
        match self {
            Self::Kvm(v) => Ok(v.take_channel()?),
            Self::Qemu(v) => Ok(v.take_channel()?),
        }
    }

    fn wait_or_kill(&mut self, limit: Duration) -> Result<VmExit, HostVmError> {
        match self {
            Self::Kvm(v) => Ok(v.wait_or_kill(limit)?),
            Self::Qemu(v) => Ok(v.wait_or_kill(limit)?),
        }
    }

    fn kill(&mut self) {
        match self {
            Self::Kvm(v) => v.kill(),
            Self::Qemu(v) => v.kill(),
        }
    }

    fn serial_log(&self) -> String {
        match self {
            Self::Kvm(v) => v.serial_log(),
            Self::Qemu(v) => v.serial_log(),
        }
    }
}
