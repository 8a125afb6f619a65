//! A program's terminal: the program runs on a pty, its output drives a VT
//! grid, and the grid is painted to pixels with the monospace font.

pub mod grid;

use std::fs::File;
use std::os::fd::OwnedFd;

use nix::pty::{openpty, Winsize};

use crate::protocol::{Key, KeyEvent, Rect};
use crate::raster::{Raster, RasterError};
use crate::render::font::{FontError, MonoFont};
use grid::{Grid, DEFAULT_BG};

/// Default grid size.
pub const DEFAULT_COLS: u16 = 80;
/// Default grid rows.
pub const DEFAULT_ROWS: u16 = 25;
/// Font size of the terminal.
pub const TERMINAL_PX: f32 = 16.0;

/// The terminal could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// openpty failed.
    #[error("cannot open a pty")]
    Pty(#[source] nix::Error),
    /// Setting the window size failed.
    #[error("cannot set the pty size")]
    Winsize(#[source] std::io::Error),
    /// The font could not be loaded.
    #[error("terminal font")]
    Font(#[from] FontError),
    /// The screen raster could not be made.
    #[error("terminal raster")]
    Raster(#[from] RasterError),
}

/// The painted screen of a terminal.
pub struct Screen {
    grid: Grid,
    parser: vte::Parser,
    font: MonoFont,
    raster: Raster,
    last_cursor: Option<(u16, u16)>,
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Screen")
            .field("grid", &(self.grid.cols(), self.grid.rows()))
            .field("raster", &self.raster)
            .finish_non_exhaustive()
    }
}

impl Screen {
    /// A blank `cols` x `rows` screen.
    pub fn new(cols: u16, rows: u16) -> Result<Self, TerminalError> {
        let font = MonoFont::new(TERMINAL_PX)?;
        let grid = Grid::new(cols, rows);
        let raster = Self::blank_raster(&grid, &font)?;
        let mut screen = Self {
            grid,
            parser: vte::Parser::new(),
            font,
            raster,
            last_cursor: None,
        };
        screen.paint();
        Ok(screen)
    }

    fn blank_raster(grid: &Grid, font: &MonoFont) -> Result<Raster, RasterError> {
        Raster::new(
            u32::from(grid.cols()) * font.cell_w(),
            u32::from(grid.rows()) * font.cell_h(),
            DEFAULT_BG,
        )
    }

    /// Grid size that fits `width` x `height` pixels.
    pub fn grid_size_for(&self, width: u32, height: u32) -> (u16, u16) {
        let cols = u16::try_from(width / self.font.cell_w()).unwrap_or(u16::MAX);
        let rows = u16::try_from(height / self.font.cell_h()).unwrap_or(u16::MAX);
        (cols, rows)
    }

    /// Feeds program output.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.parser.advance(&mut self.grid, bytes);
    }

    /// The grid (for text dumps in tests and logs).
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// The painted pixels.
    pub fn raster(&self) -> &Raster {
        &self.raster
    }

    /// The whole screen as one rect.
    pub fn full_rect(&self) -> Rect {
        Rect {
            x: 0,
            y: 0,
            w: self.raster.width(),
            h: self.raster.height(),
        }
    }

    /// Changes the grid size and repaints everything.
    pub fn resize(&mut self, cols: u16, rows: u16) -> Result<(), TerminalError> {
        self.grid.resize(cols, rows);
        self.raster = Self::blank_raster(&self.grid, &self.font)?;
        self.last_cursor = None;
        self.grid.take_dirty();
        self.paint_rows(0..self.grid.rows());
        Ok(())
    }

    /// Paints the rows changed since the last call; returns damage as
    /// bands of contiguous rows.
    pub fn paint(&mut self) -> Vec<Rect> {
        let mut rows = self.grid.take_dirty();
        let cursor = self.grid.cursor();
        for (_, r) in [self.last_cursor, cursor].into_iter().flatten() {
            if !rows.contains(&r) {
                rows.push(r);
            }
        }
        self.last_cursor = cursor;
        rows.sort_unstable();
        let mut bands: Vec<(u16, u16)> = Vec::new();
        for r in rows {
            match bands.last_mut() {
                Some((_, end)) if *end + 1 == r => *end = r,
                _ => bands.push((r, r)),
            }
        }
        let cell_h = self.font.cell_h();
        bands
            .into_iter()
            .map(|(start, end)| {
                self.paint_rows(start..end + 1);
                Rect {
                    x: 0,
                    y: u32::from(start) * cell_h,
                    w: self.raster.width(),
                    h: u32::from(end - start + 1) * cell_h,
                }
            })
            .collect()
    }

    fn paint_rows(&mut self, rows: std::ops::Range<u16>) {
        let (cw, ch) = (self.font.cell_w(), self.font.cell_h());
        let cursor = self.grid.cursor();
        for r in rows {
            for c in 0..self.grid.cols() {
                let cell = self.grid.cell(c, r);
                let (fg, bg) = if cursor == Some((c, r)) {
                    (cell.bg, cell.fg)
                } else {
                    (cell.fg, cell.bg)
                };
                let (x, y) = (u32::from(c) * cw, u32::from(r) * ch);
                self.raster.fill(x, y, cw, ch, bg);
                self.font.draw_char(&mut self.raster, x, y, cell.c, fg, bg);
            }
        }
    }
}

/// A pty pair; the slave goes to the program.
#[derive(Debug)]
pub struct Pty {
    /// Our side.
    pub master: OwnedFd,
    /// The program's side, until `close_slave`.
    slave: Option<OwnedFd>,
}

impl Pty {
    /// Opens a pty of `cols` x `rows`.
    pub fn open(cols: u16, rows: u16) -> Result<Self, TerminalError> {
        let ws = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pair = openpty(Some(&ws), None).map_err(TerminalError::Pty)?;
        Ok(Self {
            master: pair.master,
            slave: Some(pair.slave),
        })
    }

    /// A handle on the slave for the program's stdin/stdout/stderr.
    pub fn slave_stdio(&self) -> std::io::Result<std::process::Stdio> {
        let slave = self
            .slave
            .as_ref()
            .ok_or_else(|| std::io::Error::other("pty slave already closed"))?;
        Ok(std::process::Stdio::from(slave.try_clone()?))
    }

    /// Drops our copy of the slave once the program holds its own.
    pub fn close_slave(&mut self) {
        self.slave = None;
    }

    /// A readable/writable handle on the master.
    pub fn master_file(&self) -> std::io::Result<File> {
        Ok(File::from(self.master.try_clone()?))
    }

    /// Tells the program the new size (it gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), TerminalError> {
        let ws = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.master, ws)
            .map_err(|e| TerminalError::Winsize(e.into()))
    }
}

