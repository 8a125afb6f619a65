//! Signed policy bundles: the policy files an admin pushes, in one
//! self-describing JSON document with an Ed25519 signature.
//!
//! ```json
//! {"format": "vitrine-policy-bundle/1", "serial": 1764410000,
//!  "files": [{"name": "10-profiles.toml", "content": "..."}],
//!  "signature": "<128 hex digits>"}
//! ```
//!
//! The signature covers a canonical byte string (see [`signed_message`]),
//! not the JSON, so formatting never matters. `serial` must grow with each
//! bundle the endpoint applies: an old bundle, validly signed once, cannot
//! be replayed to bring an old policy back.
//!
//! Keys: the signer's private key is PKCS#8 PEM and its public key is
//! SubjectPublicKeyInfo PEM, as `openssl genpkey -algorithm ed25519` and
//! `openssl pkey -pubout` write them.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use vitrine_policy::{PolicySet, SourceFile};

/// The `format` of bundles this build reads and writes.
pub const BUNDLE_FORMAT: &str = "vitrine-policy-bundle/1";
/// Most files in one bundle.
pub const MAX_BUNDLE_FILES: usize = 256;
/// Longest file name in a bundle.
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A bundle is malformed, unsigned, or holds a policy that does not load.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle format {0:?} is not {BUNDLE_FORMAT:?}")]
    Format(String),
    #[error("bundle holds no policy files")]
    Empty,
    #[error("bundle holds {0} files; at most {MAX_BUNDLE_FILES} are allowed")]
    TooManyFiles(usize),
    #[error("bundle file name {0:?} is not a plain `NN-name.toml` file name")]
    BadName(String),
    #[error("bundle holds {0:?} twice")]
    DuplicateName(String),
    #[error("bundle signature is not 128 hex digits")]
    SignatureEncoding,
    #[error("bundle signature does not verify against the configured signer key")]
    BadSignature,
    #[error(
        "bundle serial {got} is not above {last}, the last one applied (an old bundle replayed?)"
    )]
    StaleSerial { got: u64, last: u64 },
    #[error("the bundle's policy does not load:\n{0}")]
    Policy(vitrine_policy::Diagnostics),
    #[error("cannot read key {}", .path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: tokio_rustls::rustls::pki_types::pem::Error,
    },
    #[error("{} is not an Ed25519 key", .0.display())]
    NotEd25519(PathBuf),
    #[error("cannot sign the bundle")]
    Sign,
    #[error("cannot {op} {}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One policy file in a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    /// Plain file name, e.g. `50-documents.toml`; it sets the load order.
    pub name: String,
    /// The file's text.
    pub content: String,
}

/// A signed set of policy files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyBundle {
    pub format: String,
    /// Grows with every bundle; the endpoint refuses one not above the last.
    pub serial: u64,
    pub files: Vec<BundleFile>,
    /// Ed25519 signature of [`signed_message`], hex.
    pub signature: String,
}

/// The Ed25519 public key bundles must be signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerPublicKey([u8; 32]);

impl SignerPublicKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) file.
    pub fn from_pem_file(path: &Path) -> Result<SignerPublicKey, BundleError> {
        let spki = SubjectPublicKeyInfoDer::from_pem_file(path).map_err(|source| {
            BundleError::KeyFile {
                path: path.to_owned(),
                source,
            }
        })?;
        Self::from_spki_der(&spki).ok_or_else(|| BundleError::NotEd25519(path.to_owned()))
    }

    /// The key inside an Ed25519 SubjectPublicKeyInfo, if it is one.
    pub fn from_spki_der(der: &[u8]) -> Option<SignerPublicKey> {
        let key = der.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
        Some(SignerPublicKey(key.try_into().ok()?))
    }

    /// The raw 32-byte key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Reads an Ed25519 signing key from a PEM `PRIVATE KEY` (PKCS#8) file.
pub fn load_signing_key(path: &Path) -> Result<Ed25519KeyPair, BundleError> {
    let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|source| BundleError::KeyFile {
        path: path.to_owned(),
        source,
    })?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
        .map_err(|_| BundleError::NotEd25519(path.to_owned()))
}

/// The bytes a bundle's signature covers: the format, the serial and each
/// file's name and content, every field length-prefixed so that no two
/// bundles share a message.
pub fn signed_message(format: &str, serial: u64, files: &[BundleFile]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    field(format.as_bytes());
    field(&serial.to_le_bytes());
    for f in files {
        field(f.name.as_bytes());
        field(f.content.as_bytes());
    }
    out
}

impl PolicyBundle {
    /// Signs `files` with `key`, after the same structural checks the
    /// endpoint makes.
    pub fn sign(
        serial: u64,
        mut files: Vec<BundleFile>,
        key: &Ed25519KeyPair,
    ) -> Result<PolicyBundle, BundleError> {
        files.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        check_files(&files)?;
        let signature = key.sign(&signed_message(BUNDLE_FORMAT, serial, &files));
        Ok(PolicyBundle {
            format: BUNDLE_FORMAT.to_owned(),
            serial,
            files,
            signature: hex(signature.as_ref()),
        })
    }

