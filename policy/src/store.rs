//! Installing a policy atomically, and rolling it back.
//!
//! Layout, for the policy path `P` (by default `/etc/vitrine/policy.d`):
//!
//! ```text
//! P.versions/<sha256>/NN-name.toml   one immutable directory per version
//! P          -> P.versions/<sha256>  symlink: the active version
//! P.previous -> P.versions/<sha256>  symlink: what `rollback` returns to
//! P.lock                             flock(2) serialising apply/rollback
//! ```
//!
//! The daemon only ever reads `P`. Switching versions is `rename(2)` of a
//! fresh symlink over `P`, which is atomic: a reader sees the old version or
//! the new one, never a mix, and a crash leaves one of them in place. A
//! version directory is written under a temporary name, fsynced, and renamed
//! into place before anything points at it.
//!
//! The first `apply` on a host where `P` is still a plain directory imports
//! that directory as a version, then swaps the symlink in with
//! `renameat2(RENAME_EXCHANGE)` (atomic too) and keeps the old directory as
//! `P.orig`.

use crate::diagnostics::{Diagnostics, SourceFile};
use crate::policy::{read_dir_sources, PolicySet, PolicyVersion};
use rustix::fs::{FlockOperation, RenameFlags, CWD};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the staged policy is invalid")]
    Invalid(#[source] Diagnostics),
    #[error("the stored version {version} is invalid; refusing to activate it")]
    CorruptVersion {
        version: String,
        #[source]
        diagnostics: Diagnostics,
    },
    #[error("there is no previous version to roll back to")]
    NoPrevious,
    #[error("{path} is neither a symlink managed by vitrine-policy nor a directory")]
    Unmanaged { path: PathBuf },
    #[error("cannot atomically replace the directory {path} with a symlink on this file system; move it away and run apply again")]
    ExchangeUnsupported { path: PathBuf },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The result of an `apply` or `rollback`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Switch {
    /// The version now active.
    pub active: PolicyVersion,
    /// The version `rollback` would return to.
    pub previous: Option<PolicyVersion>,
    /// False when the requested version was already active.
    pub changed: bool,
}

/// What is installed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreStatus {
    pub path: PathBuf,
    /// `managed`, `directory` (not yet under vitrine-policy) or `missing`.
    pub state: &'static str,
    pub active: Option<String>,
    pub previous: Option<String>,
}

