//! The monospace font (DejaVu Sans Mono, embedded at build time) and glyph
//! drawing into RGBA rasters.

use std::collections::HashMap;

use fontdue::{Font, FontSettings, Metrics};

use crate::raster::{Raster, Rgb};

pub(crate) static MONO_TTF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mono.ttf"));

/// The font could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FontError {
    /// fontdue refused the embedded file.
    #[error("embedded font is unusable: {0}")]
    Parse(&'static str),
}

/// A monospace face at one pixel size, with a glyph cache.
pub struct MonoFont {
    font: Font,
    px: f32,
    cell_w: u32,
    cell_h: u32,
    baseline: i32,
    cache: HashMap<char, (Metrics, Vec<u8>)>,
}

impl std::fmt::Debug for MonoFont {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonoFont")
            .field("px", &self.px)
            .field("cell_w", &self.cell_w)
            .field("cell_h", &self.cell_h)
            .finish_non_exhaustive()
    }
}

/// Most distinct glyphs kept; hostile text could otherwise use every code point.
const GLYPH_CACHE_CAP: usize = 4096;

fn ceil_px(v: f32) -> u32 {
    // Font metrics at sane sizes are small positive numbers.
    let v = v.ceil().clamp(1.0, 1024.0);
    let mut n = 1u32;
    while (n as f32) < v {
        n += 1;
    }
    n
}

impl MonoFont {
    /// DejaVu Sans Mono at `px` pixels.
    pub fn new(px: f32) -> Result<Self, FontError> {
        let font = Font::from_bytes(MONO_TTF, FontSettings::default()).map_err(FontError::Parse)?;
        let lines = font
            .horizontal_line_metrics(px)
            .ok_or(FontError::Parse("font has no horizontal metrics"))?;
        let advance = font.metrics('M', px).advance_width;
        let cell_w = ceil_px(advance);
        let cell_h = ceil_px(lines.ascent - lines.descent + lines.line_gap);
        let baseline = i32::try_from(ceil_px(lines.ascent)).unwrap_or(i32::MAX);
        Ok(Self {
            font,
            px,
            cell_w,
            cell_h,
            baseline,
            cache: HashMap::new(),
        })
    }

    /// Width of one character cell.
    pub fn cell_w(&self) -> u32 {
        self.cell_w
    }

    /// Height of one line.
    pub fn cell_h(&self) -> u32 {
        self.cell_h
    }

    /// Draws `c` into the cell whose top-left corner is (`x`, `y`).
    pub fn draw_char(&mut self, raster: &mut Raster, x: u32, y: u32, c: char, fg: Rgb, bg: Rgb) {
        if c == ' ' || c.is_control() {
            return;
        }
        if self.cache.len() >= GLYPH_CACHE_CAP && !self.cache.contains_key(&c) {
            self.cache.clear();
        }
        let (font, px) = (&self.font, self.px);
        let (m, bitmap) = self.cache.entry(c).or_insert_with(|| {
            // Characters the font lacks render as the replacement glyph.
            let glyph = if font.has_glyph(c) { c } else { '\u{FFFD}' };
            font.rasterize(glyph, px)
        });
        let (left, top) = (i64::from(x), i64::from(y));
        let gx = left + i64::from(m.xmin);
        let glyph_h = i64::try_from(m.height).unwrap_or(0);
        let gy = top + i64::from(self.baseline) - glyph_h - i64::from(m.ymin);
        for row in 0..m.height {
            for col in 0..m.width {
                let cov = bitmap[row * m.width + col];
                if cov == 0 {
                    continue;
                }
                let (Ok(px_x), Ok(px_y)) = (
                    u32::try_from(gx + i64::try_from(col).unwrap_or(0)),
                    u32::try_from(gy + i64::try_from(row).unwrap_or(0)),
                ) else {
                    continue;
                };
                raster.blend(px_x, px_y, fg, bg, cov);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_is_wider_than_tall_for_no_monospace_face() {
        let font = MonoFont::new(16.0).unwrap();

        assert!(font.cell_w() >= 8 && font.cell_w() <= 12, "{font:?}");
        assert!(font.cell_h() >= 16 && font.cell_h() <= 24, "{font:?}");
    }

    #[test]
    fn letter_puts_ink_inside_its_cell_and_space_does_not() {
        let mut font = MonoFont::new(16.0).unwrap();
        let (w, h) = (font.cell_w() * 2, font.cell_h());
        let mut r = Raster::new(w, h, Rgb::WHITE).unwrap();

        font.draw_char(&mut r, 0, 0, ' ', Rgb::BLACK, Rgb::WHITE);
        let blank = r.clone();
        font.draw_char(&mut r, 0, 0, 'W', Rgb::BLACK, Rgb::WHITE);

        assert_eq!(blank.dark_pixels(), 0);
        assert!(r.dark_pixels() > 10);
        // All ink lies in the first cell.
        assert_eq!(r.crop_dark_pixels(font.cell_w(), 0, font.cell_w(), h), 0);
    }
}
