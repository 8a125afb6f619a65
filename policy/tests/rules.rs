//! Every rule kind, every decision, and first-match order across files.

mod fixture;

use fixture::*;
use vitrine_policy::rule::Mismatch;
use vitrine_policy::{Action, FileFacts, MatchedBy, Request, Verdict};

const PROFILES: &str = r#"
[profile.document]
memory_mib = 512
[profile.web]
egress = ["*:443"]
"#;

fn with_profiles(rules: &str) -> vitrine_policy::PolicySet {
    load(&[("10-profiles.toml", PROFILES), ("50-rules.toml", rules)])
}

#[test]
fn action_condition_separates_files_links_and_programs() {
    let policy = with_profiles(
        r#"
[[rule]]
name = "files"
action = "open-file"
sandbox = "document"
[[rule]]
name = "links"
action = "open-uri"
sandbox = "web"
[[rule]]
name = "programs"
action = "run-program"
decision = "deny"
"#,
    );
    assert_eq!(
        decided_by(&policy, &open_file("text/plain", "/t/a.txt", LOCAL)),
        "files"
    );
    assert_eq!(
        decided_by(&policy, &open_uri("https://example.org/")),
        "links"
    );
    assert_eq!(
        decided_by(
            &policy,
            &run_program("application/x-executable", "/t/a", LOCAL)
        ),
        "programs"
    );
}

#[test]
fn mime_matches_sniffed_type_exactly_or_by_wildcard_not_by_name() {
    let policy = with_profiles(
        r#"
[[rule]]
name = "pdf"
action = "open-file"
mime = "application/pdf"
sandbox = "document"
[[rule]]
name = "images"
action = "open-file"
mime = ["image/*"]
sandbox = "document"
"#,
    );
    assert_eq!(
        decided_by(&policy, &open_file("application/pdf", "/t/x.bin", LOCAL)),
        "pdf"
    );
    assert_eq!(
        decided_by(&policy, &open_file("image/webp", "/t/x.pdf", LOCAL)),
        "images"
    );
    // Named .pdf, but the content is text: the pdf rule does not apply.
    assert_eq!(
        decided_by(&policy, &open_file("text/plain", "/t/x.pdf", LOCAL)),
        "default"
    );
}

#[test]
fn extension_matches_case_insensitively_including_multi_dot() {
    let policy = with_profiles(
        r#"
[[rule]]
name = "archives"
action = "open-file"
extension = ["tar.gz", "ZIP"]
decision = "deny"
"#,
    );
    assert_eq!(
        decided_by(
            &policy,
            &open_file("application/gzip", "/t/A.TAR.GZ", LOCAL)
        ),
        "archives"
    );
    assert_eq!(
        decided_by(&policy, &open_file("application/zip", "/t/a.zip", LOCAL)),
        "archives"
    );
    assert_eq!(
        decided_by(&policy, &open_file("application/zip", "/t/zip", LOCAL)),
        "default"
    );
    // The name given by the caller wins over the path's last component.
    let named = Request::open_file(FileFacts {
        mime: "application/zip".into(),
        name: Some("mail-attachment.zip".into()),
        path: Some("/proc/self/fd/7".into()),
        origin: LOCAL,
    })
    .unwrap();
    assert_eq!(decided_by(&policy, &named), "archives");
}

#[test]
fn path_glob_matches_prefix_and_ignores_dot_dot_tricks() {
    let policy = with_profiles(
        r#"
[[rule]]
name = "downloads"
action = "open-file"
path = "/home/*/Downloads/**"
sandbox = "document"
"#,
    );
    assert_eq!(
        decided_by(
            &policy,
            &open_file("text/plain", "/home/ann/Downloads/a/b.txt", LOCAL)
        ),
        "downloads"
    );
    assert_eq!(
        decided_by(
            &policy,
            &open_file("text/plain", "/home/ann/Documents/b.txt", LOCAL)
        ),
        "default"
    );
    assert_eq!(
        decided_by(
            &policy,
            &open_file(
                "text/plain",
                "/home/ann/Downloads/../Documents/b.txt",
                LOCAL
            )
        ),
        "default"
    );
    let no_path = Request::open_file(FileFacts {
        mime: "text/plain".into(),
        name: Some("b.txt".into()),
        path: None,
        origin: LOCAL,
    })
    .unwrap();
    assert_eq!(decided_by(&policy, &no_path), "default");
}

