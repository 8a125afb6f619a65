//! The guest image a backend boots: the directory `shim/image/build.sh`
//! prints, holding `vmlinux`, `initrd.gz`, `apps.squashfs` (the read-only
//! application disk), `cmdline` and `manifest.json`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Kernel command line used when the image directory has no `cmdline` file.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1 reboot=t quiet";

/// Longest kernel command line accepted (the x86 boot protocol's limit is 2048).
const MAX_CMDLINE_BYTES: usize = 2048;

/// The application disk's file in an image directory.
pub const APP_DISK: &str = "apps.squashfs";

/// The guest image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file the image needs is not there.
    #[error("guest image file {0} is missing (build it with shim/image/build.sh)")]
    Missing(PathBuf),
    /// A file of the image could not be read.
    #[error("cannot read guest image file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The command line is too long or holds a control character.
    #[error("kernel command line in {0} is longer than 2048 bytes or holds control characters")]
    BadCmdline(PathBuf),
}

/// Kernel, initramfs and kernel command line of one guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Uncompressed ELF kernel with a PVH entry note.
    pub kernel: PathBuf,
    /// Initramfs (newc cpio, gzip).
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Read-only application disk (squashfs; tesseract), attached as the
    /// VM's first virtio-blk device. `None`: the guest has no OCR.
    pub app_disk: Option<PathBuf>,
}

impl GuestImage {
    /// Reads an image directory as `shim/image/build.sh` writes it.
    pub fn from_dir(dir: &Path) -> Result<Self, ImageError> {
        let kernel = existing(dir.join("vmlinux"))?;
        let initrd = existing(dir.join("initrd.gz"))?;
        let cmdline_path = dir.join("cmdline");
        let cmdline = match fs::read_to_string(&cmdline_path) {
            Ok(text) => text.trim().to_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => DEFAULT_CMDLINE.to_owned(),
            Err(source) => {
                return Err(ImageError::Read {
                    path: cmdline_path,
                    source,
                })
            }
        };
        if cmdline.len() > MAX_CMDLINE_BYTES || cmdline.chars().any(char::is_control) {
            return Err(ImageError::BadCmdline(cmdline_path));
        }
        let app_disk = match existing(dir.join(APP_DISK)) {
            Ok(path) => Some(path),
            Err(ImageError::Missing(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(Self {
            kernel,
            initrd,
            cmdline,
            app_disk,
        })
    }
}

fn existing(path: PathBuf) -> Result<PathBuf, ImageError> {
    match fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(_) => Err(ImageError::Missing(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ImageError::Missing(path)),
        Err(source) => Err(ImageError::Read { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_dir(cmdline: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("vmlinux"), b"\x7fELF").unwrap();
        fs::write(dir.path().join("initrd.gz"), b"\x1f\x8b").unwrap();
        if let Some(text) = cmdline {
            fs::write(dir.path().join("cmdline"), text).unwrap();
        }
        dir
    }

    #[test]
    fn from_dir_reads_the_cmdline_file_without_its_newline() {
        let dir = image_dir(Some("console=ttyS0 quiet\n"));

        let image = GuestImage::from_dir(dir.path()).unwrap();

        assert_eq!(image.cmdline, "console=ttyS0 quiet");
        assert_eq!(image.kernel, dir.path().join("vmlinux"));
        assert_eq!(image.initrd, dir.path().join("initrd.gz"));
        assert_eq!(image.app_disk, None);
    }

    #[test]
    fn from_dir_takes_the_app_disk_when_the_image_has_one() {
        let dir = image_dir(None);
        fs::write(dir.path().join("apps.squashfs"), b"hsqs").unwrap();

        let image = GuestImage::from_dir(dir.path()).unwrap();

        assert_eq!(image.app_disk, Some(dir.path().join("apps.squashfs")));
    }

    #[test]
    fn from_dir_without_cmdline_file_uses_the_default() {
        let dir = image_dir(None);

        let image = GuestImage::from_dir(dir.path()).unwrap();

        assert_eq!(image.cmdline, DEFAULT_CMDLINE);
    }

    #[test]
    fn from_dir_names_the_missing_kernel() {
        let dir = image_dir(None);
        fs::remove_file(dir.path().join("vmlinux")).unwrap();

        let err = GuestImage::from_dir(dir.path()).unwrap_err();

        assert!(matches!(&err, ImageError::Missing(p) if p.ends_with("vmlinux")));
        assert!(err.to_string().contains("build.sh"), "{err}");
    }

    #[test]
    fn from_dir_rejects_a_cmdline_with_control_characters() {
        let dir = image_dir(Some("console=ttyS0\ninit=/bin/sh"));

        let err = GuestImage::from_dir(dir.path()).unwrap_err();

        assert!(matches!(err, ImageError::BadCmdline(_)));
    }
}
