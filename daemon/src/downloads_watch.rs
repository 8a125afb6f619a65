//! The Downloads watcher: every file that appears in a watched folder
//! (created there, or renamed or moved in) is marked untrusted, so that
//! "open" routes it into the sandbox even after it is moved elsewhere.
//!
//! Browsers set `user.xdg.origin.url` only sometimes, and other programs
//! never do, so Vitrine sets its own mark, the extended attribute
//! `user.vitrine.untrusted=1`. It travels with the inode through renames.
//! Where the filesystem refuses extended attributes (vfat, some network
//! filesystems), the mark goes into a record file instead, keyed by device
//! and inode. [`is_marked_untrusted`] reads both.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use notify::event::{CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

/// The extended attribute Vitrine sets on files it marks.
pub const UNTRUSTED_XATTR: &str = "user.vitrine.untrusted";
/// Files marked in one new folder at most (a moved-in tree is walked).
const MAX_WALK: usize = 10_000;
/// Largest record file read when looking a mark up.
const MAX_RECORD_BYTES: u64 = 16 * 1024 * 1024;
/// Mark reports kept for a reader that is slow or absent.
const MAX_PENDING_MARKS: usize = 1024;

/// Why watching or marking failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The notify backend (inotify) failed.
    #[error("watching {path}")]
    Notify {
        /// Folder.
        path: PathBuf,
        /// Cause.
        #[source]
        source: notify::Error,
    },
    /// None of the configured folders exists.
    #[error("no watched folder exists (tried {0:?})")]
    NoFolder(Vec<PathBuf>),
    /// The record file could not be written.
    #[error("writing the untrusted-files record {path}")]
    Record {
        /// Record file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be opened or marked.
    #[error("marking {path}")]
    Mark {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// How a file was marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkMethod {
    /// The `user.vitrine.untrusted` extended attribute.
    Xattr,
    /// A line in the record file (the filesystem refused the attribute).
    Record,
}

/// Which marks to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Marking {
    /// The extended attribute, else the record file.
    #[default]
    XattrThenRecord,
    /// Only the record file (no extended attributes written).
    RecordOnly,
}

/// A file the watcher marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    /// The file.
    pub path: PathBuf,
    /// How.
    pub how: MarkMethod,
}

/// What to watch and where the fallback record lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// Folders watched, recursively.
    pub dirs: Vec<PathBuf>,
    /// The record file for marks that cannot be extended attributes.
    pub record: PathBuf,
    /// Which marks to write.
    pub marking: Marking,
}

impl WatchConfig {
    /// `$VITRINE_WATCH_DIRS` (a `:`-separated list), else the Downloads
    /// folders that origin detection uses ($XDG_DOWNLOAD_DIR or ~/Downloads).
    pub fn from_env() -> WatchConfig {
        let dirs = match std::env::var_os("VITRINE_WATCH_DIRS").filter(|v| !v.is_empty()) {
            Some(list) => std::env::split_paths(&list).collect(),
            None => crate::open_file::default_downloads_dirs(),
        };
        WatchConfig {
            dirs,
            record: default_record_path(),
            marking: Marking::default(),
        }
    }
}

/// `$XDG_STATE_HOME/vitrine/untrusted-files`, else
/// `~/.local/state/vitrine/untrusted-files`.
pub fn default_record_path() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    state.join("vitrine/untrusted-files")
}

/// True when Vitrine marked the file at `path` untrusted: its extended
/// attribute, or a line for its device and inode in the default record.
/// open_file's origin detection counts this as quarantined.
pub fn is_marked_untrusted(path: &Path) -> bool {
    is_marked_untrusted_in(path, &default_record_path())
}

/// [`is_marked_untrusted`] with an explicit record file.
pub fn is_marked_untrusted_in(path: &Path, record: &Path) -> bool {
    let mut probe = [0u8; 8];
    match rustix::fs::getxattr(path, UNTRUSTED_XATTR, &mut probe[..]) {
        // ERANGE: present but longer than the probe; still a mark.
        Ok(_) | Err(rustix::io::Errno::RANGE) => return true,
        Err(_) => {}
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    in_record(record, meta.dev(), meta.ino())
}

/// [`is_marked_untrusted`] for an open file (a descriptor passed over
/// D-Bus): no path is looked up again, so nothing can be swapped under it.
pub fn is_file_marked_untrusted(file: &File) -> bool {
    is_file_marked_untrusted_in(file, &default_record_path())
}

/// [`is_file_marked_untrusted`] with an explicit record file.
pub fn is_file_marked_untrusted_in(file: &File, record: &Path) -> bool {
    let mut probe = [0u8; 8];
    match rustix::fs::fgetxattr(file.as_fd(), UNTRUSTED_XATTR, &mut probe[..]) {
        Ok(_) | Err(rustix::io::Errno::RANGE) => return true,
        Err(_) => {}
    }
    let Ok(meta) = file.metadata() else {
        return false;
    };
    in_record(record, meta.dev(), meta.ino())
}

fn in_record(record: &Path, dev: u64, ino: u64) -> bool {
    let Ok(file) = File::open(record) else {
        return false;
    };
    let key = format!("{dev} {ino}\t");
    BufReader::new(file.take(MAX_RECORD_BYTES))
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with(&key))
}

