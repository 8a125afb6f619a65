//! `vitrine run` and the life of its task, through a private bus and the
//! real `vitrined` with a QEMU guest: the CLI notices at once when the
//! daemon stops under it, killing the CLI cancels its task (and the VM goes),
//! and `--detach` leaves the task running.
//!
//! Needs dbus, gcc + libc6-dev, QEMU and the guest image; each missing piece
//! prints a SKIPPED line.

mod dbus_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dbus_support::{
    example_policy, image_or_skip, loud, manager_proxy, static_program, tool_or_skip, PrivateBus,
};
use zbus::zvariant::OwnedObjectPath;

const FOREVER_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    for (unsigned long i = 0;; i++) { printf("still running %lu\n", i); fflush(stdout); usleep(100000); }
}
"#;

type TaskRow = (OwnedObjectPath, String, String, String, String);

/// A private bus whose daemon runs the example policy and the guest image,
/// and a program that prints forever; `None` after a SKIPPED line.
fn setup(test: &str) -> Option<(PrivateBus, PathBuf, tempfile::TempDir)> {
    let image = image_or_skip(test)?;
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    let program = static_program(test, "forever", FOREVER_C, work.path())?;
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--no-windows".as_ref(),
        ],
        &[],
    );
    Some((bus, program, work))
}

/// `vitrine ARGS` started in the background, its output captured.
fn spawn_vitrine(bus: &PrivateBus, args: &[&str], program: &Path) -> Child {
    bus.command(env!("CARGO_BIN_EXE_vitrine"))
        .args(args)
        .arg(program)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn tasks(bus: &PrivateBus) -> Vec<TaskRow> {
    let connection = bus.connect().await;
    manager_proxy(&connection)
        .await
        .call("ListTasks", &())
        .await
        .unwrap()
}

/// Waits until a task other than `earlier` is `running` and its VM process
/// is up; returns the task's row and the VM's pid.
async fn running_task(bus: &PrivateBus, earlier: &[OwnedObjectPath]) -> (TaskRow, u32) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let mut rows = tasks(bus).await;
        rows.retain(|r| !earlier.contains(&r.0));
        let vms: Vec<u32> = bus
            .daemon_children()
            .into_iter()
            .filter(|(_, name)| name.starts_with("qemu"))
            .map(|(pid, _)| pid)
            .collect();
        if let (Some(row), [vm]) = (rows.iter().find(|r| r.3 == "running"), vms.as_slice()) {
            return (row.clone(), *vm);
        }
        assert!(
            rows.iter().all(|r| r.3 != "finished"),
            "a task finished early: {rows:?}"
        );
        assert!(Instant::now() < deadline, "no running task: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to `limit` for `child` to exit; its status and how long it took.
fn exit_within(child: &mut Child, limit: Duration) -> Option<(ExitStatus, Duration)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status, start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn kill(signal: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal} {pid}");
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn stderr_of(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exits_within_two_seconds_with_a_message_when_vitrined_stops_mid_task() {
    let test = "cli_exits_within_two_seconds_with_a_message_when_vitrined_stops_mid_task";
    let Some((bus, program, _work)) = setup(test) else {
        return;
    };
    let mut cli = spawn_vitrine(&bus, &["run"], &program);
    let (row, vm) = running_task(&bus, &[]).await;
    let daemon = bus.daemon_pid().expect("vitrined runs");

    // Act
    kill("-TERM", daemon);
    let ended = exit_within(&mut cli, Duration::from_secs(10));

    // Assert
    let _ = cli.kill();
    if !gone(vm) {
        // Leftovers of a stopped daemon are another test's subject.
        let _ = Command::new("kill").args(["-9", &vm.to_string()]).status();
    }
    let output = stderr_of(cli);
    loud(&format!("{test}: {row:?} -> {ended:?}\n{output}"));
    let (status, took) = ended.expect("vitrine still waits 10 s after vitrined stopped");
    assert!(took < Duration::from_secs(2), "took {took:?}\n{output}");
    assert_eq!(status.code(), Some(1), "{output}");
    let n = row.0.as_str().rsplit('/').next().unwrap().to_owned();
    assert!(
        output.contains(&format!(
            "vitrine: error: vitrined stopped before task {n} finished (org.vitrine.Sandbox1 lost \
             its owner): the task and its result are lost; run the command again"
        )),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_cli_cancels_its_task_and_its_vm_goes() {
    let test = "killing_the_cli_cancels_its_task_and_its_vm_goes";
    let Some((bus, program, _work)) = setup(test) else {
        return;
    };
    let mut earlier = Vec::new();
    for (signal, name, code) in [("-TERM", "SIGTERM", 143), ("-INT", "SIGINT", 130)] {
        let mut cli = spawn_vitrine(&bus, &["run"], &program);
        let (row, vm) = running_task(&bus, &earlier).await;
        earlier.push(row.0.clone());

        // Act
        kill(signal, cli.id());
        let ended = exit_within(&mut cli, Duration::from_secs(10));

        // Assert
        let _ = cli.kill();
        let output = stderr_of(cli);
        let (status, took) = ended.expect("vitrine outlived its signal");
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let rows = tasks(&bus).await;
            let now = rows.into_iter().find(|r| r.0 == row.0).unwrap();
            if now.3 == "finished" || Instant::now() > deadline {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        loud(&format!(
            "{test}: {name}: exit {status} in {took:?}; {after:?}\n{output}"
        ));
        assert_eq!(status.code(), Some(code), "{output}");
        let n = row.0.as_str().rsplit('/').next().unwrap().to_owned();
        assert!(
            output.contains(&format!("vitrine: stopped by {name}: task {n} cancelled")),
            "{output}"
        );
        assert_eq!(
            (after.3.as_str(), after.4.as_str()),
            ("finished", "cancelled")
        );
        assert!(gone(vm), "QEMU pid {vm} outlived the cancel");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_task_outlives_the_cli_until_cancelled() {
    let test = "detached_task_outlives_the_cli_until_cancelled";
    let Some((bus, program, _work)) = setup(test) else {
        return;
    };

    // Act
    let out = bus
        .command(env!("CARGO_BIN_EXE_vitrine"))
        .args(["run", "--detach"])
        .arg(&program)
        .output()
        .unwrap();
    let (row, vm) = running_task(&bus, &[]).await;

    // Assert
    let report = dbus_support::text(&out);
    assert!(out.status.success(), "{report}");
    let n = row.0.as_str().rsplit('/').next().unwrap().to_owned();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("task      {n} started, detached")),
        "{report}"
    );
    let cancel = bus.vitrine(&["cancel".as_ref(), n.as_ref()]);
    assert!(cancel.status.success(), "{}", dbus_support::text(&cancel));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(vm) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone(vm), "QEMU pid {vm} outlived the cancel");
}
