//! Sandbox profiles: the resources a VM gets and what may flow back out.
//!
//! Every field has a typed value. A profile that leaves a field out gets the
//! value of the built-in `strict` profile, so forgetting a key can only make
//! a sandbox tighter, never looser.

use crate::pattern::{Endpoint, MimePattern};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("`{0}` is not a duration")]
    Duration(String),
    #[error("`{0}` is not a size")]
    Size(String),
}

/// The name of the built-in profile used by fail-closed and by requests
/// that no rule matches.
pub const STRICT: &str = "strict";

/// Bounds on every numeric field, checked by the parser.
pub mod limits {
    use std::time::Duration;
    pub const MEMORY_MIB: (u32, u32) = (64, 65_536);
    pub const VCPUS: (u32, u32) = (1, 64);
    /// Up to the guest protocol's cap on one task (`MAX_TIME_LIMIT_MS` in
    /// `vitrine_shim::protocol`; the daemon asserts they agree): a longer
    /// limit could not be honoured, and is refused rather than cut.
    pub const TIME_LIMIT: (Duration, Duration) =
        (Duration::from_secs(1), Duration::from_secs(10 * 60));
    pub const DISPLAY_SIDE: (u32, u32) = (64, 8192);
    pub const FPS: (u32, u32) = (1, 240);
    pub const EXPORT_BYTES: (u64, u64) = (1, 16 << 30);
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DisplayLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_fps: u32,
}

/// Network egress from the guest, through the host's tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "allow")]
pub enum Egress {
    None,
    Allow(Vec<Endpoint>),
}

impl Egress {
    /// Whether the guest may connect to `host:port` (host lowercase).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        match self {
            Egress::None => false,
            Egress::Allow(list) => list.iter().any(|e| e.allows(host, port)),
        }
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Egress::None => f.write_str("none"),
            Egress::Allow(list) => {
                let items: Vec<String> = list.iter().map(ToString::to_string).collect();
                write!(f, "{}", items.join(", "))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Clipboard {
    /// No clipboard either way.
    None,
    /// The host may paste into the guest; nothing comes back.
    ToGuest,
    /// Both directions.
    Both,
}

impl Clipboard {
    pub const NAMES: [&'static str; 3] = ["none", "to-guest", "both"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "to-guest" => Some(Self::ToGuest),
            "both" => Some(Self::Both),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ToGuest => "to-guest",
            Self::Both => "both",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportMode {
    /// Nothing leaves the VM.
    Deny,
    /// The user approves each file after a preview.
    Ask,
    /// Files that pass the type and size checks leave without asking.
    Allow,
}

impl ExportMode {
    pub const NAMES: [&'static str; 3] = ["deny", "ask", "allow"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deny" => Some(Self::Deny),
            "ask" => Some(Self::Ask),
            "allow" => Some(Self::Allow),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Ask => "ask",
            Self::Allow => "allow",
        }
    }
}

/// The application a VM's template starts before it is snapshotted, so the
/// clones that serve tasks find it already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preload {
    /// Nothing: the guest's own viewers start per task.
    None,
    /// A headless LibreOffice, which converts office documents.
    Office,
    /// Chromium with a blank tab, which shows links.
    Web,
}

impl Preload {
    pub const NAMES: [&'static str; 3] = ["office", "web", "none"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "office" => Some(Self::Office),
            "web" => Some(Self::Web),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Office => "office",
            Self::Web => "web",
        }
    }
}

/// What may flow from the guest back to the host as files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportRules {
    pub mode: ExportMode,
    /// MIME types (sniffed by the host from the exported bytes) that may leave.
    pub types: Vec<MimePattern>,
    pub max_bytes: u64,
    /// Re-render the file to pixels (an image or image-only PDF) before it
    /// leaves, so no active content survives.
    pub flatten: bool,
    /// OCR language(s) of a safe copy's text layer (`eng`, `eng+deu`), when
    /// the caller does not choose; `None`: no text layer.
    pub ocr: Option<String>,
}

