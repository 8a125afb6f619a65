//! Starting the real `vitrine-vmm` jailed, with limits from the policy
//! profile, and turning how it ended into a typed error.
//!
//! The mechanics (spec, cgroup, namespaces, landlock, seccomp) live in
//! `vitrine_microvm::jail`; this module decides *what* a task's VMM gets:
//!
//! - memory: the profile's guest RAM plus [`VMM_OVERHEAD_MIB`] for the VMM
//!   itself, hard, with no swap; RLIMIT_AS a little above that;
//! - CPU: as many CPUs of bandwidth as the profile has vCPUs;
//! - tasks: [`PIDS_BASE`] plus one per vCPU;
//! - files: the kernel, initrd and disks read-only, the socket directory
//!   (and a snapshot being written) read-write, /dev/kvm; nothing else;
//! - time: the profile's time limit plus [`WALL_MARGIN`], then killed.
//!
//! QEMU (the backend for hosts whose KVM cannot run full guests) runs in
//! the same jail through `vitrine-vmm exec`, with [`VmmLimits::for_qemu`]
//! and [`ProgramFiles`] for its binary and libraries.
//!
//! The daemon itself never runs guest data; [`harden_daemon`] is what it
//! applies to itself at start-up.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use vitrine_microvm::jail::launch::{Ending, Jailed, LaunchError, LaunchPlan, PreparedJail};
use vitrine_microvm::jail::{Access, CgroupLimits, JailError, JailPath, Rlimits};
use vitrine_policy::Profile;

/// Memory the VMM needs beyond guest RAM: its binary, heap, thread stacks,
/// device buffers and KVM's own structures.
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// Tasks beyond one per vCPU: main, device workers, glibc helpers.
pub const PIDS_BASE: u32 = 16;
/// Address space beyond guest RAM: glibc arenas and stacks reserve far
/// more than they touch.
const ADDRESS_SPACE_SLACK: u64 = 2 << 30;
const OPEN_FILES: u64 = 256;
/// QEMU's TCG translation buffer, set with `-accel tcg,tb-size=`: QEMU
/// 7.2 otherwise reserves 1 GiB for it, all of which it may touch.
pub const TCG_CODE_BUFFER_MIB: u64 = 256;
/// Memory QEMU needs beyond guest RAM: all of the TCG buffer, plus 128
/// MiB for the rest. Measured with the guest image booted (512 MiB guest,
/// QEMU 7.2): 169 MiB resident, of which 84 MiB guest RAM, 24 MiB TCG code,
/// 24 MiB the mapped kernel and initrd, 10 MiB QEMU's binary and ~25 MiB
/// heap, arenas and libraries.
pub const QEMU_OVERHEAD_MIB: u64 = TCG_CODE_BUFFER_MIB + 128;
/// QEMU's threads beyond one per vCPU: main, RCU, the I/O thread pool
/// (it starts up to 64 only under block I/O, which these VMs do not have).
pub const QEMU_PIDS_BASE: u32 = 32;
/// Time past the profile's limit before the launcher kills the VMM (the
/// VMM's own --time-limit should have ended it first).
pub const WALL_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum VmmJailError {
    #[error("cannot start the jailed VMM")]
    Launch(#[from] LaunchError),
    #[error(
        "the VMM made a system call its seccomp filter forbids: {name} (#{nr}) on thread {thread}"
    )]
    SeccompDenied {
        nr: i64,
        name: String,
        thread: String,
    },
    #[error("the VMM went over its memory limit of {limit_mib} MiB and its cgroup killed it")]
    OutOfMemory { limit_mib: u64 },
    #[error("the VMM ran past its time limit of {0:?} and was killed")]
    TimedOut(Duration),
    #[error("the VMM was killed by signal {0}")]
    Signaled(i32),
    #[error("jail path {0} must be absolute")]
    RelativePath(PathBuf),
    #[error("cannot harden the daemon")]
    Harden(#[source] JailError),
}

