//! Compiler-style diagnostics: `path:line:col: error: message`, the source
//! line with a caret under the spot, and a hint.

use serde::Serialize;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One policy file held in memory, with its line index.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the caller named it (shown in messages).
    pub path: PathBuf,
    /// The file name alone, which sets the load order.
    pub name: Arc<str>,
    pub text: Arc<str>,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<Arc<str>>) -> Self {
        let path = path.into();
        let text = text.into();
        let name: Arc<str> = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
            .into();
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        SourceFile {
            path,
            name,
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (to_u32(line + 1), to_u32(col + 1))
    }

    fn line_text(&self, line: u32) -> Option<&str> {
        let idx = usize::try_from(line).ok()?.checked_sub(1)?;
        let start = *self.line_starts.get(idx)?;
        let end = self
            .line_starts
            .get(idx + 1)
            .map_or(self.text.len(), |e| e - 1);
        self.text.get(start..end).map(|l| l.trim_end_matches('\r'))
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A point in a policy file that a diagnostic refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub path: PathBuf,
    /// 1-based; absent for problems with the file as a whole.
    pub line: Option<u32>,
    pub col: Option<u32>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let (Some(l), Some(c)) = (self.line, self.col) {
            write!(f, ":{l}:{c}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    #[serde(flatten)]
    pub location: Location,
    pub message: String,
    pub hint: Option<String>,
    /// The source line and the caret under the spot, for humans.
    #[serde(skip)]
    pub snippet: Option<(String, usize, usize)>,
}

impl Diagnostic {
    pub fn at(severity: Severity, file: &SourceFile, span: Range<usize>, message: String) -> Self {
        let (line, col) = file.line_col(span.start);
        let snippet = file.line_text(line).map(|text| {
            let width = file
                .text
                .get(span.clone())
                .map_or(1, |s| s.lines().next().unwrap_or("").chars().count())
                .max(1);
            (text.to_owned(), usize::try_from(col).unwrap_or(1), width)
        });
        Diagnostic {
            severity,
            location: Location {
                path: file.path.clone(),
                line: Some(line),
                col: Some(col),
            },
            message,
            hint: None,
            snippet,
        }
    }

    /// A problem with a file or directory as a whole.
    pub fn whole(severity: Severity, path: &Path, message: String) -> Self {
        Diagnostic {
            severity,
            location: Location {
                path: path.to_owned(),
                line: None,
                col: None,
            },
            message,
            hint: None,
            snippet: None,
        }
    }

    pub fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = printable(&self.location.to_string()).into_owned();
        write!(
            f,
            "{location}: {}: {}",
            self.severity,
            printable(&self.message)
        )?;
        if let (Some((text, col, width)), Some(line)) = (&self.snippet, self.location.line) {
            let gutter = line.to_string().len();
            let text = printable(&text.replace('\t', " ")).into_owned();
            let pad = " ".repeat(col.saturating_sub(1));
            write!(
                f,
                "\n{:gutter$} |\n{line} | {text}\n{:gutter$} | {pad}{}",
                "",
                "",
                "^".repeat(*width)
            )?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  = hint: {}", printable(hint))?;
        }
        Ok(())
    }
}

/// All the diagnostics of one load. It is an error type so that a failed
/// load can be returned with `?`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }
    pub fn error_count(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
    }
    pub fn warning_count(&self) -> usize {
        self.0.len() - self.error_count()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// A one-line summary, for logs: the first error and a count.
    pub fn summary(&self) -> String {
        match self.0.iter().find(|d| d.is_error()).or(self.0.first()) {
            None => "no problems".to_owned(),
            Some(first) => {
                let more = self.0.len() - 1;
                let first = format!("{}: {}", first.location, first.message);
                if more == 0 {
                    first
                } else {
                    format!("{first} (and {more} more)")
                }
            }
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// `text` with control characters replaced, so that a hostile file name or
/// policy line cannot drive the admin's terminal. Column positions are
/// kept: each character stays one character.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(|c| c.is_control() && c != '\n') {
        text.chars()
            .map(|c| {
                if c.is_control() && c != '\n' {
                    '\u{fffd}'
                } else {
                    c
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// The candidate closest to `word` by edit distance, if it is close
/// enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= limit || c.starts_with(word) || word.starts_with(c))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let f = SourceFile::new("/p/a.toml", "ab\nçd = 1\n");
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(3), (2, 1));
        // `d` follows a two-byte character.
        assert_eq!(f.line_col(5), (2, 2));
        assert_eq!(f.line_col(1000), (3, 1));
    }

    #[test]
    fn rendered_diagnostic_starts_with_path_line_col() {
        let f = SourceFile::new("p/a.toml", "x = 1\nmemroy = 2\n");
        let d = Diagnostic::at(Severity::Error, &f, 6..12, "unknown key `memroy`".into())
            .with_hint(Some("did you mean `memory`?".into()));
        let text = d.to_string();
        assert!(
            text.starts_with("p/a.toml:2:1: error: unknown key `memroy`"),
            "{text}"
        );
        assert!(text.contains("2 | memroy = 2"));
        assert!(text.contains("^^^^^^"));
        assert!(text.ends_with("= hint: did you mean `memory`?"));
    }

    #[test]
    fn rendering_neutralises_terminal_escapes() {
        let f = SourceFile::new("p/a.toml", "name = \"\u{1b}[31mred\"\n");
        let d = Diagnostic::at(Severity::Error, &f, 7..20, "bad \u{1b}[2J name".into());
        let text = d.to_string();
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("bad \u{fffd}[2J name"));
    }

    #[test]
    fn closest_finds_typos_only() {
        let keys = ["memory_mib", "vcpus", "time_limit"];
        assert_eq!(closest("memroy_mib", keys), Some("memory_mib"));
        assert_eq!(closest("vcpu", keys), Some("vcpus"));
        assert_eq!(closest("colour", keys), None);
    }
}
