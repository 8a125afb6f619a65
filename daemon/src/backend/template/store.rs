//! The template cache: one directory per template under
//! `~/.cache/vitrine/templates/`, named by the hash of its key (image hash,
//! VM shape, backend and backend version). A directory holds `memory` (the
//! guest RAM at the shim's `Ready`, sparse), `state` (QEMU's device and CPU
//! state, saved with `x-ignore-shared`) and `template.json` (the key, both
//! files' SHA-256 and the shim's `Ready`). Directories appear by rename,
//! whole, and are never written after that.
//!
//! A clone never maps the cached file itself: [`TemplateStore::load`]
//! reads `memory` once, checking its hash, into a memfd sealed against
//! every write (F_SEAL_WRITE, GROW, SHRINK, SEAL). QEMU maps that memfd
//! MAP_PRIVATE (`share=off`), so clones share its pages and write only
//! their own copies, and not even a compromised QEMU can change what the
//! next clone starts from.
//!
//! A `kvm` template ([`Layout::Snapshot`]) is a `vitrine-vmm snapshot`
//! directory instead: the VMM's `state` and `mem`, hashed the same way and
//! made read-only. `vitrine-vmm restore` maps `mem` MAP_PRIVATE itself, so
//! [`TemplateStore::load_snapshot`] checks the files and hands out the
//! directory, which each clone's jail binds read-only.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{MemfdFlags, SealFlags};
use serde::{Deserialize, Serialize};
use vitrine_shim::protocol::Ready;

/// Version of the directory layout and `template.json`.
pub const FORMAT: u32 = 1;
/// Reads and writes of guest RAM go in chunks of this size; all-zero
/// chunks stay holes.
const CHUNK: usize = 2 * 1024 * 1024;
/// Longest `template.json` or `state` read (QEMU's state is tens of KiB).
const MAX_SMALL_FILE: u64 = 16 * 1024 * 1024;
const MEMORY: &str = "memory";
const STATE: &str = "state";
const META: &str = "template.json";
/// [`TemplateKey::backend`] of templates that are VMM snapshot directories.
pub const KVM_BACKEND: &str = "kvm";

/// A template is missing, broken, or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TemplateStoreError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    /// `template.json` is not what this version writes.
    #[error("{0}: not a template this version reads: {1}")]
    Meta(PathBuf, String),
    /// A file's content is not what was saved.
    #[error("{path}: SHA-256 is {got}, the template recorded {want} (corrupted or truncated)")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Recorded at save time.
        want: String,
        /// Now.
        got: String,
    },
    /// The template was made for another key.
    #[error("{0}: made for another image, shape or QEMU")]
    KeyMismatch(PathBuf),
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> TemplateStoreError {
    let what = what.to_string();
    move |e| TemplateStoreError::Io(what, e)
}

/// What a template must match to serve a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateKey {
    /// SHA-256 of the guest image (kernel and initramfs).
    pub image_sha256: String,
    /// Guest RAM.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u8,
    /// The full kernel command line.
    pub cmdline: String,
    /// Accelerator (`Tcg`, `Kvm`).
    pub accel: String,
    /// `qemu` or `kvm`.
    pub backend: String,
    /// QEMU's version line, or the VMM's snapshot format version.
    pub backend_version: String,
    /// The application disk the template mounted ([`app_disk_identity`]);
    /// empty without one. A template's RAM caches the disk's blocks, so a
    /// clone must get the same disk.
    #[serde(default)]
    pub app_disk: String,
}

/// What stands for the image's application disk in a template key: its
/// path (build.sh's image directories are named by their content), size
/// and modification time (a disk replaced in place); empty without a disk.
pub fn app_disk_identity(image: &crate::backend::GuestImage) -> String {
    let Some(disk) = &image.app_disk else {
        return String::new();
    };
    let stamp = std::fs::metadata(disk).ok().map(|m| {
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        format!(
            "{} bytes, mtime {}.{:09}",
            m.len(),
            mtime.as_secs(),
            mtime.subsec_nanos()
        )
    });
    format!(
        "{} ({})",
        disk.display(),
        stamp.unwrap_or_else(|| "unreadable".into())
    )
}

impl TemplateKey {
    /// The directory name: 16 hex digits of the key's SHA-256.
    pub fn id(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        sha256_hex(text.as_bytes())[..16].to_owned()
    }