/// Bytes a key press sends to a terminal program (xterm conventions).
pub fn key_bytes(event: &KeyEvent) -> Vec<u8> {
    let mut out = Vec::new();
    if event.modifiers.alt {
        out.push(0x1b);
    }
    let seq: &[u8] = match event.key {
        Key::Char(c) => {
            if event.modifiers.ctrl && c.is_ascii_alphabetic() {
                let b = u8::try_from(c.to_ascii_lowercase()).unwrap_or(b'a');
                out.push(b - b'a' + 1);
            } else {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            return out;
        }
        Key::Enter => b"\r",
        Key::Tab => b"\t",
        Key::Backspace => b"\x7f",
        Key::Escape => b"\x1b",
        Key::Up => b"\x1b[A",
        Key::Down => b"\x1b[B",
        Key::Right => b"\x1b[C",
        Key::Left => b"\x1b[D",
        Key::Home => b"\x1b[H",
        Key::End => b"\x1b[F",
        Key::PageUp => b"\x1b[5~",
        Key::PageDown => b"\x1b[6~",
        Key::Insert => b"\x1b[2~",
        Key::Delete => b"\x1b[3~",
        Key::F(n) => match n {
            1 => b"\x1bOP",
            2 => b"\x1bOQ",
            3 => b"\x1bOR",
            4 => b"\x1bOS",
            5 => b"\x1b[15~",
            6 => b"\x1b[17~",
            7 => b"\x1b[18~",
            8 => b"\x1b[19~",
            9 => b"\x1b[20~",
            10 => b"\x1b[21~",
            11 => b"\x1b[23~",
            _ => b"\x1b[24~",
        },
    };
    out.extend_from_slice(seq);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Modifiers;

    #[test]
    fn output_paints_ink_only_in_damaged_rows() {
        let mut screen = Screen::new(20, 4).unwrap();
        screen.paint();
        let blank = screen.raster().clone();

        screen.feed(b"\x1b[?25lhi");
        let damage = screen.paint();

        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].y, 0);
        assert_ne!(screen.raster(), &blank);
        assert_eq!(screen.grid().text_dump(), "hi");
    }

    #[test]
    fn ctrl_c_is_etx_and_arrows_are_csi() {
        let ctrl = Modifiers {
            ctrl: true,
            ..Modifiers::default()
        };

        assert_eq!(
            key_bytes(&KeyEvent {
                key: Key::Char('c'),
                modifiers: ctrl
            }),
            vec![3]
        );
        assert_eq!(
            key_bytes(&KeyEvent {
                key: Key::Up,
                modifiers: Modifiers::default()
            }),
            b"\x1b[A".to_vec()
        );
    }

    #[test]
    fn pty_carries_bytes_from_slave_to_master() {
        use std::io::{Read, Write};
        let pty = Pty::open(80, 25).unwrap();
        let mut slave = File::from(pty.slave.as_ref().unwrap().try_clone().unwrap());
        let mut master = pty.master_file().unwrap();

        slave.write_all(b"ping\n").unwrap();
        let mut buf = [0u8; 16];
        let n = master.read(&mut buf).unwrap();

        assert!(buf[..n].starts_with(b"ping"));
    }
}
