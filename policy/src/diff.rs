//! The effective difference between two policies: what would decide
//! differently, not which lines moved.
//!
//! Profiles are compared field by field after defaults are filled in.
//! Rules are compared as an ordered list of behaviours (actions, conditions,
//! decision; not names, files or line numbers), aligned with a longest
//! common subsequence, because under first-match order a rule that moves
//! relative to another is a real change.

use crate::policy::{PolicySet, PolicyVersion};
use crate::rule::Rule;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub key: &'static str,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum ProfileChange {
    Added {
        name: String,
    },
    Removed {
        name: String,
    },
    Changed {
        name: String,
        fields: Vec<FieldChange>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    Removed,
    Added,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleChange {
    pub change: Side,
    /// `file:line rule-label` in the policy it comes from.
    pub at: String,
    pub behaviour: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    pub from: PolicyVersion,
    pub to: PolicyVersion,
    pub profiles: Vec<ProfileChange>,
    pub rules: Vec<RuleChange>,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty() && self.rules.is_empty()
    }
}

/// What changes when `to` replaces `from`.
pub fn diff(from: &PolicySet, to: &PolicySet) -> PolicyDiff {
    PolicyDiff {
        from: from.version(),
        to: to.version(),
        profiles: diff_profiles(from, to),
        rules: diff_rules(from.rules(), to.rules()),
    }
}

fn diff_profiles(from: &PolicySet, to: &PolicySet) -> Vec<ProfileChange> {
    let a: BTreeMap<&str, _> = from
        .profiles()
        .iter()
        .map(|p| (p.name.as_str(), p))
        .collect();
    let b: BTreeMap<&str, _> = to.profiles().iter().map(|p| (p.name.as_str(), p)).collect();
    let mut out = Vec::new();
    for (name, pa) in &a {
        match b.get(name) {
            None => out.push(ProfileChange::Removed {
                name: (*name).to_owned(),
            }),
            Some(pb) => {
                let fields: Vec<FieldChange> = pa
                    .fields()
                    .into_iter()
                    .zip(pb.fields())
                    .filter(|((_, x), (_, y))| x != y)
                    .map(|((key, from), (_, to))| FieldChange { key, from, to })
                    .collect();
                if !fields.is_empty() {
                    out.push(ProfileChange::Changed {
                        name: (*name).to_owned(),
                        fields,
                    });
                }
            }
        }
    }
    for name in b.keys().filter(|n| !a.contains_key(*n)) {
        out.push(ProfileChange::Added {
            name: (*name).to_owned(),
        });
    }
    out
}

fn at(rule: &Rule) -> String {
    format!(
        "{}:{} {}",
        rule.source.file,
        rule.source.line,
        rule.source.label()
    )
}

fn diff_rules(a: &[Rule], b: &[Rule]) -> Vec<RuleChange> {
    let ka: Vec<String> = a.iter().map(Rule::behaviour_key).collect();
    let kb: Vec<String> = b.iter().map(Rule::behaviour_key).collect();
    // LCS table; policies are at most a few thousand rules.
    let (n, m) = (ka.len(), kb.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if ka[i] == kb[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && ka[i] == kb[j] {
            i += 1;
            j += 1;
        } else if j == m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(RuleChange {
                change: Side::Removed,
                at: at(&a[i]),
                behaviour: ka[i].clone(),
            });
            i += 1;
        } else {
            out.push(RuleChange {
                change: Side::Added,
                at: at(&b[j]),
                behaviour: kb[j].clone(),
            });
            j += 1;
        }
    }
    out
}

impl fmt::Display for PolicyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- active {}", self.from.short())?;
        writeln!(f, "+++ staged {}", self.to.short())?;
        if self.is_empty() {
            return writeln!(f, "no effective changes");
        }
        for p in &self.profiles {
            match p {
                ProfileChange::Added { name } => writeln!(f, "+ profile {name}")?,
                ProfileChange::Removed { name } => writeln!(f, "- profile {name}")?,
                ProfileChange::Changed { name, fields } => {
                    writeln!(f, "~ profile {name}")?;
                    for c in fields {
                        writeln!(f, "    {}: {} -> {}", c.key, c.from, c.to)?;
                    }
                }
            }
        }
        for r in &self.rules {
            let sign = match r.change {
                Side::Removed => '-',
                Side::Added => '+',
            };
            writeln!(f, "{sign} {}\n      {}", r.at, r.behaviour)?;
        }
        Ok(())
    }
}
