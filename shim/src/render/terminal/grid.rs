//! A bounded terminal cell grid driven by the `vte` parser: the screen of a
//! program's output. It keeps only what fits on screen, so an output flood
//! costs parse time, never memory.

use vte::{Params, Perform};

use crate::raster::Rgb;

/// Smallest and largest grid.
pub const MIN_COLS: u16 = 2;
/// Largest column count.
pub const MAX_COLS: u16 = 400;
/// Smallest row count.
pub const MIN_ROWS: u16 = 2;
/// Largest row count.
pub const MAX_ROWS: u16 = 200;

/// Default foreground and background.
pub const DEFAULT_FG: Rgb = Rgb(0xd0, 0xd0, 0xd0);
/// Default background.
pub const DEFAULT_BG: Rgb = Rgb(0x10, 0x10, 0x10);

const PALETTE: [Rgb; 16] = [
    Rgb(0x00, 0x00, 0x00),
    Rgb(0xcd, 0x31, 0x31),
    Rgb(0x0d, 0xbc, 0x79),
    Rgb(0xe5, 0xe5, 0x10),
    Rgb(0x24, 0x72, 0xc8),
    Rgb(0xbc, 0x3f, 0xbc),
    Rgb(0x11, 0xa8, 0xcd),
    Rgb(0xe5, 0xe5, 0xe5),
    Rgb(0x66, 0x66, 0x66),
    Rgb(0xf1, 0x4c, 0x4c),
    Rgb(0x23, 0xd1, 0x8b),
    Rgb(0xf5, 0xf5, 0x43),
    Rgb(0x3b, 0x8e, 0xea),
    Rgb(0xd6, 0x70, 0xd6),
    Rgb(0x29, 0xb8, 0xdb),
    Rgb(0xff, 0xff, 0xff),
];

/// One character cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Character shown.
    pub c: char,
    /// Foreground.
    pub fg: Rgb,
    /// Background.
    pub bg: Rgb,
}