    /// What a template of this key holds.
    pub fn layout(&self) -> Layout {
        if self.backend == KVM_BACKEND {
            Layout::Snapshot
        } else {
            Layout::Memfd
        }
    }
}

/// The files of a template directory besides `template.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// QEMU's: `memory` (loaded into a sealed memfd) and `state`.
    Memfd,
    /// `vitrine-vmm snapshot`'s directory: `mem` (mapped by the VMM) and
    /// `state`.
    Snapshot,
}

impl Layout {
    /// The guest RAM file and the state file, by name.
    pub fn files(self) -> [&'static str; 2] {
        match self {
            Self::Memfd => [MEMORY, STATE],
            Self::Snapshot => [
                vitrine_microvm::snapshot::MEMORY_FILE,
                vitrine_microvm::snapshot::STATE_FILE,
            ],
        }
    }
}

/// `template.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateMeta {
    /// [`FORMAT`].
    pub format: u32,
    /// What it was made for.
    pub key: TemplateKey,
    /// Guest RAM bytes (the memory file's length).
    pub memory_bytes: u64,
    /// SHA-256 of the memory file.
    pub memory_sha256: String,
    /// SHA-256 of the state file.
    pub state_sha256: String,
    /// What the shim said when the template was taken (kvm: what it said
    /// in the clone that checked the template before it was kept).
    pub ready: Ready,
    /// When it was saved, seconds since the epoch.
    pub created_unix: u64,
    /// Boot to `Ready` plus saving, in ms.
    pub build_ms: u64,
}

/// A template loaded for cloning.
#[derive(Debug)]
pub struct LoadedTemplate {
    /// Its directory.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: TemplateMeta,
    /// Guest RAM in a sealed memfd, mapped private by each clone.
    pub memory: Arc<OwnedFd>,
    /// QEMU's saved state, checked against its hash.
    pub state: Vec<u8>,
}

impl LoadedTemplate {
    /// A fresh descriptor holding the saved state, read from its start, for
    /// one clone's `migrate-incoming`.
    pub fn state_fd(&self) -> Result<OwnedFd, TemplateStoreError> {
        let fd = rustix::fs::memfd_create("vitrine-template-state", MemfdFlags::CLOEXEC)
            .map_err(|e| io("memfd for the template state")(e.into()))?;
        let mut file = File::from(fd);
        file.write_all(&self.state)
            .map_err(io("memfd for the template state"))?;
        rustix::fs::seek(&file, rustix::fs::SeekFrom::Start(0))
            .map_err(|e| io("memfd for the template state")(e.into()))?;
        Ok(file.into())
    }
}

/// A `vitrine-vmm snapshot` directory whose files matched their hashes.
#[derive(Debug)]
pub struct SnapshotTemplate {
    /// The directory, for `vitrine-vmm restore --snapshot`.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: TemplateMeta,
}

/// One template as `vitrine templates list` shows it.
#[derive(Debug, Clone)]
pub struct TemplateEntry {
    /// Its directory.
    pub dir: PathBuf,
    /// Its metadata, or why it cannot be read.
    pub meta: Result<TemplateMeta, String>,
    /// Bytes on disk (allocated blocks).
    pub disk_bytes: u64,
    /// Time since it was saved.
    pub age: Duration,
}

/// The cache directory of templates.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    root: PathBuf,
}

