//! What the evaluator answers: a verdict, the profile, the policy version,
//! and which rule decided; plus, on request, the full explanation.

use crate::diagnostics::printable;
use crate::policy::PolicyVersion;
use crate::profile::Profile;
use crate::request::Request;
use crate::rule::{Mismatch, Rule, RuleSource};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// The decision itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Refuse; nothing is opened.
    Deny,
    /// Trusted: open normally on the host.
    Host,
    /// Open in a VM with this profile.
    Sandbox(Arc<Profile>),
}

impl Verdict {
    pub fn profile(&self) -> Option<&Profile> {
        match self {
            Verdict::Sandbox(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Deny => f.write_str("deny"),
            Verdict::Host => f.write_str("host"),
            Verdict::Sandbox(p) => write!(f, "sandbox({})", p.name),
        }
    }
}

/// What produced the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchedBy {
    Rule(Arc<RuleSource>),
    /// No rule matched: the built-in `strict` sandbox.
    Default,
    /// The policy did not load: everything gets the `strict` sandbox.
    FailClosed {
        reason: Arc<str>,
    },
}

impl fmt::Display for MatchedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatchedBy::Rule(r) => write!(f, "{r}"),
            MatchedBy::Default => {
                f.write_str("no rule matched; the built-in default is sandbox(strict)")
            }
            MatchedBy::FailClosed { reason } => write!(f, "FAIL-CLOSED: {reason}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub matched: MatchedBy,
    pub version: PolicyVersion,
}

impl Decision {
    pub fn is_fail_closed(&self) -> bool {
        matches!(self.matched, MatchedBy::FailClosed { .. })
    }
    /// The rule that decided, if one did.
    pub fn rule(&self) -> Option<&RuleSource> {
        match &self.matched {
            MatchedBy::Rule(r) => Some(r),
            _ => None,
        }
    }
}

impl Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (kind, profile) = match &self.verdict {
            Verdict::Deny => ("deny", None),
            Verdict::Host => ("host", None),
            Verdict::Sandbox(p) => ("sandbox", Some(&**p)),
        };
        let mut st = s.serialize_struct("Decision", 6)?;
        st.serialize_field("verdict", kind)?;
        st.serialize_field("profile", &profile)?;
        st.serialize_field("rule", &self.rule())?;
        st.serialize_field("default", &matches!(self.matched, MatchedBy::Default))?;
        let reason = match &self.matched {
            MatchedBy::FailClosed { reason } => Some(&**reason),
            _ => None,
        };
        st.serialize_field("fail_closed", &reason)?;
        st.serialize_field("policy_version", &self.version)?;
        st.end()
    }
}

/// One rule's part in an explanation.
#[derive(Debug, Clone, Serialize)]
pub struct RuleTrace {
    pub rule: Arc<RuleSource>,
    pub matched: bool,
    /// The first condition that failed, when it did not match.
    pub failed: Option<Mismatch>,
    /// The same, in words.
    pub reason: String,
}

impl RuleTrace {
    pub(crate) fn matched(rule: &Rule) -> Self {
        RuleTrace {
            rule: rule.source.clone(),
            matched: true,
            failed: None,
            reason: format!(
                "matched: {} {} -> {}",
                rule.actions_text(),
                rule.conditions_text(),
                rule.decision
            ),
        }
    }

    pub(crate) fn skipped(rule: &Rule, m: Mismatch, req: &Request) -> Self {
        RuleTrace {
            rule: rule.source.clone(),
            matched: false,
            failed: Some(m),
            reason: rule.explain_mismatch(m, req),
        }
    }
}

/// The request as the policy saw it, for explanations and logs.
#[derive(Debug, Clone, Serialize)]
pub struct RequestSummary {
    pub action: String,
    pub mime: Option<String>,
    pub name: Option<String>,
    pub path: Option<String>,
    pub origin: Vec<&'static str>,
    pub uri: Option<String>,
    pub host: Option<String>,
}

impl RequestSummary {
    pub fn of(req: &Request) -> Self {
        let o = req.origin();
        let mut origin = Vec::new();
        if req.action().takes_file() {
            if o.quarantined {
                origin.push("quarantined");
            }
            if o.downloads {
                origin.push("downloads");
            }
            if origin.is_empty() {
                origin.push("local");
            }
        }
        RequestSummary {
            action: req.action().to_string(),
            mime: req.mime().map(str::to_owned),
            name: req.name().map(str::to_owned),
            path: req.path().map(str::to_owned),
            origin,
            uri: req.uri().map(|u| u.text.clone()),
            host: req.uri().and_then(|u| u.host.clone()),
        }
    }
}

/// A decision with its reasons.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub decision: Decision,
    pub request: RequestSummary,
    /// Every rule up to and including the one that matched.
    pub trace: Vec<RuleTrace>,
}

impl Explanation {
    pub(crate) fn new(decision: Decision, req: &Request, trace: Vec<RuleTrace>) -> Self {
        Explanation {
            decision,
            request: RequestSummary::of(req),
            trace,
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // File names and URIs come from outside: never let them reach the
        // terminal raw.
        let text = self.render().map_err(|_| fmt::Error)?;
        f.write_str(&printable(&text))
    }
}

impl Explanation {
    fn render(&self) -> Result<String, fmt::Error> {
        use fmt::Write as _;
        let mut out = String::new();
        let f = &mut out;
        let d = &self.decision;
        writeln!(f, "decision: {}", d.verdict)?;
        writeln!(f, "by:       {}", d.matched)?;
        writeln!(f, "policy:   {}", d.version.short())?;
        let r = &self.request;
        write!(f, "request:  {}", r.action)?;
        for (k, v) in [
            ("mime", &r.mime),
            ("name", &r.name),
            ("path", &r.path),
            ("uri", &r.uri),
        ] {
            if let Some(v) = v {
                write!(f, " {k}={v}")?;
            }
        }
        if !r.origin.is_empty() {
            write!(f, " origin={}", r.origin.join("+"))?;
        }
        writeln!(f)?;
        if d.is_fail_closed() {
            writeln!(f, "\nThe policy did not load, so every action is sandboxed with the built-in `strict` profile.")?;
        } else if self.trace.is_empty() {
            writeln!(
                f,
                "\nThe policy has no rules; the built-in default applies."
            )?;
        } else {
            writeln!(f, "\nrules, in order (first match wins):")?;
            // Rules for other actions are noise here; count them instead.
            let mut other_actions = 0usize;
            let flush = |f: &mut String, n: &mut usize| -> fmt::Result {
                if *n > 0 {
                    writeln!(f, "   ({n} rule(s) for other actions)")?;
                    *n = 0;
                }
                Ok(())
            };
            for t in &self.trace {
                if t.failed == Some(Mismatch::Action) {
                    other_actions += 1;
                    continue;
                }
                flush(f, &mut other_actions)?;
                let mark = if t.matched { "=>" } else { "  " };
                writeln!(
                    f,
                    "{mark} {:>4}. {}:{} {}",
                    t.rule.index,
                    t.rule.file,
                    t.rule.line,
                    t.rule.label()
                )?;
                writeln!(f, "          {}", t.reason)?;
            }
            flush(f, &mut other_actions)?;
            if matches!(d.matched, MatchedBy::Default) {
                writeln!(
                    f,
                    "=> no rule matched: sandbox with the built-in `strict` profile"
                )?;
            }
        }
        if let Some(p) = d.verdict.profile() {
            writeln!(f, "\nprofile `{}`:", p.name)?;
            for (k, v) in p.fields() {
                writeln!(f, "  {k:<20} {v}")?;
            }
        }
        Ok(out)
    }
}
