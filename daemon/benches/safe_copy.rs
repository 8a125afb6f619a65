//! Safe copies of a 10-page text PDF, without and with OCR, against the
//! host pipeline that does the same work outside any VM, in one run:
//!
//! - Vitrine: `SaveSafeCopy` over D-Bus to `vitrined` (QEMU TCG guest, a
//!   warm pool of template clones; one uncounted copy first makes the
//!   template and fills the pool), call to `TaskFinished`, output size;
//! - peer: `pdftoppm -r 150` + `img2pdf` (the pixels as a lossless PDF,
//!   what a Dangerzone-style pipeline writes), and for the OCR column
//!   `pdftoppm -r 150` + `tesseract ... pdf` (a searchable PDF of the same
//!   pixels, one OpenMP thread as in the guest).
//!
//! Prints pages/s, seconds, output MiB and the ratios to the peer, p50 over
//! `VITRINE_BENCH_RUNS` runs (default 1). Without the guest image, QEMU,
//! dbus-daemon or a peer tool it says what is missing and exits 0.
//!
//! `cargo bench -p vitrine-daemon --bench safe_copy`.

#[path = "../tests/dbus_support/mod.rs"]
mod dbus_support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dbus_support::pdf_files::text_pdf;
use dbus_support::{
    example_policy, image_or_skip, manager_proxy, manager_signals, task_proxy, tool_or_skip,
    wait_finished, PrivateBus,
};
use zbus::zvariant::{Fd, OwnedObjectPath, Value};

const NAME: &str = "safe_copy";
const PAGES: usize = 10;
/// Longest one safe copy may take (OCR of ten pages under TCG is minutes).
const COPY_WAIT: Duration = Duration::from_secs(600);

/// One measured copy.
#[derive(Debug, Clone, Copy)]
struct Copy {
    secs: f64,
    bytes: u64,
}

fn main() {
    let runs: usize = std::env::var("VITRINE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let Some(image) = image_or_skip(NAME) else {
        return;
    };
    for (tool, package) in [
        ("dbus-daemon", "dbus"),
        ("pdftoppm", "poppler-utils"),
        ("img2pdf", "img2pdf"),
        ("tesseract", "tesseract-ocr"),
    ] {
        if !tool_or_skip(NAME, tool, package) {
            return;
        }
    }
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("report.pdf");
    std::fs::write(&input, text_pdf(PAGES, 45)).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (plain, ocr) = rt.block_on(vitrine(&image, &input, work.path(), runs));
    let peer_plain: Vec<Copy> = (0..runs)
        .map(|i| peer(&input, &work.path().join(format!("peer-{i}")), false))
        .collect();
    let peer_ocr: Vec<Copy> = (0..runs)
        .map(|i| peer(&input, &work.path().join(format!("peer-ocr-{i}")), true))
        .collect();

    println!("\n### Safe copy of a {PAGES}-page text PDF ({runs} run(s), p50)\n");
    println!("| set-up | pages/s | time (s) | output (MiB) | time vs peer | size vs peer |");
    println!("|---|---:|---:|---:|---:|---:|");
    let rows = [
        (
            "Vitrine, pixels only (QEMU TCG, warm clone)",
            &plain,
            &peer_plain,
        ),
        ("peer: pdftoppm -r 150 + img2pdf", &peer_plain, &peer_plain),
        ("Vitrine, pixels + OCR in the guest", &ocr, &peer_ocr),
        (
            "peer: pdftoppm -r 150 + tesseract pdf",
            &peer_ocr,
            &peer_ocr,
        ),
    ];
    for (label, copies, peers) in rows {
        let (secs, bytes) = (p50(copies, |c| c.secs), p50(copies, |c| c.bytes as f64));
        let (peer_secs, peer_bytes) = (p50(peers, |c| c.secs), p50(peers, |c| c.bytes as f64));
        println!(
            "| {label} | {:.2} | {secs:.1} | {:.2} | {:.1}x | {:.2}x |",
            PAGES as f64 / secs,
            bytes / f64::from(1u32 << 20),
            secs / peer_secs,
            bytes / peer_bytes,
        );
    }
}

