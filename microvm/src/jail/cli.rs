//! The jail's part of the `vitrine-vmm` command line, kept here so the
//! binary only needs three small hooks: enter the jail after parsing,
//! install the main thread's filter before the guest runs, and dispatch the
//! hidden self-tests.

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
