//! The jail `vitrine-vmm` puts itself in before it touches a guest.
//!
//! `vitrine-vmm --jail <spec.json> run|restore|snapshot ...` reads a
//! [`JailSpec`] written by the launcher ([`launch`]) and, still single
//! threaded, enters the jail in this order:
//!
//! 1. joins the cgroup the launcher prepared (memory, CPU, pids limits);
//! 2. unshares mount, PID, network, IPC and UTS namespaces (and a user
//!    namespace when not root);
//! 3. forks: the child is PID 1 of the new PID namespace and goes on to run
//!    the VMM; the parent (the *keeper*) stays behind, filtered down to
//!    waiting, and exits with the child's status (128 + signal if killed);
//! 4. builds a private root on a tmpfs holding only the spec's paths (bound
//!    at the same absolute paths, read-only unless marked writable),
//!    `/dev/kvm` and a PID-only `/proc` of the new namespace; pivots into it
//!    and detaches the old root;
//! 5. sets rlimits (address space, open files, processes, no core dumps),
//!    no_new_privs, landlock rules for exactly those paths, and drops every
//!    capability (bounding, ambient, effective, permitted, inheritable).
//!
//! `vitrine-vmm --jail <spec.json> exec -- PROGRAM ARGS...` enters the same
//! jail and then execve()s PROGRAM (QEMU, for hosts whose KVM cannot run
//! full guests); PROGRAM, its loader and libraries must be jail paths
//! marked [`Access::ReadExecute`] (or [`Access::Symlink`]).
//!
//! Seccomp comes last and per thread: the binary arms it
//! ([`crate::seccomp::arm`]) and installs the main thread's filter just
//! before the guest runs.

pub mod cgroup;
pub mod cli;
pub mod fs_rules;
pub mod launch;
mod namespaces;
pub mod privileges;
mod root;
pub mod selftest;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cgroup::{Cgroup, CgroupError, CgroupLimits};

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot read the jail spec {0}")]
    ReadSpec(PathBuf, #[source] std::io::Error),
    #[error("the jail spec {0} is not valid")]
    ParseSpec(PathBuf, #[source] serde_json::Error),
    #[error("jail path {0} must be absolute and free of `..`")]
    BadPath(PathBuf),
    #[error("jail path {0} is marked as a symlink but is not one")]
    NotSymlink(PathBuf),
    #[error("jail path {0} does not exist")]
    MissingPath(PathBuf, #[source] std::io::Error),
    #[error("cannot join the cgroup")]
    Cgroup(#[from] CgroupError),
    #[error("the process that started the jail ended before it was entered")]
    LauncherGone,
    #[error("{what} failed")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("landlock")]
    Landlock(#[from] fs_rules::FsRulesError),
    #[error("the jail must be entered while the process has one thread (it has {0})")]
    Threaded(usize),
}

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

/// How a path may be used inside the jail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Read files / list a directory (kernel, initrd, disk, snapshot to restore).
    ReadOnly,
    /// Also create, write and remove beneath it (socket dir, snapshot to write).
    ReadWrite,
    /// Read and execute: a program the jail execs (`vitrine-vmm exec`),
    /// its dynamic loader and libraries (`/usr`). Nothing is writable.
    ReadExecute,
    /// Not bound: the host's symlink at this path is made again in the
    /// private root with the same target (merged-/usr's `/lib64 ->
    /// usr/lib64`, where the dynamic loader is looked up). The target
    /// needs a jail path of its own.
    Symlink,
}

/// One host path that the jailed VMM sees, at the same absolute path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailPath {
    pub path: PathBuf,
    pub access: Access,
}

/// Resource limits set with setrlimit in the jail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimits {
    /// RLIMIT_AS: bytes of address space (guest RAM is mapped in it).
    pub address_space: Option<u64>,
    /// RLIMIT_NOFILE.
    pub open_files: Option<u64>,
    /// RLIMIT_NPROC. Counted per user across the host, so it is set only
    /// when the jail has its own user namespace; the cgroup's pids.max
    /// bounds threads in every case.
    pub processes: Option<u64>,
}

/// What the launcher tells `vitrine-vmm --jail` to build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSpec {
    /// An empty host directory: the jail mounts its private root (a tmpfs)
    /// here, inside its own mount namespace, so the host never sees it.
    pub root: PathBuf,
    /// Host paths to bind into the new root.
    pub paths: Vec<JailPath>,
    /// Bind /dev/kvm (every real run needs it; self-tests may not).
    pub dev_kvm: bool,
    /// The cgroup to join, prepared by the launcher (`None`: the host has no
    /// usable memory controller; the launcher says why).
    pub cgroup: Option<Cgroup>,
    pub rlimits: Rlimits,
    /// Arm the per-thread seccomp filters.
    pub seccomp: bool,
}

