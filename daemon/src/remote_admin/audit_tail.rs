//! Reading the last records of the policy audit log, across rotation
//! (`audit.jsonl`, then `audit.jsonl.1`, `.2`, ... older and older).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The audit log's file name inside the audit directory.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// Rotated files looked at, at most.
const MAX_ROTATED: u32 = 100;

/// The audit log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuditTailError {
    #[error("cannot read audit log {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The last `n` records (oldest first). Lines that are not JSON (a line
/// cut by a crash) are skipped. A missing log has no records.
pub fn last_records(audit_dir: &Path, n: usize) -> Result<Vec<serde_json::Value>, AuditTailError> {
    let mut newest_first: Vec<serde_json::Value> = Vec::new();
    for i in 0..=MAX_ROTATED {
        if newest_first.len() >= n {
            break;
        }
        let path = if i == 0 {
            audit_dir.join(AUDIT_FILE)
        } else {
            audit_dir.join(format!("{AUDIT_FILE}.{i}"))
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(source) => return Err(AuditTailError::Read { path, source }),
        };
        // Keep only the last `want` records of this file while reading it.
        let want = n - newest_first.len();
        let mut tail = std::collections::VecDeque::with_capacity(want.min(4096));
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|source| AuditTailError::Read {
                path: path.clone(),
                source,
            })?;
            let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if tail.len() == want {
                tail.pop_front();
            }
            tail.push_back(record);
        }
        newest_first.extend(tail.into_iter().rev());
    }
    newest_first.truncate(n);
    newest_first.reverse();
    Ok(newest_first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_records_span_rotated_files_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("audit.jsonl.1"), "{\"n\":1}\n{\"n\":2}\n").unwrap();
        std::fs::write(
            dir.path().join("audit.jsonl"),
            "{\"n\":3}\nnot json\n{\"n\":4}\n",
        )
        .unwrap();

        let got = last_records(dir.path(), 3).unwrap();

        let ns: Vec<i64> = got.iter().map(|r| r["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, [2, 3, 4]);
        assert!(last_records(&dir.path().join("none"), 5)
            .unwrap()
            .is_empty());
    }
}
