//! Time from task submission to first frame for a PDF under the QEMU
//! backend (TCG), split into boot, transfer in, render and first frame, with
//! the host's own `pdftoppm` on the same document as the floor.
//!
//! `cargo bench -p vitrine-tests --bench first_frame`; `VITRINE_BENCH_RUNS`
//! sets the number of runs (default 5).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use vitrine_daemon::backend::qemu::QemuBackend;
use vitrine_daemon::backend::{GuestImage, VmConfig};
use vitrine_daemon::fresh_guest::{run_in_fresh_guest, GuestDeadlines};
use vitrine_daemon::task::TaskInput;
use vitrine_shim::protocol::{Limits, TaskStatus};
use vitrine_tests::fixtures;
use vitrine_tests::guest_image;

/// Width the guest renders PDF pages to (the shim's cap), used for the floor too.
const SCALE_TO: u32 = 1200;

struct Sample {
    boot: Duration,
    transfer_in: Duration,
    render: Duration,
    first_frame: Duration,
    total: Duration,
}

fn guest_sample(image_dir: &Path, pdf: &[u8]) -> anyhow::Result<Sample> {
    let input = TaskInput::file(
        "bench.pdf",
        "application/pdf",
        pdf.to_vec(),
        Limits::default(),
    );
    let config = VmConfig::new(GuestImage::from_dir(image_dir)?);
    // No wait after Shutdown: the VM's end is not part of the measurement.
    let done = run_in_fresh_guest(
        &QemuBackend::new(),
        &config,
        &input,
        GuestDeadlines::after_shutdown(Duration::ZERO),
    )?;
    let run = done.task;
    anyhow::ensure!(
        run.status == Some(TaskStatus::Ok),
        "task ended {:?}",
        run.status
    );
    let first_frame = run.times.first_frame.context("no frame")?;
    // Transfer in: until the guest holds the whole input (its own count,
    // after Accepted), else until the host wrote it.
    let transfer_in = run.transfer_in().unwrap_or_default();
    Ok(Sample {
        boot: done.boot,
        transfer_in,
        render: first_frame.saturating_sub(transfer_in),
        first_frame,
        total: done.boot + first_frame,
    })
}

fn host_pdftoppm(pdf: &[u8]) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("bench.pdf");
    std::fs::write(&input, pdf)?;
    let started = Instant::now();
    let out = Command::new("pdftoppm")
        .args(["-f", "1", "-l", "1", "-scale-to", &SCALE_TO.to_string()])
        .arg(&input)
        .arg(dir.path().join("page"))
        .output()
        .context("run pdftoppm (apt-get install poppler-utils)")?;
    let took = started.elapsed();
    anyhow::ensure!(out.status.success(), "pdftoppm failed");
    Ok(took)
}

fn stats(mut values: Vec<Duration>) -> (Duration, Duration, Duration) {
    values.sort();
    let mid = values.len() / 2;
    (values[0], values[mid], values[values.len() - 1])
}

fn row(name: &str, values: Vec<Duration>) {
    let (min, median, max) = stats(values);
    println!(
        "| {name:<34} | {:>9.1} | {:>9.1} | {:>9.1} |",
        min.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

fn main() -> anyhow::Result<()> {
    let Some(dir) = guest_image::require("first_frame benchmark") else {
        return Ok(());
    };
    let runs: usize = std::env::var("VITRINE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let pdf = fixtures::pdf_with_pages(&["Vitrine benchmark", "Second page", "Third page"]);

    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        samples.push(guest_sample(&dir, &pdf)?);
    }
    let floor = (0..runs)
        .map(|_| host_pdftoppm(&pdf))
        .collect::<anyhow::Result<Vec<_>>>()?;

    println!(
        "first frame of a 3-page PDF ({} bytes), {runs} runs, QEMU TCG, image {}",
        pdf.len(),
        dir.display()
    );
    println!(
        "| {:<34} | {:>9} | {:>9} | {:>9} |",
        "step (ms)", "min", "median", "max"
    );
    println!("|{:-<36}|{:-<11}|{:-<11}|{:-<11}|", "", "", "", "");
    let col = |f: fn(&Sample) -> Duration| samples.iter().map(f).collect::<Vec<_>>();
    row("boot to Ready", col(|s| s.boot));
    row("transfer in", col(|s| s.transfer_in));
    row("render (input held -> first frame)", col(|s| s.render));
    row("submission -> first frame", col(|s| s.first_frame));
    row("start VM -> first frame", col(|s| s.total));
    row("host pdftoppm page 1 (floor)", floor);
    Ok(())
}
