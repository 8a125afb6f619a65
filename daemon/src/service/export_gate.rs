//! What may leave a VM as a file: each offer is checked against the
//! profile's export rules twice (on the guest's word at offer time, then on
//! the type the host sniffs from the fetched bytes), and an approved file is
//! written into the destination folder under a fresh name, with its SHA-256
//! checked once more on the bytes written.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use vitrine_policy::profile::{ExportCheck, ExportRefusal, ExportRules};
use vitrine_policy::sniff;
use vitrine_shim::protocol::{check_export_name, ExportOffer};

use super::receipt::{hex, sha256_hex};

/// An export was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportGateError {
    /// The profile's rules refuse it.
    #[error("refused by policy: {0}")]
    Refused(String),
    /// The bytes written differ from the offered hash.
    #[error("written file's SHA-256 {got} differs from the offered {want}")]
    HashMismatch {
        /// Offered.
        want: String,
        /// Written.
        got: String,
    },
    /// The destination could not be written.
    #[error("cannot write into {dir}")]
    Write {
        /// Destination folder.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// How an offer stands against the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferCheck {
    /// Refused; the reason in words.
    Refused(String),
    /// Ask the user. `flatten`: only its pixels leave, as a safe copy.
    Ask {
        /// Rebuild it from pixels instead of fetching its bytes.
        flatten: bool,
    },
    /// May leave without asking.
    Allowed {
        /// Rebuild it from pixels instead of fetching its bytes.
        flatten: bool,
    },
}

fn refusal(r: ExportRefusal, rules: &ExportRules, mime: &str, size: u64) -> String {
    match r {
        ExportRefusal::ExportDenied => "the profile allows no exports".to_owned(),
        ExportRefusal::TypeNotAllowed => format!("type {mime} is not allowed"),
        ExportRefusal::TooLarge => format!("{size} bytes, over the {}-byte limit", rules.max_bytes),
    }
}

/// Checks an offer's name, type and size against `rules`. A flattening
/// profile's export leaves as a safe copy: the guest renders it, and only
/// its pixels come over (see `safe_copy`).
pub fn check(rules: &ExportRules, name: &str, mime: &str, size: u64) -> OfferCheck {
    if check_export_name(name).is_err() {
        return OfferCheck::Refused("the name is not a plain file name".to_owned());
    }
    match rules.check(mime, size) {
        ExportCheck::Refused(r) => OfferCheck::Refused(refusal(r, rules, mime, size)),
        ExportCheck::AskUser { flatten } => OfferCheck::Ask { flatten },
        ExportCheck::Allowed { flatten } => OfferCheck::Allowed { flatten },
    }
}

/// Checks the fetched bytes again with the type the host sniffs from them.
pub fn check_fetched(rules: &ExportRules, name: &str, data: &[u8]) -> Result<(), ExportGateError> {
    let mime = sniff::sniff(&data[..data.len().min(sniff::SNIFF_LEN)]);
    let size = u64::try_from(data.len()).unwrap_or(u64::MAX);
    match check(rules, name, mime, size) {
        OfferCheck::Refused(why) => Err(ExportGateError::Refused(why)),
        OfferCheck::Ask { .. } | OfferCheck::Allowed { .. } => Ok(()),
    }
}

/// Writes `data` as `dir/name` (or `name (2)`, ... when taken; never over
/// an existing file), reads it back, and checks its SHA-256 against the
/// offer. A mismatch removes the file.
pub fn write_approved(
    dir: &Path,
    offer: &ExportOffer,
    data: &[u8],
) -> Result<PathBuf, ExportGateError> {
    write_new(dir, &offer.name, data, &hex(&offer.sha256))
}

/// Writes `data` as `dir/name` (or `name (2)`, ... when taken; never over
/// an existing file) through a temporary file, so no partial file is ever
/// seen under the name; reads it back and checks its SHA-256 (hex) against
/// `sha256`. A mismatch removes the file.
pub fn write_new(
    dir: &Path,
    name: &str,
    data: &[u8],
    sha256: &str,
) -> Result<PathBuf, ExportGateError> {
    let write_err = |source| ExportGateError::Write {
        dir: dir.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(write_err)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".vitrine-export-")
        .tempfile_in(dir)
        .map_err(write_err)?;
    tmp.write_all(data).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    let mut n = 1u32;
    let path = loop {
        let candidate = dir.join(numbered(name, n));
        match tmp.persist_noclobber(&candidate) {
            Ok(_) => break candidate,
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists && n < 1000 => {
                tmp = e.file;
                n += 1;
            }
            Err(e) => return Err(write_err(e.error)),
        }
    };
    let want = sha256.to_owned();
    let got = file_sha256(&path).map_err(write_err)?;
    if got != want {
        let _ = fs::remove_file(&path);
        return Err(ExportGateError::HashMismatch { want, got });
    }
    Ok(path)
}

