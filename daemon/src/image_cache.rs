//! Finds the guest image in the cache that `shim/image/build.sh` fills
//! (`~/.cache/vitrine/image-*`, keyed by the hash of its inputs). The script
//! owns the key; this module only asks it (`--print-dir`, which never
//! builds), or takes the directory named by `$VITRINE_IMAGE_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The command that builds the guest image, relative to the source tree.
pub const BUILD_COMMAND: &str = "shim/image/build.sh";

/// Environment variable naming an image directory to use as it is.
pub const IMAGE_DIR_ENV: &str = "VITRINE_IMAGE_DIR";

/// Why no guest image is available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageCacheError {
    /// The image has not been built for the current inputs.
    #[error(
        "guest image not built; build it with `{BUILD_COMMAND}` (or set {IMAGE_DIR_ENV}): {0}"
    )]
    NotBuilt(String),
    /// A directory was named explicitly but holds no image.
    #[error(
        "{dir} holds no {missing}: not a guest image directory (build one with `{BUILD_COMMAND}`)"
    )]
    BadImageDir {
        /// The directory.
        dir: PathBuf,
        /// The missing file.
        missing: &'static str,
    },
}

/// The build script of the source tree this crate was built from.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        .join(BUILD_COMMAND)
}

/// Checks that `dir` holds an image's kernel and initramfs.
pub fn check_dir(dir: &Path) -> Result<PathBuf, ImageCacheError> {
    for missing in ["vmlinux", "initrd.gz"] {
        if !dir.join(missing).is_file() {
            return Err(ImageCacheError::BadImageDir {
                dir: dir.to_owned(),
                missing,
            });
        }
    }
    Ok(dir.to_owned())
}

/// The image directory: `explicit` if given, else `$VITRINE_IMAGE_DIR`,
/// else what the build script reports for the current inputs.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ImageCacheError> {
    if let Some(dir) = explicit {
        return check_dir(dir);
    }
    if let Some(dir) = std::env::var_os(IMAGE_DIR_ENV).filter(|v| !v.is_empty()) {
        return check_dir(Path::new(&dir));
    }
    ask_build_script(&build_script())
}

/// Runs `script --print-dir` and takes the last line it prints.
pub fn ask_build_script(script: &Path) -> Result<PathBuf, ImageCacheError> {
    let out = Command::new(script)
        .arg("--print-dir")
        .output()
        .map_err(|e| ImageCacheError::NotBuilt(format!("cannot run {}: {e}", script.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last().map(str::trim) {
        Some(dir) if out.status.success() && !dir.is_empty() => check_dir(Path::new(dir)),
        _ => Err(ImageCacheError::NotBuilt(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("build.sh");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn image(dir: &Path) {
        fs::write(dir.join("vmlinux"), b"\x7fELF").unwrap();
        fs::write(dir.join("initrd.gz"), b"\x1f\x8b").unwrap();
    }

    #[test]
    fn explicit_dir_without_a_kernel_is_named() {
        let dir = tempfile::tempdir().unwrap();

        let err = locate(Some(dir.path())).unwrap_err();

        assert_eq!(
            err,
            ImageCacheError::BadImageDir {
                dir: dir.path().to_owned(),
                missing: "vmlinux"
            }
        );
    }

    #[test]
    fn build_script_answer_is_its_last_stdout_line() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("image-guest-1");
        fs::create_dir(&img).unwrap();
        image(&img);
        let script = script(
            dir.path(),
            &format!("echo progress >&2; echo noise; echo {}", img.display()),
        );

        let found = ask_build_script(&script).unwrap();

        assert_eq!(found, img);
    }

    #[test]
    fn build_script_exit_3_means_not_built_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let script = script(
            dir.path(),
            "echo 'image not built for the current inputs' >&2; exit 3",
        );

        let err = ask_build_script(&script).unwrap_err();

        assert!(
            matches!(&err, ImageCacheError::NotBuilt(m) if m.contains("not built for the current")),
            "{err:?}"
        );
        assert!(err.to_string().contains(BUILD_COMMAND), "{err}");
    }

    #[test]
    fn build_script_of_this_tree_exists() {
        assert!(build_script().is_file(), "{}", build_script().display());
    }
}
