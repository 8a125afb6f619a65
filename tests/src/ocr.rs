//! Reads text out of rendered pixels with Tesseract (Debian's
//! `tesseract-ocr`): an honest check that glyphs came out readable.

use std::io;
use std::path::Path;
use std::process::Command;

use crate::page_image::{PageImage, PageImageError};

/// OCR could not run.
#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    /// The page could not be written for Tesseract.
    #[error("cannot write the page for OCR")]
    Page(#[from] PageImageError),
    /// Tesseract could not be started.
    #[error("cannot run tesseract (apt-get install tesseract-ocr)")]
    Spawn(#[source] io::Error),
    /// Tesseract failed.
    #[error("tesseract failed: {0}")]
    Failed(String),
}

/// Whether the `tesseract` command is installed.
pub fn available() -> bool {
    Command::new("tesseract")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The text Tesseract reads on `page`, scaled up `scale` times, dark on
/// light. The prepared image is kept in `dir` as `<name>.ocr.png`.
pub fn read_text(page: &PageImage, scale: u32, dir: &Path, name: &str) -> Result<String, OcrError> {
    let input = dir.join(format!("{name}.ocr.png"));
    page.for_ocr(scale).write_png(&input)?;
    let out = Command::new("tesseract")
        .arg(&input)
        .arg("stdout")
        .args(["--psm", "6"])
        .output()
        .map_err(OcrError::Spawn)?;
    if !out.status.success() {
        return Err(OcrError::Failed(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `text` upper-cased with every run of whitespace made one space, so that
/// checks do not depend on OCR's line breaks or case.
pub fn normalized(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_joins_lines_and_ignores_case() {
        assert_eq!(
            normalized("  Vitrine\nterminal \t works\n"),
            "VITRINE TERMINAL WORKS"
        );
    }
}
