//! What the daemon asks the policy about: an action and the facts about its
//! subject (sniffed MIME type, name, path, origin, URI).
//!
//! The facts are normalised here, once, so that matching is plain string
//! comparison: MIME and names lowercased, paths made lexically clean, URIs
//! parsed the way a browser parses them (WHATWG URL).

use serde::Serialize;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("path `{0}` is not absolute")]
    RelativePath(PathBuf),
    #[error("path `{0}` is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    #[error("`{0}` is not a MIME type (type/subtype)")]
    Mime(String),
    #[error("file name `{0}` contains `/`")]
    Name(String),
    #[error("`{uri}` is not a URI: {reason}")]
    Uri { uri: String, reason: String },
    #[error("`{0}` is not an action; the actions are open-file, open-uri and run-program")]
    Action(String),
}

/// What the caller wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    OpenFile,
    OpenUri,
    RunProgram,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::OpenFile, Action::OpenUri, Action::RunProgram];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenFile => "open-file",
            Self::OpenUri => "open-uri",
            Self::RunProgram => "run-program",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        match self {
            Self::OpenFile => 1,
            Self::OpenUri => 2,
            Self::RunProgram => 4,
        }
    }

    /// Whether the subject is a file (open-file, run-program) or a URI.
    pub fn takes_file(self) -> bool {
        !matches!(self, Self::OpenUri)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| RequestError::Action(s.to_owned()))
    }
}

/// Where a file came from. A file can be both quarantined and in a watched
/// Downloads folder; one that is neither is `local`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Origin {
    /// It carries a quarantine mark (the `user.xdg.origin.url` extended
    /// attribute that browsers and mail clients set, or the daemon's own).
    pub quarantined: bool,
    /// It lies in a watched Downloads folder.
    pub downloads: bool,
}

/// The extended attribute that marks a file as coming from the network.
pub const QUARANTINE_XATTR: &str = "user.xdg.origin.url";

impl Origin {
    pub const LOCAL: Origin = Origin {
        quarantined: false,
        downloads: false,
    };

    pub(crate) fn bits(self) -> u8 {
        let mut bits = 0;
        if self.quarantined {
            bits |= ORIGIN_QUARANTINED;
        }
        if self.downloads {
            bits |= ORIGIN_DOWNLOADS;
        }
        if bits == 0 {
            bits = ORIGIN_LOCAL;
        }
        bits
    }

    /// Work out the origin of the file at `path`: a quarantine mark in its
    /// extended attributes, or a location under one of `downloads_dirs`.
    /// An unreadable attribute counts as no mark; that only ever makes a
    /// file look *less* trusted when rules treat `local` more leniently, so
    /// admins should not write `host` rules keyed on `local` alone.
    pub fn detect(path: &Path, downloads_dirs: &[PathBuf]) -> Origin {
        let mut buf = [0u8; 1];
        let quarantined = match rustix::fs::getxattr(path, QUARANTINE_XATTR, &mut buf[..]) {
            Ok(_) => true,
            // The attribute exists but is longer than our probe buffer.
            Err(rustix::io::Errno::RANGE) => true,
            Err(_) => false,
        };
        let clean = normalize_path(path);
        let downloads = downloads_dirs
            .iter()
            .any(|d| clean.starts_with(normalize_path(d)));
        Origin {
            quarantined,
            downloads,
        }
    }
}

pub(crate) const ORIGIN_QUARANTINED: u8 = 1;
pub(crate) const ORIGIN_DOWNLOADS: u8 = 2;
pub(crate) const ORIGIN_LOCAL: u8 = 4;

/// A URI as the policy sees it: scheme and host, from a WHATWG parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Uri {
    /// Lowercase scheme (`https`).
    pub scheme: String,
    /// Lowercase host without a trailing dot; IPv6 in brackets; punycode
    /// for internationalised names. `None` for URIs without one (`mailto:`).
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The URI as the parser serialised it.
    pub text: String,
}

impl Uri {
    pub fn parse(text: &str) -> Result<Uri, RequestError> {
        let url = url::Url::parse(text.trim()).map_err(|e| RequestError::Uri {
            uri: text.to_owned(),
            reason: e.to_string(),
        })?;
        let host = url.host_str().map(|h| {
            let h = h.strip_suffix('.').unwrap_or(h);
            h.to_ascii_lowercase()
        });
        Ok(Uri {
            scheme: url.scheme().to_owned(),
            host: host.filter(|h| !h.is_empty()),
            port: url.port_or_known_default(),
            text: url.to_string(),
        })
    }
}

/// The facts about a file subject (open-file, run-program).
#[derive(Debug, Clone, Default)]
pub struct FileFacts {
    /// Sniffed from the content (see [`crate::sniff`]), never from the name.
    pub mime: String,
    /// The file name as the caller gave it; the extension comes from here.
    /// Falls back to the last component of `path`.
    pub name: Option<String>,
    /// Absolute path, when known (the daemon resolves it from the fd).
    pub path: Option<PathBuf>,
    pub origin: Origin,
}

/// One question for the policy.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) action: Action,
    pub(crate) mime: Option<String>,
    /// Lowercased file name, for extension matching.
    pub(crate) name: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) origin: Origin,
    pub(crate) uri: Option<Uri>,
}

