//! The decision index: first match in time independent of rule count.
//!
//! For each condition kind the index knows, per value, which rules accept
//! it, and which rules do not constrain that kind at all. A request looks
//! up its own values and gets, per kind, the set of rules it satisfies.
//! The intersection of those sets is exactly the set of matching rules, so
//! its lowest member is the first match. The evaluator still confirms that
//! rule with the plain per-rule check, so the index can only ever make a
//! decision faster, never different; a property test compares the two.
//!
//! Value keys:
//! - extension: every dot-suffix of the file name (`a.tar.gz`: `tar.gz`, `gz`);
//! - MIME: the type itself and its `type/` prefix (for `type/*` patterns);
//! - host: the host itself and every `.suffix` at a label boundary (for
//!   `*.suffix` patterns);
//! - origin and scheme: the value itself;
//! - path: see [`PathIndex`].

use crate::pattern::{HostPattern, MimePattern};
use crate::request::{Action, Request};
use crate::rule::{Rule, ORIGIN_NAMES};
use globset::{Candidate, GlobMatcher};
use std::collections::HashMap;

/// Keys for the match-anything patterns: present whenever the request
/// has a value at all. Neither can collide with a real value's key.
const ANY_MIME: &str = "*/*";
const ANY_HOST: &str = "*";

/// A set of rule positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleBits(Vec<u64>);

impl RuleBits {
    pub(crate) fn empty(n: usize) -> Self {
        RuleBits(vec![0; n.div_ceil(64)])
    }

    pub(crate) fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    fn and(&mut self, other: &RuleBits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a &= b;
        }
    }

    /// The lowest member at or after `from`.
    pub(crate) fn first_from(&self, from: usize) -> Option<usize> {
        let mut word = from / 64;
        let mut bits = *self.0.get(word)? & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word += 1;
            bits = *self.0.get(word)?;
        }
    }
}

/// One condition kind: rules that do not constrain it, and rules per value.
#[derive(Debug, Clone)]
struct KeyIndex {
    unconstrained: RuleBits,
    by_key: HashMap<Box<str>, Vec<u32>>,
}

impl KeyIndex {
    fn new(n: usize) -> Self {
        KeyIndex {
            unconstrained: RuleBits::empty(n),
            by_key: HashMap::new(),
        }
    }

    fn add(&mut self, key: &str, pos: usize) {
        let pos = u32::try_from(pos).unwrap_or(u32::MAX);
        self.by_key.entry(key.into()).or_default().push(pos);
    }

    /// No rule constrains this kind: it cannot narrow anything.
    fn is_trivial(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Narrow `cands` to rules satisfied by any of `keys`.
    fn narrow<'k>(&self, cands: &mut RuleBits, keys: impl IntoIterator<Item = &'k str>) {
        if self.is_trivial() {
            return;
        }
        let mut ok = self.unconstrained.clone();
        for key in keys {
            for &pos in self.by_key.get(key).map_or(&[][..], Vec::as_slice) {
                ok.set(pos as usize);
            }
        }
        cands.and(&ok);
    }
}

/// Every path glob of a policy, filed under one literal path component.
///
/// With `literal_separator`, each glob component before the first `**`
/// matches exactly one path component, so `/home/*/Downloads/**` can only
/// match paths whose third component is `Downloads`; it is filed under
/// that component and depth. Globs without such a component (`/**/x`, or
/// with braces or escapes, which may span components) are always tested.
#[derive(Debug, Clone)]
struct PathIndex {
    by_component: HashMap<Box<str>, Vec<(usize, u32)>>,
    always: Vec<u32>,
    /// Glob number -> its matcher and the position of its rule.
    globs: Vec<(GlobMatcher, usize)>,
}

/// The deepest literal component of `glob` before any `**`, with its depth.
fn indexing_component(glob: &str) -> Option<(usize, &str)> {
    if glob.contains(['{', '}', '\\']) {
        return None;
    }
    let mut best = None;
    for (depth, comp) in glob.strip_prefix('/')?.split('/').enumerate() {
        if comp.contains("**") {
            break;
        }
        if !comp.is_empty() && !comp.contains(['*', '?', '[', ']']) {
            best = Some((depth, comp));
        }
    }
    best
}

