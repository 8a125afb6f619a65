//! Where the daemon keeps things, after the XDG base directory spec:
//! the receipt key under `$XDG_DATA_HOME/vitrine`, task records and the
//! audit log under `$XDG_STATE_HOME/vitrine`, approved exports in
//! `~/Downloads/Vitrine` unless a task names another folder.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The directories could not be found or made.
#[derive(Debug, thiserror::Error)]
pub enum StateDirsError {
    /// Neither the XDG variable nor $HOME is set.
    #[error("neither ${0} nor $HOME is set")]
    NoHome(&'static str),
    /// A directory could not be made.
    #[error("cannot create {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The daemon's directories.
#[derive(Debug, Clone)]
pub struct StateDirs {
    /// `$XDG_DATA_HOME/vitrine` (the receipt key).
    pub data: PathBuf,
    /// `$XDG_STATE_HOME/vitrine`.
    pub state: PathBuf,
    /// Default folder for approved exports.
    pub exports: PathBuf,
}

fn xdg(var: &'static str, fallback: &str) -> Result<PathBuf, StateDirsError> {
    if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        if p.is_absolute() {
            return Ok(p);
        }
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or(StateDirsError::NoHome(var))?;
    Ok(PathBuf::from(home).join(fallback))
}

impl StateDirs {
    /// From the environment.
    pub fn from_env() -> Result<Self, StateDirsError> {
        let downloads = match std::env::var_os("XDG_DOWNLOAD_DIR").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => xdg("HOME", "Downloads")?,
        };
        Ok(Self {
            data: xdg("XDG_DATA_HOME", ".local/share")?.join("vitrine"),
            state: xdg("XDG_STATE_HOME", ".local/state")?.join("vitrine"),
            exports: downloads.join("Vitrine"),
        })
    }

    /// `state/tasks`.
    pub fn tasks(&self) -> PathBuf {
        self.state.join("tasks")
    }

    /// `state/audit.jsonl`.
    pub fn audit_log(&self) -> PathBuf {
        self.state.join("audit.jsonl")
    }

    /// Creates the state and task directories (0700).
    pub fn create(&self) -> Result<(), StateDirsError> {
        for dir in [&self.state, &self.tasks()] {
            make_private_dir(dir)?;
        }
        Ok(())
    }

    /// The first free task number: one past the highest record on disk, so
    /// records of earlier daemon runs are never overwritten.
    pub fn next_task_number(&self) -> u64 {
        fs::read_dir(self.tasks())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                    .max()
                    .map_or(1, |n| n.saturating_add(1))
            })
            .unwrap_or(1)
    }

    /// Creates the record directory of task `n` (0700).
    pub fn task_record(&self, n: u64) -> Result<PathBuf, StateDirsError> {
        let dir = self.tasks().join(n.to_string());
        make_private_dir(&dir)?;
        Ok(dir)
    }
}

fn make_private_dir(dir: &Path) -> Result<(), StateDirsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateDirsError::Create {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_task_number_follows_the_records_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = StateDirs {
            data: dir.path().join("data"),
            state: dir.path().join("state"),
            exports: dir.path().join("exports"),
        };
        dirs.create().unwrap();
        let first = dirs.next_task_number();
        dirs.task_record(41).unwrap();
        fs::create_dir(dirs.tasks().join("not-a-number")).unwrap();

        assert_eq!(first, 1);
        assert_eq!(dirs.next_task_number(), 42);
    }
}