/// The versioned store around one policy path.
#[derive(Debug, Clone)]
pub struct PolicyStore {
    link: PathBuf,
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl PolicyStore {
    /// `link` is the path the daemon loads (`/etc/vitrine/policy.d`).
    pub fn new(link: impl Into<PathBuf>) -> Self {
        let link: PathBuf = link.into();
        // `policy.d/` and `policy.d` must name the same store.
        let link = link.components().collect();
        PolicyStore { link }
    }

    pub fn path(&self) -> &Path {
        &self.link
    }
    fn versions_dir(&self) -> PathBuf {
        with_suffix(&self.link, ".versions")
    }
    fn previous_link(&self) -> PathBuf {
        with_suffix(&self.link, ".previous")
    }
    fn lock_path(&self) -> PathBuf {
        with_suffix(&self.link, ".lock")
    }
    fn parent(&self) -> PathBuf {
        match self.link.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    /// The symlink target for a version, relative to the link's directory.
    fn target_for(&self, version: &PolicyVersion) -> PathBuf {
        let base = self
            .versions_dir()
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default();
        base.join(version.hex())
    }

    fn version_dir(&self, version: &PolicyVersion) -> PathBuf {
        self.versions_dir().join(version.hex())
    }

    /// The version a managed symlink points at, if it is one of ours.
    fn version_of_link(&self, link: &Path) -> Option<String> {
        let target = fs::read_link(link).ok()?;
        let name = target.file_name()?.to_str()?;
        let parent = target.parent()?.file_name()?;
        (Some(parent) == self.versions_dir().file_name()
            && name.len() == 64
            && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| name.to_owned())
    }

    pub fn status(&self) -> StoreStatus {
        let state = match fs::symlink_metadata(&self.link) {
            Ok(m) if m.file_type().is_symlink() => "managed",
            Ok(m) if m.is_dir() => "directory",
            Ok(_) => "unmanaged",
            Err(_) => "missing",
        };
        StoreStatus {
            path: self.link.clone(),
            state,
            active: self.version_of_link(&self.link),
            previous: self.version_of_link(&self.previous_link()),
        }
    }

    fn lock(&self) -> Result<File, StoreError> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open lock", &path))?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive).map_err(|e| StoreError::Io {
            op: "lock",
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(file)
    }

    /// Validate the policy in `staged` and make it the active one. The
    /// version it replaces becomes the one `rollback` returns to.
    pub fn apply(&self, staged: &Path) -> Result<Switch, StoreError> {
        // Read once; the bytes validated are the bytes installed.
        let files = read_dir_sources(staged).map_err(StoreError::Invalid)?;
        PolicySet::from_sources(files.clone(), Some(staged.to_owned()))
            .map_err(StoreError::Invalid)?;
        let version = PolicyVersion::of(&files);

        let _lock = self.lock()?;
        let dirs = self.versions_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dirs)
            .map_err(io_err("create", &dirs))?;

        let old = self.adopt_plain_directory()?;
        let current = old.or_else(|| self.version_of_link(&self.link));
        if current.as_deref() == Some(version.hex().as_str()) {
            return Ok(Switch {
                active: version,
                previous: self
                    .version_of_link(&self.previous_link())
                    .and_then(|h| parse_version(&h)),
                changed: false,
            });
        }
        self.write_version(&version, &files)?;
        self.point(&self.link, &version)?;
        let previous = match current.as_deref().and_then(parse_version) {
            Some(prev) => {
                self.point(&self.previous_link(), &prev)?;
                Some(prev)
            }
            None => None,
        };
        sync_dir(&self.parent())?;
        log::info!(
            "policy {} is now {} (previous: {:?})",
            self.link.display(),
            version.short(),
            previous
        );
        Ok(Switch {
            active: version,
            previous,
            changed: true,
        })
    }

    /// Make the previous version active again; the one it replaces becomes
    /// the previous one, so a second rollback undoes the first.
    pub fn rollback(&self) -> Result<Switch, StoreError> {
        let _lock = self.lock()?;
        let prev_hex = self
            .version_of_link(&self.previous_link())
            .ok_or(StoreError::NoPrevious)?;
        let prev = parse_version(&prev_hex).ok_or(StoreError::NoPrevious)?;
        // Never activate a stored version that no longer loads or whose
        // content no longer matches its name.
        let dir = self.version_dir(&prev);
        let files = read_dir_sources(&dir).map_err(|diagnostics| StoreError::CorruptVersion {
            version: prev_hex.clone(),
            diagnostics,
        })?;
        PolicySet::from_sources(files.clone(), Some(dir.clone())).map_err(|diagnostics| {
            StoreError::CorruptVersion {
                version: prev_hex.clone(),
                diagnostics,
            }
        })?;
        if PolicyVersion::of(&files) != prev {
            return Err(StoreError::CorruptVersion {
                version: prev_hex,
                diagnostics: Diagnostics::default(),
            });
        }
        let current = self
            .version_of_link(&self.link)
            .and_then(|h| parse_version(&h));
        self.point(&self.link, &prev)?;
        if let Some(cur) = &current {
            self.point(&self.previous_link(), cur)?;
        }
        sync_dir(&self.parent())?;
        log::info!(
            "policy {} rolled back to {}",
            self.link.display(),
            prev.short()
        );
        Ok(Switch {
            active: prev,
            previous: current,
            changed: true,
        })
    }

