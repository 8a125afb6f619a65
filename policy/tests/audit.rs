//! The audit log: JSON lines with the policy version, rotation by size, and
//! a full queue that drops (and counts) records instead of blocking.

mod fixture;

use fixture::*;
use serde_json::Value;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;
use vitrine_policy::{AuditConfig, AuditLog, PolicySet};

fn example_policy() -> PolicySet {
    PolicySet::load_dir(&example_dir()).unwrap()
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn every_decision_is_an_appended_json_line_with_the_policy_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let policy = example_policy();
    let pdf = open_file("application/pdf", "/home/a/Downloads/x.pdf", DOWNLOADS);
    let link = open_uri("https://en.wikipedia.org/wiki/Glass");
    let log = AuditLog::open(AuditConfig::new(&path)).unwrap();

    for req in [&pdf, &link] {
        log.record(req, &policy.evaluate(req));
    }
    drop(log);

    let lines = read_lines(&path);
    assert_eq!(lines.len(), 2);
    let first = &lines[0];
    assert_eq!(first["event"], "decision");
    assert_eq!(first["policy_version"], policy.version().hex());
    assert_eq!(first["verdict"], "sandbox");
    assert_eq!(first["profile"]["name"], "document");
    assert_eq!(first["rule"]["name"], "pdf");
    assert_eq!(first["rule"]["file"], "50-documents.toml");
    assert_eq!(first["request"]["path"], "/home/a/Downloads/x.pdf");
    assert_eq!(first["request"]["origin"], serde_json::json!(["downloads"]));
    let ts = first["ts"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
    assert_eq!(lines[1]["request"]["host"], "en.wikipedia.org");
    assert_eq!(lines[1]["profile"]["name"], "web");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the audit log is private");
}

#[test]
fn log_rotates_by_size_and_keeps_the_configured_number_of_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let policy = example_policy();
    let req = open_file("text/plain", "/t/a.txt", LOCAL);
    let decision = policy.evaluate(&req);
    let log = AuditLog::open(AuditConfig {
        max_bytes: 4096,
        keep: 2,
        ..AuditConfig::new(&path)
    })
    .unwrap();

    for _ in 0..60 {
        log.record(&req, &decision);
    }
    drop(log);

    let rotated = |n: u32| dir.path().join(format!("audit.jsonl.{n}"));
    assert!(rotated(1).is_file() && rotated(2).is_file());
    assert!(!rotated(3).exists(), "only `keep` rotated files are kept");
    for p in [path.clone(), rotated(1), rotated(2)] {
        assert!(
            std::fs::metadata(&p).unwrap().len() <= 4096,
            "{} is over the limit",
            p.display()
        );
        assert!(!read_lines(&p).is_empty());
    }
}

#[test]
fn a_stalled_writer_never_blocks_decisions_and_counts_what_it_drops() {
    // The log is a FIFO that nobody reads at first: the writer thread
    // blocks once the pipe is full, exactly like a hung disk.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::open(&fifo).unwrap();
            go_rx.recv().unwrap();
            let mut all = String::new();
            f.read_to_string(&mut all).unwrap();
            all
        })
    };
    let log = AuditLog::open(AuditConfig {
        queue: 8,
        ..AuditConfig::new(&fifo)
    })
    .unwrap();
    let policy = example_policy();
    const DECISIONS: u64 = 20_000;

    // Decide in another thread so that a regression shows up as a failure,
    // not as a hung test.
    let (done_tx, done_rx) = mpsc::channel();
    let log = std::sync::Arc::new(log);
    let decider = {
        let log = log.clone();
        std::thread::spawn(move || {
            let req = open_file("application/pdf", "/home/a/x.pdf", LOCAL);
            for _ in 0..DECISIONS {
                log.record(&req, &policy.evaluate(&req));
            }
            done_tx.send(()).unwrap();
        })
    };
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("recording decisions blocked on a stalled audit writer");
    assert!(log.dropped() > 0, "the queue should have overflowed");

    decider.join().unwrap();
    go_tx.send(()).unwrap();
    let log = std::sync::Arc::into_inner(log).unwrap();
    drop(log);
    let text = reader.join().unwrap();

    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decisions = lines.iter().filter(|l| l["event"] == "decision").count() as u64;
    let dropped: u64 = lines
        .iter()
        .filter(|l| l["event"] == "audit-records-dropped")
        .map(|l| l["count"].as_u64().unwrap())
        .sum();
    assert!(dropped > 0, "the log itself must say records were dropped");
    assert_eq!(
        decisions + dropped,
        DECISIONS,
        "every decision is either logged or counted"
    );
}

#[test]
fn a_symlink_in_place_of_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    let path = dir.path().join("audit.jsonl");
    std::os::unix::fs::symlink(&target, &path).unwrap();

    let err = AuditLog::open(AuditConfig::new(&path)).unwrap_err();

    assert!(err.to_string().contains("cannot open audit log"), "{err}");
    assert!(!target.exists());
}
