//! From the D-Bus call to the first frame of a 3-page .docx, against the
//! host doing the same work outside any VM, in one run:
//!
//! - Vitrine: `OpenFile` over zbus to `vitrined` (QEMU TCG guests of the
//!   `office` profile, whose template holds LibreOffice loaded and idle),
//!   call to the first frame (`Timings["first-frame"]`), for a VM cloned
//!   on demand from the template, one taken from a warm pool of clones,
//!   and (one run) a cold boot that starts LibreOffice itself;
//! - peer: the host's `soffice --headless --convert-to pdf` (its profile
//!   made by an uncounted first run) + `pdftoppm` of page 1.
//!
//! Prints p50 over `VITRINE_BENCH_RUNS` runs (default 3), the ratio to the
//! peer, the render step (task sent to first frame), and the guest memory
//! the office template holds at `Ready` (its RAM file's allocated bytes).
//! Without the guest image, QEMU,
//! dbus-daemon or LibreOffice it says what is missing and exits 0.
//!
//! `cargo bench -p vitrine-daemon --bench office_first_frame`.

#[path = "../tests/dbus_support/mod.rs"]
mod dbus_support;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dbus_support::office_docs::{convert, soffice_or_skip, text_fodt};
use dbus_support::{
    example_policy, image_or_skip, manager_proxy, manager_signals, task_proxy, tool_or_skip,
    wait_finished, PrivateBus,
};
use zbus::zvariant::{Fd, OwnedObjectPath, Value};

const NAME: &str = "office_first_frame";

/// One task's first frame and render step, ms.
#[derive(Debug, Clone, Copy)]
struct Frame {
    first_frame: f64,
    render: f64,
}

fn main() {
    let runs: usize = std::env::var("VITRINE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let Some(image) = image_or_skip(NAME) else {
        return;
    };
    if !tool_or_skip(NAME, "dbus-daemon", "dbus")
        || !tool_or_skip(NAME, "pdftoppm", "poppler-utils")
        || soffice_or_skip(NAME).is_none()
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let docx = convert(
        work.path(),
        "letter.fodt",
        text_fodt(&[
            "Quarterly report, page one",
            "Results, page two",
            "Outlook, page three",
        ])
        .as_bytes(),
        "docx",
    );
    let input = work.path().join("letter.docx");
    std::fs::write(&input, &docx).unwrap();
    let templates = work.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clone = rt.block_on(measure(
        &image,
        &input,
        &templates,
        &["--warm-pool", "0"],
        runs,
        true,
    ));
    let warm = rt.block_on(measure(
        &image,
        &input,
        &templates,
        &["--warm-pool", "1"],
        runs,
        true,
    ));
    let cold = rt.block_on(measure(
        &image,
        &input,
        &templates,
        &["--warm-pool", "0", "--no-templates"],
        1,
        false,
    ));
    let peer_dir = work.path().join("peer");
    std::fs::create_dir_all(&peer_dir).unwrap();
    peer(&input, &peer_dir); // uncounted: makes the host profile
    let peers: Vec<f64> = (0..runs).map(|_| peer(&input, &peer_dir)).collect();
    let peer_p50 = p50(&peers);

    println!("\n### First frame of a 3-page .docx ({runs} run(s), p50)\n");
    println!("| set-up | first frame (s) | render step (s) | vs peer |");
    println!("|---|---:|---:|---:|");
    for (label, frames) in [
        ("Vitrine, clone of the office template (QEMU TCG)", &clone),
        ("Vitrine, warm pool of office clones (QEMU TCG)", &warm),
        (
            "Vitrine, cold boot, LibreOffice started in the VM (1 run)",
            &cold,
        ),
    ] {
        let first = p50(&frames.iter().map(|f| f.first_frame).collect::<Vec<_>>()) / 1e3;
        let render = p50(&frames.iter().map(|f| f.render).collect::<Vec<_>>()) / 1e3;
        println!(
            "| {label} | {first:.2} | {render:.2} | {:.1}x |",
            first / peer_p50
        );
    }
    println!(
        "| peer: host `soffice --convert-to pdf` + `pdftoppm` page 1 | {peer_p50:.2} | | 1.0x |"
    );
    println!();
    for (kind, mib) in template_memory(&templates) {
        println!("- guest RAM held at Ready by the {kind} template: {mib} MiB");
    }
}

