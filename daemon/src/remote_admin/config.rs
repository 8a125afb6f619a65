//! The `[remote_admin]` section of the daemon's config file.
//!
//! ```toml
//! [remote_admin]
//! listen = "0.0.0.0:7443"
//! cert = "admin-server.pem"          # server certificate chain (PEM)
//! key = "admin-server.key"           # its private key (PEM, PKCS#8/PKCS#1/SEC1)
//! client_ca = "admin-ca.pem"         # CA that issues admin client certificates
//! bundle_signer_pubkey = "signer.pub" # Ed25519 public key (PEM, SubjectPublicKeyInfo)
//! # enabled = true                   # default when the section exists
//! # max_bundle_bytes = 4194304
//! # max_audit_records = 10000
//! ```
//!
//! The endpoint is off unless the section exists. Relative paths are taken
//! from the config file's directory. Every error names the file, line and
//! column of the value at fault.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use crate::toml_config::ConfigError;

/// Default cap on one pushed bundle (all its files and the JSON around them).
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 4 << 20;
/// Hard cap on `max_bundle_bytes`.
pub const MAX_BUNDLE_BYTES_LIMIT: u64 = 64 << 20;
/// Default and hard cap on the audit records one request may read.
pub const DEFAULT_MAX_AUDIT_RECORDS: u32 = 10_000;
const MAX_AUDIT_RECORDS_LIMIT: u32 = 1_000_000;

/// The remote admin endpoint's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAdminConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// The admin CA: client certificates must chain to it.
    pub client_ca: PathBuf,
    /// The Ed25519 key that must have signed every pushed bundle, PEM SPKI.
    pub bundle_signer_pubkey: PathBuf,
    /// Largest bundle request accepted, in bytes.
    pub max_bundle_bytes: u64,
    /// Most audit records one request may read.
    pub max_audit_records: u32,
}

#[derive(Deserialize)]
struct ConfigFile {
    // Other sections belong to the rest of the daemon.
    remote_admin: Option<Spanned<Section>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    enabled: Option<bool>,
    listen: Spanned<String>,
    cert: Spanned<String>,
    key: Spanned<String>,
    client_ca: Spanned<String>,
    bundle_signer_pubkey: Spanned<String>,
    max_bundle_bytes: Option<Spanned<u64>>,
    max_audit_records: Option<Spanned<u32>>,
}

impl RemoteAdminConfig {
    /// Reads the daemon config file at `path`. `Ok(None)` when it has no
    /// `[remote_admin]` section or says `enabled = false`.
    pub fn from_file(path: &Path) -> Result<Option<RemoteAdminConfig>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses config text read from `path` (used in messages and to resolve
    /// relative paths).
    pub fn from_toml(text: &str, path: &Path) -> Result<Option<RemoteAdminConfig>, ConfigError> {
        let at = |span: Option<Range<usize>>, message: String| {
            ConfigError::at(text, path, span, message)
        };
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().to_owned()))?;
        let Some(section) = file.remote_admin else {
            return Ok(None);
        };
        let section = section.into_inner();
        if section.enabled == Some(false) {
            return Ok(None);
        }
        let listen = section
            .listen
            .get_ref()
            .parse::<SocketAddr>()
            .map_err(|_| {
                at(
                    Some(section.listen.span()),
                    format!(
                        "listen = {:?} is not an address and port like \"0.0.0.0:7443\"",
                        section.listen.get_ref()
                    ),
                )
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let file_path = |v: &Spanned<String>, key: &str| {
            if v.get_ref().is_empty() {
                return Err(at(Some(v.span()), format!("{key} must name a file")));
            }
            Ok(base.join(v.get_ref()))
        };
        let max_bundle_bytes = match &section.max_bundle_bytes {
            None => DEFAULT_MAX_BUNDLE_BYTES,
            Some(v) if (1..=MAX_BUNDLE_BYTES_LIMIT).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                return Err(at(
                    Some(v.span()),
                    format!("max_bundle_bytes must be 1 to {MAX_BUNDLE_BYTES_LIMIT}"),
                ))
            }
        };
        let max_audit_records = match &section.max_audit_records {
            None => DEFAULT_MAX_AUDIT_RECORDS,
            Some(v) if (1..=MAX_AUDIT_RECORDS_LIMIT).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                return Err(at(
                    Some(v.span()),
                    format!("max_audit_records must be 1 to {MAX_AUDIT_RECORDS_LIMIT}"),
                ))
            }
        };
        Ok(Some(RemoteAdminConfig {
            listen,
            cert: file_path(&section.cert, "cert")?,
            key: file_path(&section.key, "key")?,
            client_ca: file_path(&section.client_ca, "client_ca")?,
            bundle_signer_pubkey: file_path(&section.bundle_signer_pubkey, "bundle_signer_pubkey")?,
            max_bundle_bytes,
            max_audit_records,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[service]
something = "else"

[remote_admin]
listen = "127.0.0.1:7443"
cert = "server.pem"
key = "/etc/vitrine/server.key"
client_ca = "ca.pem"
bundle_signer_pubkey = "signer.pub"
"#;

    fn parse(text: &str) -> Result<Option<RemoteAdminConfig>, ConfigError> {
        RemoteAdminConfig::from_toml(text, Path::new("/etc/vitrine/vitrined.toml"))
    }

    fn error_at(text: &str) -> (usize, usize, String) {
        match parse(text) {
            Err(ConfigError::At {
                line, col, message, ..
            }) => (line, col, message),
            other => panic!("expected a located error, got {other:?}"),
        }
    }

    #[test]
    fn section_resolves_relative_paths_against_the_config_directory() {
        let config = parse(GOOD).unwrap().unwrap();

        assert_eq!(config.listen, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(config.cert, Path::new("/etc/vitrine/server.pem"));
        assert_eq!(config.key, Path::new("/etc/vitrine/server.key"));
        assert_eq!(config.max_bundle_bytes, DEFAULT_MAX_BUNDLE_BYTES);
    }

    #[test]
    fn endpoint_is_off_without_the_section_or_when_disabled() {
        assert_eq!(parse("[service]\nx = 1\n").unwrap(), None);
        let disabled = GOOD.replace("[remote_admin]", "[remote_admin]\nenabled = false");
        assert_eq!(parse(&disabled).unwrap(), None);
    }

    #[test]
    fn bad_listen_address_is_reported_at_its_value() {
        let text = GOOD.replace("127.0.0.1:7443", "localhost");

        let (line, col, message) = error_at(&text);

        assert_eq!((line, col), (6, 10));
        assert!(message.contains("localhost"), "{message}");
    }

    #[test]
    fn unknown_key_is_reported_on_its_line() {
        let text = GOOD.replace("cert = ", "certificate = \"x\"\ncert = ");

        let (line, _, message) = error_at(&text);

        assert_eq!(line, 7);
        assert!(message.contains("certificate"), "{message}");
    }

    #[test]
    fn missing_key_and_syntax_errors_name_a_line() {
        let (line, _, message) = error_at(&GOOD.replace("client_ca = \"ca.pem\"\n", ""));
        assert!(message.contains("client_ca"), "{message}");
        assert!(line >= 5, "line {line}");

        let (line, _, _) = error_at("[remote_admin]\nlisten = \"x\ncert = 1\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn out_of_range_caps_are_refused() {
        let text = format!("{GOOD}max_bundle_bytes = 0\n");

        let (line, col, message) = error_at(&text);

        assert_eq!((line, col), (11, 20));
        assert!(message.contains("max_bundle_bytes"), "{message}");
    }
}