impl PathIndex {
    fn build(rules: &[Rule]) -> PathIndex {
        let mut index = PathIndex {
            by_component: HashMap::new(),
            always: Vec::new(),
            globs: Vec::new(),
        };
        for (pos, rule) in rules.iter().enumerate() {
            for p in rule.path.iter().flat_map(|g| g.patterns()) {
                // Each glob already compiled when its rule was parsed.
                let Ok(glob) = crate::pattern::check_path_glob(p) else {
                    continue;
                };
                let n = u32::try_from(index.globs.len()).unwrap_or(u32::MAX);
                index.globs.push((glob.compile_matcher(), pos));
                match indexing_component(p) {
                    Some((depth, comp)) => index
                        .by_component
                        .entry(comp.into())
                        .or_default()
                        .push((depth, n)),
                    None => index.always.push(n),
                }
            }
        }
        index
    }

    /// Add to `ok` every rule with a glob that matches `path`.
    fn hits(&self, path: &str, candidate: &Candidate<'_>, ok: &mut RuleBits) {
        let mut test = |n: u32| {
            if let Some((m, pos)) = self.globs.get(n as usize) {
                if !ok.contains(*pos) && m.is_match_candidate(candidate) {
                    ok.set(*pos);
                }
            }
        };
        for &n in &self.always {
            test(n);
        }
        let components = path.strip_prefix('/').unwrap_or(path).split('/');
        for (depth, comp) in components.enumerate() {
            for &(d, n) in self.by_component.get(comp).map_or(&[][..], Vec::as_slice) {
                if d == depth {
                    test(n);
                }
            }
        }
    }
}

/// The compiled index over one policy's rules.
#[derive(Debug, Clone)]
pub(crate) struct DecisionIndex {
    actions: [RuleBits; 3],
    extension: KeyIndex,
    mime: KeyIndex,
    origin: KeyIndex,
    scheme: KeyIndex,
    host: KeyIndex,
    path_unconstrained: RuleBits,
    paths: Option<PathIndex>,
}

fn action_slot(a: Action) -> usize {
    match a {
        Action::OpenFile => 0,
        Action::OpenUri => 1,
        Action::RunProgram => 2,
    }
}

impl DecisionIndex {
    pub(crate) fn build(rules: &[Rule]) -> DecisionIndex {
        let n = rules.len();
        let mut ix = DecisionIndex {
            actions: [RuleBits::empty(n), RuleBits::empty(n), RuleBits::empty(n)],
            extension: KeyIndex::new(n),
            mime: KeyIndex::new(n),
            origin: KeyIndex::new(n),
            scheme: KeyIndex::new(n),
            host: KeyIndex::new(n),
            path_unconstrained: RuleBits::empty(n),
            paths: None,
        };
        for (pos, r) in rules.iter().enumerate() {
            for a in r.actions() {
                ix.actions[action_slot(a)].set(pos);
            }
            match &r.extension {
                None => ix.extension.unconstrained.set(pos),
                Some(exts) => exts.iter().for_each(|e| ix.extension.add(e, pos)),
            }
            match &r.mime {
                None => ix.mime.unconstrained.set(pos),
                Some(m) => {
                    for p in m {
                        match p {
                            MimePattern::Exact(k) | MimePattern::Type(k) => ix.mime.add(k, pos),
                            MimePattern::Any => ix.mime.add(ANY_MIME, pos),
                        }
                    }
                }
            }
            match r.origin {
                None => ix.origin.unconstrained.set(pos),
                Some(bits) => ORIGIN_NAMES
                    .iter()
                    .filter(|(_, b)| bits & b != 0)
                    .for_each(|(name, _)| ix.origin.add(name, pos)),
            }
            match &r.scheme {
                None => ix.scheme.unconstrained.set(pos),
                Some(s) => s.iter().for_each(|k| ix.scheme.add(k, pos)),
            }
            match &r.host {
                None => ix.host.unconstrained.set(pos),
                Some(h) => {
                    for p in h {
                        match p {
                            HostPattern::Exact(k) | HostPattern::Suffix(k) => ix.host.add(k, pos),
                            HostPattern::Any => ix.host.add(ANY_HOST, pos),
                        }
                    }
                }
            }
            if r.path.is_none() {
                ix.path_unconstrained.set(pos);
            }
        }
        if rules.iter().any(|r| r.path.is_some()) {
            ix.paths = Some(PathIndex::build(rules));
        }
        ix
    }

