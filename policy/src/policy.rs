//! A loaded policy: every file of a directory, in name order, resolved into
//! one list of rules and one set of profiles; and the evaluator over it.
//!
//! Loading is all-or-nothing. A policy with any error is refused as a whole
//! (the caller then fails closed, or keeps the policy it had), because half
//! a mandatory policy is a policy nobody wrote.

use crate::decision::{Decision, Explanation, MatchedBy, RuleTrace, Verdict};
use crate::diagnostics::{did_you_mean, Diagnostic, Diagnostics, Severity, SourceFile};
use crate::index::DecisionIndex;
use crate::parse::{self, ParsedFile};
use crate::profile::{self, Profile};
use crate::request::{Action, Request};
use crate::rule::{PathMatcher, Rule, RuleDecision};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rules per action tested one by one before the decision index is used.
const LINEAR_SCAN: usize = 8;

/// Where the system policy lives.
pub const SYSTEM_POLICY_DIR: &str = "/etc/vitrine/policy.d";
/// A policy file larger than this is refused (it is surely not hand-written).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// The SHA-256 over the policy files' names and contents, in load order.
/// Audit records carry it so that every decision can be tied to the exact
/// text that made it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyVersion(pub [u8; 32]);

impl PolicyVersion {
    /// The version of the fail-closed policy: all zeroes.
    pub const FAIL_CLOSED: PolicyVersion = PolicyVersion([0; 32]);

    pub fn of(files: &[SourceFile]) -> PolicyVersion {
        let mut h = Sha256::new();
        h.update(b"vitrine-policy-v1\0");
        for f in files {
            h.update(f.name.as_bytes());
            h.update([0]);
            h.update((f.text.len() as u64).to_le_bytes());
            h.update(f.text.as_bytes());
        }
        PolicyVersion(h.finalize().into())
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first 12 hex digits, for humans.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }
}

impl fmt::Display for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PolicyVersion({})", self.short())
    }
}

impl serde::Serialize for PolicyVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why the policy in force is the fail-closed one.
#[derive(Debug, Clone)]
pub struct FailClosed {
    pub reason: Arc<str>,
    pub diagnostics: Diagnostics,
}

#[derive(Debug)]
struct Inner {
    dir: Option<PathBuf>,
    files: Vec<SourceFile>,
    /// Declared profiles plus the built-in `strict`, in declaration order.
    profiles: Vec<Arc<Profile>>,
    strict: Arc<Profile>,
    rules: Vec<Rule>,
    /// Rule positions per action (open-file, open-uri, run-program), for
    /// the short linear scan that precedes the index.
    by_action: [Vec<u32>; 3],
    index: DecisionIndex,
    version: PolicyVersion,
    warnings: Diagnostics,
    fail_closed: Option<FailClosed>,
}

/// An immutable, loaded policy. Cloning is cheap (one `Arc`).
#[derive(Debug, Clone)]
pub struct PolicySet {
    inner: Arc<Inner>,
}

/// Read the `*.toml` files of `dir` in byte order of their names. Hidden
/// files and other names (`.dpkg-old`, `~` backups, `README`) are skipped.
pub fn read_dir_sources(dir: &Path) -> Result<Vec<SourceFile>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let fail = |msg: String, hint: Option<String>| {
        let mut d = Diagnostics::default();
        d.push(Diagnostic::whole(Severity::Error, dir, msg).with_hint(hint));
        d
    };
    let meta = std::fs::metadata(dir).map_err(|e| {
        fail(
            format!("cannot read policy directory: {e}"),
            Some(
                "the daemon fails closed until this directory exists and holds a valid policy"
                    .into(),
            ),
        )
    })?;
    if !meta.is_dir() {
        return Err(fail(
            "is not a directory".into(),
            Some("pass a policy directory, or validate a single file".into()),
        ));
    }
    if let Some(d) = writable_by_others(dir, &meta) {
        diags.push(d);
    }
    // Resolve a symlinked directory once, so that the listing and every
    // file come from the same version even if `apply` swaps the link.
    let real = std::fs::canonicalize(dir)
        .map_err(|e| fail(format!("cannot resolve policy directory: {e}"), None))?;
    let entries = std::fs::read_dir(&real)
        .map_err(|e| fail(format!("cannot list policy directory: {e}"), None))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(format!("cannot list policy directory: {e}"), None))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        names.push(name.to_owned());
    }
    names.sort();
    if names.is_empty() {
        diags.push(
            Diagnostic::whole(Severity::Error, dir, "holds no *.toml policy files".into())
                .with_hint(Some(
                    "an empty policy is a missing policy: the daemon fails closed".into(),
                )),
        );
    }
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        match read_source_from(&real.join(&name), &dir.join(&name)) {
            Ok(f) => files.push(f),
            Err(d) => diags.push(*d),
        }
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(files)
    }
}

