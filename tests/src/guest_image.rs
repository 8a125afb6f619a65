//! Finds the guest image that `shim/image/build.sh` built (through the
//! daemon's own lookup), and says why a guest test cannot run when it is
//! missing.

use std::path::PathBuf;
use std::sync::OnceLock;

use vitrine_daemon::fresh_guest::qemu_installed;
use vitrine_daemon::image_cache::{self, ImageCacheError};

pub use vitrine_daemon::image_cache::BUILD_COMMAND;

/// Why no guest image is available.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestImageError {
    /// The image has not been built, or `VITRINE_IMAGE_DIR` names a
    /// directory without one.
    #[error(transparent)]
    Image(#[from] ImageCacheError),
    /// QEMU is not installed: skip.
    #[error("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")]
    NoQemu,
}

impl GuestImageError {
    /// Whether a test should skip (loudly) rather than fail: a set but
    /// broken `VITRINE_IMAGE_DIR` fails.
    pub fn is_skip(&self) -> bool {
        !matches!(self, Self::Image(ImageCacheError::BadImageDir { .. }))
    }
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
    Ok(image_cache::locate(None)?)
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
