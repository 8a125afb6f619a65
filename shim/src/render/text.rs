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
    /// Most pages [`render_pages`] produces.
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

/// Decodes a text file the way it was most likely written: UTF-16 with a
/// byte order mark (Windows Notepad's "Unicode"), UTF-8 (its mark
/// dropped), or Windows-1252 when no byte beyond ASCII is valid UTF-8 and
/// some are not (a Latin-1 or Windows file, whose accents would otherwise
/// all be U+FFFD). Invalid sequences in UTF-8 text show as U+FFFD.
pub fn decode_lossy(bytes: &[u8]) -> String {
    if let Some(rest) = bytes.strip_prefix(b"\xff\xfe") {
        return utf16(rest, u16::from_le_bytes);
    }
    if let Some(rest) = bytes.strip_prefix(b"\xfe\xff") {
        return utf16(rest, u16::from_be_bytes);
    }
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let (mut wide, mut invalid) = (false, false);
    for chunk in bytes.utf8_chunks() {
        wide |= !chunk.valid().is_ascii();
        invalid |= !chunk.invalid().is_empty();
    }
    if invalid && !wide {
        return bytes.iter().map(|&b| windows_1252(b)).collect();
    }
    String::from_utf8_lossy(bytes).into_owned()
}

fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> String {
    let units = bytes.chunks_exact(2).map(|p| unit([p[0], p[1]]));
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// One Windows-1252 byte (Latin-1 plus typographic marks at 0x80-0x9F).
fn windows_1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{FFFD}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{FFFD}', 'Ž',
        '\u{FFFD}', '\u{FFFD}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ',
        '\u{FFFD}', 'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

/// Splits text into display lines of at most `cols` cells: tabs expand to
/// stops, long lines wrap, control characters show as U+FFFD. Stops after
/// `max_lines`, so hostile input cannot make unbounded layout.
pub fn wrap_lines(text: &str, cols: usize, max_lines: usize) -> Vec<String> {
    DisplayLines::new(text, cols).take(max_lines).collect()
}

/// The display lines of a text, made one at a time: layout holds one line,
/// whatever the text's length.
#[derive(Debug)]
pub struct DisplayLines<'a> {
    segments: std::str::Split<'a, char>,
    current: Option<std::iter::Peekable<std::str::Chars<'a>>>,
    /// Spaces of a tab still to place (a tab may wrap).
    pending_spaces: usize,
    cols: usize,
}

impl<'a> DisplayLines<'a> {
    /// Lines of `text` at `cols` cells each.
    pub fn new(text: &'a str, cols: usize) -> Self {
        // A trailing newline does not make an extra empty line.
        let body = text.strip_suffix('\n').unwrap_or(text);
        Self {
            segments: body.split('\n'),
            current: None,
            pending_spaces: 0,
            cols: cols.max(1),
        }
    }
}

impl Iterator for DisplayLines<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let chars = match &mut self.current {
            Some(chars) => chars,
            None => {
                let raw = self.segments.next()?;
                let raw = raw.strip_suffix('\r').unwrap_or(raw);
                self.pending_spaces = 0;
                self.current.insert(raw.chars().peekable())
            }
        };
        let mut line = String::new();
        let mut width = 0;
        while width < self.cols {
            if self.pending_spaces > 0 {
                self.pending_spaces -= 1;
                line.push(' ');
                width += 1;
                continue;
            }
            match chars.next() {
                None => break,
                Some('\t') => self.pending_spaces = TAB - width % TAB,
                Some(c) => {
                    line.push(if c.is_control() { '\u{FFFD}' } else { c });
                    width += 1;
                }
            }
        }
        if self.pending_spaces == 0 && chars.peek().is_none() {
            self.current = None;
        }
        Some(line)
    }
}

/// Pages of a text, drawn one at a time.
#[derive(Debug)]
pub struct TextPages<'a> {
    lines: DisplayLines<'a>,
    rows: usize,
    geometry: PageGeometry,
    /// A page was made (an empty text still makes one blank page).
    made_one: bool,
}

