//! A compiled rule: what it matches, what it decides, where it was written.
//!
//! Conditions are ANDed; the values listed for one condition are ORed. A
//! condition that is absent matches anything. Conditions are tested
//! cheapest first so that a 1,000-rule policy is a short linear scan.

use crate::pattern::{name_has_extension, HostPattern, MimePattern, PathGlobs};
use crate::request::{Action, Request, ORIGIN_DOWNLOADS, ORIGIN_LOCAL, ORIGIN_QUARANTINED};
use globset::Candidate;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// Where a rule was written, and its name. Shared by decisions and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSource {
    /// 1-based position in evaluation order across all files.
    pub index: usize,
    /// The policy file's name (`50-documents.toml`).
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
    pub name: Option<String>,
}

impl RuleSource {
    /// `rule `pdf`` or `rule #3`, for messages.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("rule `{n}`"),
            None => format!("rule #{}", self.index),
        }
    }
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}:{})", self.label(), self.file, self.line)
    }
}

/// A rule's decision as written: the profile is resolved when the whole
/// policy is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleDecision {
    Deny,
    Host,
    Sandbox(String),
}

impl fmt::Display for RuleDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deny => f.write_str("deny"),
            Self::Host => f.write_str("host"),
            Self::Sandbox(p) => write!(f, "sandbox({p})"),
        }
    }
}

/// The origin values a rule can list.
pub const ORIGIN_NAMES: [(&str, u8); 3] = [
    ("quarantined", ORIGIN_QUARANTINED),
    ("downloads", ORIGIN_DOWNLOADS),
    ("local", ORIGIN_LOCAL),
];

/// The condition that ruled a rule out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mismatch {
    Action,
    Extension,
    Mime,
    Origin,
    Scheme,
    Host,
    Path,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub source: Arc<RuleSource>,
    pub actions: u8,
    pub mime: Option<Vec<MimePattern>>,
    pub extension: Option<Vec<String>>,
    pub path: Option<PathGlobs>,
    pub origin: Option<u8>,
    pub scheme: Option<Vec<String>>,
    pub host: Option<Vec<HostPattern>>,
    pub decision: RuleDecision,
    /// Index into the policy's profiles; set when the policy is resolved.
    pub(crate) profile: Option<usize>,
}

/// A request's path, matched against a rule's globs on demand; the glob
/// candidate is built once per request.
pub(crate) struct PathMatcher<'a> {
    path: Option<&'a str>,
    candidate: Option<Candidate<'a>>,
}

impl<'a> PathMatcher<'a> {
    pub(crate) fn new(req: &'a Request) -> Self {
        PathMatcher {
            path: req.path.as_deref(),
            candidate: None,
        }
    }

    /// The glob candidate, or `None` when the request has no path.
    pub(crate) fn candidate(&mut self) -> Option<&Candidate<'a>> {
        let path = self.path?;
        Some(self.candidate.get_or_insert_with(|| Candidate::new(path)))
    }
}

