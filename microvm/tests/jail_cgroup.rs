//! The cgroup wall: a jailed VMM whose guest dirties more RAM than the
//! cgroup's memory limit is killed by the kernel's OOM killer, and the
//! launcher says so. The `memtouch` test guest writes every page of 256 MiB.

mod jail_support;

use jail_support::{cannot_run_guests, plan, skip};
use vitrine_microvm::jail::cgroup::CgroupHost;
use vitrine_microvm::jail::launch::{Ending, Jailed};
use vitrine_microvm::test_guests::memtouch;

/// Why the cgroup tests cannot run here, if they cannot.
fn cannot_limit_memory() -> Option<String> {
    cannot_run_guests().or_else(|| CgroupHost::detect().err().map(|e| e.to_string()))
}

fn run_memtouch(name: &str, limit_mib: u64) -> (Ending, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mem = memtouch::MIN_MEM_MIB.to_string();
    let mut plan = plan(
        dir.path(),
        name,
        &[
            "run",
            "--test-guest",
            "memtouch",
            "--mem-mib",
            &mem,
            "--time-limit",
            "50",
        ],
    );
    plan.cgroup.memory_bytes = limit_mib << 20;
    plan.wall_limit = std::time::Duration::from_secs(55);
    let jailed = Jailed::spawn(&plan).unwrap();
    eprintln!(
        "cgroup: {}",
        jailed.cgroup().map(|c| c.to_string()).unwrap_or_default()
    );
    let limit = jailed.cgroup().map(|c| c.memory_limit().unwrap());
    assert_eq!(limit, Some(limit_mib << 20));
    let finished = jailed.wait().unwrap();
    (finished.ending, finished.stdout, finished.stderr)
}

#[test]
fn vmm_over_its_memory_limit_is_killed_by_its_cgroup() {
    if let Some(why) = cannot_limit_memory() {
        return skip("vmm_over_its_memory_limit_is_killed_by_its_cgroup", &why);
    }

    let (ending, stdout, stderr) = run_memtouch("oom", 128);

    assert_eq!(
        ending,
        Ending::OutOfMemory {
            limit_bytes: 128 << 20
        },
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("memtouch: start"), "{stdout}");
    assert!(!stdout.contains("memtouch: done"), "{stdout}");
}

#[test]
fn vmm_within_its_memory_limit_runs_to_the_end() {
    if let Some(why) = cannot_limit_memory() {
        return skip("vmm_within_its_memory_limit_runs_to_the_end", &why);
    }

    let (ending, stdout, stderr) = run_memtouch("fits", 1024);

    assert_eq!(ending, Ending::Exited(0), "stderr: {stderr}");
    assert!(stdout.contains("memtouch: done"), "{stdout}");
}
