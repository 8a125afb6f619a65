//! Shared set-up for the jail tests: a launch plan for the real
//! `vitrine-vmm` binary, and the host checks that decide whether a jail
//! test can run here (it says why when it cannot).

#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vitrine_microvm::jail::launch::LaunchPlan;
use vitrine_microvm::jail::{Access, CgroupLimits, JailPath, Rlimits};

pub const VMM: &str = env!("CARGO_BIN_EXE_vitrine-vmm");

/// Why jail tests cannot run on this host, if they cannot.
pub fn cannot_jail() -> Option<String> {
    // SAFETY: geteuid only reads the process credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: the jail tests build namespaces and cgroups as root".into());
    }
    None
}

/// Why guest-running jail tests cannot run here, if they cannot.
pub fn cannot_run_guests() -> Option<String> {
    cannot_jail().or_else(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .err()
            .map(|e| format!("/dev/kvm unusable: {e}"))
    })
}

/// Reports a skipped test on the real stderr (the harness captures
/// `eprintln!` of passing tests; a direct write is always shown).
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// A unique cgroup name per launch: tests run in parallel, and removing a
/// cgroup kills what is in it.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("test-{name}-{}-{n}", std::process::id())
}

/// A plan for `args`, with a fresh work dir inside `dir` and a writable
/// socket directory, the limits a 128 MiB guest gets.
pub fn plan(dir: &Path, name: &str, args: &[&str]) -> LaunchPlan {
    let workdir = dir.join("work");
    let sock = dir.join("sock");
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::create_dir_all(&sock).unwrap();
    LaunchPlan {
        vmm: PathBuf::from(VMM),
        name: unique(name),
        workdir,
        paths: vec![JailPath {
            path: sock,
            access: Access::ReadWrite,
        }],
        dev_kvm: true,
        seccomp: true,
        cgroup: CgroupLimits {
            memory_bytes: 512 << 20,
            cpus: 1,
            pids: 64,
        },
        rlimits: Rlimits {
            address_space: Some(4 << 30),
            open_files: Some(256),
            processes: Some(64),
        },
        args: args.iter().map(OsString::from).collect(),
        wall_limit: Duration::from_secs(30),
    }
}