/// The limits one task's VMM runs under, derived from its profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmmLimits {
    pub cgroup: CgroupLimits,
    pub rlimits: Rlimits,
    pub wall: Duration,
}

impl VmmLimits {
    pub fn from_profile(profile: &Profile) -> Self {
        Self::for_vm(
            profile.memory_mib,
            profile.vcpus,
            profile.time_limit + WALL_MARGIN,
        )
    }

    /// The limits of a VM with `memory_mib` of guest RAM and `vcpus`,
    /// killed after `wall`.
    pub fn for_vm(memory_mib: u32, vcpus: u32, wall: Duration) -> Self {
        let guest = u64::from(memory_mib) << 20;
        let memory = guest + (VMM_OVERHEAD_MIB << 20);
        Self {
            cgroup: CgroupLimits {
                memory_bytes: memory,
                cpus: vcpus.max(1),
                pids: PIDS_BASE + vcpus,
            },
            rlimits: Rlimits {
                address_space: Some(memory + ADDRESS_SPACE_SLACK),
                open_files: Some(OPEN_FILES),
                processes: Some(u64::from(PIDS_BASE + vcpus)),
            },
            wall,
        }
    }
}

impl VmmLimits {
    /// The limits of QEMU running a VM with `memory_mib` of guest RAM and
    /// `vcpus`. RLIMIT_AS counts reservations, not use: it leaves room for
    /// guest RAM, the TCG buffer and glibc's per-thread arenas; the cgroup
    /// bounds what QEMU actually touches.
    pub fn for_qemu(memory_mib: u32, vcpus: u32, wall: Duration) -> Self {
        let memory = (u64::from(memory_mib) + QEMU_OVERHEAD_MIB) << 20;
        let pids = QEMU_PIDS_BASE + vcpus;
        Self {
            cgroup: CgroupLimits {
                memory_bytes: memory,
                cpus: vcpus.max(1),
                pids,
            },
            rlimits: Rlimits {
                address_space: Some(memory + ADDRESS_SPACE_SLACK),
                open_files: Some(OPEN_FILES),
                processes: Some(u64::from(pids)),
            },
            wall,
        }
    }
}

/// What a program the jail execs needs beyond its VM's files: where its
/// binary, dynamic loader and libraries live, and the host symlinks that
/// lead there (merged-/usr's `/lib64 -> usr/lib64`).
#[derive(Clone, Debug, Default)]
pub struct ProgramFiles {
    /// The program itself; bound read-only and executable.
    pub program: PathBuf,
    /// Directories bound read-only and executable (`/usr`).
    pub read_execute: Vec<PathBuf>,
    /// Host symlinks made again in the jail's root, same targets.
    pub symlinks: Vec<PathBuf>,
}

impl ProgramFiles {
    fn jail_paths(&self) -> Result<Vec<JailPath>, VmmJailError> {
        let program = std::iter::once(&self.program)
            .filter(|p| !self.read_execute.iter().any(|d| p.starts_with(d)))
            .map(|p| (p, Access::ReadExecute));
        let rx = self.read_execute.iter().map(|p| (p, Access::ReadExecute));
        let links = self.symlinks.iter().map(|p| (p, Access::Symlink));
        program.chain(rx).chain(links).map(jail_path).collect()
    }
}

/// The host files one VMM may use. Everything else is outside its root.
#[derive(Clone, Debug, Default)]
pub struct VmmFiles {
    /// Kernel, initrd, disk images, a snapshot to restore: read-only.
    pub read_only: Vec<PathBuf>,
    /// The vsock socket directory, a snapshot directory being written.
    pub read_write: Vec<PathBuf>,
}

impl VmmFiles {
    fn jail_paths(&self) -> Result<Vec<JailPath>, VmmJailError> {
        let ro = self.read_only.iter().map(|p| (p, Access::ReadOnly));
        let rw = self.read_write.iter().map(|p| (p, Access::ReadWrite));
        ro.chain(rw).map(jail_path).collect()
    }
}