impl JailSpec {
    pub fn read(path: &Path) -> Result<Self, JailError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| JailError::ReadSpec(path.into(), e))?;
        let spec: Self =
            serde_json::from_str(&text).map_err(|e| JailError::ParseSpec(path.into(), e))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }

    fn validate(&self) -> Result<(), JailError> {
        for p in std::iter::once(&self.root).chain(self.paths.iter().map(|p| &p.path)) {
            let clean = p.is_absolute()
                && p.components()
                    .all(|c| !matches!(c, std::path::Component::ParentDir));
            if !clean || p == Path::new("/") {
                return Err(JailError::BadPath(p.clone()));
            }
            std::fs::symlink_metadata(p).map_err(|e| JailError::MissingPath(p.clone(), e))?;
        }
        for p in self.paths.iter().filter(|p| p.access == Access::Symlink) {
            let is_link = std::fs::symlink_metadata(&p.path)
                .map_err(|e| JailError::MissingPath(p.path.clone(), e))?
                .is_symlink();
            if !is_link {
                return Err(JailError::NotSymlink(p.path.clone()));
            }
        }
        Ok(())
    }
}

/// What the jail got, for the one line the VMM prints on entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailReport {
    pub landlock: fs_rules::LandlockOutcome,
    pub cgroup: Option<String>,
    pub user_namespace: bool,
}

impl std::fmt::Display for JailReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "namespaces mnt,pid,net,ipc,uts{}; landlock {}; cgroup {}",
            if self.user_namespace { ",user" } else { "" },
            self.landlock,
            self.cgroup.as_deref().unwrap_or("none")
        )
    }
}

/// Enters the jail described by `spec`. Returns in the jailed child (PID 1
/// of its namespace); the keeper parent never returns from here.
pub fn enter(spec: &JailSpec) -> Result<JailReport, JailError> {
    spec.validate()?;
    let threads = namespaces::thread_count();
    if threads != 1 {
        return Err(JailError::Threaded(threads));
    }
    namespaces::die_with_launcher()?;
    if let Some(cg) = &spec.cgroup {
        cg.join_self()?;
    }
    let user_namespace = namespaces::unshare_all()?;
    namespaces::fork_keeper()?;
    // From here on: the jailed child, PID 1 of the new namespace.
    root::build_and_pivot(spec)?;
    privileges::set_rlimits(&spec.rlimits, user_namespace)?;
    privileges::set_no_new_privs()?;
    let landlock = fs_rules::restrict(&spec.paths, spec.dev_kvm, true)?;
    privileges::drop_capabilities()?;
    Ok(JailReport {
        landlock,
        cgroup: spec.cgroup.as_ref().map(|c| c.to_string()),
        user_namespace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(paths: Vec<JailPath>) -> JailSpec {
        JailSpec {
            root: std::env::temp_dir(),
            paths,
            dev_kvm: false,
            cgroup: None,
            rlimits: Rlimits::default(),
            seccomp: false,
        }
    }

    #[test]
    fn a_path_marked_symlink_must_be_one_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("lib64");
        std::os::unix::fs::symlink("usr/lib64", &link).unwrap();
        let as_link = |path: &Path| JailPath {
            path: path.to_owned(),
            access: Access::Symlink,
        };

        let ok = spec(vec![as_link(&link)]).validate();
        let err = spec(vec![as_link(dir.path())]).validate().unwrap_err();

        assert!(ok.is_ok(), "{ok:?}");
        assert!(
            matches!(err, JailError::NotSymlink(ref p) if p == dir.path()),
            "{err:?}"
        );
    }

    #[test]
    fn read_execute_and_symlink_paths_survive_the_spec_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spec.json");
        let written = spec(vec![JailPath {
            path: PathBuf::from("/usr"),
            access: Access::ReadExecute,
        }]);

        written.write(&file).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();

        assert!(text.contains("\"read_execute\""), "{text}");
        assert_eq!(JailSpec::read(&file).unwrap(), written);
    }
}
