//! QEMU, started by the `qemu` backend exactly as the daemon starts it, runs
//! inside `vitrine-vmm`'s jail: checked from outside through /proc (its
//! namespaces, privileges, root and cgroup), while the real guest image
//! still boots to Ready and renders a real task.

mod qemu_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qemu_support::image_or_skip;
use vitrine_daemon::backend::qemu::QemuBackend;
use vitrine_daemon::backend::{Backend, GuestImage, GuestVm, VmConfig};
use vitrine_daemon::fresh_guest::process_exists;
use vitrine_daemon::task::{give_identity, run_task, TaskInput};
use vitrine_daemon::vmm_jail::QEMU_OVERHEAD_MIB;
use vitrine_shim::protocol::{HostMessage, Limits, TaskStatus};

fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn config(dir: &Path) -> VmConfig {
    let mut config = VmConfig::new(GuestImage::from_dir(dir).unwrap());
    config.ready_timeout = Duration::from_secs(60);
    config
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

fn namespace(pid: &str, ns: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap()
}

/// The memory limit of `pid`'s cgroup, v2 (`memory.max`) or v1
/// (`memory.limit_in_bytes`), found through this process's mountinfo;
/// with the cgroup's path.
fn memory_limit(pid: u32) -> Option<(String, u64)> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let v1 = controllers.split(',').any(|c| c == "memory");
        if !v1 && !controllers.is_empty() {
            continue;
        }
        for m in mountinfo.lines() {
            let (left, right) = m.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, point, fstype, superopts) = (fields[3], fields[4], right[0], right[2]);
            let fits = if v1 {
                fstype == "cgroup" && superopts.split(',').any(|o| o == "memory")
            } else {
                fstype == "cgroup2"
            };
            if !fits {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap_or(path);
            let dir = Path::new(point).join(rel.trim_start_matches('/'));
            let file = if v1 {
                "memory.limit_in_bytes"
            } else {
                "memory.max"
            };
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                if let Ok(limit) = text.trim().parse() {
                    return Some((path.to_owned(), limit));
                }
            }
        }
    }
    None
}

#[test]
fn qemu_runs_walled_off_from_the_host_and_still_renders_a_task() {
    let test = "qemu_runs_walled_off_from_the_host_and_still_renders_a_task";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    let config = config(&image);
    let backend = QemuBackend::new();
    assert!(backend.jailed(), "the daemon's QEMU backend is jailed");

    // Act: the same call the daemon makes.
    let mut vm = backend.start(&config).unwrap();
    let keeper = vm.pid();
    let qemu = vm.qemu_pid().expect("QEMU runs under its keeper");
    let qemu_s = qemu.to_string();
    loud(&format!(
        "{test}: boot to Ready {:?} (jailed)",
        vm.boot_time()
    ));

    // Namespaces: none shared with the host (this test).
    for ns in ["net", "pid", "mnt", "ipc", "uts"] {
        assert_ne!(
            namespace("self", ns),
            namespace(&qemu_s, ns),
            "QEMU shares the {ns} namespace"
        );
    }
    // Privileges.
    assert_eq!(status_field(qemu, "NoNewPrivs"), "1");
    assert_eq!(status_field(qemu, "CapEff"), "0000000000000000");
    assert_eq!(status_field(qemu, "CapBnd"), "0000000000000000");
    // Its root: only what the jail bound.
    let root = PathBuf::from(format!("/proc/{qemu}/root"));
    let top: BTreeSet<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let first = |p: &Path| {
        p.components()
            .nth(1)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap()
    };
    let image = std::fs::canonicalize(&image).unwrap();
    let vm_dir = std::fs::canonicalize(vm.dir()).unwrap();
    let allowed: BTreeSet<String> = ["usr", "lib", "lib64", "proc"]
        .into_iter()
        .map(String::from)
        .chain([first(&image), first(&vm_dir)])
        .collect();
    assert!(top.is_subset(&allowed), "QEMU's root holds {top:?}");
    for host in ["home", "etc/shadow", "etc/passwd", "var", "dev/sda", "sys"] {
        assert!(
            !root.join(host).exists(),
            "QEMU sees the host's /{host} (root holds {top:?})"
        );
    }
    assert!(root
        .join(vm_dir.strip_prefix("/").unwrap())
        .join("shim.sock")
        .exists());
    // Its cgroup's memory limit: guest RAM plus QEMU's overhead.
    let (cgroup, limit) = memory_limit(qemu).expect("QEMU is in a memory-limited cgroup");
    assert!(cgroup.contains("vitrine-qemu-"), "cgroup {cgroup}");
    assert_eq!(
        limit,
        (u64::from(config.memory_mib) + QEMU_OVERHEAD_MIB) << 20,
        "cgroup {cgroup}"
    );

    // A real task through the jailed QEMU.
    let mut channel = vm.take_channel().unwrap();
    let input = TaskInput::file(
        "notes.txt",
        "text/plain",
        b"hello from inside the jail\n".to_vec(),
        Limits::default(),
    );
    give_identity(&mut channel, 1, Instant::now() + Duration::from_secs(10)).unwrap();
    let run = run_task(
        &mut channel,
        1,
        &input,
        Instant::now() + Duration::from_secs(60),
    )
    .unwrap();
    loud(&format!(
        "{test}: QEMU VmHWM {} VmRSS {} Threads {} (guest {} MiB)",
        status_field(qemu, "VmHWM"),
        status_field(qemu, "VmRSS"),
        status_field(qemu, "Threads"),
        config.memory_mib
    ));
    let _ = channel.send(&HostMessage::Shutdown);
    vm.wait_or_kill(Duration::from_secs(10)).unwrap();
    drop(vm);

    assert_eq!(run.status, Some(TaskStatus::Ok), "{run:?}");
    assert!(!run.pages.is_empty(), "no page rendered");
    assert!(!process_exists(qemu), "QEMU {qemu} outlived its VM");
    assert!(!process_exists(keeper), "keeper {keeper} outlived its VM");
}

