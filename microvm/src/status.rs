//! The guest's result, reported to whoever started the VMM before the VM is
//! torn down.
//!
//! Destroying a KVM VM is slow on nested hosts (the in-kernel irqchip and
//! PIT alone take about 20 ms, paid at process exit). The caller only needs
//! the guest's result, so `vitrine-vmm --status-fd N` writes one JSON line
//! to fd N as soon as the guest stops, and teardown happens after, off the
//! caller's critical path.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lifecycle::{GuestExit, GuestFault};
use crate::probe::error_chain;
use crate::vmm::VmError;

/// Longest status line accepted by [`GuestReport::parse`]; a report is a
/// few hundred bytes, so anything longer is not one.
pub const MAX_REPORT_BYTES: usize = 4096;

/// How the guest run ended, as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum GuestReport {
    /// The guest wrote `code` to the debug-exit port.
    DebugExit {
        /// Code written.
        code: u8,
    },
    /// The guest reset, halted for good or powered off.
    Stopped {
        /// Which of the three.
        how: String,
    },
    /// The guest reached its ready point (snapshot runs).
    Ready,
    /// The guest faulted or ran past its limit.
    Fault {
        /// The fault, as `GuestFault` prints it.
        detail: String,
        /// True when the wall-clock limit stopped it.
        timed_out: bool,
    },
    /// The VMM itself failed.
    Error {
        /// The error chain.
        detail: String,
    },
}

/// Why a status line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The fd number does not name an open file of this process.
    #[error("--status-fd {0} is not an open file descriptor")]
    NotOpen(RawFd),
    /// The fd is one of stdin, stdout or stderr.
    #[error("--status-fd {0} is stdin or stderr; use 3 or above, or 1 (stdout) with --serial-log")]
    Reserved(RawFd),
    /// The line is not a report.
    #[error("malformed guest report: {0}")]
    Malformed(String),
}

impl GuestReport {
    /// The report for a run's result.
    pub fn of(result: &Result<GuestExit, VmError>) -> Self {
        match result {
            Ok(GuestExit::DebugExit(code)) => Self::DebugExit { code: *code },
            Ok(GuestExit::Ready | GuestExit::Paused) => Self::Ready,
            Ok(other) => Self::Stopped {
                how: format!("{other:?}").to_lowercase(),
            },
            Err(VmError::Guest(fault)) => Self::Fault {
                detail: fault.to_string(),
                timed_out: matches!(fault, GuestFault::TimedOut(_)),
            },
            Err(e) => Self::Error {
                detail: error_chain(e),
            },
        }
    }

    /// One line of JSON, newline-terminated.
    pub fn to_line(&self, vmm_time: Duration) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert(
                "vmm_ms".into(),
                serde_json::json!((vmm_time.as_secs_f64() * 1e6).round() / 1e3),
            );
        }
        format!("{v}\n")
    }

    /// Parses a line written by [`GuestReport::to_line`].
    pub fn parse(line: &str) -> Result<Self, StatusError> {
        if line.len() > MAX_REPORT_BYTES {
            return Err(StatusError::Malformed(format!(
                "{} bytes, more than {MAX_REPORT_BYTES}",
                line.len()
            )));
        }
        serde_json::from_str(line.trim_end()).map_err(|e| StatusError::Malformed(e.to_string()))
    }
}

/// The write end the report goes to.
#[derive(Debug)]
pub struct StatusFd(File);

impl StatusFd {
    /// Takes ownership of inherited fd `fd`. Call once per fd, early in
    /// main, before anything else could have opened or closed that number.
    /// Stdout (1) is allowed only when `stdout_free`: the guest's serial
    /// output goes elsewhere, so a caller without fd passing can read the
    /// report from the VMM's stdout.
    pub fn adopt(fd: RawFd, stdout_free: bool) -> Result<Self, StatusError> {
        if fd <= 0 || fd == 2 || (fd == 1 && !stdout_free) {
            return Err(StatusError::Reserved(fd));
        }
        // SAFETY: F_GETFD only reads the descriptor's flags; for a number
        // that is not open it fails with EBADF and touches nothing.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(StatusError::NotOpen(fd));
        }
        // SAFETY: fd is open (checked above), at least 3, and the caller
        // adopts it once, so this File is its only owner.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(Self(file))
    }

    /// Writes the report and closes the fd, so the reader sees the line
    /// and then end of file. A reader that went away is not an error.
    pub fn send(mut self, report: &GuestReport, vmm_time: Duration) {
        let _ = self.0.write_all(report.to_line(vmm_time).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_line_parses_back_to_the_same_report() {
        let reports = [
            GuestReport::DebugExit { code: 33 },
            GuestReport::Stopped {
                how: "reset".into(),
            },
            GuestReport::Ready,
            GuestReport::Fault {
                detail: "vCPU 0 triple-faulted".into(),
                timed_out: false,
            },
            GuestReport::Error {
                detail: "no kernel".into(),
            },
        ];
        for r in reports {
            let line = r.to_line(Duration::from_micros(2_345));
            assert!(
                line.ends_with('\n') && line.contains("\"vmm_ms\":2.345"),
                "{line}"
            );
            assert_eq!(GuestReport::parse(&line).unwrap(), r);
        }
    }

    #[test]
    fn a_fault_report_says_whether_the_limit_stopped_the_guest() {
        let timed_out = GuestFault::TimedOut(Duration::from_secs(1));
        let r = GuestReport::of(&Err(VmError::Guest(timed_out)));
        assert!(matches!(
            r,
            GuestReport::Fault {
                timed_out: true,
                ..
            }
        ));
        let tf = GuestFault::TripleFault { vcpu: 0, rip: 0x10 };
        let r = GuestReport::of(&Err(VmError::Guest(tf)));
        assert!(
            matches!(r, GuestReport::Fault { timed_out: false, ref detail } if detail.contains("0x10"))
        );
    }

    #[test]
    fn garbage_and_oversized_lines_are_refused() {
        assert!(GuestReport::parse("{\"result\":\"nonsense\"}").is_err());
        assert!(GuestReport::parse("not json").is_err());
        let long = format!("{{\"result\":\"ready\",\"x\":\"{}\"}}", "a".repeat(5000));
        assert!(matches!(
            GuestReport::parse(&long),
            Err(StatusError::Malformed(m)) if m.contains("more than")
        ));
    }

    #[test]
    fn stdio_and_closed_fds_are_not_adopted() {
        for fd in [0, 2] {
            assert!(matches!(
                StatusFd::adopt(fd, true),
                Err(StatusError::Reserved(_))
            ));
        }
        assert!(matches!(
            StatusFd::adopt(1, false),
            Err(StatusError::Reserved(1))
        ));
        assert!(matches!(
            StatusFd::adopt(1_000_000, true),
            Err(StatusError::NotOpen(_))
        ));
    }
}
