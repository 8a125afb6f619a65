//! Starting `vitrine-vmm` jailed, from the outside: the launcher prepares a
//! work directory (the spec and the empty mount point of the private root)
//! and the cgroup, starts `vitrine-vmm --jail <spec> <args>`, enforces the
//! wall-clock limit and says how the VMM ended. The daemon turns
//! [`Ending`] into its own errors.

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cgroup::{Cgroup, CgroupError, CgroupLimits};
use super::{JailPath, JailSpec, Rlimits};
use crate::seccomp::report::{Denial, EXIT_SECCOMP_DENIED};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot prepare the jail work directory {0}")]
    Workdir(PathBuf, #[source] std::io::Error),
    #[error("cannot create the VMM's cgroup")]
    Cgroup(#[from] CgroupError),
    #[error("cannot start {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("cannot wait for the VMM")]
    Wait(#[source] std::io::Error),
}

/// Everything the launcher needs for one jailed VMM.
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    /// The `vitrine-vmm` binary.
    pub vmm: PathBuf,
    /// Unique per VMM: names the cgroup.
    pub name: String,
    /// A directory of the launcher's own, outside every jail path; it gets
    /// `spec.json`, `root/`, `stdout` and `stderr`.
    pub workdir: PathBuf,
    pub paths: Vec<JailPath>,
    pub dev_kvm: bool,
    pub seccomp: bool,
    pub cgroup: CgroupLimits,
    pub rlimits: Rlimits,
    /// The subcommand and its arguments (`run --test-guest hello ...`).
    pub args: Vec<OsString>,
    /// Killed after this long, whatever the guest does.
    pub wall_limit: Duration,
}

/// How the jailed VMM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It exited on its own with this status.
    Exited(i32),
    /// A seccomp filter denied a syscall.
    SeccompDenied(Denial),
    /// The cgroup's OOM killer ended it.
    OutOfMemory { limit_bytes: u64 },
    /// The launcher killed it at the wall-clock limit.
    TimedOut(Duration),
    /// A signal ended it (not the OOM killer, not the launcher).
    Signaled(i32),
}

/// A finished VMM: how it ended and what it printed.
#[derive(Debug)]
pub struct Finished {
    pub ending: Ending,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Why the VMM ran without a cgroup, if it did.
    pub cgroup_skipped: Option<String>,
}

/// A started, jailed VMM.
#[derive(Debug)]
pub struct Jailed {
    child: Child,
    jail: PreparedJail,
    workdir: PathBuf,
    started: Instant,
    wall_limit: Duration,
}

/// A jail ready to be entered: its spec written, its cgroup made. For a
/// caller that wants its own stdio (the daemon's KVM backend reads the
/// status line from a pipe): build the command with [`Self::command`],
/// spawn it, then call [`Self::ending`] once it has exited.
#[derive(Debug)]
pub struct PreparedJail {
    spec_path: PathBuf,
    cgroup: Option<Cgroup>,
    cgroup_skipped: Option<String>,
}

impl PreparedJail {
    pub fn prepare(plan: &LaunchPlan) -> Result<PreparedJail, LaunchError> {
        if !super::cgroup::valid_name(&plan.name) {
            return Err(CgroupError::Name(plan.name.clone()).into());
        }
        let wd = |e| LaunchError::Workdir(plan.workdir.clone(), e);
        let root = plan.workdir.join("root");
        fs::create_dir_all(&root).map_err(wd)?;
        let (cgroup, cgroup_skipped) = match Cgroup::create(&plan.name, &plan.cgroup) {
            Ok(cg) => (Some(cg), None),
            Err(CgroupError::Unavailable(why)) => (None, Some(why)),
            Err(e) => return Err(e.into()),
        };
        let spec = JailSpec {
            root,
            paths: plan.paths.clone(),
            dev_kvm: plan.dev_kvm,
            cgroup: cgroup.clone(),
            rlimits: plan.rlimits.clone(),
            seccomp: plan.seccomp,
        };
        let spec_path = plan.workdir.join("spec.json");
        spec.write(&spec_path).map_err(wd)?;
        Ok(PreparedJail {
            spec_path,
            cgroup,
            cgroup_skipped,
        })
    }

