//! End to end, as a user meets it: a downloaded program carries the
//! untrusted mark; running it from a shell fails with EPERM because the real
//! `vitrine-guard` (fanotify, on a tmpfs this test mounts) denies the exec;
//! the user's `vitrined` (activated on a private bus, QEMU backend, guest
//! image) runs it in a VM instead, its terminal viewer opens on Xvfb, and
//! dunst, a real notification daemon, shows "Sandboxed: NAME". The program's
//! exit code comes back from the guest. The same program without the mark
//! runs on the host.
//!
//! Needs root (fanotify and mount), dbus, Xvfb, xdotool, dunst, gcc +
//! libc6-dev, QEMU and the guest image; each missing piece prints a
//! SKIPPED line.

mod dbus_support;
mod guard_support;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dbus_support::{
    example_policy, image_or_skip, loud, manager_proxy, manager_signals, static_program,
    task_proxy, tool_or_skip, wait_finished, PrivateBus, Xvfb,
};
use guard_support::{root_or_skip, set_xattr, RunningGuard, Tmpfs};
use zbus::zvariant::OwnedObjectPath;

const TEST: &str = "a_program_the_guard_denies_runs_in_a_vm_and_the_user_is_told";

/// Says where it ran and ends with a code the test looks for.
const PROGRAM_C: &str = r#"
#include <stdio.h>
int main(void) {
    printf("setup-tool ran here\n");
    return 7;
}
"#;

/// A child process killed when the test ends, pass or fail.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connections to the unix socket at `path` (the listener counts one).
fn socket_entries(path: &Path) -> usize {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let path = path.to_string_lossy();
    table
        .lines()
        .filter(|l| l.split_whitespace().nth(7) == Some(&*path))
        .count()
}

fn dunstctl(bus: &PrivateBus, display: &str, args: &[&str]) -> String {
    let out = bus
        .command("dunstctl")
        .args(args)
        .env("DISPLAY", display)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_the_guard_denies_runs_in_a_vm_and_the_user_is_told() {
    if !root_or_skip(TEST) {
        return;
    }
    if !tool_or_skip(TEST, "dbus-daemon", "dbus")
        || !tool_or_skip(TEST, "Xvfb", "xvfb")
        || !tool_or_skip(TEST, "xdotool", "xdotool")
        || !tool_or_skip(TEST, "dunst", "dunst")
    {
        return;
    }
    let Some(image) = image_or_skip(TEST) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let Some(program) = static_program(TEST, "setup-tool", PROGRAM_C, work.path()) else {
        return;
    };
    let Some(tmpfs) = Tmpfs::mount(TEST) else {
        return;
    };
    let watched = &tmpfs.mnt;

    // Arrange: the guard on the tmpfs, the program twice on it, one marked.
    let socket = work.path().join("guard.sock");
    let config = tmpfs.config(work.path(), "interpreters = []\n");
    let binary = Path::new(env!("CARGO_BIN_EXE_vitrine-guard"));
    let Some(guard) = RunningGuard::start(TEST, binary, &config, &socket) else {
        return;
    };
    let marked = watched.join("setup-tool");
    let plain = watched.join("plain-tool");
    for copy in [&marked, &plain] {
        std::fs::copy(&program, copy).unwrap();
    }
    set_xattr(&marked, "user.vitrine.untrusted", b"1");

    let x = Xvfb::start();
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--guard-socket".as_ref(),
            socket.as_os_str(),
        ],
        &[
            ("DISPLAY", OsStr::new(&x.display)),
            (
                "VITRINE_VIEWER",
                env!("CARGO_BIN_EXE_vitrine-viewer").as_ref(),
            ),
        ],
    );
    let dunst = Killed(
        bus.command("dunst")
            .env("DISPLAY", &x.display)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let connection = bus.connect().await;
    let dbus = zbus::fdo::DBusProxy::new(&connection).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dbus
        .name_has_owner("org.freedesktop.Notifications".try_into().unwrap())
        .await
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "dunst never took its bus name");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut signals = manager_signals(&connection).await;
    let manager = manager_proxy(&connection).await;
    // Activates the daemon, which then subscribes to the guard.
    let _: Vec<(OwnedObjectPath, String, String, String, String)> =
        manager.call("ListTasks", &()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket_entries(&socket) < 2 {
        assert!(
            Instant::now() < deadline,
            "vitrined never connected to the guard; guard log: {}",
            guard.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Act: run both from "a shell" on the host.
    let unmarked_run = Command::new(&plain).output().unwrap();
    let marked_run = Command::new(&marked).output();

    // Assert: the host runs the plain one and refuses the marked one ...
    assert_eq!(unmarked_run.status.code(), Some(7), "{unmarked_run:?}");
    assert_eq!(
        String::from_utf8_lossy(&unmarked_run.stdout),
        "setup-tool ran here\n"
    );
    let refused = marked_run.expect_err("the marked program ran on the host");
    assert_eq!(refused.raw_os_error(), Some(libc::EPERM), "{refused}");

    // ... which runs in a VM instead,
    let deadline = Instant::now() + Duration::from_secs(30);
    let task = loop {
        let tasks: Vec<(OwnedObjectPath, String, String, String, String)> =
            manager.call("ListTasks", &()).await.unwrap();
        if let Some(t) = tasks.into_iter().find(|t| t.2 == "setup-tool") {
            break t.0;
        }
        assert!(
            Instant::now() < deadline,
            "no task for the denied program; guard log: {}",
            guard.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let started = Instant::now();
    let verdict = wait_finished(&connection, &mut signals, &task, Duration::from_secs(240)).await;
    let proxy = task_proxy(&connection, task.as_str()).await;
    let details: HashMap<String, String> = proxy.get_property("Details").await.unwrap();
    loud(&format!(
        "{TEST}: task {task} -> {verdict:?} in {:?}; program-exit {:?}; intercepted {:?}",
        started.elapsed(),
        details.get("program-exit"),
        details.get("intercepted")
    ));
    assert_eq!(verdict, "exited: code 7", "{details:?}");
    assert_eq!(
        details.get("program-exit").map(String::as_str),
        Some("code Some(7), signal None"),
        "the program's exit code comes back from the guest"
    );
    let intercepted = details.get("intercepted").expect("an intercepted detail");
    assert!(
        intercepted.contains(&*marked.to_string_lossy()),
        "{intercepted}"
    );
    assert!(
        intercepted.contains("user.vitrine.untrusted"),
        "{intercepted}"
    );
    // ... with its terminal viewer,
    let found = bus
        .command("xdotool")
        .env("DISPLAY", &x.display)
        .args(["search", "--name", "setup-tool"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&found.stdout).trim().is_empty(),
        "no viewer window names the program"
    );
    // ... and the user is told, by the desktop's notification daemon.
    dunstctl(&bus, &x.display, &["close-all"]);
    let history = dunstctl(&bus, &x.display, &["history"]);
    assert!(
        history.contains("Sandboxed: setup-tool"),
        "dunst's history: {history}"
    );
    assert!(history.contains("Operation not permitted"), "{history}");
    assert!(history.contains(task.as_str()), "{history}");
    drop(dunst);
}