impl TemplateStore {
    /// `$VITRINE_TEMPLATE_DIR`, else `templates/` in the cache that the
    /// image build uses (`$VITRINE_CACHE`, `$XDG_CACHE_HOME/vitrine`,
    /// `~/.cache/vitrine`).
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = var("VITRINE_TEMPLATE_DIR").unwrap_or_else(|| {
            var("VITRINE_CACHE")
                .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("vitrine")))
                .or_else(|| var("HOME").map(|h| h.join(".cache/vitrine")))
                .unwrap_or_else(|| PathBuf::from("/var/cache/vitrine"))
                .join("templates")
        });
        Self { root }
    }

    /// Templates under `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the template of `key` lives (it may not exist).
    pub fn dir_of(&self, key: &TemplateKey) -> PathBuf {
        self.root.join(key.id())
    }

    /// A new, empty build directory, renamed into place by [`Self::commit`].
    pub fn begin(&self) -> Result<tempfile::TempDir, TemplateStoreError> {
        fs::create_dir_all(&self.root).map_err(io(self.root.display()))?;
        tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&self.root)
            .map_err(io(self.root.display()))
    }

    /// Writes the memory file and `template.json` into `build` (QEMU has
    /// written `state` there), then renames it to the key's directory. If
    /// another daemon got there first, its template stays and ours goes.
    pub fn commit(
        &self,
        build: tempfile::TempDir,
        memory: &OwnedFd,
        mut meta: TemplateMeta,
    ) -> Result<PathBuf, TemplateStoreError> {
        let (memory_sha256, memory_bytes) = save_memory(memory, &build.path().join(MEMORY))?;
        meta.memory_sha256 = memory_sha256;
        meta.memory_bytes = memory_bytes;
        let state = read_small(&build.path().join(STATE))?;
        meta.state_sha256 = sha256_hex(&state);
        self.put_in_place(build, &meta)
    }

    /// Hashes the snapshot that `vitrine-vmm snapshot --out` wrote into
    /// `build`, makes its files read-only (clones map `mem` MAP_PRIVATE, so
    /// a later write would show through), and puts it in place like
    /// [`Self::commit`].
    pub fn commit_snapshot(
        &self,
        build: tempfile::TempDir,
        mut meta: TemplateMeta,
    ) -> Result<PathBuf, TemplateStoreError> {
        let [memory, state] = Layout::Snapshot.files();
        let (memory_sha256, memory_bytes) = digest_file(&build.path().join(memory))?;
        meta.memory_sha256 = memory_sha256;
        meta.memory_bytes = memory_bytes;
        meta.state_sha256 = sha256_hex(&read_small(&build.path().join(state))?);
        for name in [memory, state] {
            let p = build.path().join(name);
            fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o444))
                .map_err(io(p.display()))?;
        }
        self.put_in_place(build, &meta)
    }

    /// Writes `template.json`, syncs every file, and renames `build` to the
    /// key's directory.
    fn put_in_place(
        &self,
        build: tempfile::TempDir,
        meta: &TemplateMeta,
    ) -> Result<PathBuf, TemplateStoreError> {
        let json = serde_json::to_vec_pretty(meta)
            .map_err(|e| TemplateStoreError::Meta(build.path().join(META), e.to_string()))?;
        let meta_path = build.path().join(META);
        fs::write(&meta_path, json).map_err(io(meta_path.display()))?;
        let [memory, state] = meta.key.layout().files();
        for name in [memory, state, META] {
            let p = build.path().join(name);
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(io(p.display()))?;
        }
        let dir = self.dir_of(&meta.key);
        let built = build.keep();
        match fs::rename(&built, &dir) {
            Ok(()) => Ok(dir),
            Err(_) if dir.join(META).is_file() => {
                let _ = fs::remove_dir_all(&built);
                Ok(dir)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&built);
                Err(io(dir.display())(e))
            }
        }
    }

    /// Loads the template of `key`, checking both files against their
    /// recorded SHA-256; `Ok(None)` when there is none.
    pub fn load(&self, key: &TemplateKey) -> Result<Option<LoadedTemplate>, TemplateStoreError> {
        let Some((dir, meta)) = self.meta_of(key)? else {
            return Ok(None);
        };
        let state_path = dir.join(STATE);
        let state = read_small(&state_path)?;
        check_sum(&state_path, &meta.state_sha256, &sha256_hex(&state))?;
        let memory_path = dir.join(MEMORY);
        let (memory, got) = load_memory(&memory_path, meta.memory_bytes)?;
        check_sum(&memory_path, &meta.memory_sha256, &got)?;
        Ok(Some(LoadedTemplate {
            dir,
            meta,
            memory: Arc::new(memory),
            state,
        }))
    }

    /// The snapshot directory of `key` ([`Layout::Snapshot`]), its files
    /// checked against their recorded SHA-256; `Ok(None)` when there is
    /// none.
    pub fn load_snapshot(
        &self,
        key: &TemplateKey,
    ) -> Result<Option<SnapshotTemplate>, TemplateStoreError> {
        let Some((dir, meta)) = self.meta_of(key)? else {
            return Ok(None);
        };
        let [memory, state] = Layout::Snapshot.files();
        let state_path = dir.join(state);
        check_sum(
            &state_path,
            &meta.state_sha256,
            &sha256_hex(&read_small(&state_path)?),
        )?;
        let memory_path = dir.join(memory);
        // The digest counts the length, so a truncated file fails it too.
        let (got, _) = digest_file(&memory_path)?;
        check_sum(&memory_path, &meta.memory_sha256, &got)?;
        Ok(Some(SnapshotTemplate { dir, meta }))
    }

    /// The directory and metadata of `key`'s template, if it has one made
    /// for exactly this key.
    fn meta_of(
        &self,
        key: &TemplateKey,
    ) -> Result<Option<(PathBuf, TemplateMeta)>, TemplateStoreError> {
        let dir = self.dir_of(key);
        if !dir.join(META).exists() {
            return Ok(None);
        }
        let meta = read_meta(&dir)?;
        if meta.key != *key {
            return Err(TemplateStoreError::KeyMismatch(dir));
        }
        Ok(Some((dir, meta)))
    }

    /// Removes the template of `key` (a broken one, before a rebuild).
    pub fn remove(&self, key: &TemplateKey) -> Result<(), TemplateStoreError> {
        let dir = self.dir_of(key);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(dir.display())(e)),
        }
    }

    /// Every template directory, newest first, with what it holds.
    pub fn list(&self) -> Vec<TemplateEntry> {
        let Ok(dir) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let now = SystemTime::now();
        let mut entries: Vec<TemplateEntry> = dir
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.path().is_dir())
            .map(|e| {
                let path = e.path();
                let meta = read_meta(&path).map_err(|e| e.to_string());
                let created = meta
                    .as_ref()
                    .map(|m| UNIX_EPOCH + Duration::from_secs(m.created_unix))
                    .unwrap_or(now);
                TemplateEntry {
                    disk_bytes: disk_usage(&path),
                    age: now.duration_since(created).unwrap_or_default(),
                    meta,
                    dir: path,
                }
            })
            .collect();
        entries.sort_by_key(|e| e.age);
        entries
    }

    /// Removes build directories that a dead process left (a daemon killed
    /// while it saved a template). Ours are named `.build-*`; a build
    /// in progress is younger than `older_than`.
    pub fn remove_stale_builds(&self, older_than: Duration) -> Vec<PathBuf> {
        let Ok(dir) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for e in dir.flatten() {
            let stale = e.file_name().to_string_lossy().starts_with(".build-")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > older_than);
            if stale && fs::remove_dir_all(e.path()).is_ok() {
                removed.push(e.path());
            }
        }
        removed
    }
}