    /// If the policy path is a plain directory (hand-managed so far), store
    /// it as a version and swap a symlink in its place. Returns its version.
    fn adopt_plain_directory(&self) -> Result<Option<String>, StoreError> {
        let meta = match fs::symlink_metadata(&self.link) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("stat", &self.link)(e)),
            Ok(m) => m,
        };
        if meta.file_type().is_symlink() {
            if self.version_of_link(&self.link).is_none() {
                return Err(StoreError::Unmanaged {
                    path: self.link.clone(),
                });
            }
            return Ok(None);
        }
        if !meta.is_dir() {
            return Err(StoreError::Unmanaged {
                path: self.link.clone(),
            });
        }
        // Import whatever it holds, valid or not: rollback must be able to
        // return to exactly what the admin had.
        let files = read_dir_sources(&self.link).unwrap_or_default();
        let version = PolicyVersion::of(&files);
        self.write_version(&version, &files)?;
        let tmp = self.temp_link(&version)?;
        match rustix::fs::renameat_with(CWD, &tmp, CWD, &self.link, RenameFlags::EXCHANGE) {
            Ok(()) => {}
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(match e {
                    rustix::io::Errno::INVAL
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::OPNOTSUPP => StoreError::ExchangeUnsupported {
                        path: self.link.clone(),
                    },
                    e => io_err("exchange", &self.link)(e.into()),
                });
            }
        }
        // `tmp` now names the old directory; keep it for the admin.
        let mut keep = with_suffix(&self.link, ".orig");
        let mut n = 1;
        while fs::symlink_metadata(&keep).is_ok() {
            keep = with_suffix(&self.link, &format!(".orig.{n}"));
            n += 1;
        }
        fs::rename(&tmp, &keep).map_err(io_err("rename", &tmp))?;
        log::warn!(
            "policy {} was a plain directory; it is now version {} and the original is kept at {}",
            self.link.display(),
            version.short(),
            keep.display()
        );
        Ok(Some(version.hex()))
    }

    /// Write `files` as the immutable version directory, if not there yet.
    fn write_version(
        &self,
        version: &PolicyVersion,
        files: &[SourceFile],
    ) -> Result<(), StoreError> {
        let dest = self.version_dir(version);
        if dest.is_dir() {
            // Same name, same content: the name is the content's hash. Check
            // anyway, in case someone edited a stored version by hand.
            let existing = read_dir_sources(&dest).unwrap_or_default();
            if PolicyVersion::of(&existing) == *version {
                return Ok(());
            }
            return Err(StoreError::CorruptVersion {
                version: version.hex(),
                diagnostics: Diagnostics::default(),
            });
        }
        let tmp =
            self.versions_dir()
                .join(format!(".tmp-{}-{}", version.short(), std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&tmp)
            .map_err(io_err("create", &tmp))?;
        for f in files {
            let path = tmp.join(&*f.name);
            let mut out = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o644)
                .open(&path)
                .map_err(io_err("create", &path))?;
            out.write_all(f.text.as_bytes())
                .map_err(io_err("write", &path))?;
            out.sync_all().map_err(io_err("fsync", &path))?;
        }
        sync_dir(&tmp)?;
        fs::rename(&tmp, &dest).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.versions_dir())
    }

    fn temp_link(&self, version: &PolicyVersion) -> Result<PathBuf, StoreError> {
        let tmp = with_suffix(&self.link, &format!(".tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(self.target_for(version), &tmp)
            .map_err(io_err("symlink", &tmp))?;
        Ok(tmp)
    }

    /// Atomically make `link` point at `version`.
    fn point(&self, link: &Path, version: &PolicyVersion) -> Result<(), StoreError> {
        let tmp = self.temp_link(version)?;
        fs::rename(&tmp, link).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("rename", link)(e)
        })
    }
}

fn parse_version(hex: &str) -> Option<PolicyVersion> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(PolicyVersion(out))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_hex_round_trips() {
        let v = PolicyVersion([0xab; 32]);
        assert_eq!(parse_version(&v.hex()), Some(v));
        assert_eq!(parse_version("zz"), None);
    }

    #[test]
    fn store_paths_sit_beside_the_policy_path() {
        let s = PolicyStore::new("/etc/vitrine/policy.d/");
        assert_eq!(
            s.versions_dir(),
            Path::new("/etc/vitrine/policy.d.versions")
        );
        assert_eq!(
            s.previous_link(),
            Path::new("/etc/vitrine/policy.d.previous")
        );
        assert_eq!(
            s.target_for(&PolicyVersion([0; 32])),
            Path::new("policy.d.versions").join("0".repeat(64))
        );
    }
}
