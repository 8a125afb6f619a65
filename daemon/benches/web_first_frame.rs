//! From the D-Bus call to the first frame of a web page, against the host's
//! own headless Chromium loading the same page, in one run:
//!
//! - the page: a CSS-styled heading, an inline PNG (`data:` URL) and a line
//!   JavaScript writes, served over TLS 1.3 by a server on 127.0.0.1 whose
//!   CA `vitrined --egress-ca` trusts (the server of `tests/dbus_web.rs`);
//! - Vitrine: `OpenUri` over zbus to `vitrined` (QEMU TCG guests of a `web`
//!   profile of the shipped shape, 1 GiB and 2 vCPUs, whose egress names
//!   only the server), call to the first frame (`Timings["first-frame"]`),
//!   for a VM cloned on demand from the template, one taken from a warm
//!   pool of clones, and (one run) a cold boot. The profile preloads the
//!   browser (`preload = "web"`), as the shipped one does: a template and
//!   its clones hold Chromium started and idle; a cold boot starts it for
//!   the task;
//! - peer: the host's `chromium-headless-shell --screenshot` of the same
//!   URL at the guest's viewport (1024x768), trusting the test CA through
//!   an NSS database, its profile made by an uncounted first run.
//!
//! Prints p50 over `VITRINE_BENCH_RUNS` runs (default 3), the ratio to the
//! peer, and the steps: call to VM ready, the page step (task sent to first
//! frame, less the transfer) and, read from the guest's serial console
//! while the VM runs, the shim's own `browser:` times (Chromium ready;
//! navigation to first frame). Without the guest image, QEMU, dbus-daemon,
//! the host's Chromium or `certutil` it says what is missing and exits 0.
//!
//! `cargo bench -p vitrine-daemon --bench web_first_frame`.

#[path = "../tests/dbus_support/mod.rs"]
mod dbus_support;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbus_support::tls_server::TlsServer;
use dbus_support::{
    image_or_skip, manager_proxy, manager_signals, task_proxy, tool_or_skip, wait_finished,
    PrivateBus,
};
use zbus::zvariant::{OwnedObjectPath, Value};

const NAME: &str = "web_first_frame";
/// The host's headless Chromium (Debian's `chromium-headless-shell`).
const HOST_CHROMIUM: &str = "/usr/lib/chromium/chromium-headless-shell";

/// An 8x8 PNG of pure #ff00ff.
const MAGENTA_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEUlEQVR4nGP4z/AfK2IYWhIA0ad/gXfwoGMAAAAASUVORK5CYII=";

/// The page: CSS, an inline PNG and a line written by JavaScript.
const PAGE: &str = "<!doctype html><html><head><title>Vitrine web bench</title>\
    <style>h1{color:#0033cc;font:bold 44px sans-serif;margin:24px}\
    p{font:28px sans-serif;margin:24px}</style></head>\
    <body style=\"margin:0;background:#ffffff\">\
    <h1>STYLED HEADING</h1><p id=js>script did not run</p>\
    <script>document.getElementById('js').textContent='WRITTEN BY SCRIPT';</script>\
    <img src=\"data:image/png;base64,MAGENTA\" width=120 height=120 \
         style=\"position:absolute;left:600px;top:300px\"></body></html>";

