//! The jail's part of the `vitrine-vmm` command line, kept here so the
//! binary only needs three small hooks: enter the jail after parsing,
//! install the main thread's filter before the guest runs, and dispatch the
//! hidden self-tests.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{enter, selftest, JailError, JailSpec};
use crate::seccomp::{self, SeccompError, ThreadKind};

/// `--jail <spec.json>`: enter the jail described by the spec (written by
/// the launcher) before doing anything else.
#[derive(clap::Args, Debug, Default)]
pub struct JailArgs {
    /// Jail spec (JSON) written by the launcher: private root, landlock
    /// paths, cgroup, rlimits, seccomp.
    #[arg(long, global = true, value_name = "SPEC")]
    pub jail: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum JailCliError {
    #[error("cannot enter the jail")]
    Jail(#[from] JailError),
    #[error("cannot arm seccomp")]
    Seccomp(#[from] SeccompError),
    #[error("`exec` runs a program inside the jail, so it needs --jail")]
    ExecWithoutJail,
    #[error("the program to exec must be an absolute path inside the jail, not {0:?}")]
    ExecPath(OsString),
    #[error("the jail's seccomp filters are for vitrine-vmm's own threads; `exec` needs a spec with seccomp off")]
    ExecWithSeccomp,
    #[error("cannot exec {0:?} inside the jail")]
    Exec(OsString, #[source] std::io::Error),
}

/// Enters the jail if `--jail` was given and arms the per-thread filters
/// if the spec asks for them. Prints one line saying what the kernel
/// enforced.
pub fn enter_if_asked(args: &JailArgs) -> Result<(), JailCliError> {
    let Some(path) = &args.jail else {
        return Ok(());
    };
    let spec = JailSpec::read(path)?;
    let report = enter(&spec)?;
    if spec.seccomp {
        seccomp::arm()?;
    }
    eprintln!(
        "vitrine-vmm: jail: {report}; seccomp {}",
        if spec.seccomp { "armed" } else { "off" }
    );
    Ok(())
}

/// `exec -- PROGRAM ARGS...` (instead of [`enter_if_asked`]): enters the
/// jail, then replaces this process (PID 1 of the jail's namespace) with
/// PROGRAM, which keeps every wall of the jail: namespaces, private root,
/// landlock, rlimits, cgroup, no_new_privs, no capabilities. PROGRAM must
/// be a jail path marked read-execute (or below one). Returns only on
/// failure, before or after entering: the caller exits non-zero and
/// nothing runs unjailed.
pub fn exec_in_jail(args: &JailArgs, argv: &[OsString]) -> JailCliError {
    let Some(path) = &args.jail else {
        return JailCliError::ExecWithoutJail;
    };
    let Some((program, rest)) = argv.split_first() else {
        return JailCliError::ExecPath(OsString::new());
    };
    if !std::path::Path::new(program).is_absolute() {
        return JailCliError::ExecPath(program.clone());
    }
    let spec = match JailSpec::read(path) {
        Ok(spec) => spec,
        Err(e) => return e.into(),
    };
    if spec.seccomp {
        return JailCliError::ExecWithSeccomp;
    }
    let report = match enter(&spec) {
        Ok(report) => report,
        Err(e) => return e.into(),
    };
    eprintln!(
        "vitrine-vmm: jail: {report}; seccomp off; exec {}",
        std::path::Path::new(program).display()
    );
    // The launcher cleared the environment; the program gets it as is.
    let err = std::process::Command::new(program).args(rest).exec();
    JailCliError::Exec(program.clone(), err)
}

/// Call right before the guest's first instruction, on the main thread:
/// installs the `vmm` filter if armed. vCPUs and workers started after
/// this add their own.
pub fn guest_about_to_run() -> Result<(), SeccompError> {
    if seccomp::is_armed() {
        seccomp::install(ThreadKind::Vmm, "vmm")?;
    }
    Ok(())
}

/// Checks the jail tests run inside the real binary (hidden from --help).
#[derive(clap::Subcommand, Debug)]
pub enum SelfTest {
    /// Print, as JSON, what this process can reach: a host path, other
    /// processes, network interfaces, its privileges.
    Walls {
        /// A host path outside the jail to try to open.
        #[arg(long)]
        host_path: PathBuf,
    },
    /// Arm seccomp as a run does, then make a denied call (AF_INET socket)
    /// on a thread of this type. The process should die with the report.
    Seccomp {
        #[arg(long, value_enum)]
        thread: SelfTestThread,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SelfTestThread {
    Vmm,
    Vcpu,
    Worker,
}

pub fn run_self_test(test: SelfTest) -> ExitCode {
    match test {
        SelfTest::Walls { host_path } => {
            let report = selftest::walls(&host_path);
            match serde_json::to_string(&report) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vitrine-vmm: self-test: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        SelfTest::Seccomp { thread } => {
            let kind = match thread {
                SelfTestThread::Vmm => ThreadKind::Vmm,
                SelfTestThread::Vcpu => ThreadKind::Vcpu,
                SelfTestThread::Worker => ThreadKind::Worker,
            };
            match selftest::forbidden_syscall(kind) {
                Ok(()) => eprintln!(
                    "vitrine-vmm: self-test: the {kind} filter let socket(AF_INET) through"
                ),
                Err(e) => eprintln!("vitrine-vmm: self-test: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_without_a_jail_is_refused_before_anything_runs() {
        let argv = [OsString::from("/bin/true")];

        let err = exec_in_jail(&JailArgs::default(), &argv);

        assert!(matches!(err, JailCliError::ExecWithoutJail), "{err:?}");
    }

    #[test]
    fn exec_of_a_relative_program_is_refused() {
        let args = JailArgs {
            jail: Some(PathBuf::from("/nonexistent/spec.json")),
        };

        let err = exec_in_jail(&args, &[OsString::from("qemu-system-x86_64")]);

        assert!(matches!(err, JailCliError::ExecPath(_)), "{err:?}");
    }

    #[test]
    fn exec_refuses_a_spec_that_arms_vitrine_vmm_s_own_filters() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("spec.json");
        JailSpec {
            root: dir.path().to_owned(),
            paths: Vec::new(),
            dev_kvm: false,
            cgroup: None,
            rlimits: Default::default(),
            seccomp: true,
        }
        .write(&spec)
        .unwrap();
        let args = JailArgs { jail: Some(spec) };

        let err = exec_in_jail(&args, &[OsString::from("/bin/true")]);

        assert!(matches!(err, JailCliError::ExecWithSeccomp), "{err:?}");
    }
}
