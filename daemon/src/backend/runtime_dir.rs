//! Where VMs keep their files while they run, and what is removed when
//! their daemon ends or crashed.
//!
//! Every VM's private directory (its sockets, QEMU's log, the guest's
//! serial output) and every jail's work directory live under the runtime
//! directory, `$XDG_RUNTIME_DIR/vitrine`, in a folder named after the
//! process that made them: `<pid>-<start time>` (the start time, in clock
//! ticks after boot from `/proc/PID/stat`, tells a reused pid apart). The
//! VMs' cgroups carry the same two numbers: `vitrine-qemu-<pid>-<start>-<n>`.
//! Without `$XDG_RUNTIME_DIR` the runtime directory is
//! `$TMPDIR/vitrine-<uid>` (else `/tmp/vitrine-<uid>`). Either is mode 0700
//! and refused when it is a symlink or another user's.
//!
//! A daemon that ends (normally or on SIGTERM) refuses new VM directories,
//! then kills and removes what of its own is left ([`sweep_own`]). A daemon
//! that starts removes what a crashed one left ([`remove_stale`]): only
//! folders and cgroups whose creator is no longer running, and no cgroup
//! that still holds a process.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, PoisonError, RwLock};

use tempfile::TempDir;
use vitrine_microvm::jail::cgroup::{Cgroup, CgroupHost, CgroupVersion};

/// The runtime directory's name below `$XDG_RUNTIME_DIR`.
const NAME: &str = "vitrine";
/// The VM kinds whose cgroups this module names (QEMU, the project's VMM).
const CGROUP_KINDS: [&str; 2] = ["qemu", "vm"];

/// The runtime directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    /// A directory could not be made or read.
    #[error("cannot create {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The directory exists but is not this user's private directory.
    #[error(
        "{path} {why}: not a private directory of this user (remove it, or set XDG_RUNTIME_DIR)"
    )]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// This process's user id is unknown.
    #[error("cannot read this process's user id from /proc/self/status")]
    Uid(#[source] io::Error),
    /// The daemon is ending.
    #[error("the daemon is stopping: no new VM starts")]
    Closed,
}

/// A process that makes VM directories: its pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Start time, clock ticks after boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        static ME: OnceLock<Owner> = OnceLock::new();
        *ME.get_or_init(|| {
            let pid = std::process::id();
            Owner {
                pid,
                // Unreadable: 0, which matches no live process later.
                start: start_time(pid).unwrap_or(0),
            }
        })
    }

    /// `<pid>-<start>`.
    fn tag(self) -> String {
        format!("{}-{}", self.pid, self.start)
    }

    fn parse(tag: &str) -> Option<Owner> {
        let (pid, start) = tag.split_once('-')?;
        Some(Owner {
            pid: number(pid)?,
            start: number(start)?,
        })
    }

    /// Whether this very process still runs (same pid, same start time).
    pub fn alive(self) -> bool {
        start_time(self.pid).ok() == Some(self.start)
    }
}

/// Digits only (no sign, no spaces) as a number.
fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The start time of process `pid`, from `/proc/PID/stat`.
fn start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The name (field 2) may hold spaces and ')': fields resume after the
    // last ')', with field 3 first, so field 22 is the 20th.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(number)
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat has no start time")))
}

/// The runtime directory, made private (0700) if it is not.
pub fn root() -> Result<PathBuf, RuntimeDirError> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
    {
        Some(run) => run.join(NAME),
        None => std::env::temp_dir().join(format!("{NAME}-{}", own_uid()?)),
    };
    make_private(&dir)?;
    Ok(dir)
}

/// This process's folder in the runtime directory (made with the first VM).
pub fn own_folder() -> Result<PathBuf, RuntimeDirError> {
    Ok(root()?.join(Owner::current().tag()))
}

/// This process's effective user, from `/proc/self/status` (right even
/// when the process is not dumpable and `/proc/self` belongs to root).
fn own_uid() -> Result<u32, RuntimeDirError> {
    let text = fs::read_to_string("/proc/self/status").map_err(RuntimeDirError::Uid)?;
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(number)
        .ok_or_else(|| RuntimeDirError::Uid(io::Error::other("no Uid line")))
}

