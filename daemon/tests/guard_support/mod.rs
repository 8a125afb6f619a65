//! The real `vitrine-guard` on a tmpfs the test mounted: shared by
//! tests/exec_guard.rs and benches/exec_guard.rs (`#[path]`).
//!
//! Only tmpfs mounts made here are ever watched: a guard that hangs on the
//! host's root filesystem would stall the whole machine.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use vitrine_daemon::guard::wire::{Denied, GuardMessage};

/// How long a guard gets to place its marks, and an exec to finish.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// True when root, else a SKIPPED line.
pub fn root_or_skip(test: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        loud(&format!(
            "SKIPPED {test}: fanotify permission events and mounts need root"
        ));
    }
    root
}

/// A fresh tmpfs mounted on a temp dir, unmounted when dropped (even on
/// panic).
#[derive(Debug)]
pub struct Tmpfs {
    pub mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` after a SKIPPED line when it cannot mount.
    pub fn mount(test: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=64m,mode=0755",
                "vitrine-guard-test",
            ])
            .arg(&mnt)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { mnt, _dir: dir }),
            Ok(o) => {
                loud(&format!(
                    "SKIPPED {test}: cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                loud(&format!("SKIPPED {test}: no mount(8): {e}"));
                None
            }
        }
    }

    /// The config text that watches this mount only.
    pub fn config(&self, dir: &Path, extra: &str) -> PathBuf {
        let path = dir.join("guard.toml");
        std::fs::write(
            &path,
            format!("watch = [\"{}\"]\n{extra}", self.mnt.display()),
        )
        .unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// A running `vitrine-guard`, killed when dropped.
#[derive(Debug)]
pub struct RunningGuard {
    pub child: Child,
    pub socket: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl RunningGuard {
    /// Starts `binary` and waits until it watches. `None` after a SKIPPED
    /// line when fanotify is unavailable; panics on any other failure.
    pub fn start(test: &str, binary: &Path, config: &Path, socket: &Path) -> Option<RunningGuard> {
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stderr.take().unwrap());
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                eprintln!("[guard] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let guard = RunningGuard {
            child,
            socket: socket.to_owned(),
            log,
        };
        Self::wait_watching(guard, test, Instant::now())
    }

    fn wait_watching(
        mut guard: RunningGuard,
        test: &str,
        started: Instant,
    ) -> Option<RunningGuard> {
        while !guard.log_has("listening on") {
            if let Some(status) = guard.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let log = guard.log().join("\n");
                if log.contains("fanotify_init") {
                    loud(&format!(
                        "SKIPPED {test}: no fanotify permission events: {log}"
                    ));
                    return None;
                }
                panic!("vitrine-guard exited ({status}) before watching:\n{log}");
            }
            assert!(
                started.elapsed() < PATIENCE,
                "vitrine-guard did not start:\n{}",
                guard.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(guard)
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_has(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Sends `signal` (a `kill -SIG` name) to the guard.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon's end of the guard socket.
#[derive(Debug)]
pub struct Subscriber {
    lines: BufReader<UnixStream>,
    pub hello: GuardMessage,
}

impl Subscriber {
    pub fn connect(socket: &Path) -> Subscriber {
        let stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut lines = BufReader::new(stream);
        let hello = Self::read(&mut lines);
        Subscriber { lines, hello }
    }

    fn read(lines: &mut BufReader<UnixStream>) -> GuardMessage {
        let mut line = String::new();
        lines
            .read_line(&mut line)
            .expect("a line from the guard in time");
        GuardMessage::from_line(line.as_bytes()).unwrap()
    }

    /// Panics when a line arrives within `wait`.
    pub fn nothing_within(&mut self, wait: Duration) {
        self.lines.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut line = String::new();
        let read = self.lines.read_line(&mut line);
        self.lines
            .get_ref()
            .set_read_timeout(Some(PATIENCE))
            .unwrap();
        match read {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected no line, got {other:?}: {line:?}"),
        }
    }

    /// The next denial (panics after [`PATIENCE`]).
    pub fn denied(&mut self) -> Denied {
        match Self::read(&mut self.lines) {
            GuardMessage::Denied(d) => d,
            other => panic!("expected a denial, got {other:?}"),
        }
    }
}

/// Runs `cmd` on a thread; panics when it has not finished after
/// [`PATIENCE`] (a guard that never answers).
pub fn run(mut cmd: Command) -> std::io::Result<Output> {
    let (tx, rx) = mpsc::channel();
    let shown = format!("{cmd:?}");
    std::thread::spawn(move || {
        let _ = tx.send(cmd.stdin(Stdio::null()).output());
    });
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("{shown} did not finish in {PATIENCE:?}"))
}

/// Sets extended attribute `name` on `path`.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

/// A static multi-call busybox copied to `dir/name` (run as `name`), or
/// `None` after a SKIPPED line.
pub fn busybox_as(test: &str, dir: &Path, name: &str) -> Option<PathBuf> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    let Some(busybox) = busybox else {
        loud(&format!(
            "SKIPPED {test}: no static busybox (apt-get install busybox-static)"
        ));
        return None;
    };
    let copy = dir.join(name);
    std::fs::copy(busybox, &copy).unwrap();
    Some(copy)
}
