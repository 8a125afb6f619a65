//! Reads text out of rendered pixels with Tesseract (Debian's
//! `tesseract-ocr`): an honest check that glyphs came out readable.

use std::io;
use std::path::Path;
use std::process::Command;

use vitrine_daemon::pages::{luminance, PageImage, PagesError};

/// OCR could not run.
#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    /// The page could not be written for Tesseract.
    #[error("cannot write the page for OCR")]
    Page(#[from] PagesError),
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
    for_ocr(page, scale).write_png(&input)?;
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

/// `page` in grey, dark text on light ground (inverted if the page is
/// mostly dark), scaled up `factor` times: what OCR reads best.
pub fn for_ocr(page: &PageImage, factor: u32) -> PageImage {
    let factor = factor.max(1);
    let invert = page.mean_luminance() < 128.0;
    let mut out = PageImage::new(page.width * factor, page.height * factor);
    let mut dst = out.rgba.chunks_exact_mut(4);
    for y in 0..out.height {
        for x in 0..out.width {
            let mut l = luminance(&page.pixel(x / factor, y / factor));
            if invert {
                l = 255 - l;
            }
            if let Some(px) = dst.next() {
                px.copy_from_slice(&[l, l, l, 255]);
            }
        }
    }
    out
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
    fn for_ocr_makes_light_text_on_dark_ground_dark_on_light() {
        let mut page = PageImage::new(4, 3);
        page.rgba
            .chunks_exact_mut(4)
            .for_each(|px| px.copy_from_slice(&[0, 0, 0, 255]));
        page.rgba[..4].copy_from_slice(&[255, 255, 255, 255]);

        let ocr = for_ocr(&page, 2);

        assert_eq!((ocr.width, ocr.height), (8, 6));
        assert_eq!(ocr.pixel(0, 0), [0, 0, 0, 255]);
        assert_eq!(ocr.pixel(7, 5), [255, 255, 255, 255]);
    }

    #[test]
    fn normalized_joins_lines_and_ignores_case() {
        assert_eq!(
            normalized("  Vitrine\nterminal \t works\n"),
            "VITRINE TERMINAL WORKS"
        );
    }
}