/// Creates `dir` (0700) or checks that the one there is this user's, not a
/// symlink, and private; a too-open mode of our own is narrowed.
fn make_private(dir: &Path) -> Result<(), RuntimeDirError> {
    let create = |source| RuntimeDirError::Create {
        path: dir.to_owned(),
        source,
    };
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(create(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(create)?;
    let not_private = |why: String| RuntimeDirError::NotPrivate {
        path: dir.to_owned(),
        why,
    };
    if !meta.file_type().is_dir() {
        return Err(not_private("is not a directory (a symlink?)".to_owned()));
    }
    let uid = own_uid()?;
    if meta.uid() != uid {
        return Err(not_private(format!(
            "belongs to uid {}, not {uid}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(create)?;
    }
    Ok(())
}

/// Set once the daemon ends: no VM directory is made after.
static CLOSED: RwLock<bool> = RwLock::new(false);
/// Numbers this process's cgroups.
static NEXT_CGROUP: AtomicU64 = AtomicU64::new(0);

/// A new private directory for one VM of `kind` ("qemu", "kvm"), removed
/// when dropped.
pub fn vm_dir(kind: &str) -> io::Result<TempDir> {
    private_dir(&format!("{kind}-"))
}

/// A new work directory for one jail (spec, root mount point), removed
/// when dropped. It is not below any VM's directory, so no VM reaches it.
pub fn jail_dir() -> io::Result<TempDir> {
    private_dir("jail-")
}

fn private_dir(prefix: &str) -> io::Result<TempDir> {
    // Held while the directory is made, so that `close` waits for it.
    let closed = CLOSED.read().unwrap_or_else(PoisonError::into_inner);
    if *closed {
        return Err(io::Error::other(RuntimeDirError::Closed));
    }
    let own = own_folder()
        .and_then(|own| {
            make_private(&own)?;
            Ok(own)
        })
        .map_err(io::Error::other)?;
    tempfile::Builder::new().prefix(prefix).tempdir_in(own)
}

/// A name for the cgroup of one VM of `kind` ("qemu", "vm"), unique on
/// this host and naming this process.
pub fn cgroup_name(kind: &str) -> String {
    format!(
        "vitrine-{kind}-{}-{}",
        Owner::current().tag(),
        NEXT_CGROUP.fetch_add(1, Ordering::Relaxed)
    )
}

/// Who made cgroup `name`, if this module named it. Names of earlier
/// versions (`vitrine-qemu-<pid>-<n>`) have no start time.
fn cgroup_owner(name: &str) -> Option<(u32, Option<u64>)> {
    let rest = name.strip_prefix("vitrine-")?;
    let (kind, numbers) = rest.split_once('-')?;
    if !CGROUP_KINDS.contains(&kind) {
        return None;
    }
    let parts: Option<Vec<u64>> = numbers.split('-').map(number).collect();
    match parts?.as_slice() {
        [pid, start, _n] => Some((u32::try_from(*pid).ok()?, Some(*start))),
        [pid, _n] => Some((u32::try_from(*pid).ok()?, None)),
        _ => None,
    }
}

/// One thing removed, and whose it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The directory or cgroup.
    pub path: PathBuf,
    /// The process that made it.
    pub pid: u32,
    /// Why it could go.
    pub because: &'static str,
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "removed {}, left by pid {} ({})",
            self.path.display(),
            self.pid,
            self.because
        )
    }
}

/// What a sweep did, and what it could not.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Removed.
    pub removed: Vec<Removed>,
    /// Kept, with why (in use, or could not be removed).
    pub kept: Vec<String>,
}

/// The parents of vitrine's cgroups on this host, per controller, or none
/// where it has no cgroups.
fn cgroup_parents() -> (CgroupVersion, Vec<PathBuf>) {
    match CgroupHost::detect() {
        Ok(CgroupHost::V2 { base }) => (CgroupVersion::V2, vec![base]),
        Ok(CgroupHost::V1 { memory, pids, cpu }) => {
            let mut all = vec![memory, pids];
            all.extend(cpu);
            (CgroupVersion::V1, all)
        }
        Err(_) => (CgroupVersion::V2, Vec::new()),
    }
}

/// Every cgroup this module named, with its directories.
fn named_cgroups(version: CgroupVersion, parents: &[PathBuf]) -> Vec<(String, Cgroup)> {
    let names: BTreeSet<String> = parents
        .iter()
        .filter_map(|p| fs::read_dir(p).ok())
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| cgroup_owner(n).is_some())
        .collect();
    names
        .into_iter()
        .map(|name| {
            let dirs = parents
                .iter()
                .map(|p| p.join(&name))
                .filter(|d| d.is_dir())
                .collect();
            (name, Cgroup { version, dirs })
        })
        .collect()
}