fn p50(copies: &[Copy], f: impl Fn(&Copy) -> f64) -> f64 {
    let mut v: Vec<f64> = copies.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

/// Copies without and with OCR through `vitrined`.
async fn vitrine(image: &Path, input: &Path, work: &Path, runs: usize) -> (Vec<Copy>, Vec<Copy>) {
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
    let connection = bus.connect().await;
    let mut signals = manager_signals(&connection).await;
    let manager = manager_proxy(&connection).await;
    let mut n = 0;
    let mut next_dir = || {
        n += 1;
        let out = work.join(format!("vitrine-{n}"));
        std::fs::create_dir_all(&out).unwrap();
        out
    };
    // Uncounted: makes the template and fills the pool.
    let at = next_dir();
    copy(&connection, &mut signals, &manager, input, &at, false).await;
    let mut plain = Vec::new();
    let mut ocr = Vec::new();
    for _ in 0..runs {
        let at = next_dir();
        plain.push(copy(&connection, &mut signals, &manager, input, &at, false).await);
        let at = next_dir();
        ocr.push(copy(&connection, &mut signals, &manager, input, &at, true).await);
    }
    (plain, ocr)
}

/// One `SaveSafeCopy` of `input` into `out`, timed from the call.
async fn copy(
    connection: &zbus::Connection,
    signals: &mut zbus::MessageStream,
    manager: &zbus::Proxy<'static>,
    input: &Path,
    out: &Path,
    ocr: bool,
) -> Copy {
    let file = std::fs::File::open(input).unwrap();
    let mut options: HashMap<&str, Value<'_>> = HashMap::new();
    options.insert("out-dir", Value::from(out.to_string_lossy().into_owned()));
    options.insert("ocr", Value::from(ocr));
    let started = Instant::now();
    let task: OwnedObjectPath = manager
        .call("SaveSafeCopy", &(Fd::from(&file), "report.pdf", options))
        .await
        .unwrap();
    let verdict = wait_finished(connection, signals, &task, COPY_WAIT).await;
    let secs = started.elapsed().as_secs_f64();
    let details: HashMap<String, String> = task_proxy(connection, task.as_str())
        .await
        .get_property("Details")
        .await
        .unwrap();
    assert_eq!(verdict, "clean", "{details:?}");
    let bytes = details["safe-copy-bytes"].parse().unwrap();
    eprintln!(
        "{NAME}: ocr={ocr} {secs:.1} s, {bytes} bytes, {} words, vm {}",
        details["safe-copy-words"], details["vm"]
    );
    Copy { secs, bytes }
}

/// The host pipeline: render at 150 dpi, then img2pdf (or tesseract's
/// searchable PDF).
fn peer(input: &Path, dir: &Path, ocr: bool) -> Copy {
    std::fs::create_dir_all(dir).unwrap();
    let started = Instant::now();
    let render = Command::new("pdftoppm")
        .args(["-r", "150", "-png"])
        .arg(input)
        .arg(dir.join("page"))
        .status()
        .unwrap();
    assert!(render.success());
    let mut pngs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    assert_eq!(pngs.len(), PAGES);
    let out = dir.join("out.pdf");
    let ok = if ocr {
        let list = dir.join("pages.txt");
        let names: Vec<String> = pngs.iter().map(|p| p.display().to_string()).collect();
        std::fs::write(&list, names.join("\n") + "\n").unwrap();
        // One thread, as the guest runs it: tesseract's OpenMP threads
        // thrash on a loaded 2-core host (11 s a page instead of 1.7 s).
        Command::new("tesseract")
            .env("OMP_THREAD_LIMIT", "1")
            .arg(&list)
            .arg(dir.join("out"))
            .args(["-l", "eng", "pdf"])
            .output()
            .unwrap()
            .status
            .success()
    } else {
        Command::new("img2pdf")
            .args(&pngs)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap()
            .success()
    };
    assert!(ok, "the peer pipeline failed");
    let secs = started.elapsed().as_secs_f64();
    Copy {
        secs,
        bytes: std::fs::metadata(&out).unwrap().len(),
    }
}
