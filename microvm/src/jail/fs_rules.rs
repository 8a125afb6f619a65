//! Landlock: after the pivot, the VMM may use exactly the jail's paths,
//! /dev/kvm and its PID-only /proc; every other filesystem access, TCP
//! bind/connect, abstract unix sockets outside the jail and signals to
//! processes outside it are denied, as far as the running kernel's ABI
//! goes (best effort, reported).

use std::path::Path;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::{Access as PathAccess, JailPath};

/// The newest ABI this crate version knows; the kernel may offer less.
const WANTED: ABI = ABI::V6;

#[derive(Debug, thiserror::Error)]
pub enum FsRulesError {
    #[error("cannot build the landlock ruleset")]
    Ruleset(#[from] landlock::RulesetError),
    #[error("cannot open {0} for a landlock rule")]
    Open(String, #[source] landlock::PathFdError),
}

/// What the kernel enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LandlockOutcome {
    /// The kernel's landlock ABI (`None`: landlock off or absent).
    pub kernel_abi: Option<i32>,
    pub enforced: Enforced,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforced {
    Fully,
    Partially,
    Not,
}

impl std::fmt::Display for LandlockOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.enforced {
            Enforced::Fully => "fully enforced",
            Enforced::Partially => "partially enforced",
            Enforced::Not => "not enforced",
        };
        match self.kernel_abi {
            Some(abi) => write!(f, "ABI {abi} {how}"),
            None => write!(f, "unavailable, {how}"),
        }
    }
}

/// The landlock ABI the running kernel offers (`None` if none).
pub fn kernel_abi() -> Option<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attr and size 0 this only queries the ABI.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(v).ok().filter(|v| *v > 0)
}

/// Restricts the calling thread (and what it starts later) to `paths`,
/// plus /dev/kvm (read, write, ioctl) and /proc (read) when asked.
pub fn restrict(
    paths: &[JailPath],
    dev_kvm: bool,
    proc: bool,
) -> Result<LandlockOutcome, FsRulesError> {
    restrict_scoped(paths, dev_kvm, proc, Scope::from_all(WANTED))
}

/// The keeper's rules: no file, no TCP, no abstract unix socket; but it
/// may still signal the jailed process, which lives outside its landlock
/// domain (it was forked before the keeper restricted itself). With
/// signals scoped, neither its forwarded SIGTERM nor the SIGKILL of
/// PR_SET_PDEATHSIG when the keeper dies would reach the jailed process.
pub fn restrict_keeper() -> Result<LandlockOutcome, FsRulesError> {
    restrict_scoped(&[], false, false, Scope::AbstractUnixSocket.into())
}

fn restrict_scoped(
    paths: &[JailPath],
    dev_kvm: bool,
    proc: bool,
    scopes: BitFlags<Scope>,
) -> Result<LandlockOutcome, FsRulesError> {
    let read = AccessFs::from_read(WANTED);
    let all = AccessFs::from_all(WANTED);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .handle_access(AccessNet::from_all(WANTED))?
        .scope(scopes)?
        .create()?;
    let mut rules: Vec<(&Path, _)> = paths
        .iter()
        .filter_map(|p| {
            let access = match p.access {
                PathAccess::ReadOnly => read,
                PathAccess::ReadWrite => all,
                // `from_read` holds Execute too: for read-only paths the
                // noexec bind is what forbids running files.
                PathAccess::ReadExecute => read | AccessFs::Execute,
                // Following a symlink needs no right; its target has a rule.
                PathAccess::Symlink => return None,
            };
            Some((p.path.as_path(), access))
        })
        .collect();
    let kvm = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    if dev_kvm {
        rules.push((Path::new("/dev/kvm"), kvm));
    }
    if proc {
        rules.push((Path::new("/proc"), read));
    }
    for (path, access) in rules {
        let fd =
            PathFd::new(path).map_err(|e| FsRulesError::Open(path.display().to_string(), e))?;
        // Directory-only rights on a file are an error; keep file rights.
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(WANTED)
        };
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
    }
    let status = ruleset.restrict_self()?;
    Ok(LandlockOutcome {
        kernel_abi: kernel_abi(),
        enforced: match status.ruleset {
            RulesetStatus::FullyEnforced => Enforced::Fully,
            RulesetStatus::PartiallyEnforced => Enforced::Partially,
            _ => Enforced::Not,
        },
    })
}