/// The file QEMU saves the template's state into, inside a build directory.
pub fn state_path(build: &Path) -> PathBuf {
    build.join(STATE)
}

fn read_meta(dir: &Path) -> Result<TemplateMeta, TemplateStoreError> {
    let path = dir.join(META);
    let bytes = read_small(&path)?;
    let meta: TemplateMeta = serde_json::from_slice(&bytes)
        .map_err(|e| TemplateStoreError::Meta(path.clone(), e.to_string()))?;
    if meta.format != FORMAT {
        return Err(TemplateStoreError::Meta(
            path,
            format!("format {} (this version reads {FORMAT})", meta.format),
        ));
    }
    Ok(meta)
}

fn read_small(path: &Path) -> Result<Vec<u8>, TemplateStoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_SMALL_FILE + 1).read_to_end(&mut bytes))
        .map_err(io(path.display()))?;
    if bytes.len() as u64 > MAX_SMALL_FILE {
        return Err(TemplateStoreError::Meta(
            path.to_owned(),
            format!("larger than {MAX_SMALL_FILE} bytes"),
        ));
    }
    Ok(bytes)
}

fn check_sum(path: &Path, want: &str, got: &str) -> Result<(), TemplateStoreError> {
    if want == got {
        return Ok(());
    }
    Err(TemplateStoreError::Checksum {
        path: path.to_owned(),
        want: want.to_owned(),
        got: got.to_owned(),
    })
}

/// A memfd of `bytes` of zeros (holes) for a template VM's shared RAM.
pub fn new_guest_ram(bytes: u64) -> Result<OwnedFd, TemplateStoreError> {
    let fd = rustix::fs::memfd_create("vitrine-template-build", MemfdFlags::CLOEXEC)
        .map_err(|e| io("memfd for guest RAM")(e.into()))?;
    rustix::fs::ftruncate(&fd, bytes).map_err(|e| io("memfd for guest RAM")(e.into()))?;
    Ok(fd)
}

/// The digest of guest RAM: its length, then each non-zero chunk with its
/// offset. Zero chunks are holes on disk and in the memfd; they count by
/// the length alone.
struct RamDigest(ring::digest::Context);

