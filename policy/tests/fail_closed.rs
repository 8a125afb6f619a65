//! A missing or broken policy fails closed: everything is sandboxed with
//! the built-in strict profile, and the load says why.

mod fixture;

use fixture::*;
use std::os::unix::fs::PermissionsExt;
use vitrine_policy::{MatchedBy, PolicySet, PolicyVersion, Profile, Request, Verdict};

fn every_kind_of_request() -> Vec<Request> {
    vec![
        open_file("application/pdf", "/home/a/x.pdf", LOCAL),
        open_file("text/plain", "/usr/share/doc/x.txt", LOCAL),
        open_uri("https://intranet.example.org/"),
        run_program("application/x-executable", "/tmp/x", QUARANTINED),
    ]
}

fn assert_fails_closed(policy: &PolicySet) {
    assert!(policy.is_fail_closed());
    assert_eq!(policy.version(), PolicyVersion::FAIL_CLOSED);
    for req in every_kind_of_request() {
        let d = policy.evaluate(&req);
        assert_eq!(
            d.verdict,
            Verdict::Sandbox(std::sync::Arc::new(Profile::strict())),
            "{req:?}"
        );
        assert!(matches!(d.matched, MatchedBy::FailClosed { .. }));
        assert!(d.is_fail_closed());
    }
}

#[test]
fn missing_directory_fails_closed_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("policy.d");

    let (policy, problems) = PolicySet::load_or_fail_closed(&missing);

    assert_fails_closed(&policy);
    let problems = problems.expect("diagnostics for the missing directory");
    assert!(
        problems
            .to_string()
            .contains("cannot read policy directory"),
        "{problems}"
    );
    let reason = &policy.fail_closed_reason().unwrap().reason;
    assert!(reason.contains("policy.d"), "{reason}");
}

#[test]
fn broken_file_fails_the_whole_policy_closed_even_its_valid_rules() {
    // The valid file would host every text file; the broken one must not
    // leave that rule in force on its own.
    let dir = policy_dir(&[
        (
            "10-good.toml",
            "[[rule]]\naction = \"open-file\"\nmime = \"text/plain\"\ndecision = \"host\"\n",
        ),
        (
            "20-bad.toml",
            "[[rule]]\naction = \"open-uri\"\ndecision = \"sometimes\"\n",
        ),
    ]);

    let (policy, problems) = PolicySet::load_or_fail_closed(dir.path());

    assert_fails_closed(&policy);
    let problems = problems.unwrap().to_string();
    assert!(problems.contains("20-bad.toml:3:12: error"), "{problems}");
}

#[test]
fn empty_directory_fails_closed() {
    let dir = policy_dir(&[("README", "not a policy"), (".10-hidden.toml", "x")]);
    let (policy, problems) = PolicySet::load_or_fail_closed(dir.path());
    assert_fails_closed(&policy);
    assert!(problems
        .unwrap()
        .to_string()
        .contains("holds no *.toml policy files"));
}

#[test]
fn world_writable_policy_file_is_refused() {
    let dir = policy_dir(&[(
        "10-a.toml",
        "[[rule]]\naction = \"open-file\"\ndecision = \"deny\"\n",
    )]);
    let file = dir.path().join("10-a.toml");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();

    let (policy, problems) = PolicySet::load_or_fail_closed(dir.path());

    assert_fails_closed(&policy);
    let text = problems.unwrap().to_string();
    assert!(text.contains("is writable by every user"), "{text}");
    assert!(text.contains("chmod o-w"), "{text}");
}

#[test]
fn non_utf8_policy_file_is_refused() {
    let dir = policy_dir(&[]);
    std::fs::write(
        dir.path().join("10-a.toml"),
        b"[[rule]]\naction = \"\xff\"\n",
    )
    .unwrap();
    let d = PolicySet::load_dir(dir.path()).unwrap_err();
    assert!(
        d.to_string()
            .contains("is not UTF-8 (invalid byte at offset 19)"),
        "{d}"
    );
}

#[test]
fn other_files_in_the_directory_are_ignored() {
    let dir = policy_dir(&[
        (
            "10-a.toml",
            "[[rule]]\naction = \"open-file\"\ndecision = \"deny\"\n",
        ),
        ("10-a.toml.dpkg-old", "garbage ["),
        ("README.md", "garbage ["),
        (".#10-a.toml", "garbage ["),
    ]);
    let policy = PolicySet::load_dir(dir.path()).unwrap();
    assert_eq!(policy.files().len(), 1);
}

#[test]
fn fail_closed_constructor_explains_itself() {
    let policy = PolicySet::fail_closed("daemon started without a policy");
    assert_fails_closed(&policy);
    let e = policy.explain(&open_uri("https://a.org"));
    let text = e.to_string();
    assert!(
        text.contains("FAIL-CLOSED: daemon started without a policy"),
        "{text}"
    );
    assert!(text.contains("profile `strict`"), "{text}");
}
