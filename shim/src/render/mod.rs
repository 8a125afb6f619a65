//! Renderers: they turn task input into page rasters. Each runs in a child
//! process with limits (see `sandbox`), so hostile input can only fail the task.

pub mod font;
pub mod hex;
pub mod image;
pub mod office;
pub mod page_stream;
pub mod pdf;
pub mod svg;
pub mod terminal;
pub mod text;

use std::ffi::OsString;

use crate::raster::RasterError;
use font::MonoFont;
use page_stream::{PageStreamError, PageWriter, StreamHeader};
use text::{PageGeometry, TextPages};

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
    /// An SVG could not be drawn.
    #[error("svg")]
    Svg(#[from] svg::SvgError),
    /// Text layout failed.
    #[error("text")]
    Text(#[from] text::TextError),
    /// The font could not load.
    #[error("font")]
    Font(#[from] font::FontError),
    /// A page could not be made.
    #[error("page raster")]
    Raster(#[from] RasterError),
    /// A page could not be sent to the agent.
    #[error("page stream")]
    Stream(#[from] PageStreamError),
}

/// What kind of document a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    /// PDF.
    Pdf,
    /// PNG, JPEG, GIF, WebP, BMP, TIFF or ICO.
    Image,
    /// An SVG picture.
    Svg,
    /// HTML.
    Html,
    /// Word, Excel, PowerPoint, OpenDocument or RTF: converted to PDF by
    /// LibreOffice.
    Office,
    /// Anything else that is text.
    Text,
    /// Data that is not text, shown as a hex view.
    Binary,
}

impl DocKind {
    /// Worker argument name.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Pdf => "pdf",
            DocKind::Image => "image",
            DocKind::Svg => "svg",
            DocKind::Html => "html",
            DocKind::Office => "office",
            DocKind::Text => "text",
            DocKind::Binary => "hex",
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
        if svg::sniff(head) {
            return DocKind::Svg;
        }
        if office::sniff(head).is_some() {
            return DocKind::Office;
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
        if hex::looks_binary(head) {
            return DocKind::Binary;
        }
        DocKind::Text
    }

    /// Whether its pages are laid out text, so a resize lays them out anew.
    pub fn reflows(self) -> bool {
        matches!(self, DocKind::Text | DocKind::Html | DocKind::Binary)
    }
}

fn find_in(hay: &[u8], needle: &[u8], within: usize) -> bool {
    hay[..hay.len().min(within)]
        .windows(needle.len())
        .any(|w| w == needle)
}

/// `render-worker KIND WIDTH HEIGHT FIRST COUNT INPUT`: renders up to
/// COUNT pages of a text, HTML, binary (hex) or image document from page FIRST (from 0)
/// and streams each to stdout as soon as it is drawn (see [`page_stream`]).
/// Runs inside `exec-limited`; holds one page at a time. Returns the pages
/// written.
pub fn worker_main(args: &[OsString]) -> Result<u32, RenderError> {
    let usage = || RenderError::Usage(format!("{args:?}"));
    let [kind, width, height, first, count, input] = args else {
        return Err(usage());
    };
    let num = |s: &OsString| -> Result<u32, RenderError> {
        s.to_str().and_then(|s| s.parse().ok()).ok_or_else(usage)
    };
    let (width, height) = (num(width)?, num(height)?);
    let (first, count) = (num(first)?, num(count)?);
    let bytes = std::fs::read(input)?;
    let stdout = std::io::stdout().lock();
    match kind.to_str() {
        Some(k @ ("image" | "svg")) => {
            let header = StreamHeader {
                count: u32::from(first == 0 && count > 0),
                total: 1,
            };
            let mut out = PageWriter::new(stdout, header)?;
            if header.count == 1 {
                let page = if k == "svg" {
                    svg::render(&bytes, width, height)?
                } else {
                    self::image::render(&bytes, width, height)?
                };
                out.page(&page)?;
            }
            Ok(header.count)
        }
        Some(k @ ("text" | "html" | "hex")) => {
            // HTML comes here only on a VM without the browser: its source.
            let body = match k {
                "hex" => hex::view(&bytes),
                _ => text::decode_lossy(&bytes),
            };
            drop(bytes);
            let mut font = MonoFont::new(TEXT_PX)?;
            let geometry = PageGeometry {
                width,
                height,
                max_pages: count,
            };
            let total = TextPages::count(&body, geometry, &font)?;
            let header = StreamHeader {
                count: total.saturating_sub(first).min(count),
                total,
            };
            let mut out = PageWriter::new(stdout, header)?;
            let mut pages = TextPages::new(&body, geometry, &font, first)?;
            for _ in 0..header.count {
                match pages.next_page(&mut font)? {
                    Some(page) => out.page(&page)?,
                    None => break,
                }
            }
            Ok(header.count)
        }
        _ => Err(usage()),
    }
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
        assert_eq!(
            DocKind::detect(b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "notes.txt", None),
            DocKind::Binary
        );
    }
}
