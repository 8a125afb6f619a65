//! The audit log: one JSON line per decision, appended by a writer thread.
//!
//! A decision hands its record to a bounded queue with `try_send` and moves
//! on: a slow or full disk can cost audit records, never a decision. Lost
//! records are counted, and the count is written to the log itself as soon
//! as the writer catches up. The file is rotated by size
//! (`audit.jsonl` -> `audit.jsonl.1` -> ... -> `audit.jsonl.N`).

use crate::decision::{Decision, RequestSummary};
use crate::request::Request;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the audit writer thread")]
    Spawn(#[source] io::Error),
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Rotate when the file would grow past this.
    pub max_bytes: u64,
    /// How many rotated files to keep.
    pub keep: u32,
    /// Records that may wait for the writer before new ones are dropped.
    pub queue: usize,
}

impl AuditConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AuditConfig {
            path: path.into(),
            max_bytes: 16 << 20,
            keep: 5,
            queue: 4096,
        }
    }
}

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    pub event: &'static str,
    #[serde(flatten)]
    pub decision: Decision,
    pub request: RequestSummary,
}

#[derive(Debug, Serialize)]
struct DroppedRecord {
    ts: String,
    event: &'static str,
    count: u64,
}

#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    written: AtomicU64,
    write_errors: AtomicU64,
}

/// Handle to the audit log. Cheap to share by reference; dropping it
/// flushes what is queued and stops the writer.
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<SyncSender<AuditRecord>>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl AuditLog {
    pub fn open(config: AuditConfig) -> Result<AuditLog, AuditError> {
        let file = open_append(&config.path).map_err(|source| AuditError::Open {
            path: config.path.clone(),
            source,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
        let counters = Arc::new(Counters::default());
        let mut writer = Writer {
            config,
            file,
            size,
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("policy-audit".into())
            .spawn(move || {
                while let Ok(record) = rx.recv() {
                    writer.report_drops();
                    writer.write(&record);
                }
                writer.report_drops();
            })
            .map_err(AuditError::Spawn)?;
        Ok(AuditLog {
            tx: Some(tx),
            counters,
            thread: Some(thread),
        })
    }

    /// Log a decision. Never blocks: if the queue is full the record is
    /// dropped and counted.
    pub fn record(&self, req: &Request, decision: &Decision) {
        let record = AuditRecord {
            ts: rfc3339_now(),
            event: "decision",
            decision: decision.clone(),
            request: RequestSummary::of(req),
        };
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records lost because the queue was full (not yet reported in the log).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }
    pub fn write_errors(&self) -> u64 {
        self.counters.write_errors.load(Ordering::Relaxed)
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    config: AuditConfig,
    file: File,
    size: u64,
    counters: Arc<Counters>,
}

impl Writer {
    fn report_drops(&mut self) {
        let count = self.counters.dropped.swap(0, Ordering::Relaxed);
        if count > 0 {
            log::warn!("audit log: {count} record(s) dropped because the writer fell behind");
            self.write(&DroppedRecord {
                ts: rfc3339_now(),
                event: "audit-records-dropped",
                count,
            });
        }
    }

    fn write(&mut self, record: &impl Serialize) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                log::error!("audit log: cannot encode a record: {e}");
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        line.push(b'\n');
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.config.max_bytes {
            if let Err(e) = self.rotate() {
                log::error!(
                    "audit log: cannot rotate {}: {e}",
                    self.config.path.display()
                );
            }
        }
        match self.file.write_all(&line) {
            Ok(()) => {
                self.size += len;
                self.counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                log::error!(
                    "audit log: cannot write {}: {e}",
                    self.config.path.display()
                );
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let p = &self.config.path;
        let numbered = |n: u32| -> PathBuf {
            let mut s = p.as_os_str().to_owned();
            s.push(format!(".{n}"));
            PathBuf::from(s)
        };
        if self.config.keep == 0 {
            std::fs::remove_file(p)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.config.keep));
            for n in (1..self.config.keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(p, numbered(1))?;
        }
        self.file = open_append(p)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    // Paths and URIs in the log are private: owner-only. A symlink planted
    // where the log should be is refused rather than followed.
    let nofollow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0);
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nofollow)
        .open(path)
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_767_225_599, 999), "2025-12-31T23:59:59.999Z");
    }
}
