//! From the D-Bus call to the first frame on screen, with its breakdown.
//!
//! A private session bus activates this build's `vitrined` (warmed by one
//! call first, so activation is not counted), which shows its viewer on an
//! Xvfb display. Each run calls `OpenFile` with the PDF fixture over zbus,
//! waits for `TaskFinished`, and reads the task's `Timings` and `Details`:
//!
//! - policy: call to the policy's decision (reading the fd, sniffing);
//! - VM: decision to a VM at Ready: a QEMU TCG boot without the warm pool,
//!   taking a VM booted ahead with it;
//! - transfer: the task and its input into the guest;
//! - render: task sent to the first frame, less the transfer;
//! - to viewer: first frame received to the viewer's acknowledgement that
//!   it presented it (the viewer reports each redraw that drew new frames);
//! - other: the rest (starting the viewer window, bookkeeping);
//! - total: the call to that moment.
//!
//! Runs twice in the same bus set-up, `vitrined --warm-pool 0` (every task
//! boots its VM) and `--warm-pool 1` (the pool boots the next VM after each
//! task's render; each run waits for it), and prints a table for each with
//! p50 and p90 over `VITRINE_BENCH_RUNS` runs (default 5), then the warm/cold
//! ratio of the totals. Without the guest image, dbus-daemon or Xvfb it says what is missing
//! and exits 0.

#[path = "../tests/dbus_support/mod.rs"]
mod dbus_support;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use dbus_support::{
    example_policy, image_or_skip, manager_proxy, manager_signals, repo, task_proxy, tool_or_skip,
    wait_finished, PrivateBus, Xvfb,
};
use zbus::zvariant::{Fd, OwnedObjectPath, Value};

const NAME: &str = "dbus_first_frame";

fn main() {
    let runs: usize = std::env::var("VITRINE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let Some(image) = image_or_skip(NAME) else {
        return;
    };
    if !tool_or_skip(NAME, "dbus-daemon", "dbus") || !tool_or_skip(NAME, "Xvfb", "xvfb") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cold = rt.block_on(measure(&image, runs, 0));
    let warm = rt.block_on(measure(&image, runs, 1));
    print_table("no warm pool: each task boots its VM", &cold, runs);
    print_table(
        "warm pool of 1: each task takes a VM booted ahead",
        &warm,
        runs,
    );
    let total =
        |rows: &[Row]| percentile(&mut rows.iter().map(|r| r.total).collect::<Vec<_>>(), 50);
    println!();
    println!(
        "call -> first frame on screen, p50: warm {:.0} ms / cold {:.0} ms = {:.2}",
        total(&warm),
        total(&cold),
        total(&warm) / total(&cold)
    );
}

/// One run's steps, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    policy: f64,
    vm: f64,
    transfer: f64,
    render: f64,
    to_viewer: f64,
    total: f64,
    wall_to_finished: f64,
}

async fn measure(image: &std::path::Path, runs: usize, pool: usize) -> Vec<Row> {
    let x = Xvfb::start();
    let pool = pool.to_string();
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--warm-pool".as_ref(),
            pool.as_ref(),
        ],
        &[
            ("DISPLAY", OsStr::new(&x.display)),
            (
                "VITRINE_VIEWER",
                env!("CARGO_BIN_EXE_vitrine-viewer").as_ref(),
            ),
        ],
    );
    let connection = bus.connect().await;
    let mut signals = manager_signals(&connection).await;
    let manager = manager_proxy(&connection).await;
    let activation = Instant::now();
    let _: Vec<(OwnedObjectPath, String, String, String, String)> =
        manager.call("ListTasks", &()).await.unwrap();
    eprintln!(
        "{NAME}: vitrined activated in {:.0} ms (not counted)",
        activation.elapsed().as_secs_f64() * 1e3
    );
    let pdf = repo().join("shim/fixtures/three-pages.pdf");
    let mut rows = Vec::new();
    for run in 0..runs {
        if pool != "0" {
            // The pool boots the next VM after each task's render.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let file = std::fs::File::open(&pdf).unwrap();
        let called = Instant::now();
        let task: OwnedObjectPath = manager
            .call(
                "OpenFile",
                &(
                    Fd::from(&file),
                    "three-pages.pdf",
                    HashMap::<&str, Value<'_>>::new(),
                ),
            )
            .await
            .unwrap();
        let verdict =
            wait_finished(&connection, &mut signals, &task, Duration::from_secs(180)).await;
        let wall = called.elapsed();
        assert_eq!(verdict, "clean", "run {run}");
        let proxy = task_proxy(&connection, task.as_str()).await;
        let t: HashMap<String, u64> = proxy.get_property("Timings").await.unwrap();
        let d: HashMap<String, String> = proxy.get_property("Details").await.unwrap();
        let us = |k: &str| t.get(k).copied().unwrap_or_default() as f64 / 1e3;
        let ms = |k: &str| {
            d.get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_default()
        };
        let row = Row {
            policy: us("policy"),
            vm: us("vm-ready") - us("policy"),
            transfer: ms("transfer-ms"),
            render: ms("first-frame-ms") - ms("transfer-ms"),
            to_viewer: us("first-frame-shown") - us("first-frame"),
            total: us("first-frame-shown"),
            wall_to_finished: wall.as_secs_f64() * 1e3,
        };
        eprintln!("{NAME}: pool {pool}, run {}: {row:?}", run + 1);
        rows.push(row);
        // Close this run's window before the next.
        let _: () = proxy.call("Cancel", &()).await.unwrap();
    }
    rows
}

/// The `pct`-th percentile (nearest rank, rounded down).
fn percentile(values: &mut [f64], pct: usize) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) * pct / 100]
}

/// Reads one step out of a run.
type Column = fn(&Row) -> f64;

fn print_table(title: &str, rows: &[Row], runs: usize) {
    let columns: [(&str, Column); 8] = [
        ("policy decision (call -> decision)", |r| r.policy),
        ("VM (decision -> VM at Ready)", |r| r.vm),
        ("transfer (task + input into guest)", |r| r.transfer),
        ("render (in guest, to first frame)", |r| r.render),
        ("to viewer (frame -> viewer presented it)", |r| r.to_viewer),
        ("other (viewer start, bookkeeping)", |r| {
            r.total - r.policy - r.vm - r.transfer - r.render - r.to_viewer
        }),
        ("TOTAL call -> first frame on screen", |r| r.total),
        ("call -> TaskFinished (3 pages)", |r| r.wall_to_finished),
    ];
    println!();
    println!("D-Bus OpenFile -> first frame on screen, {runs} runs (ms); {title}");
    println!(
        "{:<38} {:>9} {:>9} {:>9} {:>9}",
        "step", "p50", "p90", "min", "max"
    );
    for (name, f) in columns {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        let (p50, p90) = (percentile(&mut v, 50), percentile(&mut v, 90));
        let (min, max) = (v[0], v[v.len() - 1]);
        println!("{name:<38} {p50:>9.1} {p90:>9.1} {min:>9.1} {max:>9.1}");
    }
}
