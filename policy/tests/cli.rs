//! The `vitrine-policy` binary: validate on broken files, explain, diff,
//! apply, rollback, list, show and `--json`.

mod fixture;

use fixture::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitrine-policy"))
        .args(args)
        .env_remove("VITRINE_POLICY_DIR")
        .env("HOME", "/nonexistent-home")
        .env_remove("XDG_DOWNLOAD_DIR")
        .output()
        .expect("run vitrine-policy")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn broken_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken")
}

/// Each broken file, the position of its one error, a fragment of the
/// message and, where the hint is the point, a fragment of the hint.
const BROKEN: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "01-syntax-unterminated-string.toml",
        "3:28",
        "TOML syntax: invalid basic string",
        Some("close the string"),
    ),
    (
        "02-syntax-missing-equals.toml",
        "3:8",
        "TOML syntax: key with no value, expected `=`",
        Some("write key = value"),
    ),
    (
        "03-syntax-duplicate-key.toml",
        "4:1",
        "TOML syntax: duplicate key",
        Some("may appear once per file"),
    ),
    (
        "04-syntax-unquoted-value.toml",
        "3:12",
        "string values must be quoted",
        Some("put the value in double quotes: \"deny\""),
    ),
    (
        "05-unknown-top-level-key.toml",
        "1:3",
        "unknown top-level key `rules`",
        Some("rules are written as [[rule]] tables"),
    ),
    (
        "06-unknown-rule-key.toml",
        "4:1",
        "unknown key `extention` in rule `pdf`",
        Some("did you mean `extension`?"),
    ),
    (
        "07-unknown-profile-key.toml",
        "2:1",
        "unknown key `memroy_mib` in profile `document`",
        Some("did you mean `memory_mib`?"),
    ),
    (
        "08-unknown-display-key.toml",
        "2:50",
        "unknown key `max_fsp` in profile `document` display",
        Some("did you mean `max_fps`?"),
    ),
    (
        "09-wrong-type-memory-string.toml",
        "2:14",
        "`memory_mib` must be an integer, found string",
        Some("remove the quotes: memory_mib = 512"),
    ),
    (
        "10-wrong-type-vcpus-float.toml",
        "2:9",
        "`vcpus` must be an integer, found float",
        Some("whole number"),
    ),
    (
        "11-wrong-type-action-integer.toml",
        "2:10",
        "`action` must be a string or a list of strings, found integer",
        None,
    ),
    (
        "12-out-of-range-vcpus.toml",
        "3:9",
        "`vcpus` is 0, which is not between 1 and 64",
        None,
    ),
    (
        "13-unknown-action.toml",
        "2:24",
        "`action` cannot be \"open-files\"",
        Some("did you mean `open-file`?"),
    ),
    (
        "14-missing-profile.toml",
        "8:11",
        "profile `documnet` does not exist",
        Some("did you mean `document`?"),
    ),
    (
        "15-no-decision.toml",
        "2:1",
        "rule `pdf` has no decision",
        Some("add decision = \"deny\""),
    ),
    (
        "16-two-decisions.toml",
        "6:1",
        "has both `decision` and `sandbox`",
        Some("decides exactly one thing"),
    ),
    (
        "17-decision-allow.toml",
        "4:12",
        "`decision` cannot be \"allow\"",
        Some("`host` opens it normally"),
    ),
    (
        "18-bad-glob.toml",
        "3:33",
        "bad glob `/home/*/[Dd]esktop/{a,b/**`: unclosed alternate group",
        Some("globs use `*`"),
    ),
    (
        "19-unreachable-rule.toml",
        "9:1",
        "rule `png` can never match: rule `images` (19-unreachable-rule.toml:3)",
        Some("first matching rule wins"),
    ),
    (
        "20-after-catch-all.toml",
        "6:1",
        "rule `links` can never match: rule `everything`",
        Some("first matching rule wins"),
    ),
    (
        "21-bad-mime.toml",
        "3:28",
        "`pdf` is not a MIME type pattern",
        Some("type/subtype"),
    ),
    (
        "22-extension-with-dot.toml",
        "3:14",
        "extension `.iso` starts with a dot",
        Some("write `iso` without the dot"),
    ),
    (
        "23-egress-missing-port.toml",
        "2:30",
        "`wikipedia.org` is not a host:port endpoint",
        Some("write `host:port`"),
    ),
    (
        "24-bad-time-limit.toml",
        "2:14",
        "`10 minutes` is not a duration",
        Some("\"5m\""),
    ),
    (
        "25-bad-clipboard.toml",
        "2:13",
        "`clipboard` cannot be \"bidirectional\"",
        Some("none, to-guest, both"),
    ),
    (
        "26-redefine-strict.toml",
        "1:10",
        "`strict` is the built-in strictest profile",
        None,
    ),
    (
        "27-scheme-on-file-rule.toml",
        "3:1",
        "`scheme` never matches an open-file request",
        Some("split this into one rule per action"),
    ),
    (
        "28-bad-host-pattern.toml",
        "3:8",
        "`exa*mple.org` is not a host pattern: a wildcard may only be the whole leftmost label",
        None,
    ),
    (
        "29-bad-export-size.toml",
        "2:60",
        "`20 parsecs` is not a size",
        Some("\"20MiB\""),
    ),
    (
        "30-rule-not-array.toml",
        "1:1",
        "`rule` must be an array of tables, found table",
        Some("[[rule]] header (two brackets)"),
    ),
    (
        "31-empty-list.toml",
        "3:13",
        "`extension` is an empty list, which matches nothing",
        Some("remove `extension` to match anything"),
    ),
    (
        "32-relative-path.toml",
        "3:8",
        "path pattern `Downloads/**` is not absolute",
        Some("\"/**/Downloads/**\""),
    ),
    (
        "33-export-ask-without-limit.toml",
        "3:1",
        "exports with mode `ask` but sets no `max_size`",
        None,
    ),
    (
        "34-unknown-origin.toml",
        "3:10",
        "`origin` cannot be \"quarantine\"",
        Some("did you mean `quarantined`?"),
    ),
    (
        "35-time-limit-integer.toml",
        "2:14",
        "`time_limit` must be a duration string, found integer",
        Some("\"9m30s\""),
    ),
    (
        "36-time-limit-above-the-task-cap.toml",
        "2:14",
        "`time_limit` is \"30m\", longer than the 10m a task may run",
        Some("write time_limit = \"10m\" or less: a task is stopped after 10m whatever the profile says"),
    ),
];

