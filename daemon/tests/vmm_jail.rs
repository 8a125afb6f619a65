//! The daemon's jailed launch of the real `vitrine-vmm`: limits from the
//! policy profile, and every wall checked on the live process (from
//! outside, through /proc) and from inside (the binary's hidden
//! `self-test` subcommands), with each way the jail can stop a VMM coming
//! back as its own typed error.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vitrine_daemon::backend::kvm::KvmBackend;
use vitrine_daemon::vmm_jail::{JailedVmm, VmmFiles, VmmJailError, VmmLauncher, VMM_OVERHEAD_MIB};
use vitrine_microvm::jail::cgroup::CgroupHost;
use vitrine_policy::Profile;

fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The VMM binary, or why these tests cannot run here.
fn vmm_or_skip(test: &str, needs_kvm: bool) -> Option<PathBuf> {
    let vmm = KvmBackend::new().binary().to_path_buf();
    let why = if !vmm.is_file() {
        Some(format!(
            "{} is not built (cargo build -p vitrine-microvm; cargo test --workspace builds it)",
            vmm.display()
        ))
    } else if !is_root() {
        Some("not root: the jail builds namespaces and cgroups as root".to_owned())
    } else if needs_kvm {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .err()
            .map(|e| format!("/dev/kvm unusable: {e}"))
    } else {
        None
    };
    match why {
        Some(why) => {
            loud(&format!("SKIPPED {test}: {why}"));
            None
        }
        None => Some(vmm),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}

struct Setup {
    launcher: VmmLauncher,
    files: VmmFiles,
    dir: tempfile::TempDir,
}

fn setup(vmm: &Path) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    std::fs::create_dir(&sock).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    Setup {
        launcher: VmmLauncher::new(vmm, work),
        files: VmmFiles {
            read_only: vec![],
            read_write: vec![sock],
        },
        dir,
    }
}