#[test]
fn origin_matches_quarantine_mark_downloads_folder_or_local() {
    let policy = with_profiles(
        r#"
[[rule]]
name = "marked"
action = "open-file"
origin = "quarantined"
decision = "deny"
[[rule]]
name = "downloaded"
action = "open-file"
origin = ["downloads"]
sandbox = "document"
[[rule]]
name = "local"
action = "open-file"
origin = "local"
decision = "host"
"#,
    );
    let both = vitrine_policy::Origin {
        quarantined: true,
        downloads: true,
    };
    assert_eq!(
        decided_by(&policy, &open_file("text/plain", "/t/a", QUARANTINED)),
        "marked"
    );
    assert_eq!(
        decided_by(&policy, &open_file("text/plain", "/t/a", both)),
        "marked"
    );
    assert_eq!(
        decided_by(&policy, &open_file("text/plain", "/t/a", DOWNLOADS)),
        "downloaded"
    );
    assert_eq!(
        decided_by(&policy, &open_file("text/plain", "/t/a", LOCAL)),
        "local"
    );
}

#[test]
fn scheme_and_host_patterns_match_links() {
    let policy = with_profiles(
        r#"
[[rule]]
name = "bad-schemes"
action = "open-uri"
scheme = ["javascript", "file"]
decision = "deny"
[[rule]]
name = "intranet"
action = "open-uri"
scheme = "https"
host = ["intranet.example.org", "*.intranet.example.org"]
decision = "host"
[[rule]]
name = "any-https"
action = "open-uri"
scheme = "https"
host = "*"
sandbox = "web"
"#,
    );
    assert_eq!(
        decided_by(&policy, &open_uri("javascript:alert(1)")),
        "bad-schemes"
    );
    assert_eq!(
        decided_by(&policy, &open_uri("file:///etc/passwd")),
        "bad-schemes"
    );
    assert_eq!(
        decided_by(&policy, &open_uri("https://intranet.example.org/")),
        "intranet"
    );
    assert_eq!(
        decided_by(&policy, &open_uri("https://WIKI.Intranet.Example.org./x")),
        "intranet"
    );
    assert_eq!(
        decided_by(&policy, &open_uri("https://intranet.example.org.evil.com/")),
        "any-https"
    );
    assert_eq!(
        decided_by(
            &policy,
            &open_uri("https://user@evil.org\\@intranet.example.org/")
        ),
        "any-https"
    );
    assert_eq!(
        decided_by(&policy, &open_uri("http://example.org/")),
        "default"
    );
}

#[test]
fn decisions_resolve_to_deny_host_or_the_named_profile() {
    let policy = with_profiles(
        r#"
[[rule]]
action = "open-file"
mime = "application/x-iso9660-image"
decision = "deny"
[[rule]]
action = "open-file"
mime = "text/plain"
decision = "host"
[[rule]]
action = "open-file"
mime = "application/pdf"
sandbox = "document"
[[rule]]
action = "open-uri"
sandbox = "web"
"#,
    );
    let v = |r| policy.evaluate(&r).verdict;
    assert_eq!(
        v(open_file("application/x-iso9660-image", "/a", LOCAL)),
        Verdict::Deny
    );
    assert_eq!(v(open_file("text/plain", "/a", LOCAL)), Verdict::Host);
    let Verdict::Sandbox(doc) = v(open_file("application/pdf", "/a", LOCAL)) else {
        panic!("pdf should be sandboxed");
    };
    assert_eq!((doc.name.as_str(), doc.memory_mib), ("document", 512));
    let Verdict::Sandbox(web) = v(open_uri("https://a.org")) else {
        panic!("links should be sandboxed");
    };
    assert!(web.egress.allows("a.org", 443));
}

