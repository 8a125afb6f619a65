//! What a stopped or crashed `vitrined` leaves behind, through a private bus
//! and the real daemon with QEMU guests (a task's VM and the warm pool's):
//! after SIGTERM mid-task nothing is left; after SIGKILL mid-task the VMs'
//! files and cgroups remain until the next daemon starts, which removes
//! them. "Nothing" is counted: every file and directory under the daemon's
//! TMPDIR and runtime directory, and every cgroup named after a daemon.
//!
//! Needs dbus, gcc + libc6-dev, QEMU and the guest image; each missing piece
//! prints a SKIPPED line.

mod dbus_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dbus_support::{
    example_policy, image_or_skip, loud, manager_proxy, static_program, tool_or_skip, PrivateBus,
};
use vitrine_microvm::jail::cgroup::CgroupHost;

const FOREVER_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    for (unsigned long i = 0;; i++) { printf("still running %lu\n", i); fflush(stdout); sleep(2); }
}
"#;

/// Every file and directory below `dir` (not `dir` itself).
fn entries_below(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path.clone());
            }
            all.push(path);
        }
    }
    all.sort();
    all
}

/// The cgroups (one directory per controller) named after daemon `pid`.
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let parents = match CgroupHost::detect() {
        Ok(CgroupHost::V2 { base }) => vec![base],
        Ok(CgroupHost::V1 { memory, pids, cpu }) => {
            let mut all = vec![memory, pids];
            all.extend(cpu);
            all
        }
        Err(_) => Vec::new(),
    };
    let ours = [format!("vitrine-qemu-{pid}-"), format!("vitrine-vm-{pid}-")];
    let mut found: Vec<PathBuf> = parents
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            ours.iter().any(|o| name.starts_with(o.as_str()))
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// What the daemons of this test have left: files and directories under
/// TMPDIR and the runtime directory, and cgroups named after `daemons`.
fn leftovers(bus: &PrivateBus, runtime: &Path, daemons: &[u32]) -> Vec<PathBuf> {
    let mut all = entries_below(&bus.tmp());
    // The runtime directory itself ($XDG_RUNTIME_DIR/vitrine) may stay.
    all.extend(entries_below(&runtime.join("vitrine")));
    for pid in daemons {
        all.extend(cgroups_of(*pid));
    }
    all
}

fn qemus(bus: &PrivateBus) -> usize {
    bus.daemon_children()
        .into_iter()
        .filter(|(_, name)| name.starts_with("qemu"))
        .count()
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits up to `limit` for `done`; whether it came.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// `vitrine run PROGRAM` in the background (it activates the daemon).
fn run_forever(bus: &PrivateBus, program: &Path) -> Child {
    bus.command(env!("CARGO_BIN_EXE_vitrine"))
        .arg("run")
        .arg(program)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// How many tasks are `running`.
async fn running_tasks(bus: &PrivateBus) -> usize {
    let connection = bus.connect().await;
    let rows: Vec<(
        zbus::zvariant::OwnedObjectPath,
        String,
        String,
        String,
        String,
    )> = manager_proxy(&connection)
        .await
        .call("ListTasks", &())
        .await
        .unwrap_or_default();
    rows.iter().filter(|r| r.3 == "running").count()
}

/// Starts a task, waits until it runs with the pool's VM beside it, and
/// returns the daemon's pid.
async fn daemon_mid_task(bus: &PrivateBus, program: &Path) -> (u32, Child) {
    let cli = run_forever(bus, program);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !(running_tasks(bus).await == 1 && qemus(bus) >= 2) {
        assert!(
            Instant::now() < deadline,
            "no running task with a pooled VM beside it ({} QEMU)",
            qemus(bus)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (bus.daemon_pid().expect("vitrined runs"), cli)
}

fn kill(signal: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_crashed_daemon_leaves_no_files_or_cgroups_once_restarted() {
    let test = "a_stopped_or_crashed_daemon_leaves_no_files_or_cgroups_once_restarted";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(program) = static_program(test, "forever", FOREVER_C, work.path()) else {
        return;
    };
    // Arrange: the daemon's runtime directory and TMPDIR are the test's.
    let runtime = tempfile::tempdir().unwrap();
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--no-windows".as_ref(),
            // The pool keeps a `document` VM idle beside the program's.
            "--warm-pool".as_ref(),
            "1".as_ref(),
        ],
        &[("XDG_RUNTIME_DIR", runtime.path().as_os_str())],
    );
    let before = leftovers(&bus, runtime.path(), &[]);

    // Act 1: SIGTERM mid-task.
    let (first, mut cli) = daemon_mid_task(&bus, &program).await;
    let during = leftovers(&bus, runtime.path(), &[first]);
    kill("-TERM", first);
    let stopped = wait_for(Duration::from_secs(20), || gone(first));
    let _ = cli.kill();
    let _ = cli.wait();
    let after_term = leftovers(&bus, runtime.path(), &[first]);

    // Act 2: SIGKILL mid-task; the next call starts a new daemon.
    let (second, mut cli) = daemon_mid_task(&bus, &program).await;
    kill("-KILL", second);
    assert!(wait_for(Duration::from_secs(20), || gone(second)));
    let _ = cli.kill();
    let _ = cli.wait();
    // Its VMs die with it (PR_SET_PDEATHSIG); its files and cgroups stay.
    assert!(wait_for(Duration::from_secs(20), || qemus(&bus) == 0));
    let after_kill = leftovers(&bus, runtime.path(), &[second]);

    // Act 3: a restart (activated by a call) removes them; then it stops.
    let restarted = running_tasks(&bus).await;
    let third = bus.daemon_pid().expect("vitrined restarted");
    // The restarted daemon's own pool VM has files too: count the killed
    // daemon's only (its folder is named `<pid>-<start time>`).
    let killed_folder = format!("{second}-");
    let cleaned = wait_for(Duration::from_secs(20), || {
        cgroups_of(second).is_empty()
            && entries_below(&runtime.path().join("vitrine"))
                .iter()
                .all(|p| {
                    !p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&killed_folder)
                })
    });
    kill("-TERM", third);
    assert!(wait_for(Duration::from_secs(20), || gone(third)));
    let at_end = leftovers(&bus, runtime.path(), &[first, second, third]);

    // Assert
    loud(&format!(
        "{test}: entries before {}, during the first task {}, after SIGTERM {}, after SIGKILL \
         {}, after the restart and its SIGTERM {}",
        before.len(),
        during.len(),
        after_term.len(),
        after_kill.len(),
        at_end.len()
    ));
    assert_eq!(before, Vec::<PathBuf>::new());
    assert!(
        during.iter().any(|p| p.starts_with("/sys/fs/cgroup")),
        "no cgroup named after vitrined {first} during its task: {during:#?}"
    );
    assert!(stopped, "vitrined {first} outlived SIGTERM by 20 s");
    assert_eq!(after_term, Vec::<PathBuf>::new(), "left after SIGTERM");
    assert!(
        !after_kill.is_empty(),
        "SIGKILL left nothing: the restart's cleanup is not tested"
    );
    assert_eq!(restarted, 0);
    assert!(
        cleaned,
        "the restarted daemon did not remove what SIGKILL left"
    );
    assert_eq!(at_end, Vec::<PathBuf>::new(), "left at the end");
}
