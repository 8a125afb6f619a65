//! Signed task receipts: a JSON record that ties what ran (template image
//! hash, policy version) to what went in and came out (input and output
//! hashes) and the verdict, signed with the daemon's Ed25519 key.
//!
//! The key is generated on the daemon's first start and kept as PKCS#8 in
//! `$XDG_DATA_HOME/vitrine/receipt-key.pk8` (mode 0600). A receipt file holds
//! the body, the hex signature over the body's exact JSON bytes, and the
//! public key; [`verify`] checks it against the key the caller trusts.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

/// File name of the signing key under the data directory.
pub const KEY_FILE: &str = "receipt-key.pk8";
/// File name of a receipt in a task's record directory.
pub const RECEIPT_FILE: &str = "receipt.json";
/// Largest receipt file [`verify_file`] reads.
pub const MAX_RECEIPT_BYTES: u64 = 1024 * 1024;

/// A receipt could not be made, stored or verified.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The key or receipt file could not be read or written.
    #[error("receipt file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The key file exists but is readable by others.
    #[error("signing key {0} is readable by others (mode must be 0600)")]
    KeyMode(PathBuf),
    /// The key file does not hold an Ed25519 PKCS#8 key.
    #[error("signing key {0} is not an Ed25519 PKCS#8 key")]
    BadKey(PathBuf),
    /// Generating a key failed (no randomness).
    #[error("cannot generate a signing key")]
    Generate,
    /// The receipt is not the JSON this module writes.
    #[error("receipt is not valid JSON")]
    Json(#[from] serde_json::Error),
    /// The receipt is larger than any this module writes.
    #[error("receipt is larger than {MAX_RECEIPT_BYTES} bytes")]
    TooLarge,
    /// The receipt was signed by another key than the trusted one.
    #[error("receipt was signed by another key")]
    UnknownKey,
    /// The signature does not match the body: it was changed after signing.
    #[error("receipt signature does not match its content")]
    BadSignature,
}

/// What a task did, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// Receipt format version.
    pub format: u32,
    /// Task number within this daemon's records.
    pub task: u64,
    /// `open-file`, `open-uri` or `run-program`.
    pub kind: String,
    /// When the task finished (RFC 3339, UTC).
    pub finished: String,
    /// SHA-256 (hex) of the guest image the VM ran: kernel, then initramfs.
    /// Empty when no VM ran.
    pub template_sha256: String,
    /// Backend that ran the VM (`qemu-tcg`), or empty.
    pub backend: String,
    /// Hex version of the policy that decided.
    pub policy_version: String,
    /// The decision (`sandbox(document)`, `deny`, `host`) and the rule.
    pub decision: String,
    /// SHA-256 (hex) of the input bytes (the file, program or URI).
    pub input_sha256: String,
    /// What came back: one entry per output.
    pub outputs: Vec<ReceiptOutput>,
    /// The task's verdict.
    pub verdict: String,
}

/// One output of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptOutput {
    /// `pixels` (every frame, in order) or `export:<name>`.
    pub what: String,
    /// SHA-256 (hex).
    pub sha256: String,
    /// Bytes.
    pub bytes: u64,
}

/// A signed receipt, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    /// What is signed.
    pub body: ReceiptBody,
    /// Ed25519 signature (hex) over `serde_json::to_vec(&body)`.
    pub signature: String,
    /// The signer's public key (hex).
    pub public_key: String,
}

/// The daemon's receipt signing key.
#[derive(Debug)]
pub struct ReceiptSigner {
    key: Ed25519KeyPair,
}

impl ReceiptSigner {
    /// Loads the key from `data_dir/receipt-key.pk8`, or generates it there
    /// (mode 0600, in a 0700 directory) on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, ReceiptError> {
        let path = data_dir.join(KEY_FILE);
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ReceiptError::Io { path, source }
        };
        match fs::read(&path) {
            Ok(bytes) => {
                let mode = fs::metadata(&path)
                    .map_err(io_err(&path))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(ReceiptError::KeyMode(path));
                }
                let key = Ed25519KeyPair::from_pkcs8(&bytes)
                    .map_err(|_| ReceiptError::BadKey(path.clone()))?;
                Ok(Self { key })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(data_dir)
                    .map_err(io_err(data_dir))?;
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| ReceiptError::Generate)?;
                // create_new: two daemons starting at once cannot both win.
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err(&path))?;
                file.write_all(pkcs8.as_ref()).map_err(io_err(&path))?;
                file.sync_all().map_err(io_err(&path))?;
                let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .map_err(|_| ReceiptError::BadKey(path.clone()))?;
                Ok(Self { key })
            }
            Err(source) => Err(ReceiptError::Io { path, source }),
        }
    }

    /// The public key, hex.
    pub fn public_key_hex(&self) -> String {
        hex(self.key.public_key().as_ref())
    }

    /// Signs `body`.
    pub fn sign(&self, body: ReceiptBody) -> Result<SignedReceipt, ReceiptError> {
        let bytes = serde_json::to_vec(&body)?;
        let signature = hex(self.key.sign(&bytes).as_ref());
        Ok(SignedReceipt {
            body,
            signature,
            public_key: self.public_key_hex(),
        })
    }

    /// Signs `body` and writes it to `record_dir/receipt.json` (0600).
    pub fn write(&self, record_dir: &Path, body: ReceiptBody) -> Result<PathBuf, ReceiptError> {
        let signed = self.sign(body)?;
        let path = record_dir.join(RECEIPT_FILE);
        let mut text = serde_json::to_vec_pretty(&signed)?;
        text.push(b'\n');
        let io_err = |source| ReceiptError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        file.write_all(&text).map_err(io_err)?;
        Ok(path)
    }
}