#[test]
fn validate_points_at_line_and_column_of_each_broken_file() {
    let mut failures = Vec::new();
    for (file, pos, message, hint) in BROKEN {
        let path = broken_dir().join(file);
        let out = cli(&["validate", s(&path)]);
        let text = stdout(&out);
        let want = format!("{}:{pos}: error: ", path.display());
        let ok = out.status.code() == Some(1)
            && text
                .lines()
                .any(|l| l.starts_with(&want) && l.contains(message))
            && text.contains("invalid: 1 error(s)")
            && hint.is_none_or(|h| {
                text.lines()
                    .any(|l| l.starts_with("  = hint: ") && l.contains(h))
            });
        if !ok {
            failures.push(format!("--- {file}: want `{want}...{message}` hint {hint:?}, exit 1; got exit {:?}:\n{text}", out.status.code()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_broken_file_has_a_row_in_the_table() {
    let mut on_disk: Vec<String> = std::fs::read_dir(broken_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    on_disk.sort();
    let table: Vec<String> = BROKEN.iter().map(|(f, ..)| (*f).to_owned()).collect();
    assert_eq!(on_disk, table);
    assert!(table.len() >= 20);
}

#[test]
fn validate_json_gives_machine_readable_diagnostics() {
    let path = broken_dir().join("06-unknown-rule-key.toml");
    let out = cli(&["--json", "validate", s(&path)]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["valid"], false);
    let d = &v["diagnostics"][0];
    assert_eq!((d["line"].as_u64(), d["col"].as_u64()), (Some(4), Some(1)));
    assert_eq!(d["severity"], "error");
    assert_eq!(d["hint"], "did you mean `extension`?");
    assert_eq!(d["path"], s(&path));
}

#[test]
fn validate_accepts_the_shipped_example_policy() {
    let out = cli(&["validate", s(&example_dir())]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("valid (5 file(s), 13 rule(s), 5 profile(s), 0 warning(s))"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn validate_a_single_file_hints_at_profiles_in_other_files() {
    let out = cli(&["validate", s(&example_dir().join("50-documents.toml"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(
        "profiles from other files are only visible when you validate the whole directory"
    ));
}

fn temp_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn explain_open_file_sniffs_content_and_gives_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    // A PDF disguised by its name.
    let file = temp_file(tmp.path(), "notes.txt", b"%PDF-1.7\n%...");

    let out = cli(&[
        "--dir",
        s(&example_dir()),
        "explain",
        "--action",
        "open-file",
        "--file",
        s(&file),
    ]);

    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("decision: sandbox(document)"), "{text}");
    assert!(
        text.contains("by:       rule `pdf` (50-documents.toml:26)"),
        "{text}"
    );
    assert!(
        text.contains("content type `application/pdf` is not `application/x-iso9660-image`"),
        "{text}"
    );
    assert!(text.contains("name `notes.txt` does not end in"), "{text}");
    assert!(text.contains("memory_mib           512"), "{text}");
}

/// One stored ZIP local file entry, as an office document holds them.
fn zip_entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut v = b"PK\x03\x04".to_vec();
    v.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let len = u32::try_from(data.len()).unwrap().to_le_bytes();
    v.extend_from_slice(&len); // compressed size
    v.extend_from_slice(&len); // uncompressed size
    v.extend_from_slice(&u16::try_from(name.len()).unwrap().to_le_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn explain_sends_a_docx_to_the_office_profile_that_preloads_libreoffice() {
    let tmp = tempfile::tempdir().unwrap();
    let mut docx = zip_entry("[Content_Types].xml", b"<Types/>");
    docx.extend(zip_entry("word/document.xml", b"<w:document/>"));
    // The name says text; the content says Word.
    let file = temp_file(tmp.path(), "letter.txt", &docx);

    let out = cli(&[
        "--dir",
        s(&example_dir()),
        "explain",
        "--action",
        "open-file",
        "--file",
        s(&file),
    ]);

    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains(
            "mime=application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        ),
        "{text}"
    );
    assert!(text.contains("decision: sandbox(office)"), "{text}");
    assert!(
        text.contains("by:       rule `office` (50-documents.toml:"),
        "{text}"
    );
    assert!(text.contains("profile `office`:"), "{text}");
    assert!(text.contains("preload              office"), "{text}");
    assert!(text.contains("memory_mib           1024"), "{text}");
}

#[test]
fn explain_sends_legacy_ole2_office_files_to_the_office_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = temp_file(
        tmp.path(),
        "old.doc",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\0\0\0\0",
    );

    let v = json(&cli(&[
        "--dir",
        s(&example_dir()),
        "--json",
        "explain",
        "--action",
        "open-file",
        "--file",
        s(&doc),
    ]));

    assert_eq!(v["request"]["mime"], "application/x-ole-storage", "{v}");
    assert_eq!(v["decision"]["rule"]["name"], "office", "{v}");
    assert_eq!(v["decision"]["profile"]["name"], "office", "{v}");
    assert_eq!(v["decision"]["profile"]["preload"], "office", "{v}");
}

#[test]
fn explain_uri_and_program_in_json() {
    let out = cli(&[
        "--dir",
        s(&example_dir()),
        "--json",
        "explain",
        "--action",
        "open-uri",
        "--uri",
        "https://en.wikipedia.org/",
    ]);
    let v = json(&out);
    assert_eq!(v["decision"]["verdict"], "sandbox");
    assert_eq!(v["decision"]["profile"]["name"], "web");
    assert_eq!(v["decision"]["profile"]["egress"]["allow"][0], "*:443");
    assert_eq!(v["decision"]["rule"]["name"], "web");
    assert_eq!(
        v["trace"].as_array().unwrap().last().unwrap()["matched"],
        true
    );

    let tmp = tempfile::tempdir().unwrap();
    let elf = temp_file(tmp.path(), "tool", b"\x7fELF\x02\x01\x01\0");
    let out = cli(&[
        "--dir",
        s(&example_dir()),
        "--json",
        "explain",
        "--action",
        "run-program",
        "--program",
        s(&elf),
        "--origin",
        "quarantined",
    ]);
    let v = json(&out);
    assert_eq!(v["decision"]["profile"]["name"], "program");
    assert_eq!(v["request"]["origin"], serde_json::json!(["quarantined"]));

    let out = cli(&[
        "--dir",
        s(&example_dir()),
        "explain",
        "--action",
        "open-uri",
        "--uri",
        "javascript:alert(1)",
    ]);
    assert!(stdout(&out).contains("decision: deny"), "{}", stdout(&out));
}

#[test]
fn explain_detects_downloads_origin_and_denies_disk_images() {
    let tmp = tempfile::tempdir().unwrap();
    let downloads = tmp.path().join("Downloads");
    std::fs::create_dir(&downloads).unwrap();
    let iso = temp_file(&downloads, "setup.iso", b"whatever");
    let out = cli(&[
        "--dir",
        s(&example_dir()),
        "--json",
        "explain",
        "--action",
        "open-file",
        "--file",
        s(&iso),
        "--downloads-dir",
        s(&downloads),
    ]);
    let v = json(&out);
    assert_eq!(v["decision"]["verdict"], "deny");
    assert_eq!(v["decision"]["rule"]["name"], "disk-images-by-name");
    assert_eq!(v["request"]["origin"], serde_json::json!(["downloads"]));
}

#[test]
fn explain_with_a_broken_policy_says_it_fails_closed() {
    let out = cli(&[
        "--dir",
        s(&broken_dir()),
        "explain",
        "--action",
        "open-uri",
        "--uri",
        "https://a.org",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("decision: sandbox(strict)"));
    assert!(stdout(&out).contains("FAIL-CLOSED"));
    assert!(stderr(&out).contains("FAILING CLOSED"), "{}", stderr(&out));
}

fn copy_example(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(example_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn diff_shows_effective_changes_only() {
    let tmp = tempfile::tempdir().unwrap();
    let staged = tmp.path().join("staged");
    copy_example(&staged);

    // Comments and file boundaries are not effective changes.
    let docs = std::fs::read_to_string(staged.join("50-documents.toml")).unwrap();
    std::fs::write(
        staged.join("50-documents.toml"),
        format!("# reviewed\n{docs}"),
    )
    .unwrap();
    let out = cli(&["--dir", s(&example_dir()), "diff", s(&staged)]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("no effective changes"));

    // A profile field and a decision change.
    let profiles = std::fs::read_to_string(staged.join("10-profiles.toml")).unwrap();
    std::fs::write(
        staged.join("10-profiles.toml"),
        profiles.replacen("memory_mib = 512", "memory_mib = 1024", 1),
    )
    .unwrap();
    let links = std::fs::read_to_string(staged.join("60-links.toml")).unwrap();
    std::fs::write(
        staged.join("60-links.toml"),
        links.replacen("decision = \"host\"", "sandbox = \"web\"", 1),
    )
    .unwrap();
    let out = cli(&["--dir", s(&example_dir()), "diff", s(&staged)]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("~ profile document\n    memory_mib: 512 -> 1024"),
        "{text}"
    );
    assert!(text.contains("- 60-links.toml:9 rule `intranet`"), "{text}");
    assert!(text.contains("+ 60-links.toml:9 rule `intranet`"), "{text}");
    assert!(text.contains("-> sandbox(web)"), "{text}");

    let v = json(&cli(&[
        "--dir",
        s(&example_dir()),
        "--json",
        "diff",
        s(&staged),
    ]));
    assert_eq!(v["profiles"][0]["change"], "changed");
    assert_eq!(v["rules"].as_array().unwrap().len(), 2);
}

#[test]
fn apply_status_and_rollback_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("policy.d");
    let staged = tmp.path().join("staged");
    copy_example(&staged);

    let out = cli(&["--dir", s(&link), "apply", s(&staged)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("applied:"));
    let first = json(&cli(&["--dir", s(&link), "--json", "status"]));
    assert_eq!(first["state"], "managed");

    let profiles = std::fs::read_to_string(staged.join("10-profiles.toml")).unwrap();
    std::fs::write(
        staged.join("10-profiles.toml"),
        profiles.replacen("vcpus = 1", "vcpus = 2", 1),
    )
    .unwrap();
    let second = json(&cli(&["--dir", s(&link), "--json", "apply", s(&staged)]));
    assert_eq!(second["previous"], first["active"]);
    assert_eq!(second["changed"], true);

    let back = json(&cli(&["--dir", s(&link), "--json", "rollback"]));
    assert_eq!(back["active"], first["active"]);
    let shown = cli(&["--dir", s(&link), "show", "document"]);
    assert!(
        stdout(&shown).contains("vcpus                1"),
        "{}",
        stdout(&shown)
    );

    // A broken staged policy is refused with its diagnostics.
    std::fs::write(
        staged.join("10-profiles.toml"),
        "[profile.document]\nvcpus = \"two\"\n",
    )
    .unwrap();
    let out = cli(&["--dir", s(&link), "apply", s(&staged)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("10-profiles.toml:2:9: error: `vcpus` must be an integer"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("not applied"));
    let after = json(&cli(&["--dir", s(&link), "--json", "status"]));
    assert_eq!(after["active"], first["active"]);
}

#[test]
fn rollback_without_history_fails_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cli(&["--dir", s(&tmp.path().join("policy.d")), "rollback"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no previous version"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn list_and_show_describe_the_policy() {
    let dir = example_dir();
    let out = cli(&["--dir", s(&dir), "list"]);
    let text = stdout(&out);
    assert!(text.contains("rules (first match wins):"), "{text}");
    assert!(text.contains("50-documents.toml:26"), "{text}");
    assert!(text.contains("built-in default"), "{text}");

    let v = json(&cli(&["--dir", s(&dir), "--json", "list"]));
    assert_eq!(v["rules"].as_array().unwrap().len(), 13);
    assert_eq!(v["files"].as_array().unwrap().len(), 5);
    assert_eq!(v["rules"][0]["name"], "disk-images-by-content");

    let out = cli(&["--dir", s(&dir), "show", "pdf"]);
    assert!(
        stdout(&out).contains("decision    sandbox(document)"),
        "{}",
        stdout(&out)
    );
    let v = json(&cli(&["--dir", s(&dir), "--json", "show", "web"]));
    assert_eq!(v[0]["time_limit"], 600);
    assert_eq!(v[0]["clipboard"], "both");

    let out = cli(&["--dir", s(&dir), "show", "nonesuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no profile or rule named `nonesuch`"));
}
