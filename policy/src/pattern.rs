//! The small patterns that rules and profiles are built from: MIME types,
//! host names, file extensions, URI schemes and path globs.
//!
//! Every pattern can say whether it *covers* another one (matches at least
//! everything the other matches). The unreachable-rule check relies on that,
//! so `covers` must never answer `true` wrongly; answering `false` when unsure
//! only means a dead rule goes unreported.

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;
use std::fmt;

/// Why a pattern was refused. Each message names the offending text; the
/// hint says how to write it instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("`{0}` is not a MIME type pattern")]
    Mime(String),
    #[error("extension `{0}` starts with a dot")]
    ExtensionDot(String),
    #[error("`{0}` is not a file extension")]
    Extension(String),
    #[error("`{0}` is not a URI scheme")]
    Scheme(String),
    #[error("`{pattern}` is not a host pattern: {reason}")]
    Host {
        pattern: String,
        reason: &'static str,
    },
    #[error("path pattern `{0}` is not absolute")]
    RelativePath(String),
    #[error("bad glob `{pattern}`: {reason}")]
    Glob { pattern: String, reason: String },
    #[error("`{0}` is not a host:port endpoint")]
    Endpoint(String),
    #[error("port in `{0}` is not between 1 and 65535")]
    Port(String),
}

impl PatternError {
    /// How to fix it, for the diagnostic's hint line.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::Mime(_) => "write `type/subtype` (\"application/pdf\"), `type/*` (\"image/*\") or `*/*`".into(),
            Self::ExtensionDot(s) => format!("write `{}` without the dot", s.trim_start_matches('.')),
            Self::Extension(_) => "an extension is the part of a file name after the last dot, such as \"pdf\" or \"tar.gz\"".into(),
            Self::Scheme(_) => "a scheme is a letter followed by letters, digits, `+`, `-` or `.`, such as \"https\"; write it without `:` or `//`".into(),
            Self::Host { .. } => "write a host name (\"example.org\"), a wildcard for its subdomains (\"*.example.org\"), `*`, an IPv4 address or a bracketed IPv6 address".into(),
            Self::RelativePath(s) => format!("path patterns match absolute paths; write \"/{}\" or \"/**/{}\"", s.trim_start_matches("./"), s.trim_start_matches("./")),
            Self::Glob { .. } => "globs use `*` (within one path component), `**` (any depth), `?`, `[abc]` and `{a,b}`; escape a literal with `\\`".into(),
            Self::Endpoint(_) => "write `host:port`, such as \"example.org:443\", \"*.example.org:443\" or \"[2001:db8::1]:443\"".into(),
            Self::Port(_) => "ports are between 1 and 65535".into(),
        })
    }
}

/// A MIME type pattern: `type/subtype`, `type/*` or `*/*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MimePattern {
    /// `*/*`
    Any,
    /// `image/*`, stored as `image/` so that matching is a prefix test.
    Type(String),
    /// `application/pdf`
    Exact(String),
}

fn is_mime_token(s: &str) -> bool {
    // RFC 6838 restricted-name, lowercased.
    !s.is_empty()
        && s.len() <= 127
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
}