/// One task's first frame and its steps, ms.
#[derive(Debug, Clone, Copy)]
struct Frame {
    first_frame: f64,
    vm_ready: f64,
    /// Task sent to first frame, less the transfer (as `office_first_frame`'s
    /// render step).
    page: f64,
    /// The shim's `browser: preloaded in the template|started for the task,
    /// ready in N ms`, when the console showed it.
    browser_start: Option<f64>,
    /// The shim's `browser: first frame of URL after N ms` (navigation
    /// sent to first frame), when the console showed it.
    browser_frame: Option<f64>,
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
        || !tool_or_skip(NAME, "certutil", "libnss3-tools")
        || !tool_or_skip(NAME, HOST_CHROMIUM, "chromium-headless-shell")
    {
        return;
    }
    let page = PAGE.replace("MAGENTA", MAGENTA_PNG);
    let server = TlsServer::start(HashMap::from([("/".to_owned(), page)]));
    let url = format!("https://localhost:{}/", server.port);
    let work = tempfile::tempdir().unwrap();
    let policy_dir = work.path().join("policy");
    policy(&policy_dir, server.port);
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let templates = work.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    let setup = SetUp {
        image: &image,
        policy: &policy_dir,
        ca: &ca,
        templates: &templates,
        url: &url,
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clone = rt.block_on(measure(&setup, &["--warm-pool", "0"], runs, true));
    let warm = rt.block_on(measure(&setup, &["--warm-pool", "1"], runs, true));
    let cold = rt.block_on(measure(
        &setup,
        &["--warm-pool", "0", "--no-templates"],
        1,
        false,
    ));
    let served = server.requests.lock().unwrap().len();
    let peer_dir = work.path().join("peer");
    peer_profile(&peer_dir, &ca);
    peer(&url, &peer_dir); // uncounted: makes the host profile
    let peers: Vec<f64> = (0..runs).map(|_| peer(&url, &peer_dir)).collect();
    let peer_p50 = p50(&peers);

    println!("\n### First frame of a local HTTPS page ({runs} run(s), p50)\n");
    println!(
        "| set-up | first frame (s) | call -> VM ready (s) | page step (s) \
         | guest: Chromium ready (s) | guest: navigation -> first frame (s) | vs peer |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, frames) in [
        ("Vitrine, clone of the web template (QEMU TCG)", &clone),
        ("Vitrine, warm pool of web clones (QEMU TCG)", &warm),
        ("Vitrine, cold boot (1 run)", &cold),
    ] {
        let col = |f: fn(&Frame) -> f64| p50(&frames.iter().map(f).collect::<Vec<_>>()) / 1e3;
        let guest = |f: fn(&Frame) -> Option<f64>| {
            let v: Vec<f64> = frames.iter().filter_map(f).collect();
            if v.len() == frames.len() {
                format!("{:.2}", p50(&v) / 1e3)
            } else {
                "-".to_owned()
            }
        };
        let first = col(|f| f.first_frame);
        println!(
            "| {label} | {first:.2} | {:.2} | {:.2} | {} | {} | {:.1}x |",
            col(|f| f.vm_ready),
            col(|f| f.page),
            guest(|f| f.browser_start),
            guest(|f| f.browser_frame),
            first / peer_p50
        );
    }
    println!(
        "| peer: host `chromium-headless-shell --screenshot` (1024x768) | {peer_p50:.2} | | | | | 1.0x |"
    );
    println!();
    println!(
        "- the page server answered {served} request(s) from the VMs (the host's \
         Chromium came after)"
    );
    println!(
        "- page step: task sent to first frame, less the transfer (the guest holding the \
         task): the test CA added to the running browser's NSS database, the page \
         loaded and drawn; Chromium itself started before Ready (in the template, or \
         during a cold boot)"
    );
    if [&clone, &warm, &cold]
        .iter()
        .flat_map(|frames| frames.iter())
        .any(|f| f.browser_start.is_none() || f.browser_frame.is_none())
    {
        println!("- \"-\": the shim's `browser:` line was not read from the VM's serial console");
    }
}

fn p50(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

/// What every set-up shares.
struct SetUp<'a> {
    image: &'a Path,
    policy: &'a Path,
    ca: &'a Path,
    templates: &'a Path,
    url: &'a str,
}

/// A `web` profile of the shipped shape (`policy/examples`: 1 GiB, 2 vCPUs,
/// 2560x1440) whose egress names only the page's server.
fn policy(dir: &Path, port: u16) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("10-web.toml"),
        format!(
            r#"
[profile.web]
memory_mib = 1024
vcpus = 2
time_limit = "10m"
display = {{ max_width = 2560, max_height = 1440, max_fps = 60 }}
egress = ["localhost:{port}"]
preload = "web"

[[rule]]
name = "bench-server"
action = "open-uri"
scheme = "https"
sandbox = "web"
"#
        ),
    )
    .unwrap();
}

/// `runs` tasks on one daemon started with `args`, after one uncounted
/// task (which makes the template and fills the pool) when `warm_up`.
async fn measure(setup: &SetUp<'_>, args: &[&str], runs: usize, warm_up: bool) -> Vec<Frame> {
    let mut daemon_args: Vec<OsString> = vec![
        "--policy-dir".into(),
        setup.policy.into(),
        "--image-dir".into(),
        setup.image.into(),
        "--egress-ca".into(),
        setup.ca.into(),
        "--no-windows".into(),
    ];
    daemon_args.extend(args.iter().map(OsString::from));
    let daemon_args: Vec<&OsStr> = daemon_args.iter().map(OsString::as_os_str).collect();
    let bus = PrivateBus::start(
        &daemon_args,
        &[("VITRINE_TEMPLATE_DIR", setup.templates.as_os_str())],
    );
    // The daemon's runtime directory is under its TMPDIR (no
    // XDG_RUNTIME_DIR on the private bus): the VMs' serial logs are there.
    let console = ConsoleWatch::start(bus.tmp());
    let connection = bus.connect().await;
    let mut signals = manager_signals(&connection).await;
    if warm_up {
        let first = task(&connection, &mut signals, setup.url, &console).await;
        eprintln!("{NAME}: {args:?}: uncounted first task {first:?}");
    }
    let mut frames = Vec::new();
    for run in 0..runs {
        // The pool clones its next VM after a task: let it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let frame = task(&connection, &mut signals, setup.url, &console).await;
        eprintln!("{NAME}: {args:?}, run {run}: {frame:?}");
        frames.push(frame);
    }
    drop(console);
    drop(bus);
    frames
}

