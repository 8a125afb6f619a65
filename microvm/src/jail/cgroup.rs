//! One cgroup per VMM with memory (no swap), CPU and pids limits.
//!
//! cgroup v2 is used when its hierarchy has the memory and pids
//! controllers. Hybrid hosts (cgroup v2 mounted, but memory, cpu and pids
//! still bound to v1 hierarchies, as on this project's CI machine) get the
//! same limits through v1: `memory.limit_in_bytes` and
//! `memory.memsw.limit_in_bytes`, `cpu.cfs_quota_us`, `pids.max`. The
//! launcher creates the cgroup and reads its OOM count afterwards; the VMM
//! joins it itself before it maps guest memory.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where vitrine's cgroups go, below the launcher's own cgroup (v1) or the
/// v2 mount (v2).
const GROUP: &str = "vitrine";
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable memory cgroup on this host: {0}")]
    Unavailable(String),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad cgroup name {0:?} (letters, digits, '-', '_', '.' only)")]
    Name(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io("write", path))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Limits for one VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Hard memory limit (guest RAM plus the VMM's own); no swap beyond it.
    pub memory_bytes: u64,
    /// CPU bandwidth in whole CPUs (the profile's vCPU count).
    pub cpus: u32,
    /// Tasks (threads) at most.
    pub pids: u32,
}

/// A created cgroup: one directory (v2) or one per controller (v1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    pub version: CgroupVersion,
    /// v2: [the cgroup]; v1: [memory, pids, cpu (if mounted)].
    pub dirs: Vec<PathBuf>,
}

impl std::fmt::Display for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self.version {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        };
        match self.dirs.first() {
            Some(d) => write!(f, "{v} {}", d.display()),
            None => write!(f, "{v}"),
        }
    }
}

/// What this host offers, found from /proc/self/mountinfo and
/// /proc/self/cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupHost {
    V2 {
        /// Parent directory for vitrine's cgroups.
        base: PathBuf,
    },
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
    },
}

struct Mount {
    root: PathBuf,
    point: PathBuf,
    fstype: String,
    options: Vec<String>,
}

fn mounts() -> Result<Vec<Mount>, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(io("read", path))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<_> = pre.split(' ').collect();
            let post: Vec<_> = post.split(' ').collect();
            Some(Mount {
                root: PathBuf::from(pre.get(3)?),
                point: PathBuf::from(pre.get(4)?),
                fstype: (*post.first()?).to_owned(),
                options: post.get(2)?.split(',').map(str::to_owned).collect(),
            })
        })
        .collect())
}

/// This process's cgroup path per v1 controller, and ("", path) for v2.
fn own_cgroups() -> Result<Vec<(Vec<String>, PathBuf)>, CgroupError> {
    let path = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(path).map_err(io("read", path))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.split(',').map(str::to_owned).collect();
            Some((controllers, PathBuf::from(parts.next()?)))
        })
        .collect())
}

/// The directory of our own cgroup in mount `m`.
fn own_dir(m: &Mount, own: &Path) -> PathBuf {
    let rel = own.strip_prefix(&m.root).unwrap_or(own);
    m.point.join(rel.strip_prefix("/").unwrap_or(rel))
}

impl CgroupHost {
    pub fn detect() -> Result<CgroupHost, CgroupError> {
        let mounts = mounts()?;
        let own = own_cgroups()?;
        let mut why = Vec::new();
        if let Some(m) = mounts.iter().find(|m| m.fstype == "cgroup2") {
            let controllers =
                fs::read_to_string(m.point.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if has("memory") && has("pids") {
                return Ok(CgroupHost::V2 {
                    base: m.point.join(GROUP),
                });
            }
            why.push(format!(
                "cgroup v2 at {} offers only [{}] (memory and pids are bound to v1 hierarchies)",
                m.point.display(),
                controllers.trim()
            ));
        } else {
            why.push("no cgroup v2 mount".to_owned());
        }
        let v1 = |name: &str| {
            let m = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == name))?;
            let (_, path) = own.iter().find(|(c, _)| c.iter().any(|x| x == name))?;
            Some(own_dir(m, path).join(GROUP))
        };
        match (v1("memory"), v1("pids")) {
            (Some(memory), Some(pids)) => Ok(CgroupHost::V1 {
                memory,
                pids,
                cpu: v1("cpu"),
            }),
            _ => {
                why.push("no cgroup v1 memory and pids hierarchies either".to_owned());
                Err(CgroupError::Unavailable(why.join("; ")))
            }
        }
    }
}

impl Cgroup {
    /// Creates cgroup `name` with `limits`.
    pub fn create(name: &str, limits: &CgroupLimits) -> Result<Cgroup, CgroupError> {
        if !valid_name(name) {
            return Err(CgroupError::Name(name.to_owned()));
        }
        match CgroupHost::detect()? {
            CgroupHost::V2 { base } => create_v2(&base, name, limits),
            CgroupHost::V1 { memory, pids, cpu } => {
                create_v1(&memory, &pids, cpu.as_deref(), name, limits)
            }
        }
    }

