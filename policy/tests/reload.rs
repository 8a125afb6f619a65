//! Hot reload: a running evaluator sees a changed policy; a broken change
//! is rejected and the old policy stays in force.

mod fixture;

use fixture::*;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vitrine_policy::{PolicyHandle, PolicySet, PolicyStore, PolicyWatcher, ReloadEvent, Verdict};

const WAIT: Duration = Duration::from_secs(10);

fn rule(decision: &str) -> String {
    format!("[[rule]]\naction = \"open-file\"\ndecision = \"{decision}\"\n")
}

fn watch(dir: &Path, handle: &Arc<PolicyHandle>) -> (PolicyWatcher, mpsc::Receiver<ReloadEvent>) {
    let (tx, rx) = mpsc::channel();
    let watcher = PolicyWatcher::spawn(dir, handle.clone(), move |ev| {
        let _ = tx.send(ev.clone());
    })
    .unwrap();
    (watcher, rx)
}

/// The next event that is not `Unchanged`.
fn next_change(rx: &mpsc::Receiver<ReloadEvent>) -> ReloadEvent {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ReloadEvent::Unchanged { .. }) => continue,
            Ok(ev) => return ev,
            Err(_) => panic!("no reload event within {WAIT:?}"),
        }
    }
}

/// Replace a file the way editors and config tools do: write, then rename.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn hot_reload_is_visible_to_a_running_evaluator() {
    let dir = policy_dir(&[("50-rules.toml", &rule("deny"))]);
    let handle = Arc::new(PolicyHandle::new(PolicySet::load_dir(dir.path()).unwrap()));
    let (_watcher, events) = watch(dir.path(), &handle);
    let evaluator = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            let req = open_file("text/plain", "/t/a.txt", LOCAL);
            let deadline = Instant::now() + WAIT;
            let mut decisions = 0u64;
            while Instant::now() < deadline {
                decisions += 1;
                if handle.evaluate(&req).verdict == Verdict::Host {
                    return Some(decisions);
                }
            }
            None
        })
    };

    replace_file(&dir.path().join("50-rules.toml"), &rule("host"));

    let ReloadEvent::Applied { from, to } = next_change(&events) else {
        panic!("the new policy should be applied");
    };
    assert_ne!(from, to);
    let decisions = evaluator
        .join()
        .unwrap()
        .expect("the evaluator never saw the new policy");
    assert!(
        decisions > 1,
        "it was deciding with the old policy before the reload"
    );
    assert_eq!(handle.current().version(), to);
}

#[test]
fn broken_change_keeps_the_old_policy_and_is_reported() {
    let dir = policy_dir(&[("50-rules.toml", &rule("deny"))]);
    let handle = Arc::new(PolicyHandle::new(PolicySet::load_dir(dir.path()).unwrap()));
    let before = handle.current().version();
    let (_watcher, events) = watch(dir.path(), &handle);

    replace_file(
        &dir.path().join("50-rules.toml"),
        "[[rule]]\naction = \"open-file\"\ndecision = \n",
    );

    let ReloadEvent::Rejected { kept, diagnostics } = next_change(&events) else {
        panic!("the broken policy should be rejected");
    };
    assert_eq!(kept, before);
    assert!(
        diagnostics.to_string().contains("50-rules.toml:3:"),
        "{diagnostics}"
    );
    let req = open_file("text/plain", "/t/a.txt", LOCAL);
    assert_eq!(handle.evaluate(&req).verdict, Verdict::Deny);

    // Fixing the file is picked up too.
    replace_file(&dir.path().join("50-rules.toml"), &rule("host"));
    assert!(matches!(next_change(&events), ReloadEvent::Applied { .. }));
    assert_eq!(handle.evaluate(&req).verdict, Verdict::Host);
}

#[test]
fn apply_through_the_store_reaches_a_watching_daemon() {
    let root = tempfile::tempdir().unwrap();
    let link = root.path().join("policy.d");
    let (s1, s2) = (root.path().join("s1"), root.path().join("s2"));
    write_files(&s1, &[("50-rules.toml", &rule("deny"))]);
    write_files(&s2, &[("50-rules.toml", &rule("host"))]);
    let store = PolicyStore::new(&link);
    store.apply(&s1).unwrap();
    let handle = Arc::new(PolicyHandle::new(PolicySet::load_dir(&link).unwrap()));
    let (_watcher, events) = watch(&link, &handle);
    let req = open_file("text/plain", "/t/a.txt", LOCAL);

    let applied = store.apply(&s2).unwrap();
    assert!(
        matches!(next_change(&events), ReloadEvent::Applied { to, .. } if to == applied.active)
    );
    assert_eq!(handle.evaluate(&req).verdict, Verdict::Host);

    // The watch follows the symlink to the new version, so a rollback is
    // seen as well.
    let back = store.rollback().unwrap();
    assert!(matches!(next_change(&events), ReloadEvent::Applied { to, .. } if to == back.active));
    assert_eq!(handle.evaluate(&req).verdict, Verdict::Deny);
}

#[test]
fn policy_that_appears_after_a_fail_closed_start_is_loaded() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("policy.d");
    let (policy, problems) = PolicySet::load_or_fail_closed(&dir);
    assert!(problems.is_some());
    let handle = Arc::new(PolicyHandle::new(policy));
    let (_watcher, events) = watch(&dir, &handle);

    // Write the policy elsewhere and move it into place in one step.
    let staging = root.path().join("staging");
    write_files(&staging, &[("50-rules.toml", &rule("host"))]);
    std::fs::rename(&staging, &dir).unwrap();

    assert!(matches!(next_change(&events), ReloadEvent::Applied { .. }));
    assert!(!handle.current().is_fail_closed());
    assert_eq!(
        handle
            .evaluate(&open_file("text/plain", "/a", LOCAL))
            .verdict,
        Verdict::Host
    );
}