/// Whether a process is in cgroup `cg`.
fn in_use(cg: &Cgroup) -> bool {
    cg.dirs
        .iter()
        .any(|d| fs::read_to_string(d.join("cgroup.procs")).map_or(true, |p| !p.trim().is_empty()))
}

/// At the daemon's end: no new VM directory is made from now on; the VMs
/// still in this process's cgroups are killed and the cgroups removed;
/// this process's folder in the runtime directory is removed.
pub fn sweep_own() -> Sweep {
    *CLOSED.write().unwrap_or_else(PoisonError::into_inner) = true;
    let mut sweep = Sweep::default();
    sweep_own_once(&mut sweep);
    // A VM that had its directories before the close makes its cgroup
    // just after, within milliseconds: a second pass takes it.
    std::thread::sleep(SECOND_PASS);
    sweep_own_once(&mut sweep);
    sweep
}

/// How long after the first pass at the daemon's end the second comes.
const SECOND_PASS: std::time::Duration = std::time::Duration::from_millis(300);

fn sweep_own_once(sweep: &mut Sweep) {
    let me = Owner::current();
    let (version, parents) = cgroup_parents();
    for (name, cg) in named_cgroups(version, &parents) {
        if cgroup_owner(&name) != Some((me.pid, Some(me.start))) {
            continue;
        }
        match cg.remove() {
            Ok(()) => sweep.removed.push(Removed {
                path: cg
                    .dirs
                    .first()
                    .cloned()
                    .unwrap_or_else(|| PathBuf::from(&name)),
                pid: me.pid,
                because: "its VM was still running at the daemon's end",
            }),
            Err(e) => sweep.kept.push(format!("cgroup {name}: {e}")),
        }
    }
    match root() {
        Ok(root) => {
            let own = root.join(me.tag());
            match fs::remove_dir_all(&own) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => sweep.kept.push(format!("{}: {e}", own.display())),
            }
        }
        Err(e) => sweep.kept.push(e.to_string()),
    }
}

/// At the daemon's start: removes the cgroups and runtime folders of
/// processes that no longer run (a crashed daemon's), except any cgroup
/// that still holds a process, and the folder of its owner.
pub fn remove_stale() -> Result<Sweep, RuntimeDirError> {
    let root = root()?;
    let (version, parents) = cgroup_parents();
    Ok(remove_stale_in(&root, version, &parents))
}

