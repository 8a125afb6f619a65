//! `vitrine templates`: `rebuild` makes the `document` shape's template
//! with a real template VM (QEMU, TCG, jailed), `list` shows it current,
//! and `prune` removes a stale template (made from another image) and a
//! broken one, but keeps the current one.
//!
//! Needs QEMU and the guest image; without them it prints SKIPPED.

use std::path::Path;
use std::process::{Command, Output};

use vitrine_daemon::fresh_guest::qemu_installed;
use vitrine_daemon::image_cache;

fn templates(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .arg("templates")
        .args(args)
        .env("VITRINE_TEMPLATE_DIR", cache)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rebuild_makes_a_current_template_and_prune_removes_only_stale_and_broken_ones() {
    let test = "rebuild_makes_a_current_template_and_prune_removes_only_stale_and_broken_ones";
    if !qemu_installed() {
        eprintln!("SKIPPED {test}: qemu-system-x86_64 not found (apt-get install qemu-system-x86)");
        return;
    }
    if let Err(e) = image_cache::locate(None) {
        eprintln!("SKIPPED {test}: {e}");
        return;
    }
    // Arrange: a real template, then a stale copy and a broken one.
    let cache = tempfile::tempdir().unwrap();
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/examples/policy.d");
    let made = stdout(&templates(
        cache.path(),
        &[
            "rebuild",
            "--profile",
            "document",
            "--policy-dir",
            policy.to_str().unwrap(),
        ],
    ));
    let id = made.split_whitespace().nth(1).unwrap().to_owned();
    let current = cache.path().join(&id);
    let stale = cache.path().join("0000000000000000");
    std::fs::create_dir(&stale).unwrap();
    for f in ["memory", "state"] {
        std::fs::copy(current.join(f), stale.join(f)).unwrap();
    }
    let json = std::fs::read_to_string(current.join("template.json")).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&json).unwrap();
    meta["key"]["image_sha256"] = "ab".repeat(32).into();
    std::fs::write(stale.join("template.json"), meta.to_string()).unwrap();
    let broken = cache.path().join("1111111111111111");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("template.json"), "{ not json").unwrap();

    // Act
    let listed = stdout(&templates(cache.path(), &["list"]));
    let pruned = stdout(&templates(cache.path(), &["prune"]));

    // Assert
    eprintln!("{test}:\n{made}\n{listed}\n{pruned}");
    assert!(made.contains("made in"), "{made}");
    let line = |id: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not listed:\n{listed}"))
            .to_owned()
    };
    assert!(line(&id).ends_with("current"), "{listed}");
    assert!(line(&id).contains("512 MiB"), "{listed}");
    assert!(
        line("0000000000000000").contains("stale: made from another guest image"),
        "{listed}"
    );
    assert!(line("1111111111111111").contains("broken"), "{listed}");
    assert!(
        current.join("template.json").is_file(),
        "the current template stays"
    );
    assert!(!stale.exists() && !broken.exists(), "{pruned}");
    assert!(pruned.contains("templates 2 removed"), "{pruned}");
}
