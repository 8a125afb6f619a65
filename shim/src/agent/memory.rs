//! The kernel's out-of-memory killer, seen from the agent: sandboxed
//! children are its first choice (so a hungry renderer or program dies, not
//! the agent), and the agent tells its kill from any other SIGKILL by the
//! kernel's own record of it in `/dev/kmsg` ("Killed process PID (name)").
//! The guest kernel has no VM event counters and no cgroups to ask instead.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::Instant;

use crate::sandbox::{Identity, SandboxError, Supervised};

/// Watches one child for an out-of-memory kill.
#[derive(Debug)]
pub(super) struct OomWatch {
    /// The kernel log, read from where it stood before the child started;
    /// `None` where it cannot be read (then no kill is ever named OOM).
    kmsg: Option<File>,
    pid: Option<u32>,
}

impl OomWatch {
    /// Marks the kernel log's end: only later records count.
    pub(super) fn start() -> Self {
        let kmsg = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .and_then(|mut f| f.seek(SeekFrom::End(0)).map(|_| f))
            .ok();
        Self { kmsg, pid: None }
    }

    /// Spawns `cmd` as the OOM killer's first choice.
    pub(super) fn spawn(
        &mut self,
        cmd: Command,
        identity: Identity,
        deadline: Instant,
    ) -> Result<Supervised, SandboxError> {
        let child = Supervised::spawn(cmd, identity, deadline)?;
        self.pid = Some(child.id());
        // Best effort: without it the kernel still picks the largest process,
        // which is almost always the child.
        let _ = std::fs::write(format!("/proc/{}/oom_score_adj", child.id()), "1000");
        Ok(child)
    }

    /// Whether the kernel logged an OOM kill of the child since `start`.
    pub(super) fn struck(&mut self) -> bool {
        let (Some(kmsg), Some(pid)) = (self.kmsg.as_mut(), self.pid) else {
            return false;
        };
        let needle = format!("Killed process {pid} (");
        // One record per read; EAGAIN at the end, EPIPE when records were
        // overwritten (read on).
        let mut record = vec![0u8; 8192];
        for _ in 0..10_000 {
            match kmsg.read(&mut record) {
                Ok(0) => return false,
                Ok(n) => {
                    if String::from_utf8_lossy(&record[..n]).contains(&needle) {
                        return true;
                    }
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_ends_normally_is_not_an_oom_kill() {
        let mut watch = OomWatch::start();
        let mut child = watch
            .spawn(
                Command::new("true"),
                Identity::Inherit,
                Instant::now() + std::time::Duration::from_secs(10),
            )
            .unwrap();

        child.wait().unwrap();

        assert!(!watch.struck());
    }
}