async fn task(
    connection: &zbus::Connection,
    signals: &mut zbus::MessageStream,
    url: &str,
    console: &ConsoleWatch,
) -> Frame {
    let manager = manager_proxy(connection).await;
    console.clear();
    let task: OwnedObjectPath = manager
        .call("OpenUri", &(url, HashMap::<&str, Value<'_>>::new()))
        .await
        .unwrap();
    let verdict = wait_finished(connection, signals, &task, Duration::from_secs(600)).await;
    let proxy = task_proxy(connection, task.as_str()).await;
    let t: HashMap<String, u64> = proxy.get_property("Timings").await.unwrap();
    let d: HashMap<String, String> = proxy.get_property("Details").await.unwrap();
    assert_eq!(verdict, "clean", "{d:?}");
    assert!(
        d.get("location").is_some_and(|l| l.starts_with(url)),
        "the tab is not at {url}: {d:?}"
    );
    let ms = |k: &str| -> f64 {
        d.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no detail {k:?} in {d:?}"))
    };
    let us = |k: &str| -> f64 {
        *t.get(k)
            .unwrap_or_else(|| panic!("no timing {k:?} in {t:?}")) as f64
            / 1e3
    };
    eprintln!(
        "{NAME}: vm {}; connections {}",
        d.get("vm").cloned().unwrap_or_default(),
        d.get("connections").cloned().unwrap_or_default()
    );
    let lines = console.browser_lines();
    for line in &lines {
        eprintln!("{NAME}: guest: {line}");
    }
    Frame {
        first_frame: us("first-frame"),
        vm_ready: us("vm-ready"),
        page: ms("first-frame-ms") - ms("transfer-ms"),
        browser_start: lines.iter().find_map(|l| number_after(l, ", ready in ")),
        browser_frame: lines
            .iter()
            .filter(|l| l.contains("browser: first frame of "))
            .find_map(|l| number_after(l, " after ")),
    }
}

/// The decimal number right after the last `key` in `line`.
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.rfind(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Copies, every 50 ms, the guest serial logs (`serial.log`) under a
/// daemon's runtime directory while they exist: a VM's directory goes
/// when the VM does, so its console is read while the task runs.
struct ConsoleWatch {
    seen: Arc<Mutex<BTreeMap<PathBuf, String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConsoleWatch {
    fn start(root: PathBuf) -> ConsoleWatch {
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let mut logs = Vec::new();
                serial_logs(&root, 8, &mut logs);
                for path in logs {
                    if let Ok(text) = std::fs::read(&path) {
                        let text = String::from_utf8_lossy(&text).into_owned();
                        s.lock().unwrap().insert(path, text);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        ConsoleWatch {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Forgets the consoles seen so far (VMs of earlier tasks).
    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// The shim's `browser:` lines on the consoles seen since `clear`.
    fn browser_lines(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .values()
            .flat_map(|text| text.lines())
            .filter(|l| l.contains("browser: "))
            .map(|l| l.trim().to_owned())
            .collect()
    }
}

impl Drop for ConsoleWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every `serial.log` under `dir`, `depth` levels down at most.
fn serial_logs(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth > 0 {
            serial_logs(&entry.path(), depth - 1, out);
        } else if kind.is_file() && entry.file_name() == "serial.log" {
            out.push(entry.path());
        }
    }
}

/// The peer's HOME: an NSS database (`~/.pki/nssdb`, which Chromium on
/// Linux reads) that trusts the test CA, as the guest's does for the task.
fn peer_profile(dir: &Path, ca: &Path) {
    let nssdb = dir.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let made = Command::new("certutil")
        .args(["-d", &db, "-N", "--empty-password"])
        .status()
        .unwrap();
    assert!(made.success(), "certutil -N");
    let added = Command::new("certutil")
        .args(["-d", &db, "-A", "-t", "C,,", "-n", "vitrine-bench-ca", "-i"])
        .arg(ca)
        .status()
        .unwrap();
    assert!(added.success(), "certutil -A");
}

/// The host's headless Chromium to a screenshot of `url`: seconds.
fn peer(url: &str, dir: &Path) -> f64 {
    let shot = dir.join("page.png");
    let _ = std::fs::remove_file(&shot);
    let started = Instant::now();
    let out = Command::new(HOST_CHROMIUM)
        .args(["--no-sandbox", "--headless", "--window-size=1024,768"])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed().as_secs_f64();
    // A certificate error writes no screenshot.
    assert!(
        out.status.success() && shot.is_file(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}