/// One host path bound into a jail; it must be absolute.
fn jail_path((path, access): (&PathBuf, Access)) -> Result<JailPath, VmmJailError> {
    if !path.is_absolute() {
        return Err(VmmJailError::RelativePath(path.clone()));
    }
    Ok(JailPath {
        path: path.clone(),
        access,
    })
}

/// Starts `vitrine-vmm` processes jailed.
#[derive(Clone, Debug)]
pub struct VmmLauncher {
    vmm: PathBuf,
    /// The daemon's private directory for per-VMM work dirs (spec, root
    /// mount point, logs); never inside a jail path.
    work_root: PathBuf,
    wall_margin: Duration,
}

impl VmmLauncher {
    pub fn new(vmm: impl Into<PathBuf>, work_root: impl Into<PathBuf>) -> Self {
        Self {
            vmm: vmm.into(),
            work_root: work_root.into(),
            wall_margin: WALL_MARGIN,
        }
    }

    /// Time past the profile's limit before the VMM is killed.
    pub fn with_wall_margin(mut self, margin: Duration) -> Self {
        self.wall_margin = margin;
        self
    }

    /// The `vitrine-vmm` binary this launcher starts.
    pub fn vmm(&self) -> &std::path::Path {
        &self.vmm
    }

    fn plan(
        &self,
        name: &str,
        profile: &Profile,
        files: &VmmFiles,
        args: Vec<OsString>,
    ) -> Result<(LaunchPlan, VmmLimits), VmmJailError> {
        let mut limits = VmmLimits::from_profile(profile);
        limits.wall = profile.time_limit + self.wall_margin;
        self.plan_with(name, limits, files, args)
    }

    fn plan_with(
        &self,
        name: &str,
        limits: VmmLimits,
        files: &VmmFiles,
        args: Vec<OsString>,
    ) -> Result<(LaunchPlan, VmmLimits), VmmJailError> {
        self.plan_for(name, limits, files.jail_paths()?, true, true, args)
    }

    fn plan_for(
        &self,
        name: &str,
        limits: VmmLimits,
        paths: Vec<JailPath>,
        dev_kvm: bool,
        seccomp: bool,
        args: Vec<OsString>,
    ) -> Result<(LaunchPlan, VmmLimits), VmmJailError> {
        let plan = LaunchPlan {
            vmm: self.vmm.clone(),
            name: name.to_owned(),
            workdir: self.work_root.join(name),
            paths,
            dev_kvm,
            seccomp,
            cgroup: limits.cgroup.clone(),
            rlimits: limits.rlimits.clone(),
            args,
            wall_limit: limits.wall,
        };
        Ok((plan, limits))
    }

    /// Starts `vitrine-vmm <args>` for the task `name`, jailed with the
    /// limits of `profile` and access to `files` only.
    pub fn start(
        &self,
        name: &str,
        profile: &Profile,
        files: &VmmFiles,
        args: Vec<OsString>,
    ) -> Result<JailedVmm, VmmJailError> {
        let (plan, limits) = self.plan(name, profile, files, args)?;
        let jailed = Jailed::spawn(&plan)?;
        if let Some(why) = jailed.cgroup_skipped() {
            log::warn!("vmm {name}: no memory/CPU cgroup on this host: {why}");
        }
        Ok(JailedVmm { jailed, limits })
    }
}

impl VmmLauncher {
    /// For a caller that runs the VMM itself, with its own stdio (the KVM
    /// backend reads the status line from a pipe): the jail for `name`,
    /// spec written and cgroup made. Spawn
    /// `jail.command(launcher.vmm(), &args)`, enforce `limits.wall`, then
    /// pass `jail.ending(status, stderr, timed_out)` to [`exit_code`].
    pub fn prepare(
        &self,
        name: &str,
        profile: &Profile,
        files: &VmmFiles,
    ) -> Result<(PreparedJail, VmmLimits), VmmJailError> {
        let (plan, limits) = self.plan(name, profile, files, Vec::new())?;
        let jail = PreparedJail::prepare(&plan)?;
        Ok((jail, limits))
    }

