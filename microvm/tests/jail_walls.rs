//! The jail's walls, tested on the real `vitrine-vmm` binary started by the
//! launcher: from inside (the hidden `self-test walls` subcommand reports
//! what the jailed process can reach) and from outside (the live jailed
//! process's /proc entries while it runs a guest).

mod jail_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use jail_support::{cannot_jail, cannot_run_guests, plan, skip};
use vitrine_microvm::jail::launch::{Ending, Jailed};
use vitrine_microvm::jail::{Access, JailPath, JailSpec, Rlimits};

fn walls(host_path: &Path) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(
        dir.path(),
        "walls",
        &[
            "self-test",
            "walls",
            "--host-path",
            host_path.to_str().unwrap(),
        ],
    );
    let finished = Jailed::spawn(&plan).unwrap().wait().unwrap();
    assert_eq!(
        finished.ending,
        Ending::Exited(0),
        "stderr: {}",
        finished.stderr
    );
    serde_json::from_str(finished.stdout.trim()).unwrap()
}

#[test]
fn jailed_vmm_cannot_open_a_host_file_outside_its_root() {
    if let Some(why) = cannot_jail() {
        return skip("jailed_vmm_cannot_open_a_host_file_outside_its_root", &why);
    }
    let host = tempfile::tempdir().unwrap();
    let secret = host.path().join("secret");
    std::fs::write(&secret, "host data").unwrap();

    let inside = walls(&secret);
    let etc = walls(Path::new("/etc/passwd"));

    assert!(std::fs::read_to_string(&secret).is_ok(), "readable outside");
    let denied =
        |v: &serde_json::Value| v["open_host_path"].as_str().unwrap().starts_with("denied");
    assert!(denied(&inside), "{inside}");
    assert!(denied(&etc), "{etc}");
}

#[test]
fn jailed_vmm_sees_no_host_process() {
    if let Some(why) = cannot_jail() {
        return skip("jailed_vmm_sees_no_host_process", &why);
    }

    let report = walls(Path::new("/etc/passwd"));

    assert_eq!(report["visible_pids"], serde_json::json!([1]), "{report}");
    assert_eq!(report["hostname"], "vitrine-vmm");
}

#[test]
fn jailed_vmm_has_only_loopback_and_cannot_connect_out() {
    if let Some(why) = cannot_jail() {
        return skip("jailed_vmm_has_only_loopback_and_cannot_connect_out", &why);
    }

    let report = walls(Path::new("/etc/passwd"));

    assert_eq!(report["interfaces"], serde_json::json!(["lo"]), "{report}");
    assert!(
        report["connect_tcp"]
            .as_str()
            .unwrap()
            .starts_with("denied"),
        "{report}"
    );
}