    /// The rules that match `req`, as far as the index can tell (which is
    /// exactly, by construction; the caller confirms anyway).
    pub(crate) fn candidates(&self, req: &Request, path: Option<&Candidate<'_>>) -> RuleBits {
        let mut cands = self.actions[action_slot(req.action)].clone();

        let name = req.name.as_deref().unwrap_or("");
        let exts = name
            .match_indices('.')
            .filter(|(i, _)| *i > 0)
            .map(|(i, _)| &name[i + 1..])
            .filter(|e| !e.is_empty());
        self.extension.narrow(&mut cands, exts);

        let mime = req.mime.as_deref();
        let mime_type = mime.and_then(|m| m.find('/').map(|i| &m[..=i]));
        let any_mime = mime.map(|_| ANY_MIME);
        self.mime.narrow(
            &mut cands,
            mime.into_iter().chain(mime_type).chain(any_mime),
        );

        let origin_bits = if req.action.takes_file() {
            req.origin.bits()
        } else {
            0
        };
        let origins = ORIGIN_NAMES
            .iter()
            .filter(|(_, b)| origin_bits & b != 0)
            .map(|(n, _)| *n);
        self.origin.narrow(&mut cands, origins);

        let uri = req.uri.as_ref();
        self.scheme
            .narrow(&mut cands, uri.map(|u| u.scheme.as_str()));
        let host = uri.and_then(|u| u.host.as_deref()).unwrap_or("");
        // `*` matches any host, but a URI without one (`mailto:`) has none.
        let host_keys = [host, ANY_HOST]
            .into_iter()
            .filter(|_| !host.is_empty())
            .chain(
                host.match_indices('.')
                    .filter(|(i, _)| *i > 0)
                    .map(|(i, _)| &host[i..]),
            );
        self.host.narrow(&mut cands, host_keys);

        if let Some(paths) = &self.paths {
            let mut ok = self.path_unconstrained.clone();
            if let (Some(c), Some(p)) = (path, req.path.as_deref()) {
                paths.hits(p, c, &mut ok);
            }
            cands.and(&ok);
        }
        cands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_bits_find_the_lowest_member_from_a_position() {
        let mut b = RuleBits::empty(200);
        for i in [3, 64, 130] {
            b.set(i);
        }
        assert_eq!(b.first_from(0), Some(3));
        assert_eq!(b.first_from(4), Some(64));
        assert_eq!(b.first_from(65), Some(130));
        assert_eq!(b.first_from(131), None);
        assert_eq!(b.first_from(10_000), None);
    }

    use crate::diagnostics::{Diagnostics, SourceFile};
    use crate::request::{FileFacts, Origin};
    use crate::rule::PathMatcher;
    use proptest::prelude::*;
    use proptest::sample::subsequence;

    const EXTS: &[&str] = &["pdf", "gz", "tar.gz", "txt"];
    const MIMES: &[&str] = &["application/pdf", "image/*", "*/*", "text/plain", "text/*"];
    const ORIGINS: &[&str] = &["quarantined", "downloads", "local"];
    const SCHEMES: &[&str] = &["https", "http", "file"];
    const HOSTS: &[&str] = &["a.org", "*.a.org", "*", "b.a.org", "*.b.a.org"];
    const PATHS: &[&str] = &[
        "/home/*/Downloads/**",
        "/srv/**",
        "/**/x.txt",
        "/a/{b,c}/*.txt",
        "/srv/x/*.pdf",
        "/srv/x/**",
    ];

    fn list(items: &[&str]) -> String {
        let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// A rule for files or for links, each condition present or not.
    fn rule_text() -> impl Strategy<Value = String> {
        let cond = |key: &'static str, pool: &'static [&'static str]| {
            proptest::option::of(subsequence(pool, 1..=pool.len().min(3)))
                .prop_map(move |v| v.map_or(String::new(), |v| format!("{key} = {}\n", list(&v))))
        };
        let file = (
            subsequence(&["open-file", "run-program"][..], 1..=2),
            cond("extension", EXTS),
            cond("mime", MIMES),
            cond("origin", ORIGINS),
            cond("path", PATHS),
        )
            .prop_map(|(a, e, m, o, p)| format!("action = {}\n{e}{m}{o}{p}", list(&a)));
        let uri = (cond("scheme", SCHEMES), cond("host", HOSTS))
            .prop_map(|(s, h)| format!("action = \"open-uri\"\n{s}{h}"));
        prop_oneof![file, uri].prop_map(|body| format!("[[rule]]\n{body}decision = \"deny\"\n"))
    }

    fn request() -> impl Strategy<Value = Request> {
        let file = (
            prop::sample::select(vec!["x.pdf", "a.tar.gz", "b.gz", "noext", "x.txt", ".pdf"]),
            prop::sample::select(vec![
                "application/pdf",
                "image/png",
                "text/plain",
                "application/octet-stream",
            ]),
            proptest::option::of(prop::sample::select(vec![
                "/home/u/Downloads/x.pdf",
                "/srv/a/b",
                "/x.txt",
                "/a/b/q.txt",
                "/srv/x/y.pdf",
                "/q/x.txt",
                "/srv",
            ])),
            any::<(bool, bool, bool)>(),
        )
            .prop_map(|(name, mime, path, (q, d, program))| {
                let facts = FileFacts {
                    mime: mime.into(),
                    name: Some(name.into()),
                    path: path.map(Into::into),
                    origin: Origin {
                        quarantined: q,
                        downloads: d,
                    },
                };
                if program {
                    Request::run_program(facts)
                } else {
                    Request::open_file(facts)
                }
                .unwrap()
            });
        let uri = prop::sample::select(vec![
            "https://a.org/",
            "https://b.a.org/",
            "https://c.b.a.org",
            "http://z.net",
            "file:///x",
            "mailto:x@y",
            "https://1.2.3.4/",
        ])
        .prop_map(|u| Request::open_uri(u).unwrap());
        prop_oneof![file, uri]
    }

    fn rules_from(texts: &[String]) -> Vec<Rule> {
        let mut diags = Diagnostics::default();
        let file = SourceFile::new("p.toml", texts.concat());
        let parsed = crate::parse::parse_file(&file, &mut diags);
        assert!(!diags.has_errors(), "{diags}");
        parsed
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let mut r = d.rule;
                let mut src = (*r.source).clone();
                src.index = i + 1;
                r.source = std::sync::Arc::new(src);
                r
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
            ..ProptestConfig::default()
        })]