fn name(test: &str) -> String {
    format!("daemon-{test}-{}", std::process::id())
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn small_profile() -> Profile {
    let mut p = Profile::strict();
    p.memory_mib = 128;
    p.vcpus = 1;
    p.time_limit = Duration::from_secs(30);
    p
}

#[test]
fn profile_jailed_vmm_runs_a_test_guest_to_its_clean_exit() {
    let Some(vmm) = vmm_or_skip(
        "profile_jailed_vmm_runs_a_test_guest_to_its_clean_exit",
        true,
    ) else {
        return;
    };
    let s = setup(&vmm);

    let run = s
        .launcher
        .start(
            &name("hello"),
            &small_profile(),
            &s.files,
            args(&["run", "--test-guest", "hello", "--mem-mib", "128"]),
        )
        .unwrap()
        .wait()
        .unwrap();

    assert_eq!(run.exit_code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("Hello from a Vitrine test guest"));
    assert!(run.stderr.contains("landlock ABI"), "{}", run.stderr);
}

#[test]
fn jailed_vmm_cannot_open_host_files_see_host_processes_or_reach_the_network() {
    let Some(vmm) = vmm_or_skip(
        "jailed_vmm_cannot_open_host_files_see_host_processes_or_reach_the_network",
        false,
    ) else {
        return;
    };
    let s = setup(&vmm);
    let secret = s.dir.path().join("secret");
    std::fs::write(&secret, "host only").unwrap();

    let run = s
        .launcher
        .start(
            &name("walls"),
            &small_profile(),
            &s.files,
            args(&[
                "self-test",
                "walls",
                "--host-path",
                secret.to_str().unwrap(),
            ]),
        )
        .unwrap()
        .wait()
        .unwrap();

    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert!(
        report["open_host_path"]
            .as_str()
            .unwrap()
            .starts_with("denied"),
        "{report}"
    );
    assert_eq!(report["visible_pids"], serde_json::json!([1]));
    assert_eq!(report["interfaces"], serde_json::json!(["lo"]));
    assert!(report["connect_tcp"]
        .as_str()
        .unwrap()
        .starts_with("denied"));
}

fn wait_for_vcpu(vm: &JailedVmm) -> Option<u32> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(pid) = vm.vmm_pid() {
            let comms: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                        .map(|c| c.trim().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            if comms.iter().any(|c| c == "vcpu0") {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default()
}

#[test]
fn live_jailed_vmm_seen_from_the_daemon_is_unprivileged_filtered_and_alone() {
    let Some(vmm) = vmm_or_skip(
        "live_jailed_vmm_seen_from_the_daemon_is_unprivileged_filtered_and_alone",
        true,
    ) else {
        return;
    };
    let s = setup(&vmm);
    let vm = s
        .launcher
        .start(
            &name("live"),
            &small_profile(),
            &s.files,
            args(&["run", "--test-guest", "endless", "--time-limit", "3"]),
        )
        .unwrap();

    let pid = wait_for_vcpu(&vm).expect("the jailed VMM starts its vCPU");
    let ns = |p: &str, n: &str| std::fs::read_link(format!("/proc/{p}/ns/{n}")).unwrap();
    let own_namespaces = ["mnt", "pid", "net", "ipc", "uts"]
        .into_iter()
        .filter(|n| ns(&pid.to_string(), n) != ns("self", n))
        .count();
    let root: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let dev: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let net_dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let (nnp, cap_eff, cap_bnd, seccomp) = (
        status_field(pid, "NoNewPrivs"),
        status_field(pid, "CapEff"),
        status_field(pid, "CapBnd"),
        status_field(pid, "Seccomp"),
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let cgroup_skipped = vm.cgroup_skipped().map(str::to_owned);
    let run = vm.wait().unwrap();

    assert_eq!(own_namespaces, 5);
    let top = s
        .dir
        .path()
        .components()
        .nth(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap();
    assert!(
        root.iter()
            .all(|e| ["dev", "proc", top.as_str()].contains(&e.as_str())),
        "root holds only its mount points: {root:?}"
    );
    assert_eq!(dev, ["kvm"]);
    assert_eq!(net_dev.lines().skip(2).count(), 1, "only lo: {net_dev}");
    assert!(net_dev.contains("lo:"));
    assert_eq!(nnp, "1");
    assert_eq!(cap_eff, "0000000000000000");
    assert_eq!(cap_bnd, "0000000000000000");
    assert_eq!(seccomp, "2", "filter mode");
    match cgroup_skipped {
        None => assert!(cgroup.contains("/vitrine/daemon-live-"), "{cgroup}"),
        Some(why) => loud(&format!("NOTE live test: no cgroup on this host: {why}")),
    }
    assert_eq!(
        run.exit_code, 124,
        "the VMM's own --time-limit: {}",
        run.stderr
    );
}

#[test]
fn denied_syscall_comes_back_as_a_seccomp_error_naming_it() {
    let Some(vmm) = vmm_or_skip(
        "denied_syscall_comes_back_as_a_seccomp_error_naming_it",
        false,
    ) else {
        return;
    };
    let s = setup(&vmm);

    let result = s
        .launcher
        .start(
            &name("seccomp"),
            &small_profile(),
            &s.files,
            args(&["self-test", "seccomp", "--thread", "worker"]),
        )
        .unwrap()
        .wait();

    match result {
        Err(VmmJailError::SeccompDenied { nr, name, thread }) => {
            assert_eq!(
                (nr, name.as_str(), thread.as_str()),
                (41, "socket", "virtio-vsock")
            );
        }
        other => panic!("expected a seccomp denial, got {other:?}"),
    }
}

#[test]
fn guest_over_the_profile_memory_comes_back_as_out_of_memory() {
    let test = "guest_over_the_profile_memory_comes_back_as_out_of_memory";
    let Some(vmm) = vmm_or_skip(test, true) else {
        return;
    };
    if let Err(e) = CgroupHost::detect() {
        return loud(&format!("SKIPPED {test}: {e}"));
    }
    let s = setup(&vmm);
    let mut profile = small_profile();
    profile.memory_mib = 64;

    // The guest gets more RAM than its profile allows and dirties 256 MiB.
    let result = s
        .launcher
        .start(
            &name("oom"),
            &profile,
            &s.files,
            args(&["run", "--test-guest", "memtouch", "--mem-mib", "288"]),
        )
        .unwrap()
        .wait();

    match result {
        Err(VmmJailError::OutOfMemory { limit_mib }) => {
            assert_eq!(limit_mib, 64 + VMM_OVERHEAD_MIB);
        }
        other => panic!("expected an OOM kill, got {other:?}"),
    }
}

#[test]
fn vmm_past_its_profile_time_comes_back_as_timed_out() {
    let Some(vmm) = vmm_or_skip("vmm_past_its_profile_time_comes_back_as_timed_out", true) else {
        return;
    };
    let mut s = setup(&vmm);
    s.launcher = s.launcher.with_wall_margin(Duration::from_millis(200));
    let mut profile = small_profile();
    profile.time_limit = Duration::from_secs(1);

    let started = Instant::now();
    let result = s
        .launcher
        .start(
            &name("timeout"),
            &profile,
            &s.files,
            args(&["run", "--test-guest", "endless"]),
        )
        .unwrap()
        .wait();

    assert!(
        matches!(result, Err(VmmJailError::TimedOut(d)) if d == Duration::from_millis(1200)),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn prepared_jail_runs_the_vmm_with_the_callers_own_stdio() {
    let Some(vmm) = vmm_or_skip(
        "prepared_jail_runs_the_vmm_with_the_callers_own_stdio",
        true,
    ) else {
        return;
    };
    let s = setup(&vmm);
    let (jail, limits) = s
        .launcher
        .prepare(&name("prepared"), &small_profile(), &s.files)
        .unwrap();

    // As the KVM backend does: its own pipes, its own wait.
    let out = jail
        .command(
            s.launcher.vmm(),
            &args(&["run", "--test-guest", "hello", "--time-limit", "20"]),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = vitrine_daemon::vmm_jail::exit_code(jail.ending(out.status, &stderr, None).unwrap());

    assert_eq!(code.unwrap(), 0, "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello from a Vitrine test guest"));
    assert!(stderr.contains("vitrine-vmm: jail:"), "{stderr}");
    assert!(limits.wall > Duration::from_secs(30));
}
