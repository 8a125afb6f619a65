//! A private session bus for one test: its own `dbus-daemon` with a
//! service directory whose `org.vitrine.Sandbox1.service` starts this
//! build's `vitrined` (so every call goes through real D-Bus activation),
//! and a private HOME with XDG directories that the test can scan.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod docm;
pub mod office_docs;
pub mod pdf_files;
pub mod tls_server;

use vitrine_daemon::fresh_guest::qemu_installed;
use vitrine_daemon::image_cache::{self, ImageCacheError};

/// A line the test harness shows even for a passing test.
pub fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The source tree.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The shipped example policy.
/// The template cache the test daemons share: `$VITRINE_TEMPLATE_DIR`, else
/// the user's own (`~/.cache/vitrine/templates`).
pub fn shared_template_dir() -> PathBuf {
    std::env::var_os("VITRINE_TEMPLATE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cache/vitrine/templates")
        })
}

pub fn example_policy() -> PathBuf {
    repo().join("policy/examples/policy.d")
}

/// Whether `program` runs (`--version`), else a SKIPPED line.
pub fn tool_or_skip(test: &str, program: &str, package: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        loud(&format!(
            "SKIPPED {test}: {program} not found (apt-get install {package})"
        ));
    }
    ok
}

/// The guest image, or `None` after a loud SKIPPED line.
pub fn image_or_skip(test: &str) -> Option<PathBuf> {
    if !qemu_installed() {
        loud(&format!(
            "SKIPPED {test}: qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
        ));
        return None;
    }
    match image_cache::locate(None) {
        Ok(dir) => Some(dir),
        Err(e @ ImageCacheError::NotBuilt(_)) => {
            loud(&format!("SKIPPED {test}: {e}"));
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// One private bus with `vitrined` activatable on it.
pub struct PrivateBus {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub address: String,
    bus: Child,
}

impl PrivateBus {
    /// Starts `dbus-daemon --session --print-address` with a service file
    /// that runs `vitrined DAEMON_ARGS`; `env` goes to the bus, and so to the
    /// activated daemon (DISPLAY, for instance).
    pub fn start(daemon_args: &[&OsStr], env: &[(&str, &OsStr)]) -> PrivateBus {
        let dir = tempfile::Builder::new()
            .prefix("vitrine-bus-")
            .tempdir()
            .unwrap();
        let home = dir.path().join("home");
        let services = dir.path().join("services");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&services).unwrap();
        let mut exec = String::from(env!("CARGO_BIN_EXE_vitrined"));
        // VMs booted ahead would show up as extra QEMU processes and load
        // the CPU beside the test; a test that wants the pool says so.
        if !daemon_args.iter().any(|a| *a == OsStr::new("--warm-pool")) {
            exec.push_str(" --warm-pool 0");
        }
        // A guard running on the host must not send this test's daemon its
        // denials; a test of the guard names its own socket.
        if !daemon_args
            .iter()
            .any(|a| *a == OsStr::new("--guard-socket"))
        {
            exec.push_str(" --no-guard-link");
        }
        for arg in daemon_args {
            let arg = arg.to_str().expect("UTF-8 daemon argument");
            assert!(
                !arg.contains([' ', '"', '\'', '\\', '%']),
                "argument needs quoting: {arg}"
            );
            exec.push(' ');
            exec.push_str(arg);
        }
        std::fs::write(
            services.join("org.vitrine.Sandbox1.service"),
            format!("[D-BUS Service]\nName=org.vitrine.Sandbox1\nExec={exec}\n"),
        )
        .unwrap();
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={}</listen>
  <servicedir>{}</servicedir>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.path().display(),
                services.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("dbus-daemon");
        // The config says <type>session</type>; --session would load the
        // host's own session config instead.
        cmd.arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--print-address")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_DOWNLOAD_DIR", home.join("Downloads"))
            .env("TMPDIR", dir.path().join("tmp"));
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        // Templates are shared by every test daemon, as by every daemon of
        // one user: the first one makes a shape's template, the rest clone it.
        cmd.env("VITRINE_TEMPLATE_DIR", shared_template_dir());
        for var in ["VITRINE_IMAGE_DIR", "VITRINE_QEMU", "RUST_LOG"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut bus = cmd.spawn().expect("dbus-daemon (apt-get install dbus)");
        let mut line = String::new();
        BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        assert!(address.starts_with("unix:"), "dbus-daemon said {line:?}");
        PrivateBus {
            dir,
            home,
            address,
            bus,
        }
    }

    /// The bus's temporary directory (the daemon's TMPDIR is `tmp` in it).
    pub fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    /// A command with this bus and HOME in its environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .env("HOME", &self.home)
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `vitrine ARGS`.
    pub fn vitrine(&self, args: &[&OsStr]) -> Output {
        self.command(env!("CARGO_BIN_EXE_vitrine"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `busctl --user ARGS` on this bus.
    pub fn busctl(&self, args: &[&str], stdin: Option<&Path>) -> Output {
        let mut cmd = self.command("busctl");
        cmd.arg("--user").args(args);
        if let Some(path) = stdin {
            cmd.stdin(std::fs::File::open(path).unwrap());
        }
        cmd.output().unwrap()
    }

    /// The `Details` property of the task object at `path`.
    pub fn task_details(&self, path: &str) -> std::collections::BTreeMap<String, String> {
        let out = self.busctl(
            &[
                "get-property",
                "--json=short",
                "org.vitrine.Sandbox1",
                path,
                "org.vitrine.Sandbox1.Task",
                "Details",
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["data"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A zbus connection to this bus.
    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap()
    }

    /// The pid of `vitrined` on this bus, once activated: the process of
    /// that name whose environment holds this bus as its starter (dbus-daemon
    /// starts services through a babysitter, so it is not a child).
    pub fn daemon_pid(&self) -> Option<u32> {
        let starter = format!("DBUS_STARTER_ADDRESS={}", self.address);
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| process_name(*pid).as_deref() == Some("vitrined"))
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == starter.as_bytes()))
            })
    }

    /// Every process below `vitrined` (VMs, viewers), with its name.
    pub fn daemon_children(&self) -> Vec<(u32, String)> {
        let Some(daemon) = self.daemon_pid() else {
            return Vec::new();
        };
        let mut all = Vec::new();
        let mut todo = vec![daemon];
        while let Some(pid) = todo.pop() {
            for child in children_of(pid) {
                all.push((child, process_name(child).unwrap_or_default()));
                todo.push(child);
            }
        }
        all
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        // The daemon exits when its bus goes away; make sure of it.
        let daemon = self.daemon_pid();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
        if let Some(pid) = daemon {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

/// Child pids of `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// The process's name (comm).
pub fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The words Tesseract reads on the PNG at `png`, upper-cased; `None`
/// after a SKIPPED line naming `what` when tesseract is not installed.
pub fn ocr_or_skip(what: &str, png: &Path) -> Option<String> {
    if !tool_or_skip(what, "tesseract", "tesseract-ocr") {
        return None;
    }
    let ocr = Command::new("tesseract")
        .arg(png)
        .arg("stdout")
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&ocr.stdout).to_uppercase())
}

/// `xdotool ARGS` on `display`: its trimmed output, `None` when it failed.
pub fn xdotool(display: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The names in `dir`, sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Output of a command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `OsString`s from `&str`s.
pub fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Waits for `TaskFinished` of `task` on `connection`, returning the
/// verdict; panics after `limit` with what the task object says of itself.
///
/// The signal is the fast path; the task's `Verdict` property is read every
/// second as well, so a signal that the stream dropped (it keeps a bounded
/// queue) or that came before this wait began is never waited on forever.
pub async fn wait_finished(
    connection: &zbus::Connection,
    stream: &mut zbus::MessageStream,
    task: &zbus::zvariant::OwnedObjectPath,
    limit: Duration,
) -> String {
    use zbus::export::futures_core::Stream;
    let proxy = task_proxy(connection, task.as_str()).await;
    let signalled = async {
        loop {
            let msg = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx))
                .await
                .expect("bus stream ended")
                .expect("bus message");
            let header = msg.header();
            if header.member().map(|m| m.as_str()) != Some("TaskFinished") {
                continue;
            }
            let (path, verdict): (zbus::zvariant::OwnedObjectPath, String) =
                msg.body().deserialize().unwrap();
            if &path == task {
                return verdict;
            }
        }
    };
    let polled = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let state: String = proxy.get_property("State").await.unwrap_or_default();
            if state == "finished" {
                let verdict: String = proxy.get_property("Verdict").await.unwrap_or_default();
                return verdict;
            }
        }
    };
    let wait = async {
        tokio::select! {
            v = signalled => v,
            v = polled => v,
        }
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(verdict) => verdict,
        Err(_) => {
            let state: zbus::Result<String> = proxy.get_property("State").await;
            let details: zbus::Result<HashMap<String, String>> =
                proxy.get_property("Details").await;
            let timings: zbus::Result<HashMap<String, u64>> = proxy.get_property("Timings").await;
            panic!(
                "{task} did not finish within {limit:?}; its state: {state:?}; \
                 details: {details:?}; timings (us after the call): {timings:?}"
            )
        }
    }
}

/// A stream of the manager's signals (subscribe before calling).
/// A proxy for the manager object, `/org/vitrine/Sandbox1`.
pub async fn manager_proxy(connection: &zbus::Connection) -> zbus::Proxy<'static> {
    zbus::Proxy::new_owned(
        connection.clone(),
        "org.vitrine.Sandbox1",
        "/org/vitrine/Sandbox1",
        "org.vitrine.Sandbox1",
    )
    .await
    .unwrap()
}