#[test]
fn jailed_vmm_has_no_capabilities_and_no_new_privs() {
    if let Some(why) = cannot_jail() {
        return skip("jailed_vmm_has_no_capabilities_and_no_new_privs", &why);
    }

    let report = walls(Path::new("/etc/passwd"));

    let status: Vec<String> = serde_json::from_value(report["status"].clone()).unwrap();
    let field = |k: &str| {
        status
            .iter()
            .find(|l| l.starts_with(k))
            .map(|l| l.split_once(':').unwrap().1.trim().to_owned())
            .unwrap_or_else(|| panic!("no {k} in {status:?}"))
    };
    for cap in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(field(cap), "0000000000000000", "{cap}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
}

fn top_component(p: &Path) -> String {
    p.components()
        .nth(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn status_field(pid: u32, task: Option<u32>, key: &str) -> String {
    let path = match task {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Waits until the jailed VMM runs its vCPU thread (so every filter is on).
fn wait_for_vcpu(jailed: &Jailed) -> Option<u32> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(pid) = jailed.vmm_pid() {
            let has_vcpu = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.filter_map(|e| e.ok()).any(|e| {
                        std::fs::read_to_string(e.path().join("comm"))
                            .is_ok_and(|c| c.trim() == "vcpu0")
                    })
                })
                .unwrap_or(false);
            if has_vcpu {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn live_jailed_vmm_is_filtered_per_thread_and_isolated_from_outside() {
    if let Some(why) = cannot_run_guests() {
        return skip(
            "live_jailed_vmm_is_filtered_per_thread_and_isolated_from_outside",
            &why,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(
        dir.path(),
        "live",
        &["run", "--test-guest", "endless", "--time-limit", "3"],
    );
    let jailed = Jailed::spawn(&plan).unwrap();

    let pid = wait_for_vcpu(&jailed).expect("the jailed VMM starts its vCPU");
    let ns = |p: &str, n: &str| std::fs::read_link(format!("/proc/{p}/ns/{n}")).unwrap();
    let separate: Vec<_> = ["mnt", "pid", "net", "ipc", "uts"]
        .into_iter()
        .filter(|n| ns(&pid.to_string(), n) != ns("self", n))
        .collect();
    let mut root: BTreeSet<String> = BTreeSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/root")).unwrap() {
        root.insert(e.unwrap().file_name().to_string_lossy().into_owned());
    }
    let net_dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let interfaces: Vec<_> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .collect();
    let routes = std::fs::read_to_string(format!("/proc/{pid}/net/route")).unwrap();
    let mut filters = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: u32 = e.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
        filters.push((
            comm.trim().to_owned(),
            status_field(pid, Some(tid), "Seccomp"),
            status_field(pid, Some(tid), "Seccomp_filters"),
        ));
    }
    let no_new_privs = status_field(pid, None, "NoNewPrivs");
    let cap_eff = status_field(pid, None, "CapEff");
    let cap_bnd = status_field(pid, None, "CapBnd");
    let finished = jailed.wait().unwrap();

    assert_eq!(separate, ["mnt", "pid", "net", "ipc", "uts"]);
    // Only /dev, /proc and the top-level ancestor of the socket dir.
    let top = top_component(dir.path());
    let expected: BTreeSet<String> = ["dev", "proc", top.as_str()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(root, expected);
    assert_eq!(interfaces, ["lo"]);
    assert_eq!(routes.lines().skip(1).count(), 0, "no routes: {routes}");
    assert_eq!(no_new_privs, "1");
    assert_eq!(cap_eff, "0000000000000000");
    assert_eq!(cap_bnd, "0000000000000000");
    // The main thread has the vmm filter; the vCPU added its own on top.
    let main = filters.iter().find(|f| f.0 == "vitrine-vmm").unwrap();
    let vcpu = filters.iter().find(|f| f.0 == "vcpu0").unwrap();
    assert_eq!(
        (main.1.as_str(), main.2.as_str()),
        ("2", "1"),
        "{filters:?}"
    );
    assert_eq!(
        (vcpu.1.as_str(), vcpu.2.as_str()),
        ("2", "2"),
        "{filters:?}"
    );
    assert_eq!(finished.ending, Ending::Exited(124), "{}", finished.stderr);
}

#[test]
fn unprivileged_caller_gets_the_same_walls_in_its_own_user_namespace() {
    let test = "unprivileged_caller_gets_the_same_walls_in_its_own_user_namespace";
    if let Some(why) = cannot_jail() {
        return skip(test, &why);
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        return skip(
            test,
            "setpriv (util-linux) is not installed to drop to nobody",
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let open = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    };
    open(dir.path());
    let (root, sock) = (dir.path().join("root"), dir.path().join("sock"));
    for d in [&root, &sock] {
        std::fs::create_dir(d).unwrap();
        open(d);
    }
    let spec = JailSpec {
        root,
        paths: vec![JailPath {
            path: sock,
            access: Access::ReadWrite,
        }],
        dev_kvm: false,
        cgroup: None,
        rlimits: Rlimits {
            address_space: None,
            open_files: Some(256),
            processes: Some(64),
        },
        seccomp: true,
    };
    let spec_path = dir.path().join("spec.json");
    spec.write(&spec_path).unwrap();
    open(&spec_path);

    let out = std::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(jail_support::VMM)
        .arg("--jail")
        .arg(&spec_path)
        .args(["self-test", "walls", "--host-path", "/etc/passwd"])
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unshare(CLONE_NEWUSER) failed") {
        return skip(
            test,
            &format!("this kernel refuses unprivileged user namespaces: {stderr}"),
        );
    }
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("namespaces mnt,pid,net,ipc,uts,user"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["open_host_path"]
        .as_str()
        .unwrap()
        .starts_with("denied"));
    assert_eq!(report["visible_pids"], serde_json::json!([1]));
    assert_eq!(report["interfaces"], serde_json::json!(["lo"]));
    let status: Vec<String> = serde_json::from_value(report["status"].clone()).unwrap();
    assert!(
        status.iter().any(|l| l == "CapEff:\t0000000000000000"),
        "{status:?}"
    );
    assert!(status.iter().any(|l| l == "NoNewPrivs:\t1"), "{status:?}");
}