impl RamDigest {
    fn new(len: u64) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&len.to_le_bytes());
        Self(ctx)
    }
    fn chunk(&mut self, offset: u64, data: &[u8]) {
        self.0.update(&offset.to_le_bytes());
        self.0.update(data);
    }
    fn finish(self) -> String {
        hex(self.0.finish().as_ref())
    }
}

/// Copies guest RAM from `memory` into a sparse file at `path`; returns its
/// digest and length.
fn save_memory(memory: &OwnedFd, path: &Path) -> Result<(String, u64), TemplateStoreError> {
    let len = rustix::fs::fstat(memory)
        .map_err(|e| io("guest RAM")(e.into()))?
        .st_size;
    let len = u64::try_from(len).unwrap_or(0);
    let source = File::from(memory.try_clone().map_err(io("guest RAM"))?);
    let out = File::create(path).map_err(io(path.display()))?;
    out.set_len(len).map_err(io(path.display()))?;
    let mut digest = RamDigest::new(len);
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let n = usize::try_from((len - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
        source
            .read_exact_at(&mut buf[..n], offset)
            .map_err(io("guest RAM"))?;
        if buf[..n].iter().any(|b| *b != 0) {
            digest.chunk(offset, &buf[..n]);
            out.write_all_at(&buf[..n], offset)
                .map_err(io(path.display()))?;
        }
        offset += n as u64;
    }
    Ok((digest.finish(), len))
}

/// The digest of the sparse memory file at `path` (as [`RamDigest`]
/// counts it) and its length.
fn digest_file(path: &Path) -> Result<(String, u64), TemplateStoreError> {
    let file = File::open(path).map_err(io(path.display()))?;
    let len = file.metadata().map_err(io(path.display()))?.len();
    let mut digest = RamDigest::new(len);
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let n = usize::try_from((len - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
        file.read_exact_at(&mut buf[..n], offset)
            .map_err(io(path.display()))?;
        if buf[..n].iter().any(|b| *b != 0) {
            digest.chunk(offset, &buf[..n]);
        }
        offset += n as u64;
    }
    Ok((digest.finish(), len))
}

/// Reads the sparse memory file at `path` into a new memfd, sealed against
/// writes; returns it and the digest of what was read.
fn load_memory(path: &Path, want_len: u64) -> Result<(OwnedFd, String), TemplateStoreError> {
    let file = File::open(path).map_err(io(path.display()))?;
    let len = file.metadata().map_err(io(path.display()))?.len();
    let fd = rustix::fs::memfd_create(
        "vitrine-template",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| io("memfd for the template")(e.into()))?;
    rustix::fs::ftruncate(&fd, want_len).map_err(|e| io("memfd for the template")(e.into()))?;
    // Every page allocated now, and charged to this daemon once: a clone's
    // fault on a hole of a shmem file, even one it only reads or then
    // copies, would allocate the page in the shared file and charge it to
    // the clone's cgroup, unreclaimable, beside the clone's own copy. A
    // guest that touches all its RAM then doubles its charge and its QEMU
    // is killed by the jail's memory limit.
    rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, want_len)
        .map_err(|e| io("allocating the template's memfd")(e.into()))?;
    let memfd = File::from(fd);
    let mut digest = RamDigest::new(len);
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len.min(want_len) {
        let n = usize::try_from((len - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
        file.read_exact_at(&mut buf[..n], offset)
            .map_err(io(path.display()))?;
        if buf[..n].iter().any(|b| *b != 0) {
            digest.chunk(offset, &buf[..n]);
            memfd
                .write_all_at(&buf[..n], offset)
                .map_err(io("memfd for the template"))?;
        }
        offset += n as u64;
    }
    let fd: OwnedFd = memfd.into();
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )
    .map_err(|e| io("sealing the template's memfd")(e.into()))?;
    Ok((fd, digest.finish()))
}

fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Whether `fd` is sealed against writes (for tests and `list`).
pub fn is_write_sealed(fd: impl AsFd) -> bool {
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::WRITE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(backend: &str) -> TemplateKey {
        TemplateKey {
            image_sha256: "ab".repeat(32),
            memory_mib: 512,
            vcpus: 1,
            cmdline: "console=ttyS0 quiet".to_owned(),
            accel: "Kvm".to_owned(),
            backend: backend.to_owned(),
            backend_version: "snapshot format 2".to_owned(),
            app_disk: String::new(),
        }
    }

    #[test]
    fn a_replaced_app_disk_changes_the_template_key() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("apps.squashfs");
        std::fs::write(&disk, b"hsqs one").unwrap();
        let mut image = crate::backend::GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: String::new(),
            app_disk: Some(disk.clone()),
        };
        let before = app_disk_identity(&image);
        std::fs::write(&disk, b"hsqs two, longer").unwrap();
        let after = app_disk_identity(&image);
        image.app_disk = None;

        assert_ne!(before, after);
        assert!(before.contains("apps.squashfs"), "{before}");
        assert_eq!(app_disk_identity(&image), "");
        let with = |app_disk: String| TemplateKey {
            app_disk,
            ..key("qemu")
        };
        assert_ne!(with(before).id(), with(after).id());
    }

    fn meta(key: TemplateKey) -> TemplateMeta {
        TemplateMeta {
            format: FORMAT,
            key,
            memory_bytes: 0,
            memory_sha256: String::new(),
            state_sha256: String::new(),
            ready: Ready {
                shim_version: "test".to_owned(),
                capabilities: Vec::new(),
            },
            created_unix: 0,
            build_ms: 0,
        }
    }

    /// A build directory as `vitrine-vmm snapshot --out` leaves it: a
    /// sparse `mem` with one page written, and `state`.
    fn snapshot_build(store: &TemplateStore) -> tempfile::TempDir {
        let build = store.begin().unwrap();
        let mem = File::create(build.path().join("mem")).unwrap();
        mem.set_len(8 << 20).unwrap();
        mem.write_all_at(b"guest kernel page", 3 << 20).unwrap();
        fs::write(build.path().join("state"), b"VITRSNAP state").unwrap();
        build
    }

    #[test]
    fn only_kvm_templates_are_snapshot_directories() {
        assert_eq!(key("kvm").layout(), Layout::Snapshot);
        assert_eq!(key("qemu").layout(), Layout::Memfd);
        assert_eq!(Layout::Snapshot.files(), ["mem", "state"]);
        assert_ne!(key("kvm").id(), key("qemu").id());
    }

    #[test]
    fn a_committed_snapshot_loads_with_its_hashes_and_read_only_files() {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::at(root.path());
        let build = snapshot_build(&store);

        let dir = store.commit_snapshot(build, meta(key("kvm"))).unwrap();
        let loaded = store.load_snapshot(&key("kvm")).unwrap().unwrap();

        assert_eq!(dir, store.dir_of(&key("kvm")));
        assert_eq!(loaded.dir, dir);
        assert_eq!(loaded.meta.memory_bytes, 8 << 20);
        assert_eq!(loaded.meta.memory_sha256.len(), 64);
        for name in ["mem", "state"] {
            let mode = fs::metadata(dir.join(name)).unwrap().permissions();
            assert!(mode.readonly(), "{name} is writable");
        }
        assert!(store.load_snapshot(&key("other")).unwrap().is_none());
    }

    #[test]
    fn a_read_only_snapshot_template_can_still_be_removed() {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::at(root.path());
        let dir = store
            .commit_snapshot(snapshot_build(&store), meta(key("kvm")))
            .unwrap();

        store.remove(&key("kvm")).unwrap();

        assert!(!dir.exists());
        assert!(store.load_snapshot(&key("kvm")).unwrap().is_none());
    }

    #[test]
    fn a_snapshot_whose_memory_changed_fails_its_checksum() {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::at(root.path());
        let dir = store
            .commit_snapshot(snapshot_build(&store), meta(key("kvm")))
            .unwrap();
        let mem = dir.join("mem");
        fs::set_permissions(&mem, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&mem)
            .unwrap()
            .write_all_at(b"X", 3 << 20)
            .unwrap();

        let err = store.load_snapshot(&key("kvm")).unwrap_err();

        assert!(
            matches!(&err, TemplateStoreError::Checksum { path, .. } if path == &mem),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_snapshot_memory_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let store = TemplateStore::at(root.path());
        let dir = store
            .commit_snapshot(snapshot_build(&store), meta(key("kvm")))
            .unwrap();
        let mem = dir.join("mem");
        fs::set_permissions(&mem, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&mem)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();

        let err = store.load_snapshot(&key("kvm")).unwrap_err();

        assert!(err.to_string().contains("corrupted or truncated"), "{err}");
    }
}