#[test]
fn conditions_in_one_rule_must_all_hold() {
    let policy = with_profiles(
        r#"
[[rule]]
name = "downloaded-pdf"
action = "open-file"
mime = "application/pdf"
extension = "pdf"
origin = "downloads"
path = "/home/**"
sandbox = "document"
"#,
    );
    assert_eq!(
        decided_by(
            &policy,
            &open_file("application/pdf", "/home/a/x.pdf", DOWNLOADS)
        ),
        "downloaded-pdf"
    );
    for req in [
        open_file("text/plain", "/home/a/x.pdf", DOWNLOADS),
        open_file("application/pdf", "/home/a/x.txt", DOWNLOADS),
        open_file("application/pdf", "/home/a/x.pdf", LOCAL),
        open_file("application/pdf", "/srv/x.pdf", DOWNLOADS),
    ] {
        assert_eq!(decided_by(&policy, &req), "default", "{req:?}");
    }
}

#[test]
fn first_match_wins_across_files_in_name_order() {
    let narrow = r#"
[[rule]]
name = "quarantined-pdf"
action = "open-file"
mime = "application/pdf"
origin = "quarantined"
decision = "deny"
"#;
    let broad = r#"
[[rule]]
name = "pdf"
action = "open-file"
mime = "application/pdf"
sandbox = "document"
"#;
    let req = open_file("application/pdf", "/t/x.pdf", QUARANTINED);
    let narrow_first = load(&[
        ("10-profiles.toml", PROFILES),
        ("20-narrow.toml", narrow),
        ("30-broad.toml", broad),
    ]);
    assert_eq!(decided_by(&narrow_first, &req), "quarantined-pdf");
    assert_eq!(narrow_first.evaluate(&req).verdict, Verdict::Deny);

    // The same rules with the file names swapped: now the broad rule is
    // first, and the narrow one is reported as unreachable.
    let diags = load_err(&[
        ("10-profiles.toml", PROFILES),
        ("30-narrow.toml", narrow),
        ("20-broad.toml", broad),
    ]);
    let text = diags.to_string();
    assert!(
        text.contains("30-narrow.toml:2:1: error: rule `quarantined-pdf` can never match"),
        "{text}"
    );
    assert!(text.contains("rule `pdf` (20-broad.toml:2)"), "{text}");
}

#[test]
fn no_matching_rule_falls_through_to_builtin_strict() {
    let policy = with_profiles(
        r#"
[[rule]]
action = "open-uri"
sandbox = "web"
"#,
    );
    let d = policy.evaluate(&open_file("application/octet-stream", "/t/x", LOCAL));
    assert_eq!(d.matched, MatchedBy::Default);
    assert_eq!(d.verdict.profile().map(|p| p.name.as_str()), Some("strict"));
    assert_eq!(d.version, policy.version());
    assert_eq!(
        policy.actions_without_rules(),
        vec![Action::OpenFile, Action::RunProgram]
    );
}

#[test]
fn explanation_names_file_line_and_why_earlier_rules_failed() {
    let policy = with_profiles(
        r#"
[[rule]]
name = "links"
action = "open-uri"
sandbox = "web"

[[rule]]
name = "images"
action = "open-file"
mime = "image/*"
sandbox = "document"

[[rule]]
name = "downloads"
action = "open-file"
path = "/home/*/Downloads/**"
sandbox = "document"

[[rule]]
name = "pdf"
action = "open-file"
mime = "application/pdf"
decision = "deny"
"#,
    );
    let req = open_file("application/pdf", "/home/ann/Documents/x.pdf", LOCAL);

    let e = policy.explain(&req);

    let rule = e.decision.rule().expect("a rule decided");
    assert_eq!(
        (&*rule.file, rule.line, rule.name.as_deref()),
        ("50-rules.toml", 19, Some("pdf"))
    );
    let failed: Vec<_> = e.trace.iter().map(|t| t.failed).collect();
    assert_eq!(
        failed,
        vec![
            Some(Mismatch::Action),
            Some(Mismatch::Mime),
            Some(Mismatch::Path),
            None
        ]
    );
    assert_eq!(
        e.trace[1].reason,
        "content type `application/pdf` is not `image/*`"
    );
    assert!(
        e.trace[2].reason.contains("/home/ann/Documents/x.pdf"),
        "{}",
        e.trace[2].reason
    );
    let text = e.to_string();
    assert!(text.contains("decision: deny"), "{text}");
    assert!(
        text.contains("=>    4. 50-rules.toml:19 rule `pdf`"),
        "{text}"
    );
    assert!(text.contains("(1 rule(s) for other actions)"), "{text}");
}