    /// [`Self::prepare`] with limits the caller worked out (a backend
    /// that knows the VM's size but not the task's profile).
    pub fn prepare_with_limits(
        &self,
        name: &str,
        limits: VmmLimits,
        files: &VmmFiles,
    ) -> Result<PreparedJail, VmmJailError> {
        let (plan, _) = self.plan_with(name, limits, files, Vec::new())?;
        Ok(PreparedJail::prepare(&plan)?)
    }
}

impl VmmLauncher {
    /// The jail for running `program` (QEMU) with `limits`, access to
    /// `files` and its own binaries, and `/dev/kvm` only if `dev_kvm`.
    /// Seccomp is off in the spec: the jail's filters are for
    /// vitrine-vmm's threads, and QEMU brings its own (`-sandbox`). Spawn
    /// [`Self::exec_command`]; the rest is as for [`Self::prepare`].
    pub fn prepare_exec(
        &self,
        name: &str,
        limits: VmmLimits,
        files: &VmmFiles,
        program: &ProgramFiles,
        dev_kvm: bool,
    ) -> Result<PreparedJail, VmmJailError> {
        let mut paths = program.jail_paths()?;
        paths.extend(files.jail_paths()?);
        let (plan, _) = self.plan_for(name, limits, paths, dev_kvm, false, Vec::new())?;
        Ok(PreparedJail::prepare(&plan)?)
    }

    /// `vitrine-vmm --jail <spec> exec -- <program> <args>`, empty
    /// environment.
    pub fn exec_command(
        &self,
        jail: &PreparedJail,
        program: &std::path::Path,
        args: &[OsString],
    ) -> std::process::Command {
        let mut argv: Vec<OsString> = vec!["exec".into(), "--".into(), program.into()];
        argv.extend(args.iter().cloned());
        jail.command(&self.vmm, &argv)
    }
}

/// The VMM's own exit status, or the wall that stopped it.
pub fn exit_code(ending: Ending) -> Result<i32, VmmJailError> {
    match ending {
        Ending::Exited(code) => Ok(code),
        Ending::SeccompDenied(d) => Err(VmmJailError::SeccompDenied {
            nr: d.nr,
            name: d.name,
            thread: d.thread,
        }),
        Ending::OutOfMemory { limit_bytes } => Err(VmmJailError::OutOfMemory {
            limit_mib: limit_bytes >> 20,
        }),
        Ending::TimedOut(after) => Err(VmmJailError::TimedOut(after)),
        Ending::Signaled(sig) => Err(VmmJailError::Signaled(sig)),
    }
}

/// A running jailed VMM.
#[derive(Debug)]
pub struct JailedVmm {
    jailed: Jailed,
    limits: VmmLimits,
}

/// A VMM that ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmRun {
    /// `vitrine-vmm`'s exit status (the guest's debug-exit code, 124 for
    /// its own time limit, ...).
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl JailedVmm {
    /// The VMM process (PID 1 in its namespace), for inspection.
    pub fn vmm_pid(&self) -> Option<u32> {
        self.jailed.vmm_pid()
    }

    /// The process the daemon started (the jail's keeper).
    pub fn keeper_pid(&self) -> u32 {
        self.jailed.keeper_pid()
    }

    pub fn limits(&self) -> &VmmLimits {
        &self.limits
    }

    /// Why there is no cgroup, if there is none on this host.
    pub fn cgroup_skipped(&self) -> Option<&str> {
        self.jailed.cgroup_skipped()
    }

    /// Waits for the end; a wall of the jail that stopped the VMM is an
    /// error naming that wall.
    pub fn wait(self) -> Result<VmmRun, VmmJailError> {
        let finished = self.jailed.wait()?;
        Ok(VmmRun {
            exit_code: exit_code(finished.ending)?,
            stdout: finished.stdout,
            stderr: finished.stderr,
        })
    }
}