/// A proxy for one task object.
pub async fn task_proxy(connection: &zbus::Connection, task: &str) -> zbus::Proxy<'static> {
    zbus::Proxy::new_owned(
        connection.clone(),
        "org.vitrine.Sandbox1",
        task.to_owned(),
        "org.vitrine.Sandbox1.Task",
    )
    .await
    .unwrap()
}

pub async fn manager_signals(connection: &zbus::Connection) -> zbus::MessageStream {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.vitrine.Sandbox1")
        .unwrap()
        .path("/org/vitrine/Sandbox1")
        .unwrap()
        .build();
    zbus::MessageStream::for_match_rule(rule, connection, Some(256))
        .await
        .unwrap()
}

/// Compiles `src` (C) as a static program named `name` into `dir`, or
/// `None` after a SKIPPED line when no static C toolchain is installed.
pub fn static_program(test: &str, name: &str, src: &str, dir: &Path) -> Option<PathBuf> {
    let c = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&c, src).unwrap();
    match Command::new("cc")
        .arg("-static")
        .arg("-O1")
        .arg("-o")
        .arg(&exe)
        .arg(&c)
        .output()
    {
        Ok(out) if out.status.success() => Some(exe),
        Ok(out) => {
            loud(&format!(
                "SKIPPED {test}: cc -static failed (apt-get install gcc libc6-dev): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            None
        }
        Err(e) => {
            loud(&format!(
                "SKIPPED {test}: no C compiler (apt-get install gcc libc6-dev): {e}"
            ));
            None
        }
    }
}

/// A virtual X server on a free display number; killed on drop.
pub struct Xvfb {
    child: Child,
    /// `:N`.
    pub display: String,
}

impl Xvfb {
    /// Starts Xvfb (1280x1024, 24 bits) on the first free display from :90.
    pub fn start() -> Xvfb {
        for n in 90..140 {
            if display_in_use(n) {
                continue;
            }
            let display = format!(":{n}");
            let mut child = Command::new("Xvfb")
                .args([
                    display.as_str(),
                    "-screen",
                    "0",
                    "1280x1024x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("Xvfb");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                    return Xvfb { child, display };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("no free X display for Xvfb");
    }
}

/// Whether display `:n` has a live server: its lock file names a running
/// process. A lock left by a killed server is stale, and Xvfb replaces it.
fn display_in_use(n: u32) -> bool {
    match std::fs::read_to_string(format!("/tmp/.X{n}-lock")) {
        Ok(pid) => Path::new(&format!("/proc/{}", pid.trim())).exists(),
        Err(_) => false,
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM first, so that the server removes its lock and socket.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