    /// `vmm --jail <spec> <args>`, with an empty environment.
    pub fn command(&self, vmm: &Path, args: &[OsString]) -> Command {
        let mut cmd = Command::new(vmm);
        cmd.arg("--jail")
            .arg(&self.spec_path)
            .args(args)
            .env_clear();
        cmd
    }

    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// Why the VMM runs without a cgroup on this host, if it does.
    pub fn cgroup_skipped(&self) -> Option<&str> {
        self.cgroup_skipped.as_deref()
    }

    /// After the VMM exited: how it ended (reading the cgroup's OOM count),
    /// then removes the cgroup. `timed_out`: the caller killed it at this
    /// limit.
    pub fn ending(
        &self,
        status: ExitStatus,
        stderr: &str,
        timed_out: Option<Duration>,
    ) -> Result<Ending, LaunchError> {
        let oom = match &self.cgroup {
            Some(cg) => cg
                .oom_kills()
                .ok()
                .filter(|n| *n > 0)
                .map(|_| cg.memory_limit().unwrap_or(0)),
            None => None,
        };
        if let Some(cg) = &self.cgroup {
            cg.remove()?;
        }
        Ok(classify(status, stderr, oom, timed_out))
    }
}

impl Jailed {
    pub fn spawn(plan: &LaunchPlan) -> Result<Jailed, LaunchError> {
        let wd = |e| LaunchError::Workdir(plan.workdir.clone(), e);
        let jail = PreparedJail::prepare(plan)?;
        let stdout = File::create(plan.workdir.join("stdout")).map_err(wd)?;
        let stderr = File::create(plan.workdir.join("stderr")).map_err(wd)?;
        let child = jail
            .command(&plan.vmm, &plan.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| LaunchError::Spawn(plan.vmm.clone(), e))?;
        Ok(Jailed {
            child,
            jail,
            workdir: plan.workdir.clone(),
            started: Instant::now(),
            wall_limit: plan.wall_limit,
        })
    }

    /// The keeper: the process the launcher started, outside the PID
    /// namespace.
    pub fn keeper_pid(&self) -> u32 {
        self.child.id()
    }

    /// The VMM itself (PID 1 of its namespace), once it has been forked.
    pub fn vmm_pid(&self) -> Option<u32> {
        children_of(self.keeper_pid()).into_iter().next()
    }

    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.jail.cgroup()
    }

    pub fn cgroup_skipped(&self) -> Option<&str> {
        self.jail.cgroup_skipped()
    }

    /// Waits for the VMM to end (killing it at the wall-clock limit),
    /// removes its cgroup and says how it ended.
    pub fn wait(mut self) -> Result<Finished, LaunchError> {
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(LaunchError::Wait)? {
                break status;
            }
            if self.started.elapsed() >= self.wall_limit {
                timed_out = true;
                // The VMM dies with its keeper (PR_SET_PDEATHSIG); the cgroup
                // removal kills anything left.
                let _ = self.child.kill();
                break self.child.wait().map_err(LaunchError::Wait)?;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let read = |name: &str| fs::read_to_string(self.workdir.join(name)).unwrap_or_default();
        let stdout = read("stdout");
        let stderr = read("stderr");
        let ending = self
            .jail
            .ending(status, &stderr, timed_out.then_some(self.wall_limit))?;
        Ok(Finished {
            ending,
            status,
            stdout,
            stderr,
            cgroup_skipped: self.jail.cgroup_skipped.take(),
        })
    }
}

