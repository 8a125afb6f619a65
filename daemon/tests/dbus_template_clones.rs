//! Through D-Bus, with the QEMU backend and no warm pool: every task VM is
//! a clone of the `document` shape's template, cloned on demand. The same
//! PDF opened twice runs in two clones that map one template's RAM (the
//! same memfd inode in each QEMU's /proc/PID/maps), that drew different
//! random bytes after their reseed and set their clocks to the host's; the
//! template's files do not change.
//!
//! Needs dbus, QEMU and the guest image; each missing piece prints SKIPPED.

mod dbus_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dbus_support::{
    example_policy, image_or_skip, loud, repo, shared_template_dir, text, tool_or_skip, PrivateBus,
};

/// `(device, inode)` of the template memfd a QEMU maps, and whether the
/// mapping is private.
type Mapping = ((String, u64), bool);

fn template_mapping(pid: u32) -> Option<Mapping> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let name = f.get(5..)?.join(" ");
        name.starts_with("/memfd:vitrine-template ").then(|| {
            (
                (f[3].to_owned(), f[4].parse().unwrap_or(0)),
                f[1].ends_with('p'),
            )
        })
    })
}

/// The hex after `label` in `out`.
fn word_after<'a>(out: &'a str, label: &str) -> &'a str {
    let at = out
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in:\n{out}"));
    out[at + label.len()..]
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()
        .unwrap_or("")
}

fn fingerprints(dir: &Path) -> BTreeMap<PathBuf, (String, SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .flat_map(|e| ["memory", "state", "template.json"].map(|f| e.path().join(f)))
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let sum = ring::digest::digest(&ring::digest::SHA256, &bytes);
            let hex: String = sum.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, (hex, mtime))
        })
        .collect()
}

#[test]
fn two_opens_run_in_clones_of_one_template_with_their_own_randomness_and_clock() {
    let test = "two_opens_run_in_clones_of_one_template_with_their_own_randomness_and_clock";
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let Some(image) = image_or_skip(test) else {
        return;
    };
    // Arrange: a daemon that clones on demand, and a watcher that reads the
    // maps of every QEMU below it while it lives.
    let work = tempfile::tempdir().unwrap();
    let pdf = repo().join("shim/fixtures/three-pages.pdf");
    let bus = Arc::new(PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--no-windows".as_ref(),
            "--warm-pool".as_ref(),
            "0".as_ref(),
        ],
        &[],
    ));
    let seen: Arc<Mutex<BTreeMap<u32, Mapping>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (bus, seen, stop) = (Arc::clone(&bus), Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (pid, name) in bus.daemon_children() {
                    if name.starts_with("qemu") {
                        if let Some(m) = template_mapping(pid) {
                            seen.lock().unwrap().entry(pid).or_insert(m);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let open = |dir: &str| {
        let out = bus.vitrine(&[
            "open".as_ref(),
            "--png".as_ref(),
            work.path().join(dir).as_os_str(),
            pdf.as_os_str(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let details = |out: &str| {
        let task = word_after(out, "task      ");
        let path = format!("/org/vitrine/Sandbox1/task/{task}");
        bus.task_details(&path)
    };

    // Act: the first open makes the template (or finds it), the second
    // clones the same one.
    let first = open("first");
    let first_details = details(&first);
    let templates = shared_template_dir();
    let before = fingerprints(&templates);
    let called = Instant::now();
    let second = open("second");
    let second_took = called.elapsed();
    let second_details = details(&second);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let after = fingerprints(&templates);

    // Assert
    loud(&format!(
        "{test}: first:\n{first}\nsecond ({second_took:?}):\n{second}\nidentities:\n{}\n{}",
        first_details.get("identity").cloned().unwrap_or_default(),
        second_details.get("identity").cloned().unwrap_or_default()
    ));
    for out in [&first, &second] {
        assert!(out.contains("verdict   clean"), "{out}");
        assert!(out.contains("vm        cloned from template "), "{out}");
    }
    let template_a = word_after(&first, "cloned from template");
    let template_b = word_after(&second, "cloned from template");
    assert_eq!(template_a, template_b, "both from one template");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() >= 2,
        "the maps of both clones were read: {seen:?}"
    );
    let inodes: BTreeSet<_> = seen.values().map(|(m, _)| m.clone()).collect();
    assert_eq!(
        inodes.len(),
        1,
        "both QEMUs map one template memfd: {seen:?}"
    );
    assert!(
        seen.values().all(|(_, private)| *private),
        "mapped MAP_PRIVATE: {seen:?}"
    );
    let identity = |d: &BTreeMap<String, String>| d.get("identity").cloned().unwrap_or_default();
    let (id_a, id_b) = (identity(&first_details), identity(&second_details));
    let digest = |s: &str| word_after(s, "first random bytes hash").to_owned();
    assert_eq!(digest(&id_a).len(), 64, "{id_a}");
    assert_ne!(
        digest(&id_a),
        digest(&id_b),
        "two clones drew the same random bytes"
    );
    for id in [&id_a, &id_b] {
        let skew: i64 = word_after(id, "guest clock")
            .trim_start_matches('+')
            .parse()
            .unwrap_or_else(|_| panic!("no clock skew in {id}"));
        assert!(
            skew.abs() < 2000,
            "the clone's clock is {skew} ms from the host's: {id}"
        );
    }
    assert_eq!(before, after, "a clone changed the template's files");
    assert!(
        !before.is_empty(),
        "the template is in {}",
        templates.display()
    );
}