#[test]
fn dropping_a_jailed_vm_kills_qemu_and_its_keeper() {
    let test = "dropping_a_jailed_vm_kills_qemu_and_its_keeper";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    let vm = QemuBackend::new().start(&config(&image)).unwrap();
    let (keeper, qemu) = (vm.pid(), vm.qemu_pid().unwrap());
    let dir = vm.dir().to_owned();

    drop(vm);

    assert!(!process_exists(qemu), "QEMU {qemu} outlived its VM");
    assert!(!process_exists(keeper), "keeper {keeper} outlived its VM");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Whether `pid` has ended: gone, or a zombie waiting for the host's init
/// (a jailed process whose keeper died is reparented there).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn ends_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ended(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ended(pid)
}

#[test]
fn qemu_ends_when_its_keeper_is_told_to_or_killed() {
    let test = "qemu_ends_when_its_keeper_is_told_to_or_killed";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    for signal in ["-TERM", "-KILL"] {
        let mut vm = QemuBackend::new().start(&config(&image)).unwrap();
        let (keeper, qemu) = (vm.pid(), vm.qemu_pid().unwrap());

        // TERM: the keeper forwards it; KILL: PR_SET_PDEATHSIG kills QEMU.
        let sent = std::process::Command::new("kill")
            .args([signal, &keeper.to_string()])
            .status()
            .unwrap();

        assert!(sent.success(), "kill {signal} {keeper}");
        assert!(
            ends_within(qemu, Duration::from_secs(5)),
            "QEMU {qemu} outlived its keeper after {signal}"
        );
        let exit = vm.wait_or_kill(Duration::from_secs(5)).unwrap();
        assert!(
            matches!(exit, vitrine_daemon::backend::VmExit::Exited(_)),
            "{exit:?}"
        );
    }
}

#[test]
fn a_jailed_qemu_dies_with_the_thread_that_started_it() {
    let test = "a_jailed_qemu_dies_with_the_thread_that_started_it";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    // Arrange: a VM started by a thread that then ends, as a daemon's
    // threads all end when it exits or crashes.
    let config = config(&image);
    // QEMU's pid is read while the launcher still runs: once it ends, QEMU
    // may already be gone.
    let (mut vm, qemu) = std::thread::spawn(move || {
        let vm = QemuBackend::new().start(&config).unwrap();
        let qemu = vm.qemu_pid().unwrap();
        (vm, qemu)
    })
    .join()
    .unwrap();

    // Act: nothing; the launcher is gone.

    // Assert: the VM object is still held here, but QEMU is not running.
    assert!(
        ends_within(qemu, Duration::from_secs(5)),
        "QEMU {qemu} outlived the thread that started it"
    );
    let _ = vm.wait_or_kill(Duration::from_secs(5));
}

/// A measurement, not a check: boot to Ready of the same image, jailed
/// and unjailed, median of a few runs. Run it with `--ignored`.
#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn boot_to_ready_jailed_and_unjailed() {
    let test = "boot_to_ready_jailed_and_unjailed";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    let config = config(&image);
    let runs = 5;
    for (what, backend) in [
        ("jailed", QemuBackend::new()),
        ("unjailed", QemuBackend::new().without_jail()),
    ] {
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| backend.start(&config).unwrap().boot_time())
            .collect();
        times.sort();
        loud(&format!(
            "{test}: {what}: p50 {:?} (min {:?}, max {:?}, {runs} runs)",
            times[runs / 2],
            times[0],
            times[runs - 1]
        ));
    }
}