fn remove_stale_in(root: &Path, version: CgroupVersion, parents: &[PathBuf]) -> Sweep {
    let me = Owner::current();
    let mut sweep = Sweep::default();
    // Owners with a cgroup still in use: their folders stay too.
    let mut busy = BTreeSet::new();
    for (name, cg) in named_cgroups(version, parents) {
        let Some((pid, start)) = cgroup_owner(&name) else {
            continue;
        };
        let gone = match start {
            Some(start) => !Owner { pid, start }.alive(),
            // An older name: only a pid that no longer exists proves it.
            None => !Path::new(&format!("/proc/{pid}")).exists(),
        };
        if pid == me.pid || !gone {
            continue;
        }
        if in_use(&cg) {
            busy.insert(pid);
            sweep
                .kept
                .push(format!("cgroup {name}: still holds a process"));
            continue;
        }
        // Not Cgroup::remove: nothing here may be killed.
        let failed: Vec<String> = cg
            .dirs
            .iter()
            .filter_map(|d| match fs::remove_dir(d) {
                Ok(()) => None,
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => Some(format!("{}: {e}", d.display())),
            })
            .collect();
        if failed.is_empty() {
            sweep.removed.push(Removed {
                path: cg
                    .dirs
                    .first()
                    .cloned()
                    .unwrap_or_else(|| PathBuf::from(&name)),
                pid,
                because: "a cgroup of a process that no longer runs",
            });
        } else {
            sweep.kept.extend(failed);
        }
    }
    let entries = fs::read_dir(root).into_iter().flatten().flatten();
    for entry in entries {
        let Some(owner) = entry.file_name().to_str().and_then(Owner::parse) else {
            continue;
        };
        if owner == me || owner.alive() || busy.contains(&owner.pid) {
            continue;
        }
        let path = entry.path();
        match fs::remove_dir_all(&path) {
            Ok(()) => sweep.removed.push(Removed {
                path,
                pid: owner.pid,
                because: "VM files of a process that no longer runs",
            }),
            Err(e) => sweep.kept.push(format!("{}: {e}", path.display())),
        }
    }
    sweep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid of a process that has ended (and was reaped).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn only_the_same_pid_with_the_same_start_time_counts_as_alive() {
        let me = Owner::current();
        let reused = Owner {
            pid: me.pid,
            start: me.start + 1,
        };

        assert!(me.start > 0);
        assert!(me.alive());
        assert!(!reused.alive());
        assert_eq!(Owner::parse(&me.tag()), Some(me));
        assert_eq!(Owner::parse("12-x"), None);
        assert_eq!(Owner::parse("+12-3"), None);
    }

    #[test]
    fn cgroup_names_carry_their_owner_and_other_names_are_not_ours() {
        let me = Owner::current();
        let name = cgroup_name("qemu");

        assert_eq!(cgroup_owner(&name), Some((me.pid, Some(me.start))));
        assert_eq!(cgroup_owner("vitrine-qemu-77-3"), Some((77, None)));
        assert_eq!(cgroup_owner("vitrine-vm-77-5-3"), Some((77, Some(5))));
        for foreign in [
            "vitrine-task-77-3",
            "vitrine-qemu-77",
            "vitrine-qemu-a-3",
            "qemu-1-2",
        ] {
            assert_eq!(cgroup_owner(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn start_up_removes_folders_of_ended_processes_and_keeps_live_and_foreign_ones() {
        let root = tempfile::tempdir().unwrap();
        let me = Owner::current();
        let dead = Owner {
            pid: dead_pid(),
            start: 1,
        };
        let reused = Owner {
            pid: me.pid,
            start: me.start + 1,
        };
        let parent = Owner {
            pid: std::os::unix::process::parent_id(),
            start: start_time(std::os::unix::process::parent_id()).unwrap(),
        };
        for owner in [me, dead, reused, parent] {
            let vm = root.path().join(owner.tag()).join("qemu-abc");
            fs::create_dir_all(&vm).unwrap();
            fs::write(vm.join("serial.log"), "rendering a.pdf as pdf").unwrap();
        }
        fs::create_dir(root.path().join("not-ours")).unwrap();

        let sweep = remove_stale_in(root.path(), CgroupVersion::V2, &[]);

        let mut left: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![me.tag(), parent.tag(), "not-ours".to_owned()];
        want.sort();
        assert_eq!(left, want);
        let mut removed: Vec<u32> = sweep.removed.iter().map(|r| r.pid).collect();
        removed.sort_unstable();
        let mut expected = vec![dead.pid, reused.pid];
        expected.sort_unstable();
        assert_eq!(removed, expected);
        assert!(sweep.kept.is_empty(), "{:?}", sweep.kept);
    }

    #[test]
    fn start_up_keeps_a_cgroup_that_holds_a_process_and_our_own() {
        // Plain directories stand in for one controller's hierarchy.
        let parent = tempfile::tempdir().unwrap();
        let busy = parent.path().join(format!("vitrine-vm-{}-1-1", dead_pid()));
        let live = parent.path().join(cgroup_name("qemu"));
        for (dir, procs) in [(&busy, "4242\n"), (&live, "")] {
            fs::create_dir(dir).unwrap();
            fs::write(dir.join("cgroup.procs"), procs).unwrap();
        }
        let runtime = tempfile::tempdir().unwrap();

        let sweep = remove_stale_in(
            runtime.path(),
            CgroupVersion::V1,
            &[parent.path().to_owned()],
        );

        assert!(busy.exists(), "a cgroup holding a process was removed");
        assert!(live.exists(), "this process's own cgroup was removed");
        assert_eq!(sweep.removed, Vec::new());
        assert_eq!(sweep.kept.len(), 1, "{:?}", sweep.kept);
        assert!(sweep.kept[0].ends_with("still holds a process"));
    }

    #[test]
    fn an_open_runtime_dir_of_our_own_is_made_private_and_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();

        make_private(&open).unwrap();
        let refused = make_private(&link).unwrap_err();

        let mode = fs::metadata(&open).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(
            matches!(refused, RuntimeDirError::NotPrivate { .. }),
            "{refused}"
        );
    }
}
