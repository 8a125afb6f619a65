//! From the D-Bus call to the first frame on screen, with its breakdown,
//! for the three ways `vitrined` gets a task its VM, measured in one run on
//! the same host, interleaved run by run:
//!
//! - cold boot: `--warm-pool 0 --no-templates`, each task boots its VM;
//! - clone on demand: `--warm-pool 0`, each task's VM is cloned from the
//!   template of its shape (made once, by an uncounted first task);
//! - warm pool of clones: `--warm-pool 1`, the task takes a clone made
//!   ahead, and the pool clones the next one after its render.
//!
//! Each set-up is a private session bus that activates this build's
//! `vitrined` (its viewer on one Xvfb display); set-ups 2 and 3 share one
//! template directory (`VITRINE_TEMPLATE_DIR`, a fresh temporary one). Each
//! run calls `OpenFile` with the 3-page PDF over zbus, waits for
//! `TaskFinished`, reads the task's `Timings` and `Details`, and checks
//! from `Details["vm"]` that the VM came the way the set-up says. Every
//! daemon first does one uncounted task. Steps:
//!
//! - policy: call to the policy's decision (reading the fd, sniffing);
//! - VM: decision to a VM at Ready (boot, clone, or taken from the pool);
//!   `boot-ms` is the backend's own spawn-to-Ready of that VM (for the
//!   pool, the time it took ahead of the task);
//! - identity: the fresh seed, clock and task id into the guest;
//! - transfer: the task and its input into the guest;
//! - render: task sent to the first frame, less the transfer;
//! - to viewer: first frame received to the viewer's acknowledgement that
//!   it presented it;
//! - other: the rest (starting the viewer window, bookkeeping);
//! - total: the call to that moment.
//!
//! Then, at the library level with the same template: spawn to running of
//! `VITRINE_BENCH_CLONES` clones (default 20) one after another, and the
//! private memory of idle clones against an idle booted VM (see
//! [`clones`]). Prints Markdown tables with p50 / p90 over
//! `VITRINE_BENCH_RUNS` runs per set-up (default 20) and the ratios to the
//! cold boot. Without the guest image, QEMU, dbus-daemon or Xvfb it says
//! what is missing and exits 0.
//!
//! `cargo build --release -p vitrine-microvm` (QEMU's jail), then
//! `cargo bench -p vitrine-daemon --bench dbus_first_frame`.

#[path = "../tests/dbus_support/mod.rs"]
mod dbus_support;

#[path = "support/clones.rs"]
mod clones;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::{Duration, Instant};

use dbus_support::{
    example_policy, image_or_skip, manager_proxy, manager_signals, repo, task_proxy, tool_or_skip,
    wait_finished, PrivateBus, Xvfb,
};
use vitrine_daemon::backend::kvm::KvmBackend;
use zbus::zvariant::{Fd, OwnedObjectPath, Value};

const NAME: &str = "dbus_first_frame";

fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn main() {
    let runs = env_count("VITRINE_BENCH_RUNS", 20);
    let clone_count = env_count("VITRINE_BENCH_CLONES", 20);
    let Some(image) = image_or_skip(NAME) else {
        return;
    };
    if !tool_or_skip(NAME, "dbus-daemon", "dbus") || !tool_or_skip(NAME, "Xvfb", "xvfb") {
        return;
    }
    let vmm = KvmBackend::new().binary().to_owned();
    if !vmm.is_file() {
        eprintln!(
            "SKIPPED {NAME}: {} is not built (cargo build --release -p vitrine-microvm); it jails QEMU",
            vmm.display()
        );
        return;
    }
    let templates = tempfile::Builder::new()
        .prefix("vitrine-bench-templates-")
        .tempdir()
        .unwrap();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let measured = rt.block_on(measure(&image, runs, templates.path()));
    let template = clones::template_on_disk(templates.path());
    let library = clones::measure(&image, templates.path(), clone_count);
    print_first_frame(&measured, runs);
    let cold_boot_ms = p50_p90(&measured.cold, |r| r.boot_ms).0;
    clones::print(&template, &library, measured.template_task_ms, cold_boot_ms);
    println!();
    println!(
        "{runs} runs per set-up, {clone_count} clones; the whole bench took {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// One run's steps, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    policy: f64,
    vm: f64,
    boot_ms: f64,
    identity: f64,
    transfer: f64,
    render: f64,
    to_viewer: f64,
    total: f64,
    wall_to_finished: f64,
}

/// One way of running `vitrined`, with its bus and what it measured.
struct SetUp {
    label: &'static str,
    /// What `Details["vm"]` starts with when the VM came this way.
    origin: &'static str,
    bus: PrivateBus,
    connection: zbus::Connection,
    signals: zbus::MessageStream,
    rows: Vec<Row>,
}

impl SetUp {
    async fn start(
        label: &'static str,
        origin: &'static str,
        image: &Path,
        args: &[&str],
        display: &str,
        templates: &Path,
    ) -> SetUp {
        let mut daemon_args: Vec<OsString> = vec![
            "--policy-dir".into(),
            example_policy().into(),
            "--image-dir".into(),
            image.into(),
        ];
        daemon_args.extend(args.iter().map(OsString::from));
        let daemon_args: Vec<&OsStr> = daemon_args.iter().map(OsString::as_os_str).collect();
        let bus = PrivateBus::start(
            &daemon_args,
            &[
                ("DISPLAY", OsStr::new(display)),
                (
                    "VITRINE_VIEWER",
                    env!("CARGO_BIN_EXE_vitrine-viewer").as_ref(),
                ),
                ("VITRINE_TEMPLATE_DIR", templates.as_os_str()),
            ],
        );
        let connection = bus.connect().await;
        let signals = manager_signals(&connection).await;
        let manager = manager_proxy(&connection).await;
        let activation = Instant::now();
        let _: Vec<(OwnedObjectPath, String, String, String, String)> =
            manager.call("ListTasks", &()).await.unwrap();
        eprintln!(
            "{NAME}: {label}: vitrined activated in {:.0} ms (not counted)",
            activation.elapsed().as_secs_f64() * 1e3
        );
        SetUp {
            label,
            origin,
            bus,
            connection,
            signals,
            rows: Vec::new(),
        }
    }

    /// One task on the PDF: its steps and how its VM came (`Details["vm"]`).
    async fn task(&mut self) -> (Row, String) {
        let manager = manager_proxy(&self.connection).await;
        let file = std::fs::File::open(repo().join("shim/fixtures/three-pages.pdf")).unwrap();
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
        let verdict = wait_finished(
            &self.connection,
            &mut self.signals,
            &task,
            Duration::from_secs(180),
        )
        .await;
        let wall = called.elapsed();
        assert_eq!(verdict, "clean", "{}", self.label);
        let proxy = task_proxy(&self.connection, task.as_str()).await;
        let t: HashMap<String, u64> = proxy.get_property("Timings").await.unwrap();
        let d: HashMap<String, String> = proxy.get_property("Details").await.unwrap();
        let us = |k: &str| {
            let v = t.get(k).unwrap_or_else(|| {
                panic!("{}: no timing {k:?} in {t:?}", self.label);
            });
            *v as f64 / 1e3
        };
        let ms = |k: &str| {
            d.get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{}: no detail {k:?} in {d:?}", self.label))
        };
        let row = Row {
            policy: us("policy"),
            vm: us("vm-ready") - us("policy"),
            boot_ms: ms("boot-ms"),
            identity: us("identity") - us("vm-ready"),
            transfer: ms("transfer-ms"),
            render: ms("first-frame-ms") - ms("transfer-ms"),
            to_viewer: us("first-frame-shown") - us("first-frame"),
            total: us("first-frame-shown"),
            wall_to_finished: wall.as_secs_f64() * 1e3,
        };
        // Close this run's window before the next.
        let _: () = proxy.call("Cancel", &()).await.unwrap();
        (row, d.get("vm").cloned().unwrap_or_default())
    }

    /// A counted run: the VM must have come the way this set-up says.
    async fn run(&mut self, run: usize) {
        let (row, vm) = self.task().await;
        eprintln!("{NAME}: {}, run {run}: {row:?}; vm: {vm}", self.label);
        assert!(
            vm.starts_with(self.origin),
            "{}, run {run}: the VM came another way: {vm:?}",
            self.label
        );
        self.rows.push(row);
    }
}

/// What the D-Bus part measured.
struct Measured {
    cold: Vec<Row>,
    clone: Vec<Row>,
    warm: Vec<Row>,
    /// The uncounted first task of the clone set-up, which made the
    /// template: call to `TaskFinished`, ms.
    template_task_ms: f64,
}

async fn measure(image: &Path, runs: usize, templates: &Path) -> Measured {
    let x = Xvfb::start();
    // The clone set-up goes first: its first task makes the template, which
    // the pool of the third then loads instead of making it at once.
    let mut clone = SetUp::start(
        "clone on demand",
        "cloned from template",
        image,
        &["--warm-pool", "0"],
        &x.display,
        templates,
    )
    .await;
    let made = Instant::now();
    let (_, vm) = clone.task().await;
    let template_task_ms = made.elapsed().as_secs_f64() * 1e3;
    eprintln!("{NAME}: the first clone task made the template in {template_task_ms:.0} ms (call to TaskFinished, not counted); vm: {vm}");
    let mut cold = SetUp::start(
        "cold boot",
        "booted",
        image,
        &["--warm-pool", "0", "--no-templates"],
        &x.display,
        templates,
    )
    .await;
    let mut warm = SetUp::start(
        "warm pool of clones",
        "warm: cloned from template",
        image,
        &["--warm-pool", "1"],
        &x.display,
        templates,
    )
    .await;
    // The pool loads the template and clones its first VM.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The pool clones its next VM while the cold set-up boots.
    for set in [&mut warm, &mut cold] {
        let (_, vm) = set.task().await;
        eprintln!("{NAME}: {}: first task (not counted); vm: {vm}", set.label);
    }
    // Round by round, so load from elsewhere on the host falls on all
    // three alike; the cold and clone runs give the pool its refill time.
    for run in 1..=runs {
        warm.run(run).await;
        cold.run(run).await;
        clone.run(run).await;
    }
    let daemons = [&cold, &clone, &warm].map(|s| s.bus.daemon_pid());
    eprintln!("{NAME}: daemons {daemons:?} done");
    Measured {
        cold: cold.rows,
        clone: clone.rows,
        warm: warm.rows,
        template_task_ms,
    }
}

/// The `pct`-th percentile (nearest rank, rounded down).
pub fn percentile(values: &[f64], pct: usize) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) * pct / 100]
}

