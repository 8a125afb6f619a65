//! The hidden `vitrine-vmm self-test` subcommands: what the jail tests run
//! *inside* a jailed VMM process, so they test the shipped binary and
//! its real jail. They can only report on walls or run into one (and be
//! killed by it); none of them widens what the process may do.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::seccomp::{self, ThreadKind};

/// What a jailed process can reach, as it sees it.
#[derive(Debug, Serialize)]
pub struct WallReport {
    /// Result of opening the host path given on the command line.
    pub open_host_path: String,
    /// Process IDs visible in /proc.
    pub visible_pids: Vec<u32>,
    /// Network interfaces and whether each is up, from /proc/self/net/dev
    /// and the kernel's flags.
    pub interfaces: Vec<String>,
    /// Result of a TCP connect to a public address.
    pub connect_tcp: String,
    /// Result of creating an AF_INET socket.
    pub inet_socket: String,
    /// "NoNewPrivs", "CapEff", "CapBnd", "Seccomp" lines of /proc/self/status.
    pub status: Vec<String>,
    pub hostname: String,
    /// Entries of `/`.
    pub root_entries: Vec<String>,
}

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("denied: {e}"),
    }
}

/// Looks at every wall from inside and prints the report as JSON.
pub fn walls(host_path: &Path) -> WallReport {
    let open_host_path = outcome(std::fs::File::open(host_path));
    let mut visible_pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    visible_pids.sort_unstable();
    let interfaces = std::fs::read_to_string("/proc/self/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .collect();
    let connect_tcp = outcome(std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([1, 1, 1, 1], 80)),
        std::time::Duration::from_secs(2),
    ));
    // SAFETY: socket(2) with integer arguments; the fd is closed at once.
    let inet_socket = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd >= 0 {
            libc::close(fd);
            "ok".to_owned()
        } else {
            format!("denied: {}", std::io::Error::last_os_error())
        }
    };
    let status = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            [
                "NoNewPrivs",
                "CapEff",
                "CapPrm",
                "CapBnd",
                "CapAmb",
                "Seccomp:",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(str::to_owned)
        .collect();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| uname_nodename());
    let mut root_entries: Vec<String> = std::fs::read_dir("/")
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    root_entries.sort();
    WallReport {
        open_host_path,
        visible_pids,
        interfaces,
        connect_tcp,
        inet_socket,
        status,
        hostname,
        root_entries,
    }
}

fn uname_nodename() -> String {
    // SAFETY: a zeroed utsname is valid; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out-pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    u.nodename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| char::from(u8::try_from(c).unwrap_or(b'?')))
        .collect()
}

/// Arms seccomp as the real run does, then makes a call no list allows
/// (an AF_INET socket) from a thread of type `kind`. The process is
/// expected to die with the report; returning means the wall failed.
pub fn forbidden_syscall(kind: ThreadKind) -> Result<(), seccomp::SeccompError> {
    seccomp::arm()?;
    seccomp::install(ThreadKind::Vmm, "vmm")?;
    let call = || {
        // SAFETY: socket(2) with integer arguments.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }
    };
    let name = match kind {
        ThreadKind::Vmm => {
            call();
            return Ok(());
        }
        ThreadKind::Vcpu => "vcpu0",
        ThreadKind::Worker => "virtio-vsock",
        ThreadKind::Keeper => "keeper",
    };
    let handle = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            seccomp::on_thread_start(kind, name);
            call();
        });
    if let Ok(h) = handle {
        let _ = h.join();
    }
    let _ = std::io::stderr().flush();
    Ok(())
}