impl MimePattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let lower = text.trim().to_ascii_lowercase();
        let err = || PatternError::Mime(text.to_owned());
        let (ty, sub) = lower.split_once('/').ok_or_else(err)?;
        match (ty, sub) {
            ("*", "*") => Ok(Self::Any),
            (ty, "*") if is_mime_token(ty) => Ok(Self::Type(format!("{ty}/"))),
            (ty, sub) if is_mime_token(ty) && is_mime_token(sub) => Ok(Self::Exact(lower)),
            _ => Err(err()),
        }
    }

    /// `mime` must already be lowercase `type/subtype` without parameters.
    pub fn matches(&self, mime: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Type(prefix) => mime.starts_with(prefix.as_str()),
            Self::Exact(exact) => mime == exact,
        }
    }

    pub fn covers(&self, other: &MimePattern) -> bool {
        match (self, other) {
            (Self::Any, _) => true,
            (Self::Type(a), Self::Type(b)) => a == b,
            (Self::Type(a), Self::Exact(b)) => b.starts_with(a.as_str()),
            (Self::Exact(a), Self::Exact(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for MimePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*/*"),
            Self::Type(prefix) => write!(f, "{prefix}*"),
            Self::Exact(exact) => f.write_str(exact),
        }
    }
}

impl Serialize for MimePattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A lowercased file extension without its dot (`pdf`, `tar.gz`).
pub fn parse_extension(text: &str) -> Result<String, PatternError> {
    let trimmed = text.trim();
    if trimmed.starts_with('.') {
        return Err(PatternError::ExtensionDot(text.to_owned()));
    }
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 64
        && !trimmed.ends_with('.')
        && !trimmed.contains("..")
        && trimmed
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '/' && c != '*' && c != '?');
    if ok {
        Ok(trimmed.to_lowercase())
    } else {
        Err(PatternError::Extension(text.to_owned()))
    }
}

/// Whether the lowercased file `name` ends in `.ext`, with at least one
/// character before the dot (`.pdf` alone is a hidden file, not a PDF).
pub fn name_has_extension(name: &str, ext: &str) -> bool {
    name.len() > ext.len() + 1
        && name.ends_with(ext)
        && name.as_bytes()[name.len() - ext.len() - 1] == b'.'
}

/// A lowercased URI scheme (RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )).
pub fn parse_scheme(text: &str) -> Result<String, PatternError> {
    let s = text.trim();
    let ok = s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.');
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(PatternError::Scheme(text.to_owned()))
    }
}

/// A host pattern: `*`, `*.example.org` (subdomains only), or an exact host
/// (name, IPv4 address or bracketed IPv6 address). Comparison is ASCII
/// case-insensitive; internationalised names must be written in punycode,
/// which is what a parsed URL carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Any,
    /// `*.example.org`, stored as `.example.org`.
    Suffix(String),
    Exact(String),
}

fn host_error(pattern: &str, reason: &'static str) -> PatternError {
    PatternError::Host {
        pattern: pattern.to_owned(),
        reason,
    }
}

fn check_dns_name(original: &str, name: &str) -> Result<(), PatternError> {
    if name.is_empty() || name.len() > 253 {
        return Err(host_error(original, "a host name has 1 to 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(host_error(original, "it has an empty label"));
        }
        if label.len() > 63 {
            return Err(host_error(original, "a label is longer than 63 characters"));
        }
        if label.contains('*') {
            return Err(host_error(
                original,
                "a wildcard may only be the whole leftmost label, as in `*.example.org`",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(host_error(
                original,
                "host names use letters, digits, `-` and `_` (punycode for other scripts)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(host_error(original, "a label cannot start or end with `-`"));
        }
    }
    Ok(())
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let lower = text.trim().to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        if lower == "*" {
            return Ok(Self::Any);
        }
        if let Some(inner) = lower.strip_prefix('[') {
            let addr = inner
                .strip_suffix(']')
                .ok_or_else(|| host_error(text, "an IPv6 address needs its closing `]`"))?;
            return addr
                .parse::<std::net::Ipv6Addr>()
                .map(|ip| Self::Exact(format!("[{ip}]")))
                .map_err(|_| host_error(text, "the part in brackets is not an IPv6 address"));
        }
        if lower.contains(':') {
            return Err(host_error(
                text,
                "it contains `:`; IPv6 addresses go in brackets and ports are not part of a host",
            ));
        }
        if let Some(rest) = lower.strip_prefix("*.") {
            check_dns_name(text, rest)?;
            return Ok(Self::Suffix(format!(".{rest}")));
        }
        if lower.parse::<std::net::Ipv4Addr>().is_ok() {
            return Ok(Self::Exact(lower.to_owned()));
        }
        check_dns_name(text, lower)?;
        Ok(Self::Exact(lower.to_owned()))
    }

    /// `host` must already be lowercase without a trailing dot.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            Self::Exact(exact) => host == exact,
        }
    }

    pub fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (Self::Any, _) => true,
            (Self::Suffix(a), Self::Suffix(b)) => b.ends_with(a.as_str()),
            (Self::Suffix(_), Self::Exact(b)) => self.matches(b),
            (Self::Exact(a), Self::Exact(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Suffix(suffix) => write!(f, "*{suffix}"),
            Self::Exact(exact) => f.write_str(exact),
        }
    }
}

impl Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An egress allowlist entry: a host pattern and one port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub host: HostPattern,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let trimmed = text.trim();
        let (host, port) = trimmed
            .rsplit_once(':')
            .ok_or_else(|| PatternError::Endpoint(text.to_owned()))?;
        // A bare IPv6 address has colons but no brackets: refuse, don't guess.
        if host.contains(':') && !host.starts_with('[') {
            return Err(PatternError::Endpoint(text.to_owned()));
        }
        let port: u16 = match port.parse::<u32>() {
            Ok(p) => u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| PatternError::Port(text.to_owned()))?,
            Err(_) => return Err(PatternError::Endpoint(text.to_owned())),
        };
        let host = HostPattern::parse(host).map_err(|e| match e {
            PatternError::Host { reason, .. } => PatternError::Host {
                pattern: text.to_owned(),
                reason,
            },
            other => other,
        })?;
        Ok(Self { host, port })
    }

    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.port == port && self.host.matches(host)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The path globs of one rule, compiled into one set.
///
/// `*` and `?` never match `/` (a glob component stays one path component);
/// `**` matches any number of components, so `/home/*/Downloads/**` is a
/// prefix match on every user's Downloads folder.
#[derive(Debug, Clone)]
pub struct PathGlobs {
    patterns: Vec<String>,
    set: GlobSet,
}

/// Compile one path glob, for the per-entry error message.
pub fn check_path_glob(text: &str) -> Result<globset::Glob, PatternError> {
    if !text.starts_with('/') {
        return Err(PatternError::RelativePath(text.to_owned()));
    }
    GlobBuilder::new(text)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| PatternError::Glob {
            pattern: text.to_owned(),
            reason: e.kind().to_string(),
        })
}

impl PathGlobs {
    pub fn new(patterns: Vec<String>) -> Result<Self, PatternError> {
        let mut builder = GlobSetBuilder::new();
        for p in &patterns {
            builder.add(check_path_glob(p)?);
        }
        let set = builder.build().map_err(|e| PatternError::Glob {
            pattern: patterns.join(", "),
            reason: e.kind().to_string(),
        })?;
        Ok(Self { patterns, set })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn matches(&self, candidate: &Candidate<'_>) -> bool {
        self.set.is_match_candidate(candidate)
    }

    /// Every path that `other` matches, `self` matches too. Sound but
    /// incomplete: it knows equal globs and `prefix/**` covering anything
    /// written below `prefix/`.
    pub fn covers(&self, other: &PathGlobs) -> bool {
        other
            .patterns
            .iter()
            .all(|b| self.patterns.iter().any(|a| glob_covers(a, b)))
    }
}

fn glob_covers(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let Some(prefix) = a.strip_suffix("**") else {
        return false;
    };
    // The prefix must be plain components so that `b`, which starts with
    // the same text, tokenises the same way over that stretch.
    prefix.ends_with('/')
        && !prefix.contains(['\\', '[', ']', '{', '}'])
        && !prefix.contains("**")
        && b.starts_with(prefix)
        && b.len() > prefix.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_patterns_parse_match_and_cover() {
        let pdf = MimePattern::parse("Application/PDF").unwrap();
        let image = MimePattern::parse("image/*").unwrap();
        let any = MimePattern::parse("*/*").unwrap();
        assert!(pdf.matches("application/pdf"));
        assert!(image.matches("image/png"));
        assert!(!image.matches("imagex/png"));
        assert!(any.covers(&pdf) && image.covers(&MimePattern::parse("image/png").unwrap()));
        assert!(!pdf.covers(&image));
        for bad in ["pdf", "*/pdf", "image/", "/x", "a b/c", "image/**"] {
            assert!(MimePattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn extensions_are_lowercased_and_dotless() {
        assert_eq!(parse_extension("PDF").unwrap(), "pdf");
        assert_eq!(parse_extension("tar.gz").unwrap(), "tar.gz");
        assert!(matches!(
            parse_extension(".pdf"),
            Err(PatternError::ExtensionDot(_))
        ));
        assert!(parse_extension("a/b").is_err());
        assert!(parse_extension("").is_err());
        assert!(name_has_extension("x.tar.gz", "tar.gz"));
        assert!(name_has_extension("x.tar.gz", "gz"));
        assert!(!name_has_extension(".pdf", "pdf"));
        assert!(!name_has_extension("xpdf", "pdf"));
    }

    #[test]
    fn host_patterns_match_subdomains_not_apex() {
        let wild = HostPattern::parse("*.Example.org.").unwrap();
        assert!(wild.matches("a.example.org"));
        assert!(!wild.matches("example.org"));
        assert!(!wild.matches("badexample.org"));
        assert!(wild.covers(&HostPattern::parse("*.x.example.org").unwrap()));
        assert!(wild.covers(&HostPattern::parse("x.example.org").unwrap()));
        assert!(!wild.covers(&HostPattern::parse("example.org").unwrap()));
        assert_eq!(
            HostPattern::parse("[::1]").unwrap(),
            HostPattern::Exact("[::1]".into())
        );
        for bad in ["exa*mple.org", "a..b", "-a.org", "::1", "[zz]", "", "a b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_need_a_valid_port() {
        let e = Endpoint::parse("*.wikipedia.org:443").unwrap();
        assert!(e.allows("en.wikipedia.org", 443));
        assert!(!e.allows("en.wikipedia.org", 80));
        assert!(Endpoint::parse("[2001:db8::1]:443").is_ok());
        assert!(matches!(
            Endpoint::parse("a.org:0"),
            Err(PatternError::Port(_))
        ));
        assert!(matches!(
            Endpoint::parse("a.org:70000"),
            Err(PatternError::Port(_))
        ));
        assert!(matches!(
            Endpoint::parse("a.org"),
            Err(PatternError::Endpoint(_))
        ));
        assert!(matches!(
            Endpoint::parse("::1:443"),
            Err(PatternError::Endpoint(_))
        ));
    }

    #[test]
    fn path_globs_stay_within_components_and_cover_prefixes() {
        let downloads = PathGlobs::new(vec!["/home/*/Downloads/**".into()]).unwrap();
        assert!(downloads.matches(&Candidate::new("/home/ann/Downloads/a/b.pdf")));
        assert!(!downloads.matches(&Candidate::new("/home/ann/x/Downloads/b.pdf")));
        let below = PathGlobs::new(vec!["/home/*/Downloads/mail/*.pdf".into()]).unwrap();
        assert!(downloads.covers(&below));
        assert!(!below.covers(&downloads));
        assert!(matches!(
            PathGlobs::new(vec!["Downloads/**".into()]),
            Err(PatternError::RelativePath(_))
        ));
        assert!(matches!(
            PathGlobs::new(vec!["/home/[abc/**".into()]),
            Err(PatternError::Glob { .. })
        ));
    }
}