/// Checks that `receipt` was signed by `trusted_public_key` (hex) and not
/// changed since.
pub fn verify(receipt: &SignedReceipt, trusted_public_key: &str) -> Result<(), ReceiptError> {
    if !receipt
        .public_key
        .eq_ignore_ascii_case(trusted_public_key.trim())
    {
        return Err(ReceiptError::UnknownKey);
    }
    let key = unhex(trusted_public_key.trim()).ok_or(ReceiptError::UnknownKey)?;
    let signature = unhex(&receipt.signature).ok_or(ReceiptError::BadSignature)?;
    let bytes = serde_json::to_vec(&receipt.body)?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&bytes, &signature)
        .map_err(|_| ReceiptError::BadSignature)
}

/// Reads a receipt file (bounded) and [`verify`]s it.
pub fn verify_file(path: &Path, trusted_public_key: &str) -> Result<SignedReceipt, ReceiptError> {
    let io_err = |source| ReceiptError::Io {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(io_err)?;
    let mut text = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, MAX_RECEIPT_BYTES + 1), &mut text)
        .map_err(io_err)?;
    if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_RECEIPT_BYTES {
        return Err(ReceiptError::TooLarge);
    }
    let receipt: SignedReceipt = serde_json::from_slice(&text)?;
    verify(&receipt, trusted_public_key)?;
    Ok(receipt)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// SHA-256 (hex) of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> ReceiptBody {
        ReceiptBody {
            format: 1,
            task: 7,
            kind: "open-file".into(),
            finished: "2026-01-01T00:00:00.000Z".into(),
            template_sha256: sha256_hex(b"image"),
            backend: "qemu-tcg".into(),
            policy_version: "ab".repeat(32),
            decision: "sandbox(document) by rule `pdf`".into(),
            input_sha256: sha256_hex(b"%PDF"),
            outputs: vec![ReceiptOutput {
                what: "pixels".into(),
                sha256: sha256_hex(b"pixels"),
                bytes: 6,
            }],
            verdict: "clean".into(),
        }
    }

    #[test]
    fn key_is_created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("vitrine");

        let first = ReceiptSigner::load_or_create(&data).unwrap();
        let second = ReceiptSigner::load_or_create(&data).unwrap();

        let mode = fs::metadata(data.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(first.public_key_hex(), second.public_key_hex());
    }

    #[test]
    fn key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ReceiptSigner::load_or_create(dir.path()).unwrap();
        let key = dir.path().join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();

        let err = ReceiptSigner::load_or_create(dir.path()).unwrap_err();

        assert!(matches!(err, ReceiptError::KeyMode(_)), "{err:?}");
    }

    #[test]
    fn written_receipt_verifies_with_the_daemon_key() {
        let dir = tempfile::tempdir().unwrap();
        let signer = ReceiptSigner::load_or_create(dir.path()).unwrap();

        let path = signer.write(dir.path(), body()).unwrap();
        let back = verify_file(&path, &signer.public_key_hex()).unwrap();

        assert_eq!(back.body, body());
    }

    #[test]
    fn tampered_verdict_or_hash_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let signer = ReceiptSigner::load_or_create(dir.path()).unwrap();
        let path = signer.write(dir.path(), body()).unwrap();
        let text = fs::read_to_string(&path).unwrap();

        for (from, to) in [
            ("\"verdict\": \"clean\"", "\"verdict\": \"cleam\""),
            (&sha256_hex(b"%PDF")[..], &sha256_hex(b"%PDG")[..]),
        ] {
            assert!(text.contains(from), "{from} not in {text}");
            fs::write(&path, text.replace(from, to)).unwrap();

            let err = verify_file(&path, &signer.public_key_hex()).unwrap_err();

            assert!(matches!(err, ReceiptError::BadSignature), "{err:?}");
        }
    }

    #[test]
    fn receipt_signed_by_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ours = ReceiptSigner::load_or_create(&dir.path().join("a")).unwrap();
        let theirs = ReceiptSigner::load_or_create(&dir.path().join("b")).unwrap();
        let signed = theirs.sign(body()).unwrap();

        let err = verify(&signed, &ours.public_key_hex()).unwrap_err();

        assert!(matches!(err, ReceiptError::UnknownKey), "{err:?}");
    }
}