impl Default for Cell {
    fn default() -> Self {
        Self {
            c: ' ',
            fg: DEFAULT_FG,
            bg: DEFAULT_BG,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pen {
    fg: Rgb,
    bg: Rgb,
    bold: bool,
    inverse: bool,
}

impl Default for Pen {
    fn default() -> Self {
        Self {
            fg: DEFAULT_FG,
            bg: DEFAULT_BG,
            bold: false,
            inverse: false,
        }
    }
}

/// The screen.
#[derive(Debug, Clone)]
pub struct Grid {
    cols: u16,
    rows: u16,
    cells: Vec<Cell>,
    dirty: Vec<bool>,
    cx: u16,
    cy: u16,
    saved: (u16, u16),
    wrap_pending: bool,
    pen: Pen,
    scroll_top: u16,
    scroll_bottom: u16,
    cursor_visible: bool,
}

fn clamp_size(cols: u16, rows: u16) -> (u16, u16) {
    (
        cols.clamp(MIN_COLS, MAX_COLS),
        rows.clamp(MIN_ROWS, MAX_ROWS),
    )
}

impl Grid {
    /// A blank grid, clamped to the size bounds.
    pub fn new(cols: u16, rows: u16) -> Self {
        let (cols, rows) = clamp_size(cols, rows);
        Self {
            cols,
            rows,
            cells: vec![Cell::default(); usize::from(cols) * usize::from(rows)],
            dirty: vec![true; usize::from(rows)],
            cx: 0,
            cy: 0,
            saved: (0, 0),
            wrap_pending: false,
            pen: Pen::default(),
            scroll_top: 0,
            scroll_bottom: rows - 1,
            cursor_visible: true,
        }
    }

    /// Columns.
    pub fn cols(&self) -> u16 {
        self.cols
    }

    /// Rows.
    pub fn rows(&self) -> u16 {
        self.rows
    }

    /// Cursor (column, row), if shown.
    pub fn cursor(&self) -> Option<(u16, u16)> {
        self.cursor_visible.then_some((self.cx, self.cy))
    }

    /// The cell at (col, row).
    pub fn cell(&self, col: u16, row: u16) -> Cell {
        self.cells[self.idx(col.min(self.cols - 1), row.min(self.rows - 1))]
    }

    /// Takes the set of rows changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<u16> {
        let rows = self
            .dirty
            .iter()
            .enumerate()
            .filter(|(_, d)| **d)
            .filter_map(|(i, _)| u16::try_from(i).ok())
            .collect();
        self.dirty.iter_mut().for_each(|d| *d = false);
        rows
    }

    /// Changes the size, keeping the top-left content.
    pub fn resize(&mut self, cols: u16, rows: u16) {
        let mut next = Grid::new(cols, rows);
        for r in 0..self.rows.min(next.rows) {
            for c in 0..self.cols.min(next.cols) {
                let i = next.idx(c, r);
                next.cells[i] = self.cell(c, r);
            }
        }
        next.cx = self.cx.min(next.cols - 1);
        next.cy = self.cy.min(next.rows - 1);
        next.pen = self.pen;
        *self = next;
    }

    /// The screen as text, trailing spaces trimmed (for tests and logs).
    pub fn text_dump(&self) -> String {
        let mut out = String::new();
        for r in 0..self.rows {
            let line: String = (0..self.cols).map(|c| self.cell(c, r).c).collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let trimmed = out.trim_end_matches('\n').len();
        out.truncate(trimmed);
        out
    }

    fn idx(&self, col: u16, row: u16) -> usize {
        usize::from(row) * usize::from(self.cols) + usize::from(col)
    }

    fn blank(&self) -> Cell {
        Cell {
            c: ' ',
            fg: self.pen.fg,
            bg: self.pen.bg,
        }
    }

    fn mark(&mut self, row: u16) {
        if let Some(d) = self.dirty.get_mut(usize::from(row)) {
            *d = true;
        }
    }

    fn scroll_up(&mut self, n: u16) {
        let (top, bottom) = (self.scroll_top, self.scroll_bottom);
        for _ in 0..n.min(bottom - top + 1) {
            let start = self.idx(0, top);
            let end = self.idx(0, bottom) + usize::from(self.cols);
            self.cells[start..end].rotate_left(usize::from(self.cols));
            let last = self.idx(0, bottom);
            let blank = self.blank();
            self.cells[last..last + usize::from(self.cols)].fill(blank);
        }
        (top..=bottom).for_each(|r| self.mark(r));
    }

    fn scroll_down(&mut self, n: u16) {
        let (top, bottom) = (self.scroll_top, self.scroll_bottom);
        for _ in 0..n.min(bottom - top + 1) {
            let start = self.idx(0, top);
            let end = self.idx(0, bottom) + usize::from(self.cols);
            self.cells[start..end].rotate_right(usize::from(self.cols));
            let blank = self.blank();
            self.cells[start..start + usize::from(self.cols)].fill(blank);
        }
        (top..=bottom).for_each(|r| self.mark(r));
    }

    fn newline(&mut self) {
        self.wrap_pending = false;
        if self.cy == self.scroll_bottom {
            self.scroll_up(1);
        } else if self.cy + 1 < self.rows {
            self.cy += 1;
        }
    }

    fn erase(&mut self, from: (u16, u16), to: (u16, u16)) {
        let start = self.idx(from.0, from.1);
        let end = self.idx(to.0, to.1);
        let blank = self.blank();
        if start <= end {
            self.cells[start..=end].fill(blank);
            (from.1..=to.1).for_each(|r| self.mark(r));
        }
    }

    fn goto(&mut self, col: u16, row: u16) {
        self.wrap_pending = false;
        self.mark(self.cy);
        self.cx = col.min(self.cols - 1);
        self.cy = row.min(self.rows - 1);
        self.mark(self.cy);
    }

    fn sgr(&mut self, params: &Params) {
        let flat: Vec<u16> = params.iter().flat_map(|p| p.iter().copied()).collect();
        if flat.is_empty() {
            self.pen = Pen::default();
            return;
        }
        let mut i = 0;
        while i < flat.len() {
            match flat[i] {
                0 => self.pen = Pen::default(),
                1 => self.pen.bold = true,
                22 => self.pen.bold = false,
                7 => self.pen.inverse = true,
                27 => self.pen.inverse = false,
                n @ 30..=37 => {
                    let bright = if self.pen.bold { 8 } else { 0 };
                    self.pen.fg = PALETTE[usize::from(n - 30) + bright];
                }
                39 => self.pen.fg = DEFAULT_FG,
                n @ 40..=47 => self.pen.bg = PALETTE[usize::from(n - 40)],
                49 => self.pen.bg = DEFAULT_BG,
                n @ 90..=97 => self.pen.fg = PALETTE[usize::from(n - 90) + 8],
                n @ 100..=107 => self.pen.bg = PALETTE[usize::from(n - 100) + 8],
                n @ (38 | 48) => {
                    let color = match flat.get(i + 1) {
                        Some(5) => {
                            i += 2;
                            flat.get(i).map(|v| color_256(*v))
                        }
                        Some(2) => {
                            i += 4;
                            let c = |k: usize| {
                                flat.get(k).map_or(0, |v| u8::try_from(*v).unwrap_or(255))
                            };
                            Some(Rgb(c(i - 2), c(i - 1), c(i)))
                        }
                        _ => None,
                    };
                    if let Some(color) = color {
                        if n == 38 {
                            self.pen.fg = color;
                        } else {
                            self.pen.bg = color;
                        }
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

fn color_256(v: u16) -> Rgb {
    match v {
        0..=15 => PALETTE[usize::from(v)],
        16..=231 => {
            let v = v - 16;
            let level = |x: u16| u8::try_from(if x == 0 { 0 } else { 55 + x * 40 }).unwrap_or(255);
            Rgb(level(v / 36), level((v / 6) % 6), level(v % 6))
        }
        232..=255 => {
            let g = u8::try_from(8 + (v - 232) * 10).unwrap_or(255);
            Rgb(g, g, g)
        }
        _ => DEFAULT_FG,
    }
}

fn first(params: &Params, default: u16) -> u16 {
    params
        .iter()
        .next()
        .and_then(|p| p.first().copied())
        .filter(|v| *v != 0)
        .unwrap_or(default)
}

fn nth(params: &Params, n: usize, default: u16) -> u16 {
    params
        .iter()
        .nth(n)
        .and_then(|p| p.first().copied())
        .filter(|v| *v != 0)
        .unwrap_or(default)
}

impl Perform for Grid {
    fn print(&mut self, c: char) {
        if self.wrap_pending {
            self.cx = 0;
            self.newline();
        }
        let (fg, bg) = if self.pen.inverse {
            (self.pen.bg, self.pen.fg)
        } else {
            (self.pen.fg, self.pen.bg)
        };
        let i = self.idx(self.cx, self.cy);
        self.cells[i] = Cell { c, fg, bg };
        self.mark(self.cy);
        if self.cx + 1 >= self.cols {
            self.wrap_pending = true;
        } else {
            self.cx += 1;
        }
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\n' | 0x0b | 0x0c => {
                self.mark(self.cy);
                self.newline();
                self.mark(self.cy);
            }
            b'\r' => {
                self.wrap_pending = false;
                self.cx = 0;
            }
            0x08 => {
                self.wrap_pending = false;
                self.cx = self.cx.saturating_sub(1);
            }
            b'\t' => {
                let next = (self.cx / 8 + 1) * 8;
                self.cx = next.min(self.cols - 1);
            }
            _ => {}
        }
    }

    fn csi_dispatch(&mut self, params: &Params, intermediates: &[u8], ignore: bool, action: char) {
        if ignore {
            return;
        }
        let private = intermediates.first() == Some(&b'?');
        let n = first(params, 1);
        match action {
            'A' => self.goto(self.cx, self.cy.saturating_sub(n)),
            'B' | 'e' => self.goto(self.cx, self.cy.saturating_add(n)),
            'C' | 'a' => self.goto(self.cx.saturating_add(n), self.cy),
            'D' => self.goto(self.cx.saturating_sub(n), self.cy),
            'E' => self.goto(0, self.cy.saturating_add(n)),
            'F' => self.goto(0, self.cy.saturating_sub(n)),
            'G' | '`' => self.goto(n - 1, self.cy),
            'd' => self.goto(self.cx, n - 1),
            'H' | 'f' => self.goto(nth(params, 1, 1) - 1, n - 1),
            'J' => {
                let last = (self.cols - 1, self.rows - 1);
                match first(params, 0) {
                    0 => self.erase((self.cx, self.cy), last),
                    1 => self.erase((0, 0), (self.cx, self.cy)),
                    _ => self.erase((0, 0), last),
                }
            }
            'K' => {
                let row = self.cy;
                match first(params, 0) {
                    0 => self.erase((self.cx, row), (self.cols - 1, row)),
                    1 => self.erase((0, row), (self.cx, row)),
                    _ => self.erase((0, row), (self.cols - 1, row)),
                }
            }
            'S' => self.scroll_up(n),
            'T' => self.scroll_down(n),
            'm' => self.sgr(params),
            'r' => {
                let top = first(params, 1) - 1;
                let bottom = nth(params, 1, self.rows) - 1;
                if top < bottom && bottom < self.rows {
                    self.scroll_top = top;
                    self.scroll_bottom = bottom;
                    self.goto(0, 0);
                }
            }
            's' => self.saved = (self.cx, self.cy),
            'u' => self.goto(self.saved.0, self.saved.1),
            'h' | 'l' if private && params.iter().any(|p| p.first() == Some(&25)) => {
                self.cursor_visible = action == 'h';
                self.mark(self.cy);
            }
            _ => {}
        }
    }

    fn esc_dispatch(&mut self, intermediates: &[u8], _ignore: bool, byte: u8) {
        if !intermediates.is_empty() {
            return;
        }
        match byte {
            b'7' => self.saved = (self.cx, self.cy),
            b'8' => self.goto(self.saved.0, self.saved.1),
            b'D' => self.newline(),
            b'M' => {
                if self.cy == self.scroll_top {
                    self.scroll_down(1);
                } else {
                    self.goto(self.cx, self.cy.saturating_sub(1));
                }
            }
            b'c' => *self = Grid::new(self.cols, self.rows),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(grid: &mut Grid, bytes: &[u8]) {
        let mut parser = vte::Parser::new();
        parser.advance(grid, bytes);
    }

    #[test]
    fn printed_lines_appear_in_the_dump() {
        let mut g = Grid::new(20, 5);

        feed(&mut g, b"hello\r\nworld\r\n");

        assert_eq!(g.text_dump(), "hello\nworld");
    }

    #[test]
    fn output_longer_than_the_screen_scrolls() {
        let mut g = Grid::new(10, 3);

        feed(&mut g, b"1\r\n2\r\n3\r\n4\r\n5");

        assert_eq!(g.text_dump(), "3\n4\n5");
    }

    #[test]
    fn long_line_wraps_at_the_last_column() {
        let mut g = Grid::new(4, 3);

        feed(&mut g, b"abcdef");

        assert_eq!(g.text_dump(), "abcd\nef");
    }

    #[test]
    fn cursor_moves_and_erases_follow_csi() {
        let mut g = Grid::new(10, 3);

        feed(&mut g, b"xxxxxxxx\x1b[1;3Hab\x1b[K\x1b[3;1Hz");

        assert_eq!(g.text_dump(), "xxab\n\nz");
    }

    #[test]
    fn clear_screen_blanks_everything() {
        let mut g = Grid::new(10, 3);

        feed(&mut g, b"junk\r\nmore\x1b[2J\x1b[H");

        assert_eq!(g.text_dump(), "");
    }

    #[test]
    fn sgr_colors_reach_the_cells() {
        let mut g = Grid::new(10, 2);

        feed(&mut g, b"\x1b[31mR\x1b[0m\x1b[38;2;1;2;3mT\x1b[48;5;21mB");

        assert_eq!(g.cell(0, 0).fg, PALETTE[1]);
        assert_eq!(g.cell(1, 0).fg, Rgb(1, 2, 3));
        assert_eq!(g.cell(2, 0).bg, color_256(21));
    }

    #[test]
    fn hostile_sequences_never_leave_the_grid() {
        let mut g = Grid::new(5, 3);

        feed(&mut g, b"\x1b[65535;65535H!");
        let corner = g.cell(4, 2).c;
        feed(
            &mut g,
            b"\x1b[65535A\x1b[65535C\x1b[0;0r\x1b[3;1r\x1b[9999S\x1b[9999T\x1b[38;5m\x1b[38;2m\x1bM\x1bM\x1b[?25l",
        );

        assert_eq!(corner, '!');
        assert_eq!((g.cols(), g.rows()), (5, 3));
        assert_eq!(g.cursor(), None);
    }

    #[test]
    fn resize_keeps_top_left_content() {
        let mut g = Grid::new(10, 3);
        feed(&mut g, b"abc");

        g.resize(2, 2);

        assert_eq!(g.text_dump(), "ab");
        assert_eq!((g.cols(), g.rows()), (2, 2));
    }
}
