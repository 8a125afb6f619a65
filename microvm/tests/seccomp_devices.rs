//! The vCPU and device-worker allowlists hold for real device work: the
//! device test suites (vsock relay, block reads, rng, the transport, and
//! devices driven by a real vCPU through snapshots) run again with every
//! vCPU and worker thread under its filter (`VITRINE_SECCOMP_ARM=1`), and
//! must pass without a single denial. A worker whose filter is on dies
//! with the report when it makes a call off its list.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::SystemTime;

use vitrine_microvm::devices::virtio::worker::{
    self, EpollToken, EventHandler, Registry, WorkerError,
};
use vitrine_microvm::seccomp::report::{Denial, EXIT_SECCOMP_DENIED, REPORT_PREFIX};
use vitrine_microvm::seccomp::ARM_ENV;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Suites whose devices run on worker threads (and, in snapshot_devices,
/// are activated by a real vCPU, so the worker starts under the vCPU's
/// filter too).
const SUITES: &[&str] = &[
    "virtio_vsock",
    "virtio_block",
    "virtio_transport",
    "snapshot_devices",
];

const CHILD_ENV: &str = "VITRINE_SECCOMP_DEVICES_CHILD";

fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The newest build of test binary `name` beside this one.
fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(hash) = file.strip_prefix(name).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        if hash.len() != 16 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let modified = e.metadata().and_then(|m| m.modified()).ok()?;
        if best.as_ref().is_none_or(|(t, _)| modified > *t) {
            best = Some((modified, e.path()));
        }
    }
    best.map(|(_, p)| p)
}

#[test]
fn device_suites_pass_with_every_vcpu_and_worker_filter_armed() {
    let mut ran = 0;
    for suite in SUITES {
        let Some(bin) = sibling(suite) else {
            loud(&format!(
                "SKIPPED device suite {suite} under seccomp: its test binary is not built \
                 (cargo test -p vitrine-microvm builds every suite)"
            ));
            continue;
        };

        let out = Command::new(&bin)
            .args(["--test-threads", "2"])
            .env(ARM_ENV, "1")
            .output()
            .unwrap();

        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains(REPORT_PREFIX) && !stdout.contains(REPORT_PREFIX),
            "{suite} under seccomp: {stderr}"
        );
        assert!(
            out.status.success(),
            "{suite} under seccomp failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        ran += 1;
    }
    assert!(ran > 0 || SUITES.is_empty());
}

#[derive(Clone, Copy, Debug)]
struct Ping;

impl EpollToken for Ping {
    fn to_raw(self) -> u64 {
        0
    }
    fn from_raw(raw: u64) -> Option<Self> {
        (raw == 0).then_some(Ping)
    }
}

/// A device handler that, on its first event, makes a call no worker may.
struct Misbehaving {
    evt: EventFd,
}

impl EventHandler for Misbehaving {
    type Token = Ping;
    fn init(&mut self, reg: &Registry<Ping>) -> Result<(), WorkerError> {
        reg.add(self.evt.as_raw_fd(), Ping, EventSet::IN)
    }
    fn handle_event(&mut self, _: Ping, _: EventSet, _: &Registry<Ping>) {
        let _ = self.evt.read();
        // SAFETY: socket(2) with integer arguments; the call is the test.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    }
}

#[test]
fn armed_worker_thread_is_killed_for_a_call_off_its_list() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // Child: the worker filters itself as it starts; its first event
        // makes the forbidden call and the whole process ends.
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let w = worker::spawn(
            "virtio-test",
            Misbehaving {
                evt: evt.try_clone().unwrap(),
            },
        )
        .unwrap();
        evt.write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(5));
        drop(w);
        return;
    }
    let exe = std::env::current_exe().unwrap();

    let out = Command::new(exe)
        .args([
            "armed_worker_thread_is_killed_for_a_call_off_its_list",
            "--exact",
            "--nocapture",
        ])
        .env(ARM_ENV, "1")
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_SECCOMP_DENIED), "{stderr}");
    assert_eq!(
        Denial::find(&stderr),
        Some(Denial {
            nr: libc::SYS_socket,
            name: "socket".into(),
            thread: "virtio-test".into()
        })
    );
}