impl Rule {
    pub fn actions(&self) -> impl Iterator<Item = Action> + '_ {
        Action::ALL
            .into_iter()
            .filter(|a| self.actions & a.bit() != 0)
    }

    /// `Ok` when the rule matches, else the first condition that did not.
    pub(crate) fn check(&self, req: &Request, paths: &mut PathMatcher<'_>) -> Result<(), Mismatch> {
        if self.actions & req.action.bit() == 0 {
            return Err(Mismatch::Action);
        }
        if let Some(exts) = &self.extension {
            let name = req.name.as_deref().ok_or(Mismatch::Extension)?;
            if !exts.iter().any(|e| name_has_extension(name, e)) {
                return Err(Mismatch::Extension);
            }
        }
        if let Some(mimes) = &self.mime {
            let mime = req.mime.as_deref().ok_or(Mismatch::Mime)?;
            if !mimes.iter().any(|m| m.matches(mime)) {
                return Err(Mismatch::Mime);
            }
        }
        if let Some(bits) = self.origin {
            if !req.action.takes_file() || bits & req.origin.bits() == 0 {
                return Err(Mismatch::Origin);
            }
        }
        if self.scheme.is_some() || self.host.is_some() {
            let uri = req.uri.as_ref();
            if let Some(schemes) = &self.scheme {
                let scheme = uri.map(|u| u.scheme.as_str()).ok_or(Mismatch::Scheme)?;
                if !schemes.iter().any(|s| s == scheme) {
                    return Err(Mismatch::Scheme);
                }
            }
            if let Some(hosts) = &self.host {
                let host = uri.and_then(|u| u.host.as_deref()).ok_or(Mismatch::Host)?;
                if !hosts.iter().any(|h| h.matches(host)) {
                    return Err(Mismatch::Host);
                }
            }
        }
        if let Some(globs) = &self.path {
            if !globs.matches(paths.candidate().ok_or(Mismatch::Path)?) {
                return Err(Mismatch::Path);
            }
        }
        Ok(())
    }

    /// Why this rule did not match `req`, in words.
    pub fn explain_mismatch(&self, m: Mismatch, req: &Request) -> String {
        fn list<T: fmt::Display>(items: &[T]) -> String {
            let v: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
            v.join(", ")
        }
        match m {
            Mismatch::Action => {
                let acts: Vec<&str> = self.actions().map(Action::as_str).collect();
                format!(
                    "action is {}, the rule is for {}",
                    req.action,
                    acts.join(", ")
                )
            }
            Mismatch::Extension => match req.name.as_deref() {
                None => "the request has no file name to take an extension from".to_owned(),
                Some(n) => format!(
                    "name `{n}` does not end in {}",
                    list(
                        &self
                            .extension
                            .as_deref()
                            .unwrap_or_default()
                            .iter()
                            .map(|e| format!(".{e}"))
                            .collect::<Vec<_>>()
                    )
                ),
            },
            Mismatch::Mime => format!(
                "content type {} is not {}",
                req.mime
                    .as_deref()
                    .map_or("(none)".to_owned(), |m| format!("`{m}`")),
                list(self.mime.as_deref().unwrap_or_default())
            ),
            Mismatch::Origin => {
                let have: Vec<&str> = ORIGIN_NAMES
                    .iter()
                    .filter(|(_, b)| req.origin.bits() & b != 0)
                    .map(|(n, _)| *n)
                    .collect();
                let want: Vec<&str> = ORIGIN_NAMES
                    .iter()
                    .filter(|(_, b)| self.origin.unwrap_or(0) & b != 0)
                    .map(|(n, _)| *n)
                    .collect();
                format!(
                    "origin is {}, the rule wants {}",
                    have.join(" and "),
                    want.join(" or ")
                )
            }
            Mismatch::Scheme => match req.uri.as_ref() {
                None => "the request has no URI".to_owned(),
                Some(u) => format!(
                    "scheme `{}` is not {}",
                    u.scheme,
                    list(self.scheme.as_deref().unwrap_or_default())
                ),
            },
            Mismatch::Host => match req.uri.as_ref().and_then(|u| u.host.as_deref()) {
                None => "the URI has no host".to_owned(),
                Some(h) => format!(
                    "host `{h}` is not {}",
                    list(self.host.as_deref().unwrap_or_default())
                ),
            },
            Mismatch::Path => match req.path.as_deref() {
                None => "the request has no path".to_owned(),
                Some(p) => format!(
                    "path `{p}` is not under {}",
                    list(self.path.as_ref().map_or(&[][..], |g| g.patterns()))
                ),
            },
        }
    }

    /// Whether this rule matches every `action` request that `later`
    /// matches, which makes `later` unreachable for that action.
    pub fn covers(&self, later: &Rule, action: Action) -> bool {
        fn cond<T>(a: &Option<T>, b: &Option<T>, covers: impl Fn(&T, &T) -> bool) -> bool {
            match (a, b) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => covers(a, b),
            }
        }
        fn all_in<T, U>(a: &[T], b: &[U], covers: impl Fn(&T, &U) -> bool) -> bool {
            b.iter().all(|y| a.iter().any(|x| covers(x, y)))
        }
        self.actions & action.bit() != 0
            && later.actions & action.bit() != 0
            && cond(&self.extension, &later.extension, |a, b| {
                all_in(a, b, |x, y| x == y)
            })
            && cond(&self.mime, &later.mime, |a, b| {
                all_in(a, b, MimePattern::covers)
            })
            && cond(&self.origin, &later.origin, |a, b| b & !a == 0)
            && cond(&self.scheme, &later.scheme, |a, b| {
                all_in(a, b, |x, y| x == y)
            })
            && cond(&self.host, &later.host, |a, b| {
                all_in(a, b, HostPattern::covers)
            })
            && cond(&self.path, &later.path, PathGlobs::covers)
    }

    /// The conditions in a normal form (lists sorted), independent of the
    /// rule's name and position. Two rules with equal keys behave the same.
    pub fn conditions_text(&self) -> String {
        fn push<T: fmt::Display>(out: &mut Vec<String>, key: &str, items: Option<&[T]>) {
            if let Some(items) = items {
                let mut v: Vec<String> = items.iter().map(ToString::to_string).collect();
                v.sort();
                v.dedup();
                out.push(format!("{key}={}", v.join(",")));
            }
        }
        let mut out = Vec::new();
        push(&mut out, "extension", self.extension.as_deref());
        push(&mut out, "mime", self.mime.as_deref());
        if let Some(bits) = self.origin {
            let names: Vec<&str> = ORIGIN_NAMES
                .iter()
                .filter(|(_, b)| bits & b != 0)
                .map(|(n, _)| *n)
                .collect();
            push(&mut out, "origin", Some(&names[..]));
        }
        push(&mut out, "scheme", self.scheme.as_deref());
        push(&mut out, "host", self.host.as_deref());
        push(
            &mut out,
            "path",
            self.path.as_ref().map(PathGlobs::patterns),
        );
        if out.is_empty() {
            "(anything)".to_owned()
        } else {
            out.join(" ")
        }
    }

    pub fn actions_text(&self) -> String {
        let v: Vec<&str> = self.actions().map(Action::as_str).collect();
        v.join(",")
    }

    /// The behaviour key used by `diff`: actions, conditions and decision.
    pub fn behaviour_key(&self) -> String {
        format!(
            "{} {} -> {}",
            self.actions_text(),
            self.conditions_text(),
            self.decision
        )
    }
}