/// Marks one regular file untrusted. A path that is gone, or is not a
/// regular file (a symlink is never followed), is left alone: `Ok(None)`.
pub fn mark_untrusted(
    path: &Path,
    record: &Path,
    marking: Marking,
) -> Result<Option<MarkMethod>, WatchError> {
    let mark_err = |source| WatchError::Mark {
        path: path.to_path_buf(),
        source,
    };
    // Mark through a descriptor opened without following symlinks, so a
    // file swapped for a link between event and mark is not touched.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if gone_or_not_a_file(&e) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return mark_unreadable(path, record, marking);
        }
        Err(e) => return Err(mark_err(e)),
    };
    let meta = file.metadata().map_err(mark_err)?;
    if !meta.is_file() {
        return Ok(None);
    }
    if marking == Marking::XattrThenRecord {
        match rustix::fs::fsetxattr(
            file.as_fd(),
            UNTRUSTED_XATTR,
            b"1",
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => return Ok(Some(MarkMethod::Xattr)),
            Err(e) if refuses_xattrs(e) => {}
            Err(e) => return Err(mark_err(e.into())),
        }
    }
    if !in_record(record, meta.dev(), meta.ino()) {
        append_record(record, meta.dev(), meta.ino(), path)?;
    }
    Ok(Some(MarkMethod::Record))
}

/// A file the daemon may not read: mark it by path, still without
/// following a symlink (lsetxattr).
fn mark_unreadable(
    path: &Path,
    record: &Path,
    marking: Marking,
) -> Result<Option<MarkMethod>, WatchError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(None);
    };
    if !meta.is_file() {
        return Ok(None);
    }
    if marking == Marking::XattrThenRecord
        && rustix::fs::lsetxattr(path, UNTRUSTED_XATTR, b"1", rustix::fs::XattrFlags::empty())
            .is_ok()
    {
        return Ok(Some(MarkMethod::Xattr));
    }
    if !in_record(record, meta.dev(), meta.ino()) {
        append_record(record, meta.dev(), meta.ino(), path)?;
    }
    Ok(Some(MarkMethod::Record))
}

fn gone_or_not_a_file(e: &std::io::Error) -> bool {
    // ELOOP: it is a symlink (O_NOFOLLOW); ENXIO: a socket.
    e.kind() == std::io::ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(libc::ELOOP | libc::ENXIO | libc::ENOTDIR)
        )
}

fn refuses_xattrs(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    matches!(
        e,
        Errno::NOTSUP | Errno::PERM | Errno::ACCESS | Errno::ROFS | Errno::NOSPC | Errno::DQUOT
    )
}

fn append_record(record: &Path, dev: u64, ino: u64, path: &Path) -> Result<(), WatchError> {
    let rec_err = |source| WatchError::Record {
        path: record.to_path_buf(),
        source,
    };
    if let Some(dir) = record.parent() {
        std::fs::create_dir_all(dir).map_err(rec_err)?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(record)
        .map_err(rec_err)?;
    // The path is only for people reading the file; newlines would break
    // the line format, so they are shown escaped.
    let shown = path.display().to_string().replace('\n', "\\n");
    // One write with O_APPEND: concurrent markers do not interleave lines.
    f.write_all(format!("{dev} {ino}\t{shown}\n").as_bytes())
        .map_err(rec_err)
}

/// Watches the configured folders until dropped.
pub struct DownloadsWatcher {
    _watcher: notify::RecommendedWatcher,
    watched: Vec<PathBuf>,
    marks: Receiver<Marked>,
}

impl std::fmt::Debug for DownloadsWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadsWatcher")
            .field("watched", &self.watched)
            .finish_non_exhaustive()
    }
}

impl DownloadsWatcher {
    /// Starts watching every configured folder that exists (missing ones
    /// are logged and skipped; none at all is an error).
    pub fn start(config: WatchConfig) -> Result<DownloadsWatcher, WatchError> {
        let (tx, marks) = mpsc::sync_channel(MAX_PENDING_MARKS);
        let handler = MarkHandler {
            record: config.record.clone(),
            marking: config.marking,
            tx: Arc::new(Mutex::new(tx)),
        };
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(event) => handler.on_event(&event),
                Err(e) => log::warn!("downloads watcher: {e}"),
            })
            .map_err(|source| WatchError::Notify {
                path: PathBuf::new(),
                source,
            })?;
        let mut watched = Vec::new();
        for dir in &config.dirs {
            if !dir.is_dir() {
                log::warn!(
                    "downloads watcher: {} is not a folder; not watched",
                    dir.display()
                );
                continue;
            }
            watcher
                .watch(dir, RecursiveMode::Recursive)
                .map_err(|source| WatchError::Notify {
                    path: dir.clone(),
                    source,
                })?;
            watched.push(dir.clone());
        }
        if watched.is_empty() {
            return Err(WatchError::NoFolder(config.dirs));
        }
        Ok(DownloadsWatcher {
            _watcher: watcher,
            watched,
            marks,
        })
    }

    /// The folders being watched.
    pub fn watched(&self) -> &[PathBuf] {
        &self.watched
    }

    /// Files marked since the last call (non-blocking), for the audit log.
    pub fn poll_marked(&self) -> Vec<Marked> {
        self.marks.try_iter().collect()
    }
}

