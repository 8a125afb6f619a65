//! Seccomp filters per thread type, compiled with seccompiler from the
//! reviewed lists in [`allowlist`]. A denied call raises SIGSYS and
//! [`report`] prints its number, name and thread, then ends the process.
//!
//! The binary arms the filters ([`arm`]) when it runs jailed; from then on
//! the hooks in the vCPU and worker threads install their lists as the
//! threads start. The library's own tests never arm them, so they run
//! unfiltered.

pub mod allowlist;
pub mod report;
pub mod syscall_names;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use allowlist::{Args, Rule};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0} filter")]
    Build(ThreadKind, #[source] seccompiler::BackendError),
    #[error("cannot compile the {0} filter")]
    Compile(ThreadKind, #[source] seccompiler::BackendError),
    #[error("cannot install the {0} filter")]
    Install(ThreadKind, #[source] seccompiler::Error),
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// The thread types that get their own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread, from the first guest instruction on.
    Vmm,
    Vcpu,
    /// A virtio device's epoll thread.
    Worker,
    /// The jail's parent that waits outside the PID namespace.
    Keeper,
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Vmm => "vmm",
            Self::Vcpu => "vcpu",
            Self::Worker => "worker",
            Self::Keeper => "keeper",
        })
    }
}

impl ThreadKind {
    /// Every rule this thread type's own filter allows (see the module
    /// docs of [`allowlist`] for why the lists nest).
    pub fn rules(self) -> Vec<Rule> {
        let lists: &[&[Rule]] = match self {
            Self::Vmm => &[
                allowlist::RUNTIME,
                allowlist::VMM,
                allowlist::VCPU,
                allowlist::WORKER,
            ],
            Self::Vcpu => &[allowlist::RUNTIME, allowlist::VCPU, allowlist::WORKER],
            Self::Worker => &[allowlist::RUNTIME, allowlist::WORKER],
            Self::Keeper => &[allowlist::RUNTIME, allowlist::KEEPER],
        };
        lists.iter().flat_map(|l| l.iter().copied()).collect()
    }

    /// Whether this thread type may make syscall `nr` with some arguments.
    pub fn allows(self, nr: i64) -> bool {
        self.rules().iter().any(|r| r.nr == nr)
    }
}

static ARMED: AtomicBool = AtomicBool::new(false);

/// From now on, vCPU and worker threads install their filters as they
/// start. Also installs the SIGSYS report handler.
pub fn arm() -> Result<(), SeccompError> {
    report::install_handler().map_err(SeccompError::Handler)?;
    ARMED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Environment variable that arms the filters in any process using this
/// library, so the device test suites can run their vCPU and worker
/// threads under the real lists (it can only add restrictions).
pub const ARM_ENV: &str = "VITRINE_SECCOMP_ARM";

pub fn is_armed() -> bool {
    static FROM_ENV: OnceLock<bool> = OnceLock::new();
    ARMED.load(Ordering::SeqCst)
        || *FROM_ENV.get_or_init(|| std::env::var_os(ARM_ENV).is_some_and(|v| v == "1"))
}

/// Compiles the filter of `kind`: listed calls pass, anything else traps.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut merged: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in kind.rules() {
        let conditions = conditions(&rule).map_err(|e| SeccompError::Build(kind, e))?;
        let slot = merged.entry(rule.nr).or_insert_with(|| Some(Vec::new()));
        match (conditions, slot.as_mut()) {
            // Unconditional wins over any argument filter.
            (None, _) => *slot = None,
            (Some(rules), Some(existing)) => existing.extend(rules),
            (Some(_), None) => {}
        }
    }
    let map = merged
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        map,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind, e))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Compile(kind, e))
}

/// `None`: any arguments; `Some(rules)`: one of these argument matches.
fn conditions(rule: &Rule) -> Result<Option<Vec<SeccompRule>>, seccompiler::BackendError> {
    let one = |c: SeccompCondition| SeccompRule::new(vec![c]);
    Ok(match rule.args {
        Args::Any => None,
        // The kernel reads the request as an unsigned int.
        Args::Ioctl(list) => Some(
            list.iter()
                .map(|i| {
                    one(SeccompCondition::new(
                        1,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        i.request,
                    )?)
                })
                .collect::<Result<_, _>>()?,
        ),
        Args::UnixSocket => Some(vec![one(SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            u64::try_from(libc::AF_UNIX).unwrap_or_default(),
        )?)?]),
        Args::NoExec => Some(vec![one(SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(u64::try_from(libc::PROT_EXEC).unwrap_or_default()),
            0,
        )?)?]),
    })
}

/// Installs the filter of `kind` on the calling thread, which the denial
/// report will call `name`. Sets no_new_privs (seccompiler does).
pub fn install(kind: ThreadKind, name: &str) -> Result<(), SeccompError> {
    let program = compile(kind)?;
    report::install_handler().map_err(SeccompError::Handler)?;
    report::set_thread_name(name);
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(kind, e))
}

/// Hook for a thread as it starts: installs its filter if the process is
/// armed. A thread that cannot be filtered must not run guest-facing code,
/// so failure ends the process with a message.
pub fn on_thread_start(kind: ThreadKind, name: &str) {
    if !is_armed() {
        return;
    }
    if let Err(e) = install(kind, name) {
        eprintln!("vitrine-vmm: seccomp: {name}: {e}");
        std::process::exit(report::EXIT_SECCOMP_DENIED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_kind_compiles() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Worker,
            ThreadKind::Keeper,
        ] {
            let program = compile(kind).unwrap();
            assert!(!program.is_empty(), "{kind}");
        }
    }

    #[test]
    fn every_rule_has_a_reason_and_a_known_name() {
        for kind in [ThreadKind::Vmm, ThreadKind::Keeper] {
            for rule in kind.rules() {
                assert!(
                    !rule.why.trim().is_empty(),
                    "syscall {} has no reason",
                    rule.nr
                );
                assert!(syscall_names::name(rule.nr).is_some(), "{}", rule.nr);
            }
        }
    }

    #[test]
    fn lists_nest_as_threads_inherit_filters() {
        let worker = ThreadKind::Worker.rules();
        let vcpu = ThreadKind::Vcpu.rules();

        assert!(worker.iter().all(|r| ThreadKind::Vcpu.allows(r.nr)));
        assert!(vcpu.iter().all(|r| ThreadKind::Vmm.allows(r.nr)));
    }

    #[test]
    fn dangerous_calls_are_on_no_list() {
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_open_by_handle_at,
            libc::SYS_keyctl,
            libc::SYS_unshare,
            libc::SYS_setns,
        ] {
            assert!(!ThreadKind::Vmm.allows(nr), "{:?}", syscall_names::name(nr));
        }
    }

    #[test]
    fn workers_make_no_kvm_ioctl_and_start_no_threads() {
        let worker = ThreadKind::Worker.rules();
        let ioctls: Vec<_> = worker
            .iter()
            .filter_map(|r| match r.args {
                Args::Ioctl(list) => Some(list),
                _ => None,
            })
            .flatten()
            .collect();

        assert!(ioctls.iter().all(|i| !i.name.starts_with("KVM_")));
        assert!(!ThreadKind::Worker.allows(libc::SYS_clone3));
        assert!(!ThreadKind::Worker.allows(libc::SYS_openat));
    }
}
