//! A task cancelled mid-render: a program that prints forever runs in a
//! QEMU guest, its first frame arrives, `busctl` calls the task's `Cancel`,
//! and the task finishes as `cancelled` with its VM process gone.
//!
//! Needs dbus, systemd (busctl), gcc + libc6-dev, QEMU and the guest image;
//! each missing piece prints a SKIPPED line.

mod dbus_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dbus_support::{
    example_policy, image_or_skip, loud, manager_proxy, manager_signals, static_program,
    task_proxy, text, tool_or_skip, wait_finished, PrivateBus,
};
use zbus::zvariant::{Fd, OwnedObjectPath, Value};

const FOREVER_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    for (unsigned long i = 0;; i++) { printf("still rendering %lu\n", i); fflush(stdout); usleep(100000); }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_cancelled_mid_render_ends_cancelled_and_its_vm_is_gone() {
    let test = "task_cancelled_mid_render_ends_cancelled_and_its_vm_is_gone";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    if !tool_or_skip(test, "dbus-daemon", "dbus") || !tool_or_skip(test, "busctl", "systemd") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(program) = static_program(test, "forever", FOREVER_C, work.path()) else {
        return;
    };
    // Arrange
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
    let connection = bus.connect().await;
    let mut signals = manager_signals(&connection).await;
    let manager = manager_proxy(&connection).await;
    let file = std::fs::File::open(&program).unwrap();
    let task: OwnedObjectPath = manager
        .call(
            "RunProgram",
            &(
                Fd::from(&file),
                Vec::<String>::new(),
                HashMap::<&str, Value<'_>>::new(),
            ),
        )
        .await
        .unwrap();
    let proxy = task_proxy(&connection, task.as_str()).await;
    // Wait for the first frame: the program is running and rendering.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let timings: HashMap<String, u64> = proxy.get_property("Timings").await.unwrap();
        if timings.contains_key("first-frame") {
            break;
        }
        let verdict: String = proxy.get_property("Verdict").await.unwrap();
        assert!(verdict.is_empty(), "finished before rendering: {verdict}");
        assert!(Instant::now() < deadline, "no first frame");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vms_before: Vec<(u32, String)> = bus
        .daemon_children()
        .into_iter()
        .filter(|(_, name)| name.starts_with("qemu"))
        .collect();

    // Act
    let cancelled_at = Instant::now();
    let out = bus.busctl(
        &[
            "call",
            "org.vitrine.Sandbox1",
            task.as_str(),
            "org.vitrine.Sandbox1.Task",
            "Cancel",
        ],
        None,
    );
    let verdict = wait_finished(&connection, &mut signals, &task, Duration::from_secs(30)).await;
    let took = cancelled_at.elapsed();

    // Assert
    assert!(out.status.success(), "{}", text(&out));
    loud(&format!(
        "{test}: VMs before {vms_before:?}; cancelled -> {verdict:?} in {took:?}"
    ));
    assert_eq!(vms_before.len(), 1, "{vms_before:?}");
    assert_eq!(verdict, "cancelled");
    let (pid, _) = vms_before[0];
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU pid {pid} outlived the cancel"
    );
    assert!(
        bus.daemon_children().is_empty(),
        "{:?}",
        bus.daemon_children()
    );
}
