//! Time from task submission to first frame for the PDF fixture, with the
//! shim as a local process over a Unix socket, split into phases; and
//! `pdftoppm` on the host on the same file as the floor.
//!
//! Run: `cargo bench -p vitrine-shim --bench render`

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::Guest;
use vitrine_shim::protocol::{GuestMessage, HostMessage, Task, TaskKind};

const PDF: &[u8] = include_bytes!("../fixtures/three-pages.pdf");
const RUNS: usize = 7;

#[derive(Default, Clone, Copy)]
struct Sample {
    start: Duration,
    accept: Duration,
    transfer: Duration,
    render: Duration,
    first_frame: Duration,
    all_pages: Duration,
}

fn one_run() -> Sample {
    let t_start = Instant::now();
    let mut guest = Guest::start();
    let start = t_start.elapsed();

    let t0 = Instant::now();
    let task = Task {
        id: 1,
        kind: TaskKind::OpenFile {
            name: "three-pages.pdf".into(),
            mime_hint: None,
            size: PDF.len() as u64,
        },
        limits: support::limits(30_000),
        safe_copy: None,
        live: false,
    };
    guest.send(HostMessage::Task(task));
    assert!(matches!(
        guest.reader.recv().unwrap(),
        Some(GuestMessage::Accepted { .. })
    ));
    let accept = t0.elapsed();
    guest.send(HostMessage::TaskData {
        offset: 0,
        data: PDF.to_vec(),
    });
    let transfer = t0.elapsed() - accept;
    let mut first_frame = None;
    let all_pages;
    let mut page_info_at = None;
    loop {
        match guest.reader.recv().unwrap().unwrap() {
            GuestMessage::PageInfo { .. } => page_info_at = Some(t0.elapsed()),
            GuestMessage::Frame(_) => {
                first_frame.get_or_insert(t0.elapsed());
            }
            GuestMessage::Done { .. } => {
                all_pages = t0.elapsed();
                break;
            }
            _ => {}
        }
    }
    guest.shutdown();
    let first_frame = first_frame.expect("no frame");
    Sample {
        start,
        accept,
        transfer,
        // pdfinfo and pdftoppm page 1 run in parallel in the sandbox; the
        // page count is sent when both are done.
        render: page_info_at.unwrap_or(first_frame) - accept - transfer,
        first_frame,
        all_pages,
    }
}

fn pdftoppm_floor() -> Option<Duration> {
    let dir = tempfile::tempdir().ok()?;
    let input = dir.path().join("in.pdf");
    std::fs::write(&input, PDF).ok()?;
    let t0 = Instant::now();
    let status = Command::new("pdftoppm")
        .args(["-f", "1", "-l", "1", "-scale-to", "1200"])
        .arg(&input)
        .arg(dir.path().join("p"))
        .status()
        .ok()?;
    status.success().then(|| t0.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:8.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if !support::have_poppler("bench render") {
        return;
    }
    let _ = one_run(); // warm the page cache
    let samples: Vec<Sample> = (0..RUNS).map(|_| one_run()).collect();
    let col = |f: fn(&Sample) -> Duration| median(samples.iter().map(f).collect());
    let floor = median((0..RUNS).filter_map(|_| pdftoppm_floor()).collect());
    println!(
        "vitrine-shim local process, PDF fixture (3 pages, {} bytes), median of {RUNS}",
        PDF.len()
    );
    println!("{:<44} time", "phase");
    println!(
        "{:<44} {}",
        "start shim process -> Ready (boot/restore)",
        ms(col(|s| s.start))
    );
    println!("{:<44} {}", "submit -> Accepted", ms(col(|s| s.accept)));
    println!("{:<44} {}", "transfer in", ms(col(|s| s.transfer)));
    println!(
        "{:<44} {}",
        "render p.1 + pdfinfo (sandboxed, parallel)",
        ms(col(|s| s.render))
    );
    println!(
        "{:<44} {}",
        "first frame out (read PPM, send)",
        ms(col(|s| s.first_frame - s.accept - s.transfer - s.render))
    );
    println!(
        "{:<44} {}",
        "submit -> first frame",
        ms(col(|s| s.first_frame))
    );
    println!(
        "{:<44} {}",
        "submit -> all 3 pages + Done",
        ms(col(|s| s.all_pages))
    );
    println!("{:<44} {}", "floor: host pdftoppm, page 1", ms(floor));
}
