//! Vitrine's mandatory-access-control policy.
//!
//! A policy is a directory of TOML files (`/etc/vitrine/policy.d/` by
//! default) read in name order. Rules match an action and facts about its
//! subject; the first match decides `deny`, `host` or `sandbox = "<profile>"`.
//! Profiles set the VM's resources and what may flow back to the host. A
//! missing or broken policy fails closed: everything is sandboxed with the
//! built-in `strict` profile. The format is documented in `policy/README.md`.
//!
//! ```no_run
//! use vitrine_policy::{sniff, FileFacts, Origin, PolicySet, Request, Verdict};
//! use std::path::Path;
//!
//! let (policy, _problems) = PolicySet::load_or_fail_closed(Path::new("/etc/vitrine/policy.d"));
//! let bytes = std::fs::read("/home/ann/Downloads/report.pdf").unwrap();
//! let req = Request::open_file(FileFacts {
//!     mime: sniff::sniff(&bytes).to_owned(),
//!     name: Some("report.pdf".into()),
//!     path: Some("/home/ann/Downloads/report.pdf".into()),
//!     origin: Origin { quarantined: true, downloads: true },
//! })
//! .unwrap();
//! let decision = policy.evaluate(&req);
//! if let Verdict::Sandbox(profile) = &decision.verdict {
//!     println!("{} MiB, {} vCPU, by {}", profile.memory_mib, profile.vcpus, decision.matched);
//! }
//! ```

pub mod audit;
pub mod decision;
pub mod diagnostics;
pub mod diff;
mod index;
mod parse;
pub mod pattern;
pub mod policy;
pub mod profile;
pub mod request;
pub mod rule;
pub mod sniff;
pub mod store;
pub mod watch;

pub use audit::{AuditConfig, AuditLog};
pub use decision::{Decision, Explanation, MatchedBy, Verdict};
pub use diagnostics::{Diagnostic, Diagnostics, Severity, SourceFile};
pub use policy::{PolicySet, PolicyVersion, SYSTEM_POLICY_DIR};
pub use profile::{Clipboard, DisplayLimits, Egress, ExportMode, ExportRules, Preload, Profile};
pub use request::{Action, FileFacts, Origin, Request, Uri};
pub use store::PolicyStore;
pub use watch::{PolicyHandle, PolicyWatcher, ReloadEvent};