/// Reads one step out of a run.
type Column = fn(&Row) -> f64;

fn p50_p90(rows: &[Row], f: Column) -> (f64, f64) {
    let v: Vec<f64> = rows.iter().map(f).collect();
    (percentile(&v, 50), percentile(&v, 90))
}

fn print_first_frame(m: &Measured, runs: usize) {
    let columns: [(&str, Column); 10] = [
        ("policy decision (call -> decision)", |r| r.policy),
        ("decision -> VM at Ready", |r| r.vm),
        ("  its spawn -> Ready (`boot-ms`)", |r| r.boot_ms),
        ("identity (seed, clock, task id)", |r| r.identity),
        ("transfer (task + input into guest)", |r| r.transfer),
        ("render (in guest, to first frame)", |r| r.render),
        ("to viewer (frame -> presented)", |r| r.to_viewer),
        ("other (viewer start, bookkeeping)", |r| {
            r.total - r.policy - r.vm - r.identity - r.transfer - r.render - r.to_viewer
        }),
        ("**call -> first frame on screen**", |r| r.total),
        ("call -> `TaskFinished` (3 pages)", |r| r.wall_to_finished),
    ];
    println!();
    println!(
        "D-Bus `OpenFile` -> first frame on screen, ms, p50 / p90 over {runs} runs per set-up, interleaved"
    );
    println!();
    println!("| step | cold boot | clone on demand | warm pool of clones | clone / cold (p50) |");
    println!("|---|---|---|---|---|");
    for (name, f) in &columns {
        let cell = |rows: &[Row]| {
            let (p50, p90) = p50_p90(rows, *f);
            format!("{p50:.1} / {p90:.1}")
        };
        let (cold, _) = p50_p90(&m.cold, *f);
        let (clone, _) = p50_p90(&m.clone, *f);
        let ratio = if cold >= 1.0 {
            format!("{:.2}", clone / cold)
        } else {
            "-".to_owned()
        };
        println!(
            "| {name} | {} | {} | {} | {ratio} |",
            cell(&m.cold),
            cell(&m.clone),
            cell(&m.warm)
        );
    }
    let total = |rows: &[Row]| p50_p90(rows, |r| r.total).0;
    println!();
    println!(
        "call -> first frame on screen, p50: clone on demand / cold boot = {:.0} / {:.0} ms = **{:.2}** (target <= 0.35); warm pool / cold boot = {:.2}",
        total(&m.clone),
        total(&m.cold),
        total(&m.clone) / total(&m.cold),
        total(&m.warm) / total(&m.cold)
    );
}