        /// The index's candidate set is exactly the set of rules whose
        /// plain check passes: no rule lost, none invented.
        #[test]
        fn index_candidates_equal_the_rules_that_match(
            texts in proptest::collection::vec(rule_text(), 1..40),
            reqs in proptest::collection::vec(request(), 1..8),
        ) {
            let rules = rules_from(&texts);
            let index = DecisionIndex::build(&rules);
            for req in &reqs {
                let mut paths = PathMatcher::new(req);
                let cands = index.candidates(req, paths.candidate());
                for (pos, rule) in rules.iter().enumerate() {
                    let matches = rule.check(req, &mut paths).is_ok();
                    prop_assert_eq!(cands.contains(pos), matches, "rule {} ({}) for {:?}", pos, rule.behaviour_key(), req);
                }
            }
        }
    }

    #[test]
    fn globs_are_filed_under_their_deepest_literal_component() {
        assert_eq!(
            indexing_component("/home/*/Downloads/**"),
            Some((2, "Downloads"))
        );
        assert_eq!(indexing_component("/srv/x/*.txt"), Some((1, "x")));
        assert_eq!(indexing_component("/**/secret"), None);
        assert_eq!(indexing_component("/a/{b,c}/**"), None);
        assert_eq!(indexing_component("/*/**"), None);
    }
}