/// `report.pdf`, `report (2).pdf`, `report (3).pdf`, ...
fn numbered(name: &str, n: u32) -> String {
    if n == 1 {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem} ({n}).{ext}"),
        _ => format!("{name} ({n})"),
    }
}

fn file_sha256(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// SHA-256 (hex) of an offer's bytes, for callers that hold them.
pub fn offer_hash_hex(offer: &ExportOffer) -> String {
    hex(&offer.sha256)
}

/// Hex SHA-256 of `data` (re-exported for the worker).
pub fn data_hash_hex(data: &[u8]) -> String {
    sha256_hex(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitrine_policy::pattern::MimePattern;
    use vitrine_policy::ExportMode;

    fn rules(mode: ExportMode, flatten: bool) -> ExportRules {
        ExportRules {
            mode,
            types: vec![MimePattern::parse("text/plain").unwrap()],
            max_bytes: 100,
            flatten,
            ocr: None,
        }
    }

    fn offer(name: &str, data: &[u8]) -> ExportOffer {
        let digest = ring::digest::digest(&ring::digest::SHA256, data);
        ExportOffer {
            id: 0,
            name: name.to_owned(),
            size: u64::try_from(data.len()).unwrap(),
            sha256: digest.as_ref().try_into().unwrap(),
            mime: "text/plain".to_owned(),
        }
    }

    #[test]
    fn check_refuses_by_mode_type_size_and_name_and_passes_flatten_on() {
        let ask = rules(ExportMode::Ask, false);

        assert_eq!(
            check(&ask, "a.txt", "text/plain", 5),
            OfferCheck::Ask { flatten: false }
        );
        assert!(matches!(
            check(&rules(ExportMode::Deny, false), "a.txt", "text/plain", 5),
            OfferCheck::Refused(_)
        ));
        assert!(
            matches!(check(&ask, "a.exe", "application/x-executable", 5), OfferCheck::Refused(w) if w.contains("not allowed"))
        );
        assert!(
            matches!(check(&ask, "a.txt", "text/plain", 101), OfferCheck::Refused(w) if w.contains("over"))
        );
        assert!(matches!(
            check(&ask, "../a.txt", "text/plain", 5),
            OfferCheck::Refused(_)
        ));
        assert_eq!(
            check(&rules(ExportMode::Allow, true), "a.txt", "text/plain", 5),
            OfferCheck::Allowed { flatten: true }
        );
    }

    #[test]
    fn fetched_bytes_are_checked_by_their_sniffed_type() {
        let ask = rules(ExportMode::Ask, false);

        assert!(check_fetched(&ask, "a.txt", b"plain words\n").is_ok());
        let err =
            check_fetched(&ask, "a.txt", b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0").unwrap_err();

        assert!(matches!(err, ExportGateError::Refused(_)), "{err:?}");
    }

    #[test]
    fn write_approved_never_overwrites_and_checks_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), b"mine").unwrap();
        let good = offer("a.txt", b"from the guest");
        let mut lying = offer("b.txt", b"other bytes");
        lying.sha256 = [0; 32];

        let path = write_approved(dir.path(), &good, b"from the guest").unwrap();
        let err = write_approved(dir.path(), &lying, b"other bytes").unwrap_err();

        assert_eq!(path, dir.path().join("a (2).txt"));
        assert_eq!(fs::read(dir.path().join("a.txt")).unwrap(), b"mine");
        assert_eq!(fs::read(&path).unwrap(), b"from the guest");
        assert!(
            matches!(err, ExportGateError::HashMismatch { .. }),
            "{err:?}"
        );
        assert!(!dir.path().join("b.txt").exists());
    }

    #[test]
    fn a_dangling_symlink_at_the_name_is_neither_followed_nor_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.pdf");
        std::os::unix::fs::symlink(&target, dir.path().join("copy-safe.pdf")).unwrap();
        let data = b"%PDF-1.7 safe copy";

        let path = write_new(dir.path(), "copy-safe.pdf", data, &sha256_hex(data)).unwrap();

        assert_eq!(path, dir.path().join("copy-safe (2).pdf"));
        assert!(!target.exists(), "the symlink was followed");
        assert_eq!(
            fs::read_link(dir.path().join("copy-safe.pdf")).unwrap(),
            target
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "a temporary file was left"
        );
    }
}