/// Remove `.` and resolve `..` without touching the file system, so that
/// `/home/a/Downloads/../x` cannot pass for a file in Downloads.
pub fn normalize_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::CurDir => {}
            Component::RootDir => out.push("/"),
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

fn normalize_mime(mime: &str) -> Result<String, RequestError> {
    // Drop parameters (`text/plain; charset=utf-8`).
    let essence = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match crate::pattern::MimePattern::parse(&essence) {
        Ok(crate::pattern::MimePattern::Exact(m)) => Ok(m),
        _ => Err(RequestError::Mime(mime.to_owned())),
    }
}

impl Request {
    /// Open a document (view it).
    pub fn open_file(facts: FileFacts) -> Result<Request, RequestError> {
        Self::file(Action::OpenFile, facts)
    }

    /// Run an untrusted program.
    pub fn run_program(facts: FileFacts) -> Result<Request, RequestError> {
        Self::file(Action::RunProgram, facts)
    }

    /// Build a file request for `action`; an `open-uri` action is refused.
    pub fn file(action: Action, facts: FileFacts) -> Result<Request, RequestError> {
        if !action.takes_file() {
            return Err(RequestError::Action(format!(
                "{action} (it takes a URI, not a file)"
            )));
        }
        let mime = normalize_mime(&facts.mime)?;
        let path = match facts.path {
            Some(p) if !p.is_absolute() => return Err(RequestError::RelativePath(p)),
            Some(p) => {
                let clean = normalize_path(&p);
                Some(
                    clean
                        .to_str()
                        .ok_or(RequestError::NonUtf8Path(p.clone()))?
                        .to_owned(),
                )
            }
            None => None,
        };
        let name = match facts.name {
            Some(n) if n.contains('/') => return Err(RequestError::Name(n)),
            Some(n) => Some(n),
            None => path
                .as_deref()
                .and_then(|p| Path::new(p).file_name())
                .map(|n| n.to_string_lossy().into_owned()),
        };
        Ok(Request {
            action,
            mime: Some(mime),
            name: name.map(|n| n.to_lowercase()),
            path,
            origin: facts.origin,
            uri: None,
        })
    }

    /// Open a link.
    pub fn open_uri(uri: &str) -> Result<Request, RequestError> {
        Ok(Request {
            action: Action::OpenUri,
            mime: None,
            name: None,
            path: None,
            origin: Origin::LOCAL,
            uri: Some(Uri::parse(uri)?),
        })
    }

    pub fn action(&self) -> Action {
        self.action
    }
    pub fn mime(&self) -> Option<&str> {
        self.mime.as_deref()
    }
    /// The lowercased file name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
    pub fn origin(&self) -> Origin {
        self.origin
    }
    pub fn uri(&self) -> Option<&Uri> {
        self.uri.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_request_normalises_path_name_and_mime() {
        let req = Request::open_file(FileFacts {
            mime: "Application/PDF; charset=binary".into(),
            name: None,
            path: Some("/home/a/Downloads/../Report.PDF".into()),
            origin: Origin::LOCAL,
        })
        .unwrap();
        assert_eq!(req.path(), Some("/home/a/Report.PDF"));
        assert_eq!(req.name(), Some("report.pdf"));
        assert_eq!(req.mime(), Some("application/pdf"));
    }

    #[test]
    fn file_request_refuses_relative_paths_and_bad_mime() {
        let rel = Request::open_file(FileFacts {
            mime: "text/plain".into(),
            path: Some("x.txt".into()),
            ..Default::default()
        });
        assert!(matches!(rel, Err(RequestError::RelativePath(_))));
        let mime = Request::open_file(FileFacts {
            mime: "text".into(),
            ..Default::default()
        });
        assert!(matches!(mime, Err(RequestError::Mime(_))));
    }

    #[test]
    fn uri_host_is_what_a_browser_would_contact() {
        let uri = Uri::parse("HTTPS://user@Evil.Example.COM.:8443/x").unwrap();
        assert_eq!(uri.scheme, "https");
        assert_eq!(uri.host.as_deref(), Some("evil.example.com"));
        assert_eq!(uri.port, Some(8443));
        // A backslash ends the authority for special schemes.
        let tricky = Uri::parse("https://good.org\\@evil.org/").unwrap();
        assert_eq!(tricky.host.as_deref(), Some("good.org"));
        assert!(Uri::parse("not a uri").is_err());
        assert_eq!(Uri::parse("mailto:a@b.org").unwrap().host, None);
    }

    #[test]
    fn origin_bits_mark_unmarked_files_local() {
        assert_eq!(Origin::LOCAL.bits(), ORIGIN_LOCAL);
        let both = Origin {
            quarantined: true,
            downloads: true,
        };
        assert_eq!(both.bits(), ORIGIN_QUARANTINED | ORIGIN_DOWNLOADS);
    }

    #[test]
    fn origin_detects_downloads_folder_lexically() {
        let dirs = vec![PathBuf::from("/home/a/Downloads")];
        let inside = Origin::detect(Path::new("/home/a/Downloads/x.pdf"), &dirs);
        let escaped = Origin::detect(Path::new("/home/a/Downloads/../x.pdf"), &dirs);
        assert!(inside.downloads);
        assert!(!escaped.downloads);
    }
}