fn p50(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

/// `runs` tasks on one daemon started with `args`, after one uncounted
/// task (which makes the template and fills the pool) when `warm_up`.
async fn measure(
    image: &Path,
    input: &Path,
    templates: &Path,
    args: &[&str],
    runs: usize,
    warm_up: bool,
) -> Vec<Frame> {
    let mut daemon_args: Vec<OsString> = vec![
        "--policy-dir".into(),
        example_policy().into(),
        "--image-dir".into(),
        image.into(),
        "--no-windows".into(),
    ];
    daemon_args.extend(args.iter().map(OsString::from));
    let daemon_args: Vec<&OsStr> = daemon_args.iter().map(OsString::as_os_str).collect();
    let bus = PrivateBus::start(
        &daemon_args,
        &[("VITRINE_TEMPLATE_DIR", templates.as_os_str())],
    );
    let connection = bus.connect().await;
    let mut signals = manager_signals(&connection).await;
    if warm_up {
        let first = task(&connection, &mut signals, input).await;
        eprintln!("{NAME}: {args:?}: uncounted first task {first:?}");
    }
    let mut frames = Vec::new();
    for run in 0..runs {
        // The pool clones its next VM after a render: let it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let frame = task(&connection, &mut signals, input).await;
        eprintln!("{NAME}: {args:?}, run {run}: {frame:?}");
        frames.push(frame);
    }
    drop(bus);
    frames
}

async fn task(
    connection: &zbus::Connection,
    signals: &mut zbus::MessageStream,
    input: &Path,
) -> Frame {
    let manager = manager_proxy(connection).await;
    let file = std::fs::File::open(input).unwrap();
    let task: OwnedObjectPath = manager
        .call(
            "OpenFile",
            &(
                Fd::from(&file),
                "letter.docx",
                HashMap::<&str, Value<'_>>::new(),
            ),
        )
        .await
        .unwrap();
    let verdict = wait_finished(connection, signals, &task, Duration::from_secs(600)).await;
    let proxy = task_proxy(connection, task.as_str()).await;
    let t: HashMap<String, u64> = proxy.get_property("Timings").await.unwrap();
    let d: HashMap<String, String> = proxy.get_property("Details").await.unwrap();
    assert_eq!(verdict, "clean", "{d:?}");
    let ms = |k: &str| -> f64 {
        d.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no detail {k:?} in {d:?}"))
    };
    eprintln!("{NAME}: vm {}", d.get("vm").cloned().unwrap_or_default());
    Frame {
        first_frame: t["first-frame"] as f64 / 1e3,
        render: ms("first-frame-ms") - ms("transfer-ms"),
    }
}

/// The host's LibreOffice to PDF, then page 1 to PNG: seconds.
fn peer(input: &Path, dir: &Path) -> f64 {
    let _ = std::fs::remove_file(dir.join("letter.pdf"));
    let started = Instant::now();
    let convert = Command::new("soffice")
        .arg("--headless")
        .arg(format!(
            "-env:UserInstallation=file://{}",
            dir.join("profile").display()
        ))
        .args(["--convert-to", "pdf", "--outdir"])
        .arg(dir)
        .arg(input)
        .output()
        .unwrap();
    assert!(convert.status.success(), "{convert:?}");
    let render = Command::new("pdftoppm")
        .args(["-f", "1", "-l", "1", "-scale-to", "1100", "-png"])
        .arg(dir.join("letter.pdf"))
        .arg(dir.join("page"))
        .status()
        .unwrap();
    assert!(render.success());
    started.elapsed().as_secs_f64()
}

/// (kind, MiB) of each template made in `dir`: the allocated bytes of its
/// sparse RAM file, i.e. the guest memory in use at `Ready`.
fn template_memory(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.path().join("template.json");
        let Ok(json) = std::fs::read_to_string(&meta) else {
            continue;
        };
        let Ok(memory) = std::fs::metadata(entry.path().join("memory")) else {
            continue;
        };
        let kind = if json.contains("vitrine.preload=office") {
            "office (LibreOffice loaded)"
        } else {
            "document"
        };
        out.push((kind.to_owned(), (memory.blocks() * 512) >> 20));
    }
    out.sort();
    out
}
