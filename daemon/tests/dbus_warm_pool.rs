//! The warm pool on a private bus with the shipped policy: `vitrined
//! --warm-pool 1` clones a VM of the `document` profile's shape from its
//! template at start, the first PDF opened takes it, and the pool clones
//! the next one once that task has rendered, so the second PDF is warm
//! too. "Warm" must mean made before the call: the second task's VM waited
//! in the pool for the seconds between the calls. Each VM serves one task:
//! after both, the only QEMU left is the one waiting in the pool, and it
//! goes when the daemon does.
//!
//! Needs dbus, QEMU and the guest image; each missing piece prints SKIPPED.

mod dbus_support;

use std::path::Path;
use std::time::{Duration, Instant};

use dbus_support::{example_policy, image_or_skip, loud, repo, text, tool_or_skip, PrivateBus};

/// The number after `label` in `out` ("boot to Ready 2500 ms" → 2500).
fn number_after(out: &str, label: &str) -> u64 {
    let at = out
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in:\n{out}"));
    out[at + label.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in:\n{out}"))
}

fn qemus(bus: &PrivateBus) -> Vec<u32> {
    bus.daemon_children()
        .into_iter()
        .filter(|(_, name)| name.starts_with("qemu"))
        .map(|(pid, _)| pid)
        .collect()
}

fn open_pdf(bus: &PrivateBus, pdf: &Path, pages: &Path) -> String {
    let out = bus.vitrine(&[
        "open".as_ref(),
        "--png".as_ref(),
        pages.as_os_str(),
        pdf.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn documents_open_in_vms_booted_before_the_call_and_each_vm_serves_one_task() {
    let test = "documents_open_in_vms_booted_before_the_call_and_each_vm_serves_one_task";
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let Some(image) = image_or_skip(test) else {
        return;
    };
    // Arrange
    let work = tempfile::tempdir().unwrap();
    let pdf = repo().join("shim/fixtures/three-pages.pdf");
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--no-windows".as_ref(),
            "--warm-pool".as_ref(),
            "1".as_ref(),
        ],
        &[],
    );

    // Act: the first call also starts the daemon (activation), whose pool
    // then boots the document VM; the second comes once the pool refilled.
    let first = open_pdf(&bus, &pdf, &work.path().join("first"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while qemus(&bus).len() != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(4));
    let second = open_pdf(&bus, &pdf, &work.path().join("second"));
    std::thread::sleep(Duration::from_secs(1));
    let left = qemus(&bus);

    // Assert
    loud(&format!("{test}: first:\n{first}\nsecond:\n{second}"));
    for out in [&first, &second] {
        assert!(
            out.contains("vm        warm: cloned from template "),
            "{out}"
        );
    }
    let waited = number_after(&second, "never used, waited");
    assert!(
        waited >= 3000,
        "the second task's VM waited {waited} ms in the pool; it was made 4 s before the call"
    );
    for out in [&first, &second] {
        assert!(out.contains("verdict   clean"), "{out}");
        assert!(out.contains("pages     3"), "{out}");
    }
    assert_eq!(
        left.len(),
        1,
        "only the pool's next VM may be left: {left:?}"
    );

    // The daemon exits with its bus, and its waiting VM with it.
    drop(bus);
    let pooled = format!("/proc/{}", left[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&pooled).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !Path::new(&pooled).exists(),
        "the pooled VM outlived its daemon"
    );
}
