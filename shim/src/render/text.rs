//! Plain text and source code: wrap, paginate and draw in the monospace font.

use crate::raster::{Raster, RasterError, Rgb};
use crate::render::font::MonoFont;

/// Tab stops every this many columns.
const TAB: usize = 8;
/// Margin around the text, in pixels.
const MARGIN: u32 = 16;

/// Text could not be laid out.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The page is too small to hold one character.
    #[error("page {0}x{1} is too small for one line of text")]
    PageTooSmall(u32, u32),
    /// A page raster could not be made.
    #[error("cannot make a page raster")]
    Raster(#[from] RasterError),
}

/// Page geometry for text.
#[derive(Debug, Clone, Copy)]
pub struct PageGeometry {
    /// Page width in pixels.
    pub width: u32,
    /// Page height in pixels.
    pub height: u32,
    /// Most pages to produce.
    pub max_pages: u32,
}

impl PageGeometry {
    fn grid(&self, font: &MonoFont) -> Result<(usize, usize), TextError> {
        let cols = self.width.saturating_sub(2 * MARGIN) / font.cell_w();
        let rows = self.height.saturating_sub(2 * MARGIN) / font.cell_h();
        if cols == 0 || rows == 0 {
            return Err(TextError::PageTooSmall(self.width, self.height));
        }
        Ok((to_usize(cols), to_usize(rows)))
    }
}

fn to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn to_u32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Decodes bytes as UTF-8, showing invalid sequences as U+FFFD.
pub fn decode_lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Splits text into display lines of at most `cols` cells: tabs expand to
/// stops, long lines wrap, control characters show as U+FFFD. Stops after
/// `max_lines`, so hostile input cannot make unbounded layout.
pub fn wrap_lines(text: &str, cols: usize, max_lines: usize) -> Vec<String> {
    let mut out = Vec::new();
    let cols = cols.max(1);
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let mut line = String::new();
        let mut width = 0;
        let push = |line: &mut String, width: &mut usize, out: &mut Vec<String>| {
            out.push(std::mem::take(line));
            *width = 0;
        };
        for c in raw.chars() {
            if out.len() >= max_lines {
                return out;
            }
            if c == '\t' {
                let spaces = TAB - width % TAB;
                for _ in 0..spaces {
                    if width == cols {
                        push(&mut line, &mut width, &mut out);
                    }
                    line.push(' ');
                    width += 1;
                }
                continue;
            }
            let shown = if c.is_control() { '\u{FFFD}' } else { c };
            if width == cols {
                push(&mut line, &mut width, &mut out);
            }
            line.push(shown);
            width += 1;
        }
        if out.len() >= max_lines {
            return out;
        }
        out.push(line);
    }
    // A trailing newline does not make an extra empty line.
    if text.ends_with('\n') && out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    out
}

/// Lays out `text` into pages.
pub fn render_pages(
    text: &str,
    geometry: PageGeometry,
    font: &mut MonoFont,
) -> Result<Vec<Raster>, TextError> {
    let (cols, rows) = geometry.grid(font)?;
    let max_lines = rows.saturating_mul(to_usize(geometry.max_pages));
    let lines = wrap_lines(text, cols, max_lines);
    let mut pages = Vec::new();
    for chunk in lines.chunks(rows) {
        pages.push(draw_page(chunk, geometry, font)?);
    }
    if pages.is_empty() {
        pages.push(Raster::new(geometry.width, geometry.height, Rgb::WHITE)?);
    }
    Ok(pages)
}

fn draw_page(
    lines: &[String],
    geometry: PageGeometry,
    font: &mut MonoFont,
) -> Result<Raster, TextError> {
    let mut page = Raster::new(geometry.width, geometry.height, Rgb::WHITE)?;
    let ink = Rgb(0x20, 0x20, 0x20);
    for (row, line) in lines.iter().enumerate() {
        let y = MARGIN + to_u32(row) * font.cell_h();
        for (col, c) in line.chars().enumerate() {
            let x = MARGIN + to_u32(col) * font.cell_w();
            font.draw_char(&mut page, x, y, c, ink, Rgb::WHITE);
        }
    }
    Ok(page)
}

/// Top of text row `row` on a page, for tests that look for ink per line.
pub fn row_top(font: &MonoFont, row: u32) -> u32 {
    MARGIN + row * font.cell_h()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabs_expand_to_stops_of_eight() {
        let lines = wrap_lines("a\tb", 80, 10);

        assert_eq!(lines, vec!["a       b".to_string()]);
    }

    #[test]
    fn long_line_wraps_at_column_limit() {
        let lines = wrap_lines("abcdefghij", 4, 10);

        assert_eq!(lines, vec!["abcd", "efgh", "ij"]);
    }

    #[test]
    fn invalid_utf8_and_controls_show_replacement_characters() {
        let text = decode_lossy(b"ok\xff\x01end\r\n");

        let lines = wrap_lines(&text, 80, 10);

        assert_eq!(lines, vec!["ok\u{FFFD}\u{FFFD}end".to_string()]);
    }

    #[test]
    fn layout_stops_at_line_cap() {
        let text = "x\n".repeat(1000);

        assert_eq!(wrap_lines(&text, 80, 7).len(), 7);
    }

    #[test]
    fn ink_appears_on_text_rows_and_not_on_empty_rows() {
        // Arrange: line 0 has text, line 1 is empty, line 2 has text.
        let mut font = MonoFont::new(16.0).unwrap();
        let geometry = PageGeometry {
            width: 400,
            height: 300,
            max_pages: 5,
        };

        // Act
        let pages = render_pages("Hello\n\nWorld", geometry, &mut font).unwrap();

        // Assert
        assert_eq!(pages.len(), 1);
        let band = |row| pages[0].crop_dark_pixels(0, row_top(&font, row), 400, font.cell_h());
        assert!(band(0) > 20);
        assert_eq!(band(1), 0);
        assert!(band(2) > 20);
    }

    #[test]
    fn many_lines_paginate() {
        let mut font = MonoFont::new(16.0).unwrap();
        let geometry = PageGeometry {
            width: 400,
            height: 200,
            max_pages: 100,
        };
        let text = (0..100).map(|i| format!("line {i}\n")).collect::<String>();

        let pages = render_pages(&text, geometry, &mut font).unwrap();

        let rows = usize::try_from((200 - 32) / font.cell_h()).unwrap();
        assert_eq!(pages.len(), 100usize.div_ceil(rows));
    }
}
