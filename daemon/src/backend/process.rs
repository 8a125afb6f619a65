//! The host process a VM runs in (QEMU, or the keeper of a jailed
//! vitrine-vmm): whether it has exited, waiting for it with a limit, and
//! killing and reaping it. Every backend's VM owns one.

use std::io;
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use super::VmExit;

/// How often a wait looks at the process.
const POLL: Duration = Duration::from_millis(5);

/// A VM's process; its exit status is kept once seen.
#[derive(Debug)]
pub struct VmProcess {
    child: Child,
    exit: Option<ExitStatus>,
    /// What it is, for logs ("qemu", "vitrine-vmm").
    what: &'static str,
}

impl VmProcess {
    /// Wraps a spawned process.
    pub fn new(child: Child, what: &'static str) -> Self {
        Self {
            child,
            exit: None,
            what,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child, to take its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status, if it has exited (without blocking).
    pub fn poll_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// Waits up to `limit` for the process to end by itself; `None` when
    /// it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.poll_exit()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// Waits up to `limit` for the process to end by itself, then kills it.
    pub fn wait_or_kill(&mut self, limit: Duration) -> io::Result<VmExit> {
        match self.wait_exit(limit)? {
            Some(status) => Ok(VmExit::Exited(status)),
            None => {
                self.kill();
                Ok(VmExit::Killed)
            }
        }
    }

    /// Kills and reaps the process; one that already ended is left as it
    /// is. Failures are logged: there is nothing else to do with them.
    pub fn kill(&mut self) {
        if matches!(self.poll_exit(), Ok(Some(_))) {
            return;
        }
        if let Err(e) = self.child.kill() {
            log::warn!("cannot kill {} pid {}: {e}", self.what, self.child.id());
        }
        match self.child.wait() {
            Ok(status) => self.exit = Some(status),
            Err(e) => log::warn!("cannot reap {} pid {}: {e}", self.what, self.child.id()),
        }
    }

    /// The exit status once known.
    pub fn exit(&self) -> Option<ExitStatus> {
        self.exit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_process_that_ends_is_reported_with_its_status() {
        let mut p = VmProcess::new(Command::new("true").spawn().unwrap(), "true");

        let exit = p.wait_or_kill(Duration::from_secs(10)).unwrap();

        assert!(matches!(exit, VmExit::Exited(s) if s.success()));
        assert!(p.exit().is_some());
    }

    #[test]
    fn a_process_past_its_limit_is_killed_and_reaped() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let mut p = VmProcess::new(child, "sleep");

        let exit = p.wait_or_kill(Duration::from_millis(50)).unwrap();

        assert_eq!(exit, VmExit::Killed);
        assert!(
            p.exit().is_some_and(|s| !s.success()),
            "reaped after the kill"
        );
    }
}