fn classify(
    status: ExitStatus,
    stderr: &str,
    oom_limit: Option<u64>,
    timed_out: Option<Duration>,
) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    if let Some(after) = timed_out {
        return Ending::TimedOut(after);
    }
    if let Some(limit_bytes) = oom_limit {
        return Ending::OutOfMemory { limit_bytes };
    }
    if let Some(denial) = Denial::find(stderr) {
        return Ending::SeccompDenied(denial);
    }
    match (status.code(), status.signal()) {
        (Some(code), _) if code == EXIT_SECCOMP_DENIED => Ending::SeccompDenied(Denial {
            nr: -1,
            name: "unreported".into(),
            thread: "unknown".into(),
        }),
        // The keeper exits 128 + N when the VMM died of signal N.
        (Some(code), _)
            if code > 128 && stderr.contains("vitrine-vmm: jail: the VMM was killed") =>
        {
            Ending::Signaled(code - 128)
        }
        (Some(code), _) => Ending::Exited(code),
        (None, Some(sig)) => Ending::Signaled(sig),
        (None, None) => Ending::Exited(-1),
    }
}

/// Sends SIGKILL to the jailed process of the keeper `keeper` (its only
/// child), so the keeper reaps it and exits by itself: killing the keeper
/// first would leave the jailed process to be reaped by the host's init.
pub fn kill_jailed(keeper: u32) {
    for pid in children_of(keeper) {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill takes plain integers. `pid` was, microseconds
            // ago, a child of our own unreaped keeper; for it to name
            // another process the keeper must reap it and the kernel
            // reuse the pid within that window.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Makes `fd` the child's descriptor number `target`, open across exec
/// (for QEMU's guest RAM: a sealed memfd it opens as `/proc/self/fd/N`).
/// Every other descriptor keeps its close-on-exec flag, so nothing else
/// leaks into the child, however many threads spawn at once.
pub fn pass_fd(cmd: &mut Command, fd: Arc<OwnedFd>, target: RawFd) {
    use std::os::unix::process::CommandExt;
    let hook = move || {
        let source = fd.as_raw_fd();
        if source == target {
            // dup2 onto itself keeps FD_CLOEXEC: clear it instead.
            // SAFETY: fcntl on a descriptor this closure keeps open (it
            // holds the Arc); F_SETFD takes an int and touches no memory.
            if unsafe { libc::fcntl(target, libc::F_SETFD, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            return Ok(());
        }
        // SAFETY: dup2 is async-signal-safe, so it may run between fork and
        // exec; `source` stays open because the closure holds its Arc, and
        // the new descriptor has no close-on-exec flag.
        if unsafe { libc::dup2(source, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only calls dup2 or fcntl, both async-signal-safe; it
    // allocates nothing and takes no lock, as code between fork and exec must.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Direct children of `pid`, from /proc/*/stat.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat =
            fs::read_to_string(Path::new("/proc").join(child.to_string()).join("stat")).ok()?;
        // The comm field may hold spaces; the fields after its ')' do not.
        let after = stat.rsplit_once(')')?.1;
        let ppid: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_denial_line_wins_over_the_exit_code() {
        let stderr = "vitrine-vmm: seccomp: denied syscall 41 (socket) on thread vcpu0\n";

        let ending = classify(ExitStatus::from_raw(159 << 8), stderr, None, None);

        assert_eq!(
            ending,
            Ending::SeccompDenied(Denial {
                nr: 41,
                name: "socket".into(),
                thread: "vcpu0".into()
            })
        );
    }

    #[test]
    fn an_oom_kill_in_the_cgroup_is_out_of_memory() {
        let stderr = "vitrine-vmm: jail: the VMM was killed by signal 9 (SIGKILL)\n";

        let ending = classify(ExitStatus::from_raw(137 << 8), stderr, Some(64 << 20), None);

        assert_eq!(
            ending,
            Ending::OutOfMemory {
                limit_bytes: 64 << 20
            }
        );
    }

    #[test]
    fn a_plain_exit_code_is_passed_on() {
        assert_eq!(
            classify(ExitStatus::from_raw(3 << 8), "", None, None),
            Ending::Exited(3)
        );
    }
}
