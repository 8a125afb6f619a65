//! Renderers: they turn task input into page rasters. Each runs in a child
//! process with limits (see `sandbox`), so hostile input can only fail the task.

pub mod font;
pub mod html;
pub mod image;
pub mod pdf;
pub mod terminal;
pub mod text;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::raster::{Raster, RasterError};
use font::MonoFont;
use text::PageGeometry;

/// Font size of text documents.
pub const TEXT_PX: f32 = 15.0;

/// A renderer worker failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Bad worker arguments.
    #[error("bad render-worker arguments: {0}")]
    Usage(String),
    /// Reading input or writing pages failed.
    #[error("render worker I/O")]
    Io(#[from] std::io::Error),
    /// Image decoding failed.
    #[error("image")]
    Image(#[from] self::image::ImageError),
    /// Text layout failed.
    #[error("text")]
    Text(#[from] text::TextError),
    /// The font could not load.
    #[error("font")]
    Font(#[from] font::FontError),
    /// A page could not be written.
    #[error("page raster")]
    Raster(#[from] RasterError),
}

/// What kind of document a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    /// PDF.
    Pdf,
    /// PNG, JPEG, GIF or WebP.
    Image,
    /// HTML.
    Html,
    /// Anything else, shown as text.
    Text,
}

impl DocKind {
    /// Worker argument name.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Pdf => "pdf",
            DocKind::Image => "image",
            DocKind::Html => "html",
            DocKind::Text => "text",
        }
    }

    /// Chooses by content first, then name and hint. Content wins so that a
    /// renamed file cannot pick a weaker renderer path.
    pub fn detect(head: &[u8], name: &str, mime_hint: Option<&str>) -> DocKind {
        if head.starts_with(b"%PDF-") || find_in(head, b"%PDF-", 1024) {
            return DocKind::Pdf;
        }
        if self::image::sniff(head).is_some() {
            return DocKind::Image;
        }
        let lower = name.to_ascii_lowercase();
        let hint_html = mime_hint.is_some_and(|m| m.starts_with("text/html"));
        let head_text = String::from_utf8_lossy(&head[..head.len().min(512)]).to_ascii_lowercase();
        let trimmed = head_text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        if hint_html
            || lower.ends_with(".html")
            || lower.ends_with(".htm")
            || trimmed.starts_with("<!doctype html")
            || trimmed.starts_with("<html")
        {
            return DocKind::Html;
        }
        DocKind::Text
    }
}

fn find_in(hay: &[u8], needle: &[u8], within: usize) -> bool {
    hay[..hay.len().min(within)]
        .windows(needle.len())
        .any(|w| w == needle)
}

/// Name of page `index` (from 0) in a worker's output dir.
pub fn page_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("page-{:05}.ppm", index + 1))
}

/// `render-worker KIND WIDTH HEIGHT MAX_PAGES INPUT OUT_DIR`: renders a
/// text, HTML or image document to `page-NNNNN.ppm` files. Runs inside
/// `exec-limited`.
pub fn worker_main(args: &[OsString]) -> Result<usize, RenderError> {
    let usage = || RenderError::Usage(format!("{args:?}"));
    let [kind, width, height, max_pages, input, out_dir] = args else {
        return Err(usage());
    };
    let num = |s: &OsString| -> Result<u32, RenderError> {
        s.to_str().and_then(|s| s.parse().ok()).ok_or_else(usage)
    };
    let (width, height, max_pages) = (num(width)?, num(height)?, num(max_pages)?);
    let bytes = std::fs::read(input)?;
    let out_dir = Path::new(out_dir);
    let pages = match kind.to_str() {
        Some("image") => vec![self::image::render(&bytes, width, height)?],
        Some(k @ ("text" | "html")) => {
            let decoded = text::decode_lossy(&bytes);
            let body = if k == "html" {
                html::html_to_text(&decoded)
            } else {
                decoded
            };
            let mut font = MonoFont::new(TEXT_PX)?;
            let geometry = PageGeometry {
                width,
                height,
                max_pages,
            };
            text::render_pages(&body, geometry, &mut font)?
        }
        _ => return Err(usage()),
    };
    write_pages(&pages, out_dir)?;
    Ok(pages.len())
}

fn write_pages(pages: &[Raster], dir: &Path) -> Result<(), RenderError> {
    for (i, page) in pages.iter().enumerate() {
        page.write_ppm(&page_file(dir, i))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_decides_the_kind_before_the_name() {
        assert_eq!(
            DocKind::detect(b"%PDF-1.4 ...", "a.txt", None),
            DocKind::Pdf
        );
        assert_eq!(
            DocKind::detect(b"\x89PNG\r\n\x1a\n....", "a.html", None),
            DocKind::Image
        );
        assert_eq!(
            DocKind::detect(b"<!DOCTYPE html><p>x", "a.txt", None),
            DocKind::Html
        );
        assert_eq!(DocKind::detect(b"hello", "a.HTM", None), DocKind::Html);
        assert_eq!(
            DocKind::detect(b"fn main() {}", "main.rs", None),
            DocKind::Text
        );
    }
}
