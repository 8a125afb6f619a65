//! One task in one fresh guest, as the product runs it: boot the image under
//! QEMU, send the task, collect the replies, shut the guest down, and check
//! that QEMU is gone. Nothing of the VM outlives the call.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vitrine_shim::protocol::HostMessage;

use crate::backend::qemu::{QemuBackend, QemuError, DEFAULT_QEMU};
use crate::backend::{Backend, GuestVm, VmConfig, VmExit};
use crate::task::{give_identity, run_task, TaskError, TaskInput, TaskRun};

/// Time the host waits for `Done` beyond the task's own limit (TCG is slow).
pub const DONE_MARGIN: Duration = Duration::from_secs(45);

/// The guest could not serve the task.
#[derive(Debug, thiserror::Error)]
pub enum FreshGuestError {
    /// The VM did not start or its shim was not ready.
    #[error("guest did not start")]
    Start(#[from] QemuError),
    /// The task did not run to `Done`.
    #[error("task did not complete\n--- serial console ---\n{serial}")]
    Task {
        /// Why.
        #[source]
        source: TaskError,
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

/// How long one fresh guest may take.
#[derive(Debug, Clone, Copy)]
pub struct GuestDeadlines {
    /// The VM is killed this long after it was started, whatever the task
    /// does (a profile's `time_limit`); `None`: only the task's limit.
    pub lifetime: Option<Duration>,
    /// How long to wait for the VM to end by itself after `Shutdown`
    /// before killing it.
    pub shutdown_wait: Duration,
}

impl GuestDeadlines {
    /// No lifetime beyond the task's limit; `shutdown_wait` after `Shutdown`.
    pub fn after_shutdown(shutdown_wait: Duration) -> Self {
        Self {
            lifetime: None,
            shutdown_wait,
        }
    }
}

/// Whether a process with this pid exists on the host.
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether the QEMU that [`QemuBackend::new`] would start (`$VITRINE_QEMU`
/// or `qemu-system-x86_64`) runs on this host.
pub fn qemu_installed() -> bool {
    let binary = std::env::var_os("VITRINE_QEMU")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_QEMU.into());
    Command::new(binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts a VM of `config` on `backend`, runs `input` as task 1, sends
/// `Shutdown`, waits for the VM to end (then kills it), and checks that QEMU
/// is gone. The task must end by its time limit plus [`DONE_MARGIN`], and
/// within the VM's lifetime.
pub fn run_in_fresh_guest(
    backend: &QemuBackend,
    config: &VmConfig,
    input: &TaskInput,
    deadlines: GuestDeadlines,
) -> Result<FreshGuestRun, FreshGuestError> {
    let started = Instant::now();
    let mut vm = backend.start(config)?;
    let boot = vm.boot_time();
    let mut channel = vm.take_channel()?;
    let task_limit = Duration::from_millis(input.limits.time_limit_ms.into()) + DONE_MARGIN;
    let mut deadline = Instant::now() + task_limit;
    if let Some(lifetime) = deadlines.lifetime {
        deadline = deadline.min(started + lifetime);
    }
    let result = give_identity(&mut channel, 1, deadline)
        .and_then(|_| run_task(&mut channel, 1, input, deadline));
    // The task may have broken the channel; the VM ends either way.
    let _ = channel.send(&HostMessage::Shutdown);
    let exit = vm.wait_or_kill(deadlines.shutdown_wait)?;
    let serial = vm.serial_log();
    let pid = vm.pid();
    drop(vm);
    if process_exists(pid) {
        return Err(FreshGuestError::Leaked(pid));
    }
    let task = result.map_err(|source| FreshGuestError::Task { source, serial })?;
    Ok(FreshGuestRun { task, boot, exit })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::GuestImage;
    use std::path::PathBuf;
    use vitrine_shim::protocol::Limits;

    #[test]
    fn run_in_fresh_guest_reports_a_vm_that_does_not_start() {
        // `false` exits at once, as QEMU does on a bad option.
        let backend = QemuBackend::with_binary("false");
        let config = VmConfig::new(GuestImage {
            kernel: PathBuf::from("/nonexistent/vmlinux"),
            initrd: PathBuf::from("/nonexistent/initrd.gz"),
            cmdline: "console=ttyS0".into(),
            app_disk: None,
        });
        let input = TaskInput::file("a.txt", "text/plain", b"hi".to_vec(), Limits::default());

        let err = run_in_fresh_guest(
            &backend,
            &config,
            &input,
            GuestDeadlines::after_shutdown(Duration::ZERO),
        )
        .unwrap_err();

        assert!(matches!(err, FreshGuestError::Start(_)), "{err:?}");
    }

    #[test]
    fn process_exists_sees_this_process_and_not_a_free_pid() {
        assert!(process_exists(std::process::id()));
        // Above the kernel's pid_max limit (4194304), so never in use.
        assert!(!process_exists(4_194_305));
    }
}