struct MarkHandler {
    record: PathBuf,
    marking: Marking,
    tx: Arc<Mutex<SyncSender<Marked>>>,
}

impl MarkHandler {
    fn on_event(&self, event: &notify::Event) {
        let target = match event.kind {
            EventKind::Create(CreateKind::File | CreateKind::Folder | CreateKind::Any) => {
                event.paths.first()
            }
            // A rename within the tree names (from, to); a move in names only `to`.
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Any)) => {
                event.paths.first()
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.get(1),
            // Written and closed: catches a file whose create event raced
            // its folder's watch.
            EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write,
            )) => event.paths.first(),
            _ => None,
        };
        if let Some(path) = target {
            self.mark_tree(path);
        }
    }

    /// Marks `path`, or every file below it when it is a folder moved in.
    fn mark_tree(&self, path: &Path) {
        let mut stack = vec![path.to_path_buf()];
        let mut seen = 0;
        while let Some(p) = stack.pop() {
            seen += 1;
            if seen > MAX_WALK {
                log::warn!(
                    "downloads watcher: stopped marking under {} after {MAX_WALK} entries",
                    path.display()
                );
                return;
            }
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue; // gone already: nothing to mark
            };
            if meta.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&p) {
                    stack.extend(entries.filter_map(Result::ok).map(|e| e.path()));
                }
                continue;
            }
            match mark_untrusted(&p, &self.record, self.marking) {
                Ok(Some(how)) => {
                    if let Ok(tx) = self.tx.lock() {
                        let _ = tx.try_send(Marked { path: p, how });
                    }
                }
                Ok(None) => {}
                Err(e) => log::warn!("downloads watcher: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marking_a_file_sets_the_xattr_and_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.pdf");
        std::fs::write(&file, b"%PDF").unwrap();
        let record = dir.path().join("state/record");
        assert!(!is_marked_untrusted_in(&file, &record));
        assert_eq!(
            mark_untrusted(&file, &record, Marking::XattrThenRecord).unwrap(),
            Some(MarkMethod::Xattr)
        );
        assert!(is_marked_untrusted_in(&file, &record));
        assert!(!record.exists(), "no record needed");
    }

    #[test]
    fn an_open_file_reads_both_kinds_of_mark() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("record");
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        for p in [&a, &b, &c] {
            std::fs::write(p, b"x").unwrap();
        }
        mark_untrusted(&a, &record, Marking::XattrThenRecord).unwrap();
        mark_untrusted(&b, &record, Marking::RecordOnly).unwrap();
        let open = |p: &Path| File::open(p).unwrap();
        assert!(is_file_marked_untrusted_in(&open(&a), &record));
        assert!(is_file_marked_untrusted_in(&open(&b), &record));
        assert!(!is_file_marked_untrusted_in(&open(&c), &record));
    }

    #[test]
    fn record_marks_follow_the_inode_through_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.bin");
        std::fs::write(&file, b"x").unwrap();
        let record = dir.path().join("state/record");
        assert_eq!(
            mark_untrusted(&file, &record, Marking::RecordOnly).unwrap(),
            Some(MarkMethod::Record)
        );
        mark_untrusted(&file, &record, Marking::RecordOnly).unwrap();
        let moved = dir.path().join("b.bin");
        std::fs::rename(&file, &moved).unwrap();
        assert!(is_marked_untrusted_in(&moved, &record));
        let lines = std::fs::read_to_string(&record).unwrap();
        assert_eq!(lines.lines().count(), 1, "marked once: {lines}");
    }

    #[test]
    fn symlinks_folders_and_missing_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let record = dir.path().join("record");
        for p in [link.as_path(), dir.path(), &dir.path().join("gone")] {
            assert_eq!(
                mark_untrusted(p, &record, Marking::XattrThenRecord).unwrap(),
                None
            );
        }
        assert!(!is_marked_untrusted_in(&target, &record));
    }

    #[test]
    fn watcher_without_any_existing_folder_is_an_error() {
        let config = WatchConfig {
            dirs: vec![PathBuf::from("/nonexistent/Downloads")],
            record: PathBuf::from("/nonexistent/record"),
            marking: Marking::default(),
        };
        assert!(matches!(
            DownloadsWatcher::start(config),
            Err(WatchError::NoFolder(_))
        ));
    }
}