/// Whether `lang` is a tesseract language list: `+`-joined names of
/// ASCII letters, digits and `_` (so it can never name a path).
pub fn is_ocr_language(lang: &str) -> bool {
    lang.len() <= 64
        && lang
            .split('+')
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// The outcome of checking one file the guest offers for export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportCheck {
    Refused(ExportRefusal),
    /// Show it to the user and write it only on approval.
    AskUser {
        flatten: bool,
    },
    Allowed {
        flatten: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportRefusal {
    ExportDenied,
    TypeNotAllowed,
    TooLarge,
}

impl ExportRules {
    /// Check a file the guest offers: `mime` sniffed by the host, `size` in bytes.
    pub fn check(&self, mime: &str, size: u64) -> ExportCheck {
        if self.mode == ExportMode::Deny {
            return ExportCheck::Refused(ExportRefusal::ExportDenied);
        }
        let mime = mime.to_ascii_lowercase();
        if !self.types.iter().any(|t| t.matches(&mime)) {
            return ExportCheck::Refused(ExportRefusal::TypeNotAllowed);
        }
        if size > self.max_bytes {
            return ExportCheck::Refused(ExportRefusal::TooLarge);
        }
        match self.mode {
            ExportMode::Ask => ExportCheck::AskUser {
                flatten: self.flatten,
            },
            _ => ExportCheck::Allowed {
                flatten: self.flatten,
            },
        }
    }
}

/// A fully resolved sandbox profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub name: String,
    pub description: Option<String>,
    pub memory_mib: u32,
    pub vcpus: u32,
    #[serde(serialize_with = "serialize_secs")]
    pub time_limit: Duration,
    pub display: DisplayLimits,
    pub egress: Egress,
    pub clipboard: Clipboard,
    pub export: ExportRules,
    pub preload: Preload,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl Profile {
    /// The strictest profile: used when the policy fails closed, when no rule
    /// matches, and as the default for every field a profile leaves out.
    pub fn strict() -> Profile {
        Profile {
            name: STRICT.to_owned(),
            description: Some("built-in: the strictest profile".to_owned()),
            memory_mib: 256,
            vcpus: 1,
            time_limit: Duration::from_secs(5 * 60),
            display: DisplayLimits {
                max_width: 1280,
                max_height: 800,
                max_fps: 15,
            },
            egress: Egress::None,
            clipboard: Clipboard::None,
            export: ExportRules {
                mode: ExportMode::Deny,
                types: Vec::new(),
                max_bytes: 0,
                flatten: true,
                ocr: None,
            },
            preload: Preload::None,
        }
    }

    /// One `key = value` line per field, in the order of the file format.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let types: Vec<String> = self.export.types.iter().map(ToString::to_string).collect();
        vec![
            ("memory_mib", self.memory_mib.to_string()),
            ("vcpus", self.vcpus.to_string()),
            ("time_limit", format_duration(self.time_limit)),
            ("display.max_width", self.display.max_width.to_string()),
            ("display.max_height", self.display.max_height.to_string()),
            ("display.max_fps", self.display.max_fps.to_string()),
            ("egress", self.egress.to_string()),
            ("clipboard", self.clipboard.as_str().to_owned()),
            ("export.mode", self.export.mode.as_str().to_owned()),
            ("export.types", types.join(", ")),
            ("export.max_size", format_size(self.export.max_bytes)),
            ("export.flatten", self.export.flatten.to_string()),
            (
                "export.ocr",
                self.export.ocr.clone().unwrap_or_else(|| "none".to_owned()),
            ),
            ("preload", self.preload.as_str().to_owned()),
        ]
    }
}

/// `"90s"`, `"15m"`, `"1h30m"`: one or more number-unit pairs, units h, m, s.
pub fn parse_duration(text: &str) -> Result<Duration, ProfileError> {
    let err = || ProfileError::Duration(text.to_owned());
    let s = text.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut last_unit = u64::MAX;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(err()),
        };
        // Units must come largest first, each once: "1h30m", not "30m1h".
        if digits.is_empty() || unit >= last_unit {
            return Err(err());
        }
        last_unit = unit;
        let n: u64 = digits.parse().map_err(|_| err())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(err());
    }
    Ok(Duration::from_secs(total))
}

pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// `"512KiB"`, `"20MiB"`, `"1GiB"`, `"4096B"`.
pub fn parse_size(text: &str) -> Result<u64, ProfileError> {
    let err = || ProfileError::Size(text.to_owned());
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim() {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_largest_unit_first() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        for bad in [
            "",
            "10",
            "10 minutes",
            "30m1h",
            "1h1h",
            "m",
            "-1s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("20MiB").unwrap(), 20 << 20);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        for bad in ["20", "20MB", "MiB", "1.5GiB", "99999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(format_size(20 << 20), "20MiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn export_check_applies_mode_type_and_size() {
        let mut rules = ExportRules {
            mode: ExportMode::Ask,
            types: vec![MimePattern::parse("image/*").unwrap()],
            max_bytes: 100,
            flatten: true,
            ocr: None,
        };
        assert_eq!(
            rules.check("image/png", 10),
            ExportCheck::AskUser { flatten: true }
        );
        assert_eq!(
            rules.check("application/pdf", 10),
            ExportCheck::Refused(ExportRefusal::TypeNotAllowed)
        );
        assert_eq!(
            rules.check("image/png", 101),
            ExportCheck::Refused(ExportRefusal::TooLarge)
        );
        rules.mode = ExportMode::Deny;
        assert_eq!(
            rules.check("image/png", 10),
            ExportCheck::Refused(ExportRefusal::ExportDenied)
        );
    }

    #[test]
    fn strict_profile_denies_everything_that_leaves() {
        let strict = Profile::strict();
        assert_eq!(strict.egress, Egress::None);
        assert_eq!(strict.clipboard, Clipboard::None);
        assert_eq!(strict.export.mode, ExportMode::Deny);
        assert!(!strict.egress.allows("example.org", 443));
    }
}
