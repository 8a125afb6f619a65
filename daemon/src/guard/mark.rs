//! Whether the file behind a fanotify event's fd is untrusted.
//!
//! The attributes are read with `fgetxattr` on the event's own fd, never by
//! path: the path may already name another file, and an open of a watched
//! path from the event thread would wait on the guard itself.

use std::os::fd::BorrowedFd;

use rustix::io::Errno;

use super::config::GuardConfig;
use crate::downloads_watch::UNTRUSTED_XATTR;

/// The attribute browsers set on what they download.
pub const ORIGIN_XATTR: &str = "user.xdg.origin.url";
/// Longest origin read; a longer one still marks the file.
const MAX_ORIGIN: usize = 4096;

/// Why a file is untrusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// `user.vitrine.untrusted` is set.
    Untrusted,
    /// `user.xdg.origin.url` names an origin that is not trusted.
    Origin(String),
    /// A config `untrusted_paths` rule names the path.
    PathRule(String),
}

impl Mark {
    /// The reason a denial carries.
    pub fn reason(&self) -> String {
        match self {
            Mark::Untrusted => UNTRUSTED_XATTR.to_owned(),
            Mark::Origin(url) => format!("{ORIGIN_XATTR}={url}"),
            Mark::PathRule(path) => format!("guard rule untrusted_paths matches {path}"),
        }
    }
}

/// An attribute could not be read (the event is then allowed and logged).
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    /// `fgetxattr` failed other than "no such attribute".
    #[error("reading {name} of the event's file")]
    Xattr {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The attributes of one file that decide its mark.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// `user.vitrine.untrusted` is present (any value).
    pub untrusted: bool,
    /// `user.xdg.origin.url`, when present.
    pub origin: Option<String>,
}

impl Attributes {
    /// Reads both attributes from `fd`.
    pub fn of_fd(fd: BorrowedFd<'_>) -> Result<Attributes, MarkError> {
        let mut probe = [0u8; 8];
        let untrusted = match rustix::fs::fgetxattr(fd, UNTRUSTED_XATTR, &mut probe[..]) {
            // Present, with a value longer than the probe: still present.
            Ok(_) | Err(Errno::RANGE) => true,
            Err(e) if absent(e) => false,
            Err(e) => return Err(xattr_error(UNTRUSTED_XATTR, e)),
        };
        let mut buf = [0u8; MAX_ORIGIN];
        let origin = match rustix::fs::fgetxattr(fd, ORIGIN_XATTR, &mut buf[..]) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(Errno::RANGE) => Some(format!("(an origin of over {MAX_ORIGIN} bytes)")),
            Err(e) if absent(e) => None,
            Err(e) => return Err(xattr_error(ORIGIN_XATTR, e)),
        };
        Ok(Attributes { untrusted, origin })
    }
}

/// No such attribute, or a filesystem without user attributes.
fn absent(e: Errno) -> bool {
    e == Errno::NODATA || e == Errno::NOTSUP || e == Errno::OPNOTSUPP
}

fn xattr_error(name: &'static str, e: Errno) -> MarkError {
    MarkError::Xattr {
        name,
        source: std::io::Error::from_raw_os_error(e.raw_os_error()),
    }
}

/// The mark `attrs` and the config give a file; `path` is asked for only
/// when there are path rules. `None`: trusted.
pub fn judge(
    attrs: &Attributes,
    config: &GuardConfig,
    path: impl FnOnce() -> Option<String>,
) -> Option<Mark> {
    if attrs.untrusted {
        return Some(Mark::Untrusted);
    }
    if let Some(origin) = &attrs.origin {
        if !config.origin_is_trusted(origin) {
            return Some(Mark::Origin(origin.clone()));
        }
    }
    if config.has_path_rules() {
        if let Some(path) = path() {
            if config.path_rule(&path) {
                return Some(Mark::PathRule(path));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> GuardConfig {
        GuardConfig::from_toml(text, Path::new("g.toml")).unwrap()
    }

    #[test]
    fn unmarked_file_without_rules_is_trusted_and_its_path_is_never_read() {
        let attrs = Attributes::default();

        let mark = judge(&attrs, &config(""), || {
            panic!("path read without path rules")
        });

        assert_eq!(mark, None);
    }

    #[test]
    fn vitrine_mark_wins_even_with_a_trusted_origin() {
        let attrs = Attributes {
            untrusted: true,
            origin: Some("https://intra.example/a".into()),
        };
        let config = config("trusted_origins = [\"https://intra.example/*\"]\n");

        let mark = judge(&attrs, &config, || None);

        assert_eq!(mark, Some(Mark::Untrusted));
        assert_eq!(mark.unwrap().reason(), "user.vitrine.untrusted");
    }

    #[test]
    fn origin_marks_unless_trusted() {
        let config = config("trusted_origins = [\"https://intra.example/*\"]\n");
        let from = |url: &str| Attributes {
            untrusted: false,
            origin: Some(url.into()),
        };

        let evil = judge(&from("https://evil.example/x"), &config, || None);
        let intra = judge(&from("https://intra.example/x"), &config, || None);

        assert_eq!(
            evil.unwrap().reason(),
            "user.xdg.origin.url=https://evil.example/x"
        );
        assert_eq!(intra, None);
    }

    #[test]
    fn path_rule_marks_an_unmarked_file_it_names() {
        let config = config("untrusted_paths = [\"/srv/in/**\"]\n");
        let attrs = Attributes::default();

        let inside = judge(&attrs, &config, || Some("/srv/in/tool".into()));
        let outside = judge(&attrs, &config, || Some("/srv/out/tool".into()));
        let unknown = judge(&attrs, &config, || None);

        assert_eq!(inside, Some(Mark::PathRule("/srv/in/tool".into())));
        assert_eq!(outside, None);
        assert_eq!(unknown, None);
    }

    #[test]
    fn attributes_are_read_from_the_fd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let plain = Attributes::of_fd(std::os::fd::AsFd::as_fd(&file)).unwrap();
        let set = rustix::fs::setxattr(
            &path,
            ORIGIN_XATTR,
            b"https://o.example/f",
            rustix::fs::XattrFlags::empty(),
        );
        if set.is_err() {
            eprintln!(
                "SKIPPED attributes_are_read_from_the_fd: no user xattrs on {}",
                dir.path().display()
            );
            return;
        }

        let marked = Attributes::of_fd(std::os::fd::AsFd::as_fd(&file)).unwrap();

        assert_eq!(plain, Attributes::default());
        assert_eq!(marked.origin.as_deref(), Some("https://o.example/f"));
        assert!(!marked.untrusted);
    }
}