/// What vitrined applies to itself at start-up: no_new_privs, so nothing
/// it ever executes can gain privileges. (The daemon needs no capabilities
/// and parses no guest payload; its VMMs run jailed.)
pub fn harden_daemon() -> Result<(), VmmJailError> {
    vitrine_microvm::jail::privileges::set_no_new_privs().map_err(VmmJailError::Harden)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_profile() {
        let mut profile = Profile::strict();
        profile.memory_mib = 256;
        profile.vcpus = 2;

        let limits = VmmLimits::from_profile(&profile);

        assert_eq!(limits.cgroup.memory_bytes, (256 + VMM_OVERHEAD_MIB) << 20);
        assert_eq!(limits.cgroup.cpus, 2);
        assert_eq!(limits.cgroup.pids, PIDS_BASE + 2);
        assert_eq!(limits.wall, profile.time_limit + WALL_MARGIN);
        assert!(limits.rlimits.address_space.unwrap() > limits.cgroup.memory_bytes);
    }

    #[test]
    fn each_wall_that_stops_a_vmm_is_its_own_error() {
        use vitrine_microvm::seccomp::report::Denial;

        let oom = exit_code(Ending::OutOfMemory {
            limit_bytes: 192 << 20,
        });
        let denied = exit_code(Ending::SeccompDenied(Denial {
            nr: 41,
            name: "socket".into(),
            thread: "vcpu0".into(),
        }));

        assert!(matches!(
            oom,
            Err(VmmJailError::OutOfMemory { limit_mib: 192 })
        ));
        assert!(matches!(
            denied,
            Err(VmmJailError::SeccompDenied { nr: 41, .. })
        ));
        assert_eq!(exit_code(Ending::Exited(3)).unwrap(), 3);
        assert_eq!(
            exit_code(Ending::TimedOut(Duration::from_secs(1)))
                .unwrap_err()
                .to_string(),
            "the VMM ran past its time limit of 1s and was killed"
        );
    }

    #[test]
    fn qemu_limits_leave_room_for_the_tcg_buffer() {
        let limits = VmmLimits::for_qemu(512, 2, Duration::MAX);

        assert_eq!(
            limits.cgroup.memory_bytes,
            (512 + TCG_CODE_BUFFER_MIB + 128) << 20
        );
        assert_eq!(limits.cgroup.pids, QEMU_PIDS_BASE + 2);
        assert!(limits.rlimits.address_space.unwrap() > limits.cgroup.memory_bytes + (1 << 30));
    }

    #[test]
    fn a_program_outside_its_executable_dirs_is_bound_on_its_own() {
        let inside = ProgramFiles {
            program: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            read_execute: vec![PathBuf::from("/usr")],
            symlinks: vec![PathBuf::from("/lib64")],
        };
        let outside = ProgramFiles {
            program: PathBuf::from("/opt/qemu/qemu"),
            ..inside.clone()
        };

        let inside = inside.jail_paths().unwrap();
        let outside = outside.jail_paths().unwrap();

        assert_eq!(
            inside,
            [
                JailPath {
                    path: "/usr".into(),
                    access: Access::ReadExecute
                },
                JailPath {
                    path: "/lib64".into(),
                    access: Access::Symlink
                }
            ]
        );
        assert_eq!(outside.len(), 3);
        assert_eq!(outside[0].path, PathBuf::from("/opt/qemu/qemu"));
        assert_eq!(outside[0].access, Access::ReadExecute);
    }

    #[test]
    fn relative_jail_paths_are_refused() {
        let files = VmmFiles {
            read_only: vec![PathBuf::from("kernel")],
            read_write: vec![],
        };

        assert!(matches!(
            files.jail_paths(),
            Err(VmmJailError::RelativePath(_))
        ));
    }
}