/// Read one policy file, refusing what cannot be a trustworthy policy.
pub fn read_source(path: &Path) -> Result<SourceFile, Box<Diagnostic>> {
    read_source_from(path, path)
}

/// Read `path`, naming it `shown` in the result and in messages.
fn read_source_from(path: &Path, shown: &Path) -> Result<SourceFile, Box<Diagnostic>> {
    let err = |msg: String| Box::new(Diagnostic::whole(Severity::Error, shown, msg));
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err("is not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(format!(
            "is {} bytes; policy files are limited to {MAX_FILE_BYTES}",
            meta.len()
        )));
    }
    if let Some(d) = writable_by_others(shown, &meta) {
        return Err(Box::new(d));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        err(format!(
            "is not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok(SourceFile::new(shown, text))
}

fn writable_by_others(path: &Path, meta: &std::fs::Metadata) -> Option<Diagnostic> {
    // A mandatory policy that any user can rewrite is no policy at all.
    (meta.permissions().mode() & 0o002 != 0).then(|| {
        Diagnostic::whole(Severity::Error, path, "is writable by every user".into())
            .with_hint(Some(format!("run: chmod o-w {}", path.display())))
    })
}

impl PolicySet {
    /// Load every `*.toml` file of `dir`, in name order.
    pub fn load_dir(dir: &Path) -> Result<PolicySet, Diagnostics> {
        let files = read_dir_sources(dir)?;
        Self::from_sources(files, Some(dir.to_owned()))
    }

    /// Load one file as a complete policy (its profiles and rules alone).
    pub fn load_file(path: &Path) -> Result<PolicySet, Diagnostics> {
        let file = read_source(path).map_err(|d| Diagnostics(vec![*d]))?;
        Self::from_sources(vec![file], None)
    }

    /// Load the directory, or fail closed. The failure is logged at error
    /// level; the diagnostics are returned so the caller can show them too.
    pub fn load_or_fail_closed(dir: &Path) -> (PolicySet, Option<Diagnostics>) {
        match Self::load_dir(dir) {
            Ok(set) => (set, None),
            Err(diags) => {
                let reason = format!(
                    "policy {} did not load ({} error(s)): {}",
                    dir.display(),
                    diags.error_count(),
                    diags.summary()
                );
                log::error!(
                    "FAILING CLOSED: {reason}; every action is sandboxed with the built-in `strict` profile until the policy is fixed"
                );
                (Self::fail_closed_with(reason, diags.clone()), Some(diags))
            }
        }
    }

    /// The policy used when the real one is missing or broken: every request
    /// is sandboxed with the strictest profile.
    pub fn fail_closed(reason: impl Into<String>) -> PolicySet {
        Self::fail_closed_with(reason.into(), Diagnostics::default())
    }

    fn fail_closed_with(reason: String, diagnostics: Diagnostics) -> PolicySet {
        let strict = Arc::new(Profile::strict());
        PolicySet {
            inner: Arc::new(Inner {
                dir: None,
                files: Vec::new(),
                profiles: vec![strict.clone()],
                strict,
                rules: Vec::new(),
                by_action: Default::default(),
                index: DecisionIndex::build(&[]),
                version: PolicyVersion::FAIL_CLOSED,
                warnings: Diagnostics::default(),
                fail_closed: Some(FailClosed {
                    reason: reason.into(),
                    diagnostics,
                }),
            }),
        }
    }

    /// Parse and resolve policy files already in memory, in the given order.
    pub fn from_sources(
        files: Vec<SourceFile>,
        dir: Option<PathBuf>,
    ) -> Result<PolicySet, Diagnostics> {
        let mut diags = Diagnostics::default();
        let parsed: Vec<ParsedFile> = files
            .iter()
            .map(|f| parse::parse_file(f, &mut diags))
            .collect();

        // Profiles: one namespace across all files.
        let strict = Arc::new(Profile::strict());
        let mut profiles = vec![strict.clone()];
        let mut profile_at: HashMap<String, (usize, usize)> = HashMap::new(); // name -> (file, offset)
        let mut by_name: HashMap<String, usize> = HashMap::from([(profile::STRICT.to_owned(), 0)]);
        let broken: Vec<String> = parsed
            .iter()
            .flat_map(|pf| pf.broken_profiles.iter().cloned())
            .collect();
        for (fi, pf) in parsed.iter().enumerate() {
            for decl in &pf.profiles {
                let name = &decl.profile.name;
                if let Some(&(pfi, off)) = profile_at.get(name) {
                    let (l, _) = files[pfi].line_col(off);
                    diags.push(
                        Diagnostic::at(Severity::Error, &files[fi], decl.name_span.clone(), format!("profile `{name}` is already defined"))
                            .with_hint(Some(format!("the first definition is at {}:{l}; profile names are shared by all files", files[pfi].path.display()))),
                    );
                    continue;
                }
                profile_at.insert(name.clone(), (fi, decl.name_span.start));
                by_name.insert(name.clone(), profiles.len());
                profiles.push(Arc::new(decl.profile.clone()));
            }
        }

        // Rules: one list, files in order, then resolve profiles and names.
        let mut rules: Vec<Rule> = Vec::new();
        let mut decls = Vec::new();
        let mut used = vec![false; profiles.len()];
        used[0] = true;
        let mut rule_names: HashMap<String, (usize, u32)> = HashMap::new();
        for (fi, pf) in parsed.into_iter().enumerate() {
            for decl in pf.rules {
                let mut rule = decl.rule;
                if let RuleDecision::Sandbox(name) = &rule.decision {
                    match by_name.get(name) {
                        Some(&idx) => {
                            rule.profile = Some(idx);
                            used[idx] = true;
                        }
                        // Already reported where the profile is declared.
                        None if broken.contains(name) => continue,
                        None => {
                            let mut hint = did_you_mean(name, by_name.keys().map(String::as_str));
                            if hint.is_none() && files.len() == 1 && dir.is_none() {
                                hint = Some("profiles from other files are only visible when you validate the whole directory".into());
                            }
                            let hint = hint.or_else(|| {
                                let mut names: Vec<&str> =
                                    by_name.keys().map(String::as_str).collect();
                                names.sort_unstable();
                                Some(format!("defined profiles: {}", names.join(", ")))
                            });
                            diags.push(
                                Diagnostic::at(
                                    Severity::Error,
                                    &files[fi],
                                    decl.decision_span.clone(),
                                    format!("profile `{name}` does not exist"),
                                )
                                .with_hint(hint),
                            );
                            continue;
                        }
                    }
                }
                if let (Some(name), Some(span)) = (&rule.source.name, &decl.name_span) {
                    if let Some((pfi, line)) = rule_names.get(name) {
                        diags.push(
                            Diagnostic::at(Severity::Error, &files[fi], span.clone(), format!("rule name `{name}` is already used"))
                                .with_hint(Some(format!("the first rule with that name is at {}:{line}; names must be unique so that explanations and logs are unambiguous", files[*pfi].path.display()))),
                        );
                        continue;
                    }
                    rule_names.insert(name.clone(), (fi, rule.source.line));
                }
                let mut source = (*rule.source).clone();
                source.index = rules.len() + 1;
                rule.source = Arc::new(source);
                decls.push((fi, decl.header_span));
                rules.push(rule);
            }
        }

        // First match wins: a rule that an earlier rule covers for all of its
        // actions can never be reached.
        for (j, later) in rules.iter().enumerate() {
            let mut shadowed_by = Vec::new();
            let all_covered = later.actions().all(|action| {
                match rules[..j]
                    .iter()
                    .find(|earlier| earlier.covers(later, action))
                {
                    Some(e) => {
                        shadowed_by.push(e);
                        true
                    }
                    None => false,
                }
            });
            if all_covered {
                let (fi, span) = &decls[j];
                shadowed_by.dedup_by_key(|r| r.source.index);
                let by: Vec<String> = shadowed_by.iter().map(|r| r.source.to_string()).collect();
                diags.push(
                    Diagnostic::at(Severity::Error, &files[*fi], span.clone(), format!("{} can never match: {} already matches everything it matches", later.source.label(), by.join(" and ")))
                        .with_hint(Some("the first matching rule wins; move this rule above the broader one, or delete it".into())),
                );
            }
        }

        // Unused profiles are worth a warning only in a policy that is
        // otherwise sound: with errors, rules that would use them are gone.
        for (idx, p) in profiles.iter().enumerate() {
            if !used[idx] && !diags.has_errors() {
                if let Some(&(fi, off)) = profile_at.get(&p.name) {
                    diags.push(
                        Diagnostic::at(
                            Severity::Warning,
                            &files[fi],
                            off..off,
                            format!("profile `{}` is not used by any rule", p.name),
                        )
                        .with_hint(Some(
                            "remove it, or reference it with sandbox = \"...\"".into(),
                        )),
                    );
                }
            }
        }

        if diags.has_errors() {
            return Err(diags);
        }
        let version = PolicyVersion::of(&files);
        let by_action = Action::ALL.map(|a| {
            (0u32..)
                .zip(&rules)
                .filter(|(_, r)| r.actions & a.bit() != 0)
                .map(|(i, _)| i)
                .collect()
        });
        let index = DecisionIndex::build(&rules);
        Ok(PolicySet {
            inner: Arc::new(Inner {
                dir,
                files,
                profiles,
                strict,
                rules,
                by_action,
                index,
                version,
                warnings: diags,
                fail_closed: None,
            }),
        })
    }

    /// Decide `req`: the first matching rule wins; no match means the
    /// built-in `strict` sandbox. Never fails and never blocks.
    pub fn evaluate(&self, req: &Request) -> Decision {
        let inner = &*self.inner;
        if let Some(fc) = &inner.fail_closed {
            return self.decision(
                Verdict::Sandbox(inner.strict.clone()),
                MatchedBy::FailClosed {
                    reason: fc.reason.clone(),
                },
            );
        }
        let mut paths = PathMatcher::new(req);
        let slot = Action::ALL
            .iter()
            .position(|a| *a == req.action())
            .unwrap_or(0);
        let mine = &inner.by_action[slot];
        // The first few rules for this action are cheaper to test one by
        // one than to look up; a hit there is the common case.
        for &i in mine.iter().take(LINEAR_SCAN) {
            if let Some(rule) = inner.rules.get(i as usize) {
                if rule.check(req, &mut paths).is_ok() {
                    return self.matched(rule);
                }
            }
        }
        if let Some(&next) = mine.get(LINEAR_SCAN) {
            let cands = inner.index.candidates(req, paths.candidate());
            let mut from = next as usize;
            while let Some(i) = cands.first_from(from) {
                // Confirm with the plain check: the index only narrows.
                if let Some(rule) = inner.rules.get(i) {
                    if rule.check(req, &mut paths).is_ok() {
                        return self.matched(rule);
                    }
                }
                from = i + 1;
            }
        }
        self.decision(Verdict::Sandbox(inner.strict.clone()), MatchedBy::Default)
    }

    /// Decide `req` and say why: the matching rule, and for each earlier
    /// rule the condition that ruled it out.
    pub fn explain(&self, req: &Request) -> Explanation {
        let decision = self.evaluate(req);
        let mut trace = Vec::new();
        if self.inner.fail_closed.is_none() {
            let mut paths = PathMatcher::new(req);
            for rule in &self.inner.rules {
                match rule.check(req, &mut paths) {
                    Ok(()) => {
                        trace.push(RuleTrace::matched(rule));
                        break;
                    }
                    Err(m) => trace.push(RuleTrace::skipped(rule, m, req)),
                }
            }
        }
        Explanation::new(decision, req, trace)
    }

    fn matched(&self, rule: &Rule) -> Decision {
        self.decision(self.verdict(rule), MatchedBy::Rule(rule.source.clone()))
    }

    fn verdict(&self, rule: &Rule) -> Verdict {
        match &rule.decision {
            RuleDecision::Deny => Verdict::Deny,
            RuleDecision::Host => Verdict::Host,
            RuleDecision::Sandbox(_) => {
                let idx = rule.profile.unwrap_or(0);
                Verdict::Sandbox(
                    self.inner
                        .profiles
                        .get(idx)
                        .cloned()
                        .unwrap_or_else(|| self.inner.strict.clone()),
                )
            }
        }
    }

    fn decision(&self, verdict: Verdict, matched: MatchedBy) -> Decision {
        Decision {
            verdict,
            matched,
            version: self.inner.version,
        }
    }

    pub fn version(&self) -> PolicyVersion {
        self.inner.version
    }
    pub fn is_fail_closed(&self) -> bool {
        self.inner.fail_closed.is_some()
    }
    pub fn fail_closed_reason(&self) -> Option<&FailClosed> {
        self.inner.fail_closed.as_ref()
    }
    /// The directory the policy was loaded from, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }
    /// The files, in load order.
    pub fn files(&self) -> &[SourceFile] {
        &self.inner.files
    }
    /// Rules in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.inner.rules
    }
    /// All profiles, the built-in `strict` first.
    pub fn profiles(&self) -> &[Arc<Profile>] {
        &self.inner.profiles
    }
    pub fn profile(&self, name: &str) -> Option<&Arc<Profile>> {
        self.inner.profiles.iter().find(|p| p.name == name)
    }
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.inner
            .rules
            .iter()
            .find(|r| r.source.name.as_deref() == Some(name))
    }
    /// Warnings from loading (errors refuse the load).
    pub fn warnings(&self) -> &Diagnostics {
        &self.inner.warnings
    }
    /// Which actions have no rule at all and therefore always fall through
    /// to the built-in `strict` sandbox.
    pub fn actions_without_rules(&self) -> Vec<Action> {
        Action::ALL
            .into_iter()
            .filter(|a| !self.inner.rules.iter().any(|r| r.actions & a.bit() != 0))
            .collect()
    }
}
