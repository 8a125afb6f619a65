//! One task in one fresh guest, as the product runs it: boot the image under
//! QEMU, send the task, collect the replies, shut the guest down, and check
//! that QEMU is gone.

use std::path::Path;
use std::time::{Duration, Instant};

use vitrine_daemon::backend::qemu::{QemuBackend, QemuError};
use vitrine_daemon::backend::{Backend, GuestImage, GuestVm, ImageError, VmConfig, VmExit};
use vitrine_shim::protocol::HostMessage;

use crate::task_run::{run_task, TaskInput, TaskRun, TaskRunError};

/// Time the host waits for `Done` beyond the task's own limit (TCG is slow).
pub const DONE_MARGIN: Duration = Duration::from_secs(45);

/// The guest could not serve the task.
#[derive(Debug, thiserror::Error)]
pub enum FreshGuestError {
    /// The image directory is not usable.
    #[error("guest image")]
    Image(#[from] ImageError),
    /// The VM did not start or its shim was not ready.
    #[error("guest did not start")]
    Start(#[from] QemuError),
    /// The task did not run to `Done`.
    #[error("task did not complete\n--- serial console ---\n{serial}")]
    Task {
        /// Why.
        #[source]
        source: TaskRunError,
        /// The guest's whole serial console.
        serial: String,
    },
    /// QEMU still ran after its VM was dropped.
    #[error("qemu pid {0} outlived its VM")]
    Leaked(u32),
}

/// What one fresh guest gave back.
#[derive(Debug)]
pub struct FreshGuestRun {
    /// Everything the task sent back.
    pub task: TaskRun,
    /// Start to Ready.
    pub boot: Duration,
    /// How the VM ended after `Shutdown`.
    pub exit: VmExit,
}

/// Whether a process with this pid exists on the host.
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Boots the image in `image_dir`, runs `input` as task 1, sends `Shutdown`,
/// waits up to `shutdown_wait` for the VM to end (then kills it), and checks
/// that QEMU is gone.
pub fn run_in_fresh_guest(
    image_dir: &Path,
    input: &TaskInput,
    shutdown_wait: Duration,
) -> Result<FreshGuestRun, FreshGuestError> {
    let config = VmConfig::new(GuestImage::from_dir(image_dir)?);
    let mut vm = QemuBackend::new().start(&config)?;
    let boot = vm.boot_time();
    let mut channel = vm.take_channel()?;
    let deadline =
        Instant::now() + Duration::from_millis(input.limits.time_limit_ms.into()) + DONE_MARGIN;
    let result = run_task(&mut channel, 1, input, deadline);
    // The task may have broken the channel; the VM ends either way.
    let _ = channel.send(&HostMessage::Shutdown);
    let exit = vm.wait_or_kill(shutdown_wait)?;
    let serial = vm.serial_log();
    let pid = vm.pid();
    drop(vm);
    if process_exists(pid) {
        return Err(FreshGuestError::Leaked(pid));
    }
    let task = result.map_err(|source| FreshGuestError::Task { source, serial })?;
    Ok(FreshGuestRun { task, boot, exit })
}