    /// The policy files of `dir` (its `*.toml` files, read as the daemon
    /// reads a policy directory).
    pub fn files_of_dir(dir: &Path) -> Result<Vec<BundleFile>, BundleError> {
        let sources = vitrine_policy::policy::read_dir_sources(dir).map_err(BundleError::Policy)?;
        Ok(sources
            .into_iter()
            .map(|s| BundleFile {
                name: s.name.to_string(),
                content: s.text.to_string(),
            })
            .collect())
    }

    /// Checks the format, the file names and the signature. Nothing of the
    /// files' content is parsed before the signature holds.
    pub fn verify(&self, signer: &SignerPublicKey) -> Result<(), BundleError> {
        if self.format != BUNDLE_FORMAT {
            return Err(BundleError::Format(self.format.clone()));
        }
        check_files(&self.files)?;
        let signature = unhex(&self.signature).ok_or(BundleError::SignatureEncoding)?;
        let message = signed_message(&self.format, self.serial, &self.files);
        UnparsedPublicKey::new(&ED25519, signer.as_bytes())
            .verify(&message, &signature)
            .map_err(|_| BundleError::BadSignature)
    }

    /// Loads the bundle's files as one policy, in name order, exactly as
    /// the daemon will load them once installed. Errors name the bundle's
    /// file, line and column.
    pub fn load_policy(&self) -> Result<PolicySet, BundleError> {
        let mut sources: Vec<SourceFile> = self
            .files
            .iter()
            .map(|f| SourceFile::new(&f.name, f.content.as_str()))
            .collect();
        sources.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        PolicySet::from_sources(sources, None).map_err(BundleError::Policy)
    }

    /// Writes the files into the empty directory `dir`, owner-writable and
    /// readable by all (a policy writable by others is refused on load).
    pub fn write_to(&self, dir: &Path) -> Result<(), BundleError> {
        for f in &self.files {
            let path = dir.join(&f.name);
            let io = |op| {
                let path = path.clone();
                move |source| BundleError::Io { op, path, source }
            };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
                .map_err(io("create"))?;
            file.write_all(f.content.as_bytes()).map_err(io("write"))?;
            file.sync_all().map_err(io("sync"))?;
        }
        Ok(())
    }
}

fn check_files(files: &[BundleFile]) -> Result<(), BundleError> {
    if files.is_empty() {
        return Err(BundleError::Empty);
    }
    if files.len() > MAX_BUNDLE_FILES {
        return Err(BundleError::TooManyFiles(files.len()));
    }
    let mut seen = HashSet::new();
    for f in files {
        if !plain_policy_name(&f.name) {
            return Err(BundleError::BadName(f.name.clone()));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(BundleError::DuplicateName(f.name.clone()));
        }
    }
    Ok(())
}

/// A name the policy loader reads and that stays inside the staging
/// directory: `[A-Za-z0-9._-]+\.toml`, not hidden.
fn plain_policy_name(name: &str) -> bool {
    name.len() <= MAX_FILE_NAME_BYTES
        && name.len() > ".toml".len()
        && name.ends_with(".toml")
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The public key of a signing key, for messages and tests.
pub fn public_key_of(key: &Ed25519KeyPair) -> SignerPublicKey {
    let mut raw = [0u8; 32];
    raw.copy_from_slice(key.public_key().as_ref());
    SignerPublicKey(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn files() -> Vec<BundleFile> {
        vec![BundleFile {
            name: "90-default.toml".into(),
            content: "[[rule]]\nname = \"x\"\n".into(),
        }]
    }

    #[test]
    fn signed_bundle_verifies_with_its_key_only() {
        let (k1, k2) = (key(), key());
        let bundle = PolicyBundle::sign(1, files(), &k1).unwrap();

        assert!(bundle.verify(&public_key_of(&k1)).is_ok());
        assert!(matches!(
            bundle.verify(&public_key_of(&k2)),
            Err(BundleError::BadSignature)
        ));
    }

    #[test]
    fn any_change_to_a_signed_field_breaks_the_signature() {
        let k = key();
        let signer = public_key_of(&k);
        let bundle = PolicyBundle::sign(5, files(), &k).unwrap();

        let mut serial = bundle.clone();
        serial.serial = 6;
        let mut content = bundle.clone();
        content.files[0].content.push(' ');
        let mut renamed = bundle.clone();
        renamed.files[0].name = "91-default.toml".into();

        for changed in [serial, content, renamed] {
            assert!(matches!(
                changed.verify(&signer),
                Err(BundleError::BadSignature)
            ));
        }
    }

    #[test]
    fn path_like_or_hidden_names_are_refused() {
        for name in [
            "../x.toml",
            "a/b.toml",
            ".hidden.toml",
            "x.txt",
            ".toml",
            "a b.toml",
        ] {
            let files = vec![BundleFile {
                name: name.into(),
                content: String::new(),
            }];
            assert!(
                matches!(
                    PolicyBundle::sign(1, files, &key()),
                    Err(BundleError::BadName(_))
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn spki_prefix_is_required_for_a_signer_key() {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&[7; 32]);

        assert_eq!(SignerPublicKey::from_spki_der(&der).unwrap().0, [7; 32]);
        assert!(SignerPublicKey::from_spki_der(&der[1..]).is_none());
        assert!(SignerPublicKey::from_spki_der(&der[..40]).is_none());
    }
}
