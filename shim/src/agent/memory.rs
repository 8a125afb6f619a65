//! The kernel's out-of-memory killer, seen from the agent: sandboxed
//! children are its first choice (so a hungry renderer or program dies, not
//! the agent), and the agent can tell its kill from any other SIGKILL.

use std::process::Command;
use std::time::Instant;

use crate::sandbox::{Identity, SandboxError, Supervised};

/// Kills by the OOM killer so far, from `/proc/vmstat` (0 where unreadable).
fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Watches one child for an out-of-memory kill.
#[derive(Debug, Clone, Copy)]
pub(super) struct OomWatch {
    before: u64,
}

impl OomWatch {
    /// Notes the OOM kills so far.
    pub(super) fn start() -> Self {
        Self {
            before: oom_kills(),
        }
    }

    /// Spawns `cmd` as the OOM killer's first choice.
    pub(super) fn spawn(
        &self,
        cmd: Command,
        identity: Identity,
        deadline: Instant,
    ) -> Result<Supervised, SandboxError> {
        let child = Supervised::spawn(cmd, identity, deadline)?;
        // Best effort: without it the kernel still picks the largest process,
        // which is almost always the child.
        let _ = std::fs::write(format!("/proc/{}/oom_score_adj", child.id()), "1000");
        Ok(child)
    }

    /// Whether the OOM killer struck since `start` (in the guest, the only
    /// candidates are the task's children).
    pub(super) fn struck(&self) -> bool {
        oom_kills() > self.before
    }
}
