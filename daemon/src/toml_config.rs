//! Errors of the daemon's TOML config files (`vitrined.toml`'s
//! `[remote_admin]`, `vitrine-guard`'s `guard.toml`): each names the file,
//! and a wrong value its 1-based line and column.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// A config file is unreadable or wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A value is wrong; `line` and `col` are 1-based.
    #[error("{}:{line}:{col}: {message}", .path.display())]
    At {
        /// The file.
        path: PathBuf,
        /// Line of the value.
        line: usize,
        /// Column of the value, in characters.
        col: usize,
        /// What is wrong, and what to write instead.
        message: String,
    },
}

impl ConfigError {
    /// `message` about the value at byte range `span` of `text`, read from
    /// `path` (no span: the start of the file).
    pub fn at(text: &str, path: &Path, span: Option<Range<usize>>, message: String) -> Self {
        let (line, col) = line_col(text, span.map_or(0, |s| s.start));
        ConfigError::At {
            path: path.to_owned(),
            line,
            col,
            message,
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    // An offset inside a character (never one toml gives) means that one.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_becomes_its_line_and_column_in_characters() {
        let text = "a = 1\né = \"x\"\n";
        let offset = text.find("\"x\"").unwrap();

        let err = ConfigError::at(
            text,
            Path::new("/etc/x.toml"),
            Some(offset..offset + 3),
            "bad".into(),
        );

        assert_eq!(err.to_string(), "/etc/x.toml:2:5: bad");
        assert_eq!(line_col(text, 7), (2, 1), "inside é: that character");
    }
}