impl<'a> TextPages<'a> {
    /// Pages of `text` under `geometry`, starting at page `first` (from 0).
    pub fn new(
        text: &'a str,
        geometry: PageGeometry,
        font: &MonoFont,
        first: u32,
    ) -> Result<Self, TextError> {
        let (cols, rows) = geometry.grid(font)?;
        let mut lines = DisplayLines::new(text, cols);
        let skip = rows.saturating_mul(to_usize(first));
        if skip > 0 {
            // `nth` lays out and drops: nothing is kept.
            lines.nth(skip - 1);
        }
        Ok(Self {
            lines,
            rows,
            geometry,
            made_one: first > 0,
        })
    }

    /// How many pages `text` has under `geometry`, counted without drawing.
    pub fn count(text: &str, geometry: PageGeometry, font: &MonoFont) -> Result<u32, TextError> {
        let (cols, rows) = geometry.grid(font)?;
        let lines = DisplayLines::new(text, cols).count();
        Ok(to_u32(lines.div_ceil(rows).max(1)))
    }

    /// Draws the next page; `None` after the last.
    pub fn next_page(&mut self, font: &mut MonoFont) -> Result<Option<Raster>, TextError> {
        let chunk: Vec<String> = self.lines.by_ref().take(self.rows).collect();
        if chunk.is_empty() && self.made_one {
            return Ok(None);
        }
        self.made_one = true;
        draw_page(&chunk, self.geometry, font).map(Some)
    }
}

/// Lays out `text` into pages (at most `geometry.max_pages`), all in memory:
/// for tests of layout; the worker streams with [`TextPages`].
pub fn render_pages(
    text: &str,
    geometry: PageGeometry,
    font: &mut MonoFont,
) -> Result<Vec<Raster>, TextError> {
    let mut pages = TextPages::new(text, geometry, font, 0)?;
    let mut out = Vec::new();
    while out.len() < to_usize(geometry.max_pages) {
        match pages.next_page(font)? {
            Some(page) => out.push(page),
            None => break,
        }
    }
    Ok(out)
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
        // UTF-8 text (the é) with one bad byte and a control character.
        let bytes = [b"\xc3\xa9 ok\xff\x01end\r\n".as_slice()].concat();

        let lines = wrap_lines(&decode_lossy(&bytes), 80, 10);

        assert_eq!(lines, vec!["é ok\u{FFFD}\u{FFFD}end".to_string()]);
    }

    #[test]
    fn latin1_windows_and_utf16_text_read_as_written() {
        let latin1 = b"Caf\xe9 cr\xe8me \x96 \x93quoted\x94 \x80 5\n";
        let notepad: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain("Grüße ☃\r\n".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        let big_endian: Vec<u8> = [0xfe, 0xff]
            .into_iter()
            .chain("Ωmega".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();

        assert_eq!(decode_lossy(latin1), "Café crème – “quoted” € 5\n");
        assert_eq!(decode_lossy(&notepad), "Grüße ☃\r\n");
        assert_eq!(decode_lossy(&big_endian), "Ωmega");
        assert_eq!(decode_lossy(b"\xef\xbb\xbfplain"), "plain");
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
        let count = TextPages::count(&text, geometry, &font).unwrap();
        assert_eq!(usize::try_from(count).unwrap(), pages.len());
    }

    #[test]
    fn pages_from_a_later_start_match_the_same_pages_drawn_from_the_top() {
        let mut font = MonoFont::new(16.0).unwrap();
        let geometry = PageGeometry {
            width: 400,
            height: 200,
            max_pages: 100,
        };
        let text = (0..100).map(|i| format!("line {i}\n")).collect::<String>();
        let all = render_pages(&text, geometry, &mut font).unwrap();

        let mut from_third = TextPages::new(&text, geometry, &font, 2).unwrap();
        let third = from_third.next_page(&mut font).unwrap().unwrap();

        assert_eq!(third, all[2]);
    }

    #[test]
    fn a_line_of_exactly_the_width_makes_one_display_line() {
        assert_eq!(wrap_lines("abcd\nef", 4, 10), vec!["abcd", "ef"]);
        assert_eq!(wrap_lines("", 4, 10), vec![""]);
        assert_eq!(wrap_lines("\n", 4, 10), vec![""]);
        assert_eq!(wrap_lines("a\n\n", 4, 10), vec!["a", ""]);
    }
}
