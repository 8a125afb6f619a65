//! Parse one policy file into profiles and rules, with a diagnostic for every
//! problem at its exact line and column.
//!
//! The TOML is read with `toml_edit`, which keeps the span of every key and
//! value, and walked by hand against the schema below, so unknown keys, wrong
//! types and bad values all point at the spot and can suggest a fix. The
//! parser reports every problem it finds rather than stopping at the first.

use crate::diagnostics::{did_you_mean, Diagnostic, Diagnostics, Severity, SourceFile};
use crate::pattern::{self, Endpoint, HostPattern, MimePattern, PathGlobs, PatternError};
use crate::profile::{self, limits, Clipboard, Egress, ExportMode, Preload, Profile};
use crate::request::Action;
use crate::rule::{Rule, RuleDecision, RuleSource, ORIGIN_NAMES};
use std::ops::Range;
use std::sync::Arc;
use toml_edit::{Item, TableLike, Value};

pub const TOP_KEYS: &[&str] = &["profile", "rule"];
pub const PROFILE_KEYS: &[&str] = &[
    "description",
    "memory_mib",
    "vcpus",
    "time_limit",
    "display",
    "egress",
    "clipboard",
    "export",
    "preload",
];
pub const DISPLAY_KEYS: &[&str] = &["max_width", "max_height", "max_fps"];
pub const EXPORT_KEYS: &[&str] = &["mode", "types", "max_size", "flatten", "ocr"];
pub const RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "action",
    "mime",
    "extension",
    "path",
    "origin",
    "scheme",
    "host",
    "decision",
    "sandbox",
];
const FILE_ONLY_KEYS: &[&str] = &["mime", "extension", "path", "origin"];
const URI_ONLY_KEYS: &[&str] = &["scheme", "host"];

/// A profile as declared, with where its name was written.
#[derive(Debug)]
pub(crate) struct ProfileDecl {
    pub profile: Profile,
    pub name_span: Range<usize>,
}

/// A rule as declared, with the spans that cross-file checks point at.
#[derive(Debug)]
pub(crate) struct RuleDecl {
    pub rule: Rule,
    pub header_span: Range<usize>,
    pub decision_span: Range<usize>,
    pub name_span: Option<Range<usize>>,
}

#[derive(Debug, Default)]
pub(crate) struct ParsedFile {
    pub profiles: Vec<ProfileDecl>,
    pub rules: Vec<RuleDecl>,
    /// Profiles declared with errors: references to them are not reported
    /// again as missing.
    pub broken_profiles: Vec<String>,
}

/// Parse `file`. Problems go to `diags`; what parsed cleanly is returned.
pub(crate) fn parse_file(file: &SourceFile, diags: &mut Diagnostics) -> ParsedFile {
    let mut parser = Parser {
        file,
        diags,
        out: ParsedFile::default(),
    };
    parser.document();
    parser.out
}

struct Parser<'a> {
    file: &'a SourceFile,
    diags: &'a mut Diagnostics,
    out: ParsedFile,
}

/// A table-like TOML value with the span to blame when a key is missing.
struct TableRef<'i> {
    table: &'i dyn TableLike,
    span: Range<usize>,
    /// `profile \`web\`` or `rule #2`, for messages.
    what: String,
}

fn syntax_hint(message: &str, offending: &str) -> Option<String> {
    let m = message.to_ascii_lowercase();
    let word = offending.trim();
    Some(if m.contains("duplicate") {
        "each key and each [table] may appear once per file; merge the two".into()
    } else if m.contains("must be quoted") && !word.is_empty() {
        format!("put the value in double quotes: \"{word}\"")
    } else if m.contains("basic string") || m.contains("literal string") {
        "close the string on the same line with the quote that opened it; use \"\"\"...\"\"\" for text that spans lines".into()
    } else if m.contains("expected `=`") {
        "write key = value".into()
    } else if m.contains("expected `]`") || m.contains("table header") {
        "a table header is [name] or [[rule]] on a line of its own".into()
    } else {
        "see the policy format reference in policy/README.md".into()
    })
}

impl<'a> Parser<'a> {
    fn error(&mut self, span: Range<usize>, message: String, hint: Option<String>) {
        self.diags
            .push(Diagnostic::at(Severity::Error, self.file, span, message).with_hint(hint));
    }

