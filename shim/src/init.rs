//! PID 1 duties in the guest: mount the pseudo filesystems, run the agent as
//! a child, reap every orphan, and power off when the agent ends.
//!
//! The agent runs as a separate process (the same binary, re-executed) so
//! that PID 1's blanket `waitpid(-1)` never steals the exit status of a
//! renderer the agent is waiting for.

use std::path::Path;
use std::process::Command;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Environment variable that marks the re-executed agent child.
pub const AGENT_ROLE_ENV: &str = "VITRINE_SHIM_ROLE";
/// Where the read-only application disk (tesseract; later office and
/// browser) is mounted in the guest.
pub const APP_DISK_MOUNT: &str = "/apps";
/// Kernel parameter naming the application the guest starts before it says
/// `Ready` (`vitrine.preload=office`), so that a template snapshotted at
/// `Ready` holds it already running and its clones skip its start.
pub const PRELOAD_PARAM: &str = "vitrine.preload";

/// The application a VM starts before `Ready` ([`PRELOAD_PARAM`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Preload {
    /// Nothing.
    #[default]
    None,
    /// A headless LibreOffice, idle with a document open.
    Office,
    /// Chromium with a blank tab, and its proxy.
    Web,
}

impl Preload {
    /// The parameter's value: `office` or `web`; anything else is none.
    pub fn parse(value: &str) -> Self {
        match value {
            "office" => Preload::Office,
            "web" => Preload::Web,
            _ => Preload::None,
        }
    }
}
/// The application disk: the VM's first virtio-blk device.
const APP_DISK_DEVICE: &str = "/dev/vda";

/// PID 1 setup failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("cannot mount {target}")]
    Mount {
        /// Mount point.
        target: &'static str,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// The agent could not start.
    #[error("cannot start the agent")]
    Spawn(#[source] std::io::Error),
}

/// True when this process is the guest's init.
pub fn is_pid1() -> bool {
    nix::unistd::getpid() == Pid::from_raw(1)
}

struct MountSpec {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("mode=0620,ptmxmode=0666"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
];

/// Mounts proc, sys, devtmpfs, devpts and tmpfs. An already mounted
/// filesystem (EBUSY, e.g. devtmpfs automount) is fine.
pub fn mount_all() -> Result<(), InitError> {
    for m in MOUNTS {
        let _ = std::fs::create_dir_all(m.target);
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(InitError::Mount {
                    target: m.target,
                    source,
                })
            }
        }
    }
    // Programs expect /dev/ptmx at the devpts instance.
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    Ok(())
}

/// Mounts the application disk read-only at `APP_DISK_MOUNT` when the VM
/// has one. Without it the shim serves everything but what the disk holds
/// (OCR), so a failure is logged, not fatal.
fn mount_app_disk() {
    if !Path::new(APP_DISK_DEVICE).exists() {
        eprintln!("vitrine-shim: no application disk ({APP_DISK_DEVICE}): no OCR");
        return;
    }
    let _ = std::fs::create_dir_all(APP_DISK_MOUNT);
    let flags = MsFlags::MS_RDONLY
        .union(MsFlags::MS_NODEV)
        .union(MsFlags::MS_NOSUID);
    match mount(
        Some(APP_DISK_DEVICE),
        APP_DISK_MOUNT,
        Some("squashfs"),
        flags,
        None::<&str>,
    ) {
        Ok(()) => eprintln!("vitrine-shim: application disk mounted at {APP_DISK_MOUNT}"),
        Err(e) => eprintln!(
            "vitrine-shim: cannot mount the application disk {APP_DISK_DEVICE} (squashfs) \
             at {APP_DISK_MOUNT}: {e}: no OCR"
        ),
    }
}

/// Whether this process is the agent that the guest's init started: its
/// parent is PID 1 and it carries the agent role.
pub fn started_by_init() -> bool {
    std::env::var_os(AGENT_ROLE_ENV).is_some() && nix::unistd::getppid().as_raw() == 1
}

/// Brings up `lo`, where the browser's proxy listens (busybox's `ip`; the
/// kernel leaves it down). A failure is logged: only links need it.
fn loopback_up() {
    match Command::new("/bin/busybox")
        .args(["ip", "link", "set", "lo", "up"])
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("vitrine-shim: bringing up lo: busybox ip: {s}"),
        Err(e) => eprintln!("vitrine-shim: bringing up lo: {e}"),
    }
}

/// PID 1 main: mount, run the agent, reap, power off. Never returns.
pub fn run_as_init(args: &[std::ffi::OsString]) -> ! {
    if let Err(e) = mount_all() {
        eprintln!("vitrine-shim: {e}: {:?}", std::error::Error::source(&e));
    }
    mount_app_disk();
    loopback_up();
    // Chromium's V8 reserves address space far beyond a small VM's memory
    // (its code range alone), which the kernel's heuristic overcommit refuses
    // in a 512 MiB VM. Memory that is touched is still bounded by the VM;
    // the OOM killer, which the shim watches, takes what overruns it.
    if let Err(e) = std::fs::write("/proc/sys/vm/overcommit_memory", "1") {
        eprintln!("vitrine-shim: setting vm.overcommit_memory: {e}");
    }
    let agent = std::env::current_exe()
        .map_err(InitError::Spawn)
        .and_then(|exe| {
            Command::new(exe)
                .args(args)
                .env(AGENT_ROLE_ENV, "agent")
                .spawn()
                .map_err(InitError::Spawn)
        });
    match agent {
        Ok(child) => reap_until(child.id()),
        Err(e) => eprintln!("vitrine-shim: {e}"),
    }
    power_off()
}

/// Reaps every child until `agent` exits.
fn reap_until(agent: u32) {
    let agent = i32::try_from(agent).map(Pid::from_raw).ok();
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(pid, code)) if Some(pid) == agent => {
                eprintln!("vitrine-shim: agent exited with {code}");
                return;
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if Some(pid) == agent => {
                eprintln!("vitrine-shim: agent killed by {sig}");
                return;
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                // ECHILD: nothing left, so the agent is gone too.
                eprintln!("vitrine-shim: waitpid: {e}");
                return;
            }
        }
    }
}

/// Ends the VM. A reboot, not a power-off: the guest kernel has no ACPI,
/// so power-off only halts the CPU, while a reboot (`reboot=t` in the
/// image's command line) reaches the VMM, which ends the VM on reset (QEMU
/// with `-no-reboot`, vitrine-vmm always).
fn power_off() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    // Should not get here; PID 1 must not exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
