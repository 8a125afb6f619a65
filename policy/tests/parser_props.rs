//! Property tests for the parser: arbitrary bytes and arbitrary mutations
//! of real policy files never panic, and every diagnostic points inside
//! the file it blames. `tests/fuzz.sh` runs the parser under libFuzzer
//! (target `policy_parse`) from the same seed corpus.

mod fixture;

use fixture::*;
use proptest::prelude::*;
use std::path::Path;
use vitrine_policy::{FileFacts, Origin, PolicySet, Request, SourceFile};

/// The seed files: the example policy and the fuzz corpus.
fn seeds() -> Vec<String> {
    let mut out = Vec::new();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/corpus/policy_parse");
    for dir in [example_dir(), corpus] {
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        out.extend(paths.iter().map(|p| std::fs::read_to_string(p).unwrap()));
    }
    assert!(out.len() >= 10, "seed corpus is missing");
    out
}

/// Fragments that steer mutations towards interesting TOML.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[rule]]",
    "[profile.x]",
    "[profile.x.export]",
    "=",
    "\"",
    "'''",
    "\"\"\"",
    "\n",
    "{",
    "}",
    ",",
    ".",
    "action",
    "sandbox",
    "decision",
    "mime",
    "path",
    "host",
    "egress",
    "export",
    "display",
    "origin",
    "scheme",
    "\"open-file\"",
    "\"open-uri\"",
    "\"*/*\"",
    "\"/**\"",
    "\"/a/{b,\"",
    "\"[\"",
    "\"*.a\"",
    "\"x:0\"",
    "99999999999999999999",
    "-1",
    "1.5",
    "true",
    "nan",
    "1979-05-27T07:32:00Z",
    "\\u0000",
    "é",
    "\u{feff}",
    "#",
    "\r\n",
    "\t",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    Byte { at: usize, value: u8 },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Byte { at, value }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let n = bytes.len().max(1);
    match *m {
        Mutation::Delete { at, len } => {
            let at = at % n;
            let end = (at + len).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Mutation::Insert { at, token } => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, TOKENS[token].bytes());
        }
        Mutation::Byte { at, value } => {
            if !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] = value;
            }
        }
        Mutation::DuplicateLine { line } | Mutation::SwapLines { a: line, .. } => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let i = line % lines.len();
            if let Mutation::SwapLines { b, .. } = *m {
                let j = b % lines.len();
                lines.swap(i, j);
            } else {
                lines.insert(i, lines[i]);
            }
            return lines.join("\n");
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Load `texts` as one policy and exercise everything downstream of a
/// successful or failed load. Panics are the failure being looked for.
fn exercise(texts: &[String]) {
    let files: Vec<SourceFile> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| SourceFile::new(format!("{:02}-fuzz.toml", i * 10), t.as_str()))
        .collect();
    match PolicySet::from_sources(files.clone(), None) {
        Ok(policy) => {
            let reqs = [
                Request::open_file(FileFacts {
                    mime: "application/pdf".into(),
                    name: None,
                    path: Some("/home/a/Downloads/x.pdf".into()),
                    origin: Origin {
                        quarantined: true,
                        downloads: true,
                    },
                }),
                Request::open_uri("https://a.example.org/"),
                Request::run_program(FileFacts {
                    mime: "text/x-shellscript".into(),
                    ..Default::default()
                }),
            ];
            for req in reqs.into_iter().flatten() {
                let _ = policy.evaluate(&req);
                let _ = policy.explain(&req).to_string();
            }
            let _ = vitrine_policy::diff::diff(&policy, &policy);
        }
        Err(diags) => {
            assert!(diags.has_errors(), "a refused load must say why");
            let _ = diags.to_string();
            let _ = serde_json::to_string(&diags).unwrap();
            for d in &diags {
                let Some(file) = files.iter().find(|f| f.path == d.location.path) else {
                    continue;
                };
                let lines = u32::try_from(file.text.split('\n').count()).unwrap();
                let line = d.location.line.unwrap();
                assert!(
                    line >= 1 && line <= lines,
                    "line {line} outside {} lines: {d}",
                    lines
                );
                assert!(d.location.col.unwrap() >= 1);
            }
        }
    }
}

/// CI runs a bounded number of cases; `PROPTEST_CASES=100000` digs deeper.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&[String::from_utf8_lossy(&bytes).into_owned()]);
    }

    #[test]
    fn arbitrary_token_soup_never_panics(tokens in proptest::collection::vec(0..TOKENS.len(), 0..200)) {
        let text: String = tokens.iter().map(|&t| TOKENS[t]).collect();
        exercise(&[text]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    #[test]
    fn mutated_seed_files_never_panic(seed in any::<usize>(), muts in proptest::collection::vec(mutation(), 1..8)) {
        let seeds = seeds();
        let text = muts.iter().fold(seeds[seed % seeds.len()].clone(), |t, m| apply(&t, m));
        exercise(&[text]);
    }

    #[test]
    fn mutated_example_directory_never_panics(file in 0usize..5, muts in proptest::collection::vec(mutation(), 1..4)) {
        let mut texts: Vec<String> = seeds().into_iter().take(5).collect();
        texts[file] = muts.iter().fold(texts[file].clone(), |t, m| apply(&t, m));
        exercise(&texts);
    }
}

#[test]
fn every_seed_file_loads_or_reports_without_panicking() {
    for text in seeds() {
        exercise(&[text]);
    }
}