    fn document(&mut self) {
        let doc = match toml_edit::Document::parse(&*self.file.text) {
            Ok(doc) => doc,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let message = e.message().trim().replace('\n', "; ");
                let offending = self.file.text.get(span.clone()).unwrap_or("");
                let hint = syntax_hint(&message, offending);
                self.error(span, format!("TOML syntax: {message}"), hint);
                return;
            }
        };
        let root = doc.as_table();
        for (key, item) in root.iter() {
            let key_span = key_span(root, key, 0..0);
            match key {
                "profile" => self.profiles(item, key_span),
                "rule" => self.rules(item, key_span),
                other => {
                    let hint = match other {
                        "rules" => Some("rules are written as [[rule]] tables".to_owned()),
                        "profiles" => Some("profiles are written as [profile.NAME] tables".to_owned()),
                        _ if RULE_KEYS.contains(&other) => Some(format!(
                            "`{other}` belongs inside a [[rule]] table; add the [[rule]] header above it"
                        )),
                        _ if PROFILE_KEYS.contains(&other) => Some(format!(
                            "`{other}` belongs inside a [profile.NAME] table"
                        )),
                        _ => did_you_mean(other, TOP_KEYS.iter().copied()),
                    };
                    self.error(
                        key_span,
                        format!("unknown top-level key `{other}`; a policy file holds [profile.NAME] and [[rule]] tables"),
                        hint,
                    );
                }
            }
        }
    }

    // ---- values ----------------------------------------------------------

    fn wrong_type(&mut self, item: &Item, key: &str, expected: &str, hint: Option<String>) {
        let span = item.span().unwrap_or(0..0);
        let found = item.type_name();
        self.error(
            span,
            format!("`{key}` must be {expected}, found {found}"),
            hint,
        );
    }

    fn string<'i>(&mut self, item: &'i Item, key: &str) -> Option<(&'i str, Range<usize>)> {
        match item {
            Item::Value(Value::String(s)) => {
                Some((s.value().as_str(), item.span().unwrap_or(0..0)))
            }
            _ => {
                self.wrong_type(
                    item,
                    key,
                    "a string",
                    Some(format!("write {key} = \"...\"")),
                );
                None
            }
        }
    }

    fn integer(&mut self, item: &Item, key: &str, (lo, hi): (u32, u32)) -> Option<u32> {
        let span = item.span().unwrap_or(0..0);
        match item {
            Item::Value(Value::Integer(i)) => {
                let v = *i.value();
                match u32::try_from(v).ok().filter(|v| (lo..=hi).contains(v)) {
                    Some(v) => Some(v),
                    None => {
                        self.error(
                            span,
                            format!("`{key}` is {v}, which is not between {lo} and {hi}"),
                            None,
                        );
                        None
                    }
                }
            }
            Item::Value(Value::String(s)) if s.value().trim().parse::<i64>().is_ok() => {
                self.wrong_type(
                    item,
                    key,
                    "an integer",
                    Some(format!("remove the quotes: {key} = {}", s.value().trim())),
                );
                None
            }
            Item::Value(Value::Float(f)) => {
                let hint = Some(format!(
                    "write a whole number such as {key} = {}",
                    f.value().round().max(0.0)
                ));
                self.wrong_type(item, key, "an integer", hint);
                None
            }
            _ => {
                self.wrong_type(item, key, "an integer", None);
                None
            }
        }
    }

    fn boolean(&mut self, item: &Item, key: &str) -> Option<bool> {
        match item {
            Item::Value(Value::Boolean(b)) => Some(*b.value()),
            _ => {
                self.wrong_type(
                    item,
                    key,
                    "true or false",
                    Some(format!(
                        "write {key} = true or {key} = false, without quotes"
                    )),
                );
                None
            }
        }
    }

    /// A string or an array of strings (never empty).
    fn string_list<'i>(
        &mut self,
        item: &'i Item,
        key: &str,
    ) -> Option<Vec<(&'i str, Range<usize>)>> {
        let span = item.span().unwrap_or(0..0);
        match item {
            Item::Value(Value::String(s)) => Some(vec![(s.value().as_str(), span)]),
            Item::Value(Value::Array(arr)) => {
                if arr.is_empty() {
                    self.error(
                        span,
                        format!("`{key}` is an empty list, which matches nothing"),
                        Some(format!(
                            "list at least one value, or remove `{key}` to match anything"
                        )),
                    );
                    return None;
                }
                let mut out = Vec::with_capacity(arr.len());
                let mut ok = true;
                for v in arr.iter() {
                    let vspan = v.span().unwrap_or_else(|| span.clone());
                    match v {
                        Value::String(s) => out.push((s.value().as_str(), vspan)),
                        other => {
                            self.error(
                                vspan,
                                format!("`{key}` must list strings, found {}", other.type_name()),
                                Some(format!("write {key} = [\"a\", \"b\"]")),
                            );
                            ok = false;
                        }
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.wrong_type(
                    item,
                    key,
                    "a string or a list of strings",
                    Some(format!("write {key} = \"a\" or {key} = [\"a\", \"b\"]")),
                );
                None
            }
        }
    }

    fn table<'i>(&mut self, item: &'i Item, key: &str, what: String) -> Option<TableRef<'i>> {
        match item.as_table_like() {
            Some(table) => Some(TableRef {
                table,
                span: item.span().unwrap_or(0..0),
                what,
            }),
            None => {
                self.wrong_type(
                    item,
                    key,
                    "a table",
                    Some(format!(
                        "write [{key}] on its own line, or {key} = {{ ... }}"
                    )),
                );
                None
            }
        }
    }

    fn unknown_key(&mut self, t: &TableRef<'_>, key: &str, known: &[&str]) {
        let span = key_span(t.table, key, t.span.clone());
        let hint = did_you_mean(key, known.iter().copied())
            .or_else(|| Some(format!("the keys of {} are: {}", t.what, known.join(", "))));
        self.error(span, format!("unknown key `{key}` in {}", t.what), hint);
    }

    fn pattern_error(&mut self, span: Range<usize>, key: &str, e: &PatternError) {
        self.error(span, format!("in `{key}`: {e}"), e.hint());
    }

    // ---- profiles --------------------------------------------------------

    fn profiles(&mut self, item: &Item, key_span: Range<usize>) {
        let Some(all) = item.as_table_like() else {
            self.error(
                item.span().unwrap_or(key_span),
                format!(
                    "`profile` must be a table of profiles, found {}",
                    item.type_name()
                ),
                Some("write each profile as a [profile.NAME] table".into()),
            );
            return;
        };
        for (name, body) in all.iter() {
            let name_span = key_span_or(all, name, item.span().unwrap_or(key_span.clone()));
            if !valid_profile_name(name) {
                self.error(
                    name_span.clone(),
                    format!("`{name}` is not a valid profile name"),
                    Some("profile names use lowercase letters, digits, `-` and `_`, and start with a letter".into()),
                );
                continue;
            }
            if name == profile::STRICT {
                self.error(
                    name_span.clone(),
                    "`strict` is the built-in strictest profile and cannot be redefined".into(),
                    Some(
                        "give your profile another name; rules may still use sandbox = \"strict\""
                            .into(),
                    ),
                );
                continue;
            }
            let Some(t) = self.table(
                body,
                &format!("profile.{name}"),
                format!("profile `{name}`"),
            ) else {
                continue;
            };
            let t = TableRef {
                span: body.span().unwrap_or_else(|| name_span.clone()),
                ..t
            };
            match self.profile(name, &t) {
                Some(profile) => self.out.profiles.push(ProfileDecl { profile, name_span }),
                None => self.out.broken_profiles.push(name.to_owned()),
            }
        }
    }

    fn profile(&mut self, name: &str, t: &TableRef<'_>) -> Option<Profile> {
        let errors_before = self.diags.error_count();
        let mut p = Profile::strict();
        p.name = name.to_owned();
        p.description = None;
        let mut export_span = None;
        for (key, item) in t.table.iter() {
            match key {
                "description" => {
                    if let Some((s, _)) = self.string(item, key) {
                        p.description = Some(s.to_owned());
                    }
                }
                "memory_mib" => {
                    if let Some(v) = self.integer(item, key, limits::MEMORY_MIB) {
                        p.memory_mib = v;
                    }
                }
                "vcpus" => {
                    if let Some(v) = self.integer(item, key, limits::VCPUS) {
                        p.vcpus = v;
                    }
                }
                "time_limit" => {
                    if let Some(d) = self.duration(item, key) {
                        p.time_limit = d;
                    }
                }
                "display" => {
                    if let Some(d) = self.table(item, key, format!("profile `{name}` display")) {
                        self.display(&d, &mut p.display);
                    }
                }
                "egress" => {
                    if let Some(e) = self.egress(item) {
                        p.egress = e;
                    }
                }
                "clipboard" => {
                    if let Some((s, span)) = self.string(item, key) {
                        match Clipboard::parse(s) {
                            Some(c) => p.clipboard = c,
                            None => self.bad_choice(span, key, s, &Clipboard::NAMES),
                        }
                    }
                }
                "export" => {
                    if let Some(e) = self.table(item, key, format!("profile `{name}` export")) {
                        export_span = Some(e.span.clone());
                        self.export(&e, &mut p.export);
                    }
                }
                "preload" => {
                    if let Some(v) = self.preload(item) {
                        p.preload = v;
                    }
                }
                other => self.unknown_key(t, other, PROFILE_KEYS),
            }
        }
        if p.export.mode != ExportMode::Deny {
            let span = export_span.unwrap_or_else(|| t.span.clone());
            let export = t.table.get("export").and_then(Item::as_table_like);
            for (key, example) in [("types", "[\"image/png\"]"), ("max_size", "\"20MiB\"")] {
                if export.is_some_and(|e| !e.contains_key(key)) {
                    self.error(
                        span.clone(),
                        format!(
                            "profile `{name}` exports with mode `{}` but sets no `{key}`",
                            p.export.mode.as_str()
                        ),
                        Some(format!("add {key} = {example} to the export table; nothing leaves without an explicit limit")),
                    );
                }
            }
        }
        (self.diags.error_count() == errors_before).then_some(p)
    }

    fn preload(&mut self, item: &Item) -> Option<Preload> {
        let hint = || Some("write preload = \"office\" or preload = \"none\"".to_owned());
        let Item::Value(Value::String(s)) = item else {
            self.wrong_type(item, "preload", "a string", hint());
            return None;
        };
        let value = s.value();
        let parsed = Preload::parse(value);
        if parsed.is_none() {
            self.error(
                item.span().unwrap_or(0..0),
                format!("`preload` cannot be \"{value}\"; it is \"office\" or \"none\""),
                hint(),
            );
        }
        parsed
    }

    fn duration(&mut self, item: &Item, key: &str) -> Option<std::time::Duration> {
        let hint = || Some("write a duration such as \"90s\", \"5m\" or \"9m30s\"".to_owned());
        if let Item::Value(Value::Integer(_)) = item {
            self.wrong_type(item, key, "a duration string", hint());
            return None;
        }
        let (s, span) = self.string(item, key)?;
        match profile::parse_duration(s) {
            Ok(d) if (limits::TIME_LIMIT.0..=limits::TIME_LIMIT.1).contains(&d) => Some(d),
            Ok(d) if d > limits::TIME_LIMIT.1 => {
                let max = profile::format_duration(limits::TIME_LIMIT.1);
                self.error(
                    span,
                    format!("`{key}` is \"{s}\", longer than the {max} a task may run"),
                    Some(format!(
                        "write {key} = \"{max}\" or less: a task is stopped after {max} \
                         whatever the profile says"
                    )),
                );
                None
            }
            Ok(_) => {
                let (min, max) = limits::TIME_LIMIT;
                self.error(
                    span,
                    format!(
                        "`{key}` must be between {} and {}, found \"{s}\"",
                        profile::format_duration(min),
                        profile::format_duration(max)
                    ),
                    None,
                );
                None
            }
            Err(e) => {
                self.error(span, format!("in `{key}`: {e}"), hint());
                None
            }
        }
    }

    fn display(&mut self, t: &TableRef<'_>, d: &mut profile::DisplayLimits) {
        for (key, item) in t.table.iter() {
            let range = match key {
                "max_width" | "max_height" => limits::DISPLAY_SIDE,
                "max_fps" => limits::FPS,
                other => {
                    self.unknown_key(t, other, DISPLAY_KEYS);
                    continue;
                }
            };
            let Some(v) = self.integer(item, &format!("display.{key}"), range) else {
                continue;
            };
            match key {
                "max_width" => d.max_width = v,
                "max_height" => d.max_height = v,
                _ => d.max_fps = v,
            }
        }
    }

    fn egress(&mut self, item: &Item) -> Option<Egress> {
        if let Item::Value(Value::String(s)) = item {
            if s.value() == "none" {
                return Some(Egress::None);
            }
            let span = item.span().unwrap_or(0..0);
            self.error(
                span,
                format!(
                    "`egress` must be \"none\" or a list of host:port, found \"{}\"",
                    s.value()
                ),
                Some(format!("write egress = [\"{}\"]", s.value())),
            );
            return None;
        }
        if let Item::Value(Value::Array(a)) = item {
            if a.is_empty() {
                return Some(Egress::None);
            }
        }
        let list = self.string_list(item, "egress")?;
        let mut out = Vec::with_capacity(list.len());
        for (s, span) in list {
            match Endpoint::parse(s) {
                Ok(e) => out.push(e),
                Err(e) => self.pattern_error(span, "egress", &e),
            }
        }
        Some(Egress::Allow(out))
    }

    fn export(&mut self, t: &TableRef<'_>, e: &mut profile::ExportRules) {
        for (key, item) in t.table.iter() {
            match key {
                "mode" => {
                    if let Some((s, span)) = self.string(item, "export.mode") {
                        match ExportMode::parse(s) {
                            Some(m) => e.mode = m,
                            None => self.bad_choice(span, "export.mode", s, &ExportMode::NAMES),
                        }
                    }
                }
                "types" => {
                    if let Some(list) = self.string_list(item, "export.types") {
                        e.types = list
                            .into_iter()
                            .filter_map(|(s, span)| match MimePattern::parse(s) {
                                Ok(m) => Some(m),
                                Err(err) => {
                                    self.pattern_error(span, "export.types", &err);
                                    None
                                }
                            })
                            .collect();
                    }
                }
                "max_size" => {
                    let hint = || {
                        Some("write a size such as \"512KiB\", \"20MiB\" or \"1GiB\"".to_owned())
                    };
                    if let Item::Value(Value::Integer(_)) = item {
                        self.wrong_type(item, "export.max_size", "a size string", hint());
                        continue;
                    }
                    if let Some((s, span)) = self.string(item, "export.max_size") {
                        match profile::parse_size(s) {
                            Ok(n)
                                if (limits::EXPORT_BYTES.0..=limits::EXPORT_BYTES.1)
                                    .contains(&n) =>
                            {
                                e.max_bytes = n;
                            }
                            Ok(_) => self.error(
                                span,
                                format!(
                                    "`export.max_size` must be between 1B and 16GiB, found \"{s}\""
                                ),
                                None,
                            ),
                            Err(err) => {
                                self.error(span, format!("in `export.max_size`: {err}"), hint())
                            }
                        }
                    }
                }
                "flatten" => {
                    if let Some(b) = self.boolean(item, "export.flatten") {
                        e.flatten = b;
                    }
                }
                "ocr" => {
                    if let Item::Value(Value::Boolean(b)) = item {
                        if *b.value() {
                            let span = item.span().unwrap_or(0..0);
                            self.error(
                                span,
                                "`export.ocr` names a language, not true".to_owned(),
                                Some("write export.ocr = \"eng\" (or \"eng+deu\"), or false for no text layer".to_owned()),
                            );
                        } else {
                            e.ocr = None;
                        }
                    } else if let Some((lang, span)) = self.string(item, "export.ocr") {
                        if crate::profile::is_ocr_language(lang) {
                            e.ocr = Some(lang.to_owned());
                        } else {
                            self.error(
                                span,
                                format!("`export.ocr` cannot be \"{lang}\"; it is a tesseract language list"),
                                Some("write a language such as \"eng\", or several joined by +, such as \"eng+deu\"".to_owned()),
                            );
                        }
                    }
                }
                other => self.unknown_key(t, other, EXPORT_KEYS),
            }
        }
    }

    fn bad_choice(&mut self, span: Range<usize>, key: &str, value: &str, choices: &[&str]) {
        let hint = did_you_mean(value, choices.iter().copied())
            .or_else(|| Some(format!("choose one of: {}", choices.join(", "))));
        self.error(
            span,
            format!(
                "`{key}` cannot be \"{value}\"; it is one of {}",
                choices.join(", ")
            ),
            hint,
        );
    }

    // ---- rules -----------------------------------------------------------

    fn rules(&mut self, item: &Item, key_span: Range<usize>) {
        let tables: Vec<(&dyn TableLike, Range<usize>)> = match item {
            Item::ArrayOfTables(aot) => aot
                .iter()
                .map(|t| {
                    (
                        t as &dyn TableLike,
                        t.span().unwrap_or_else(|| key_span.clone()),
                    )
                })
                .collect(),
            Item::Value(Value::Array(arr)) => {
                let mut v = Vec::new();
                for el in arr.iter() {
                    match el {
                        Value::InlineTable(t) => {
                            v.push((
                                t as &dyn TableLike,
                                t.span().unwrap_or_else(|| key_span.clone()),
                            ));
                        }
                        other => self.error(
                            other.span().unwrap_or_else(|| key_span.clone()),
                            format!("each rule must be a table, found {}", other.type_name()),
                            Some("write rules as [[rule]] tables".into()),
                        ),
                    }
                }
                v
            }
            other => {
                self.error(
                    other.span().unwrap_or(key_span),
                    format!(
                        "`rule` must be an array of tables, found {}",
                        other.type_name()
                    ),
                    Some("write each rule under a [[rule]] header (two brackets)".into()),
                );
                return;
            }
        };
        for (table, span) in tables {
            let ordinal = self.out.rules.len() + 1;
            let what = match table.get("name") {
                Some(Item::Value(Value::String(s))) => format!("rule `{}`", s.value()),
                _ => format!("rule #{ordinal} of this file"),
            };
            let t = TableRef { table, span, what };
            if let Some(decl) = self.rule(&t) {
                self.out.rules.push(decl);
            }
        }
    }

    fn rule(&mut self, t: &TableRef<'_>) -> Option<RuleDecl> {
        let errors_before = self.diags.error_count();
        let mut name = None;
        let mut name_span = None;
        let mut actions: Option<u8> = None;
        let mut mime = None;
        let mut extension = None;
        let mut path = None;
        let mut origin = None;
        let mut scheme = None;
        let mut host = None;
        let mut decision: Option<(RuleDecision, Range<usize>)> = None;
        let mut decision_key: Option<&str> = None;

        for (key, item) in t.table.iter() {
            match key {
                "name" => {
                    if let Some((s, span)) = self.string(item, key) {
                        if s.trim().is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
                            self.error(
                                span,
                                "a rule name must be 1 to 128 printable characters".into(),
                                None,
                            );
                        } else {
                            name = Some(s.to_owned());
                            name_span = Some(span);
                        }
                    }
                }
                "description" => {
                    self.string(item, key);
                }
                "action" => {
                    if let Some(list) = self.string_list(item, key) {
                        let mut bits = 0u8;
                        for (s, span) in list {
                            match s.parse::<Action>() {
                                Ok(a) => bits |= a.bit(),
                                Err(_) => self.bad_choice(
                                    span,
                                    "action",
                                    s,
                                    &Action::ALL.map(Action::as_str),
                                ),
                            }
                        }
                        actions = Some(bits);
                    }
                }
                "mime" => {
                    mime = self.patterns(item, key, MimePattern::parse);
                }
                "extension" => {
                    extension = self.patterns(item, key, pattern::parse_extension);
                }
                "path" => {
                    if let Some(list) = self.string_list(item, key) {
                        let mut ok = true;
                        for (s, span) in &list {
                            if let Err(e) = pattern::check_path_glob(s) {
                                self.pattern_error(span.clone(), key, &e);
                                ok = false;
                            }
                        }
                        if ok {
                            let pats = list.iter().map(|(s, _)| (*s).to_owned()).collect();
                            match PathGlobs::new(pats) {
                                Ok(g) => path = Some(g),
                                Err(e) => self.pattern_error(item.span().unwrap_or(0..0), key, &e),
                            }
                        }
                    }
                }
                "origin" => {
                    if let Some(list) = self.string_list(item, key) {
                        let mut bits = 0u8;
                        for (s, span) in list {
                            match ORIGIN_NAMES.iter().find(|(n, _)| *n == s) {
                                Some((_, b)) => bits |= b,
                                None => {
                                    self.bad_choice(span, key, s, &ORIGIN_NAMES.map(|(n, _)| n))
                                }
                            }
                        }
                        origin = Some(bits);
                    }
                }
                "scheme" => {
                    scheme = self.patterns(item, key, pattern::parse_scheme);
                }
                "host" => {
                    host = self.patterns(item, key, HostPattern::parse);
                }
                "decision" | "sandbox" => {
                    let span = item.span().unwrap_or(0..0);
                    if let Some(prev) = decision_key {
                        self.error(
                            key_span(t.table, key, span),
                            format!("{} has both `{prev}` and `{key}`", t.what),
                            Some("a rule decides exactly one thing: decision = \"deny\", decision = \"host\", or sandbox = \"<profile>\"".into()),
                        );
                        continue;
                    }
                    decision_key = Some(key);
                    let Some((s, span)) = self.string(item, key) else {
                        continue;
                    };
                    if key == "sandbox" {
                        decision = Some((RuleDecision::Sandbox(s.to_owned()), span));
                        continue;
                    }
                    match s {
                        "deny" => decision = Some((RuleDecision::Deny, span)),
                        "host" => decision = Some((RuleDecision::Host, span)),
                        "sandbox" => self.error(
                            span,
                            "`decision = \"sandbox\"` does not say which profile".into(),
                            Some("write sandbox = \"<profile>\" instead of decision".into()),
                        ),
                        "allow" | "trust" | "trusted" | "open" => self.error(
                            span,
                            format!("`decision` cannot be \"{s}\"; it is \"deny\" or \"host\""),
                            Some(
                                "`host` opens it normally on the host, outside any sandbox".into(),
                            ),
                        ),
                        other => self.bad_choice(span, "decision", other, &["deny", "host"]),
                    }
                }
                other => self.unknown_key(t, other, RULE_KEYS),
            }
        }

        if !t.table.contains_key("action") {
            self.error(
                t.span.clone(),
                format!("{} has no `action`", t.what),
                Some("add action = \"open-file\" (or \"open-uri\", \"run-program\", or a list of them)".into()),
            );
        }
        if decision_key.is_none() {
            self.error(
                t.span.clone(),
                format!("{} has no decision", t.what),
                Some(
                    "add decision = \"deny\", decision = \"host\" or sandbox = \"<profile>\""
                        .into(),
                ),
            );
        }
        // A condition that can never hold for one of the listed actions makes
        // the rule dead for that action: almost certainly a mistake.
        if let Some(bits) = actions {
            for (keys, dead_for) in [
                (FILE_ONLY_KEYS, &[Action::OpenUri][..]),
                (URI_ONLY_KEYS, &[Action::OpenFile, Action::RunProgram][..]),
            ] {
                for key in keys {
                    if !t.table.contains_key(key) {
                        continue;
                    }
                    for action in dead_for {
                        if bits & action.bit() != 0 {
                            self.error(
                                key_span(t.table, key, t.span.clone()),
                                format!("`{key}` never matches an {action} request, so {} can never match {action}", t.what),
                                Some(format!("{key} applies to {}; split this into one rule per action", if keys == FILE_ONLY_KEYS { "open-file and run-program" } else { "open-uri" })),
                            );
                        }
                    }
                }
            }
        }

        if self.diags.error_count() != errors_before {
            return None;
        }
        let (decision, decision_span) = decision?;
        let (line, col) = self.file.line_col(t.span.start);
        Some(RuleDecl {
            rule: Rule {
                source: Arc::new(RuleSource {
                    index: 0,
                    file: self.file.name.clone(),
                    line,
                    col,
                    name,
                }),
                actions: actions?,
                mime,
                extension,
                path,
                origin,
                scheme,
                host,
                decision,
                profile: None,
            },
            header_span: t.span.clone(),
            decision_span,
            name_span,
        })
    }

    fn patterns<T>(
        &mut self,
        item: &Item,
        key: &str,
        parse: impl Fn(&str) -> Result<T, PatternError>,
    ) -> Option<Vec<T>> {
        let list = self.string_list(item, key)?;
        let mut out = Vec::with_capacity(list.len());
        for (s, span) in list {
            match parse(s) {
                Ok(p) => out.push(p),
                Err(e) => self.pattern_error(span, key, &e),
            }
        }
        Some(out)
    }
}

fn key_span(table: &dyn TableLike, key: &str, fallback: Range<usize>) -> Range<usize> {
    key_span_or(table, key, fallback)
}

fn key_span_or(table: &dyn TableLike, key: &str, fallback: Range<usize>) -> Range<usize> {
    table.key(key).and_then(|k| k.span()).unwrap_or(fallback)
}

pub(crate) fn valid_profile_name(name: &str) -> bool {
    name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
