//! Finds the guest image that `shim/image/build.sh` built, and says why a
//! guest test cannot run when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The command that builds the guest image, as a skip message names it.
pub const BUILD_COMMAND: &str = "shim/image/build.sh";

/// Why no guest image is available.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestImageError {
    /// The image has not been built for the current inputs: skip.
    #[error(
        "guest image not built; build it with `{BUILD_COMMAND}` (or set VITRINE_IMAGE_DIR): {0}"
    )]
    NotBuilt(String),
    /// `VITRINE_IMAGE_DIR` names a directory without an image: fail.
    #[error("VITRINE_IMAGE_DIR={dir} holds no {missing}")]
    BadImageDir {
        /// The directory.
        dir: PathBuf,
        /// The missing file.
        missing: &'static str,
    },
    /// QEMU is not installed: skip.
    #[error("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")]
    NoQemu,
}

impl GuestImageError {
    /// Whether a test should skip (loudly) rather than fail.
    pub fn is_skip(&self) -> bool {
        !matches!(self, Self::BadImageDir { .. })
    }
}

/// Repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The image directory: `$VITRINE_IMAGE_DIR`, else what
/// `shim/image/build.sh --print-dir` reports (it does not build). Looked up
/// once per test process.
pub fn locate() -> Result<PathBuf, GuestImageError> {
    static FOUND: OnceLock<Result<PathBuf, GuestImageError>> = OnceLock::new();
    FOUND.get_or_init(lookup).clone()
}

fn lookup() -> Result<PathBuf, GuestImageError> {
    if !qemu_installed() {
        return Err(GuestImageError::NoQemu);
    }
    if let Some(dir) = std::env::var_os("VITRINE_IMAGE_DIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        for missing in ["vmlinux", "initrd.gz"] {
            if !dir.join(missing).is_file() {
                return Err(GuestImageError::BadImageDir { dir, missing });
            }
        }
        return Ok(dir);
    }
    let script = repo_root().join(BUILD_COMMAND);
    let out = Command::new(&script)
        .arg("--print-dir")
        .output()
        .map_err(|e| GuestImageError::NotBuilt(format!("cannot run {}: {e}", script.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last().map(str::trim) {
        Some(dir) if out.status.success() && !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Err(GuestImageError::NotBuilt(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )),
    }
}

fn qemu_installed() -> bool {
    let binary = std::env::var_os("VITRINE_QEMU")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vitrine_daemon::backend::qemu::DEFAULT_QEMU.into());
    Command::new(binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The image directory, or `None` after printing a loud skip line for
/// `test`. Panics when the image directory is set but broken.
pub fn require(test: &str) -> Option<PathBuf> {
    match locate() {
        Ok(dir) => Some(dir),
        Err(e) if e.is_skip() => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}