    /// Moves the calling process into this cgroup.
    pub fn join_self(&self) -> Result<(), CgroupError> {
        let pid = std::process::id().to_string();
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    /// Times the kernel's OOM killer killed a task of this cgroup.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let (file, key) = match self.version {
            CgroupVersion::V2 => ("memory.events", "oom_kill"),
            CgroupVersion::V1 => ("memory.oom_control", "oom_kill"),
        };
        let path = self.dirs[0].join(file);
        let text = fs::read_to_string(&path).map_err(io("read", &path))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// The memory limit in force, in bytes.
    pub fn memory_limit(&self) -> Result<u64, CgroupError> {
        let file = match self.version {
            CgroupVersion::V2 => "memory.max",
            CgroupVersion::V1 => "memory.limit_in_bytes",
        };
        let path = self.dirs[0].join(file);
        let text = fs::read_to_string(&path).map_err(io("read", &path))?;
        Ok(text.trim().parse().unwrap_or(u64::MAX))
    }

    /// Kills what is left in the cgroup and removes it.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let kill = d.join("cgroup.kill");
            if kill.exists() {
                let _ = fs::write(&kill, "1");
            } else if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    // SAFETY: kill takes plain integers; these are our own
                    // VMM's processes, listed by its cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for d in &self.dirs {
            // A killed task leaves the cgroup asynchronously: retry briefly.
            let mut tries = 0;
            loop {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if tries < 100 => {
                        let _ = e;
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => return Err(io("remove", d)(e)),
                }
            }
        }
        Ok(())
    }
}

/// A name usable as one path component: letters, digits, '-', '_', '.'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn mkdir(p: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(p) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io("create", p)(e)),
        _ => Ok(()),
    }
}

fn create_v2(base: &Path, name: &str, limits: &CgroupLimits) -> Result<Cgroup, CgroupError> {
    let enable = "+memory +pids +cpu";
    if let Some(top) = base.parent() {
        // The mount's root may refuse (it already may have them on).
        let _ = fs::write(top.join("cgroup.subtree_control"), enable);
    }
    mkdir(base)?;
    // cpu may be missing; memory and pids were checked by detect().
    if fs::write(base.join("cgroup.subtree_control"), enable).is_err() {
        write(&base.join("cgroup.subtree_control"), "+memory +pids")?;
    }
    let dir = base.join(name);
    mkdir(&dir)?;
    write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
    let swap = dir.join("memory.swap.max");
    if swap.exists() {
        write(&swap, "0")?;
    }
    write(&dir.join("pids.max"), &limits.pids.to_string())?;
    let cpu = dir.join("cpu.max");
    if cpu.exists() {
        let quota = u64::from(limits.cpus.max(1)) * CPU_PERIOD_US;
        write(&cpu, &format!("{quota} {CPU_PERIOD_US}"))?;
    }
    Ok(Cgroup {
        version: CgroupVersion::V2,
        dirs: vec![dir],
    })
}

fn create_v1(
    memory: &Path,
    pids: &Path,
    cpu: Option<&Path>,
    name: &str,
    limits: &CgroupLimits,
) -> Result<Cgroup, CgroupError> {
    let mut dirs = Vec::new();
    mkdir(memory)?;
    let mem = memory.join(name);
    mkdir(&mem)?;
    write(
        &mem.join("memory.limit_in_bytes"),
        &limits.memory_bytes.to_string(),
    )?;
    // memsw = memory + swap; equal to the memory limit means no swap. The
    // file is absent when the kernel does not account swap.
    let memsw = mem.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        write(&memsw, &limits.memory_bytes.to_string())?;
    }
    dirs.push(mem);
    mkdir(pids)?;
    let p = pids.join(name);
    mkdir(&p)?;
    write(&p.join("pids.max"), &limits.pids.to_string())?;
    dirs.push(p);
    if let Some(cpu) = cpu {
        mkdir(cpu)?;
        let c = cpu.join(name);
        mkdir(&c)?;
        write(&c.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        let quota = u64::from(limits.cpus.max(1)) * CPU_PERIOD_US;
        write(&c.join("cpu.cfs_quota_us"), &quota.to_string())?;
        dirs.push(c);
    }
    Ok(Cgroup {
        version: CgroupVersion::V1,
        dirs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_parent_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "vm 1", "vm\n"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name("task-42_a.b"));
    }

    #[test]
    fn own_cgroup_dir_accounts_for_a_mount_rooted_below_the_top() {
        let top = Mount {
            root: PathBuf::from("/"),
            point: PathBuf::from("/sys/fs/cgroup/memory"),
            fstype: "cgroup".into(),
            options: vec!["rw".into(), "memory".into()],
        };
        let namespaced = Mount {
            root: PathBuf::from("/user.slice"),
            point: PathBuf::from("/sys/fs/cgroup"),
            fstype: "cgroup2".into(),
            options: vec![],
        };

        assert_eq!(
            own_dir(&top, Path::new("/process_api/abc")),
            Path::new("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(
            own_dir(&namespaced, Path::new("/user.slice/vitrined")),
            Path::new("/sys/fs/cgroup/vitrined")
        );
    }
}
