//! Decision time for a 1,000-rule policy. Target: p50 under 10 µs.
//!
//! `cargo bench -p vitrine-policy --bench decide`
//!
//! The policy mixes every kind of condition: extensions, MIME types, path
//! prefixes, path globs with wildcards, origins, URI schemes and hosts.
//! Each scenario times single `evaluate` calls (warm) and prints
//! percentiles; the timer's own cost is shown for reference.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};
use vitrine_policy::{FileFacts, Origin, PolicySet, Request, SourceFile};

const RULES: usize = 1000;
const SAMPLES: usize = 20_000;

/// 1,000 rules: the first and the last are the targets of the "first" and
/// "last" scenarios; the 998 between them cycle through five kinds.
fn policy_text() -> String {
    let mut t = String::from(
        "[profile.document]\nmemory_mib = 512\n[profile.web]\negress = [\"*:443\"]\n[profile.program]\nvcpus = 2\n\n",
    );
    t.push_str("[[rule]]\nname = \"first\"\naction = \"open-file\"\nmime = \"application/pdf\"\nextension = \"pdf\"\nsandbox = \"document\"\n\n");
    for i in 1..RULES - 1 {
        let _ = match i % 5 {
            0 => writeln!(t, "[[rule]]\naction = \"open-file\"\nextension = [\"x{i}\", \"y{i}\"]\ndecision = \"deny\"\n"),
            1 => writeln!(t, "[[rule]]\naction = [\"open-file\", \"run-program\"]\nmime = \"application/x-kind{i}\"\norigin = [\"quarantined\", \"downloads\"]\nsandbox = \"program\"\n"),
            2 => writeln!(t, "[[rule]]\naction = \"open-file\"\npath = \"/srv/share/team{i}/**\"\nsandbox = \"document\"\n"),
            3 => writeln!(t, "[[rule]]\naction = \"open-file\"\nmime = \"text/*\"\npath = [\"/home/*/project{i}/**\", \"/mnt/*/p{i}/*.txt\"]\ndecision = \"host\"\n"),
            _ => writeln!(t, "[[rule]]\naction = \"open-uri\"\nscheme = \"https\"\nhost = [\"h{i}.example.org\", \"*.h{i}.example.org\"]\nsandbox = \"web\"\n"),
        };
    }
    t.push_str("[[rule]]\nname = \"last\"\naction = \"open-file\"\nmime = \"text/plain\"\npath = \"/srv/target/**\"\ndecision = \"host\"\n");
    t
}

fn file(mime: &str, path: &str, origin: Origin) -> Request {
    Request::open_file(FileFacts {
        mime: mime.into(),
        name: None,
        path: Some(path.into()),
        origin,
    })
    .unwrap()
}

struct Stats {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    mean: Duration,
}

fn measure(mut f: impl FnMut()) -> Stats {
    for _ in 0..2_000 {
        f();
    }
    let mut samples: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    let total: Duration = samples.iter().sum();
    let at = |permille: usize| samples[(SAMPLES - 1) * permille / 1000];
    Stats {
        p50: at(500),
        p90: at(900),
        p99: at(990),
        mean: total / u32::try_from(SAMPLES).unwrap(),
    }
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else {
        format!("{:.1} µs", ns as f64 / 1000.0)
    }
}

fn main() {
    let text = policy_text();
    let start = Instant::now();
    let policy = PolicySet::from_sources(vec![SourceFile::new("bench.toml", text)], None)
        .unwrap_or_else(|d| panic!("bench policy is invalid:\n{d}"));
    let load = start.elapsed();
    assert_eq!(policy.rules().len(), RULES);

    let first = file(
        "application/pdf",
        "/home/ann/Downloads/a.pdf",
        Origin::LOCAL,
    );
    let last = file("text/plain", "/srv/target/notes.txt", Origin::LOCAL);
    let fall = file(
        "application/octet-stream",
        "/home/ann/Downloads/blob.bin",
        Origin {
            quarantined: true,
            downloads: true,
        },
    );
    let uri = Request::open_uri("https://www.h499.example.org/page").unwrap();
    let miss_uri = Request::open_uri("https://unknown.example.net/").unwrap();

    let name = |r: &Request| policy.evaluate(r).rule().map(|s| s.index);
    assert_eq!(name(&first), Some(1));
    assert_eq!(name(&last), Some(RULES));
    assert_eq!(name(&fall), None);
    assert_eq!(name(&uri), Some(500));
    assert_eq!(name(&miss_uri), None);

    let rows: Vec<(&str, Stats)> = vec![
        ("timer overhead (empty)", measure(|| black_box(()))),
        (
            "first-rule hit (#1)",
            measure(|| drop(black_box(policy.evaluate(black_box(&first))))),
        ),
        (
            "last-rule hit (#1000)",
            measure(|| drop(black_box(policy.evaluate(black_box(&last))))),
        ),
        (
            "default fall-through (file)",
            measure(|| drop(black_box(policy.evaluate(black_box(&fall))))),
        ),
        (
            "open-uri hit (#500)",
            measure(|| drop(black_box(policy.evaluate(black_box(&uri))))),
        ),
        (
            "default fall-through (uri)",
            measure(|| drop(black_box(policy.evaluate(black_box(&miss_uri))))),
        ),
        (
            "explain, last-rule hit",
            measure(|| drop(black_box(policy.explain(black_box(&last))))),
        ),
    ];

    println!(
        "vitrine-policy decide: {RULES}-rule policy, loaded and checked in {:.1} ms",
        load.as_secs_f64() * 1000.0
    );
    println!("{SAMPLES} timed calls per row, after warm-up\n");
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>10}",
        "scenario", "p50", "p90", "p99", "mean"
    );
    for (label, s) in &rows {
        println!(
            "{label:<30} {:>10} {:>10} {:>10} {:>10}",
            fmt(s.p50),
            fmt(s.p90),
            fmt(s.p99),
            fmt(s.mean)
        );
    }
    let worst = rows[1..6]
        .iter()
        .map(|(_, s)| s.p50)
        .max()
        .unwrap_or_default();
    println!(
        "\ntarget: decision p50 < 10 µs -> worst decision p50 {} ({})",
        fmt(worst),
        if worst < Duration::from_micros(10) {
            "met"
        } else {
            "NOT MET"
        }
    );
}
