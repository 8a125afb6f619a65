//! Ten tasks at once: ten `OpenFile` calls in a row, each its own QEMU
//! guest (TCG) rendering the PDF fixture into its own PNG folder; all ten
//! finish clean with three pages each, and no VM is left. On a 2-core host
//! this takes one to two minutes.
//!
//! Needs dbus, QEMU and the guest image; each missing piece prints a
//! SKIPPED line.

mod dbus_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dbus_support::{
    example_policy, image_or_skip, loud, manager_proxy, manager_signals, repo, task_proxy,
    tool_or_skip, wait_finished, PrivateBus,
};
use vitrine_daemon::pages::PageImage;
use zbus::zvariant::{Fd, OwnedObjectPath, Value};

const TASKS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_pdf_tasks_at_once_all_render_and_leave_no_vm() {
    let test = "ten_pdf_tasks_at_once_all_render_and_leave_no_vm";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
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
    let out = tempfile::tempdir().unwrap();
    let pdf = repo().join("shim/fixtures/three-pages.pdf");
    let connection = bus.connect().await;
    let mut signals = manager_signals(&connection).await;
    let manager = manager_proxy(&connection).await;

    // Act: every call returns at once; the work runs behind it.
    let started = Instant::now();
    let mut tasks: Vec<OwnedObjectPath> = Vec::new();
    for n in 0..TASKS {
        let file = std::fs::File::open(&pdf).unwrap();
        let dir = out.path().join(format!("task-{n}"));
        let mut options: HashMap<&str, Value<'_>> = HashMap::new();
        options.insert("png-dir", Value::from(dir.to_str().unwrap().to_owned()));
        let task: OwnedObjectPath = manager
            .call("OpenFile", &(Fd::from(&file), "three-pages.pdf", options))
            .await
            .unwrap();
        tasks.push(task);
    }
    let calls_took = started.elapsed();
    let listed: Vec<(OwnedObjectPath, String, String, String, String)> =
        manager.call("ListTasks", &()).await.unwrap();
    let mut verdicts = Vec::new();
    for task in &tasks {
        let proxy = task_proxy(&connection, task.as_str()).await;
        let v: String = proxy.get_property("Verdict").await.unwrap();
        let v = if v.is_empty() {
            wait_finished(&connection, &mut signals, task, Duration::from_secs(240)).await
        } else {
            v
        };
        verdicts.push(v);
    }
    let all_took = started.elapsed();

    // Assert
    loud(&format!(
        "{test}: {TASKS} calls answered in {calls_took:?}; all finished after {all_took:?}"
    ));
    assert_eq!(listed.len(), TASKS);
    assert!(
        calls_took < Duration::from_secs(10),
        "calls blocked: {calls_took:?}"
    );
    assert!(verdicts.iter().all(|v| v == "clean"), "{verdicts:?}");
    for n in 0..TASKS {
        let dir = out.path().join(format!("task-{n}"));
        for page in 2..=3 {
            assert!(
                dir.join(format!("page-{page}.png")).is_file(),
                "task {n} page {page}"
            );
        }
        // Decoding is slow in a debug build: one page per task is enough.
        let png = PageImage::read_png(&dir.join("page-1.png"))
            .unwrap_or_else(|e| panic!("task {n} page 1: {e}"));
        assert!(png.ink_fraction() > 0.01, "task {n} page 1 is blank");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bus.daemon_children().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        bus.daemon_children().is_empty(),
        "{:?}",
        bus.daemon_children()
    );
}