#[test]
fn rules_for_several_actions_apply_to_each() {
    let policy = with_profiles(
        r#"
[[rule]]
name = "everything"
action = ["open-file", "open-uri", "run-program"]
decision = "deny"
"#,
    );
    for req in [
        open_file("text/plain", "/a", LOCAL),
        open_uri("https://a.org"),
        run_program("text/x-shellscript", "/a", LOCAL),
    ] {
        assert_eq!(policy.evaluate(&req).verdict, Verdict::Deny);
    }
}

#[test]
fn inline_rule_arrays_are_accepted() {
    let policy =
        with_profiles(r#"rule = [{ name = "inline", action = "open-file", decision = "deny" }]"#);
    assert_eq!(
        decided_by(&policy, &open_file("text/plain", "/a", LOCAL)),
        "inline"
    );
}

#[test]
fn long_policies_decide_the_same_as_a_rule_by_rule_scan() {
    // Past the first few rules evaluation switches to the index; `explain`
    // always walks rule by rule. They must agree everywhere.
    let mut text = String::from("[profile.document]\n");
    for i in 0..60 {
        text.push_str(&match i % 4 {
            0 => format!("[[rule]]\nname = \"ext{i}\"\naction = \"open-file\"\nextension = \"e{i}\"\ndecision = \"deny\"\n"),
            1 => format!("[[rule]]\nname = \"path{i}\"\naction = \"open-file\"\nmime = \"text/*\"\npath = \"/home/*/p{i}/**\"\ndecision = \"host\"\n"),
            2 => format!("[[rule]]\nname = \"host{i}\"\naction = \"open-uri\"\nhost = \"*.h{i}.org\"\nsandbox = \"document\"\n"),
            _ => format!("[[rule]]\nname = \"mime{i}\"\naction = [\"open-file\", \"run-program\"]\nmime = \"application/x-m{i}\"\norigin = \"quarantined\"\ndecision = \"deny\"\n"),
        });
    }
    let policy = load(&[("50-many.toml", &text)]);
    let cases = [
        (open_file("text/plain", "/t/a.e0", LOCAL), "ext0"),
        (open_file("text/plain", "/t/a.e56", LOCAL), "ext56"),
        (
            open_file("text/markdown", "/home/ann/p41/notes.md", LOCAL),
            "path41",
        ),
        (open_uri("https://www.h58.org/"), "host58"),
        (
            run_program("application/x-m59", "/t/x", QUARANTINED),
            "mime59",
        ),
        (run_program("application/x-m59", "/t/x", LOCAL), "default"),
        (
            open_file("application/pdf", "/home/ann/p41/x.pdf", LOCAL),
            "default",
        ),
    ];
    for (req, want) in cases {
        assert_eq!(decided_by(&policy, &req), want, "{req:?}");
        let explained = policy.explain(&req);
        let linear = explained
            .trace
            .last()
            .filter(|t| t.matched)
            .map(|t| t.rule.index);
        assert_eq!(
            policy.evaluate(&req).rule().map(|r| r.index),
            linear,
            "{req:?}"
        );
    }
}

#[test]
fn explanation_text_never_carries_terminal_escapes_from_file_names() {
    let policy = with_profiles(
        "[[rule]]\naction = \"open-file\"\nextension = \"pdf\"\ndecision = \"deny\"\n",
    );
    let req = open_file("text/plain", "/t/\u{1b}[2Jevil.txt", LOCAL);

    let text = policy.explain(&req).to_string();

    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(text.contains("\u{fffd}[2jevil.txt"), "{text}");
}
