//! RGBA pixel buffers, the strict PPM reader that takes renderer output,
//! and the cut into protocol frames.

use std::io::Read;
use std::path::Path;

use crate::protocol::{Frame, PixelFormat, Rect, MAX_DIM, MAX_FRAME_PIXEL_BYTES};

/// A raster could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum RasterError {
    /// Width or height is zero or above the cap.
    #[error("{width}x{height} is outside 1..={max} per side")]
    BadSize {
        /// Width.
        width: u64,
        /// Height.
        height: u64,
        /// Cap per side.
        max: u32,
    },
    /// The PPM header is malformed.
    #[error("malformed PPM header: {0}")]
    BadHeader(&'static str),
    /// The PPM body has the wrong length.
    #[error("PPM body is {got} bytes, the header needs {expected}")]
    BadBody {
        /// Needed.
        expected: u64,
        /// Found.
        got: u64,
    },
    /// Reading or writing the file failed.
    #[error("raster file I/O failed")]
    Io(#[from] std::io::Error),
}

/// An opaque colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// White.
    pub const WHITE: Rgb = Rgb(255, 255, 255);
    /// Black.
    pub const BLACK: Rgb = Rgb(0, 0, 0);
}

/// An RGBA8 image, rows top to bottom.
#[derive(Clone, PartialEq, Eq)]
pub struct Raster {
    width: u32,
    height: u32,
    rgba: Vec<u8>,
}

impl std::fmt::Debug for Raster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Raster({}x{})", self.width, self.height)
    }
}

fn check_size(width: u64, height: u64, max: u32) -> Result<(u32, u32), RasterError> {
    let bad = || RasterError::BadSize { width, height, max };
    let w = u32::try_from(width).map_err(|_| bad())?;
    let h = u32::try_from(height).map_err(|_| bad())?;
    if w == 0 || h == 0 || w > max || h > max {
        return Err(bad());
    }
    Ok((w, h))
}

fn to_usize(v: u64) -> usize {
    // Sizes here are bounded by MAX_DIM^2 * 4 = 256 MiB, which fits usize on 64-bit.
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl Raster {
    /// A raster filled with `bg`.
    pub fn new(width: u32, height: u32, bg: Rgb) -> Result<Self, RasterError> {
        let (w, h) = check_size(width.into(), height.into(), MAX_DIM)?;
        let n = to_usize(u64::from(w) * u64::from(h));
        let mut rgba = Vec::with_capacity(n * 4);
        for _ in 0..n {
            rgba.extend_from_slice(&[bg.0, bg.1, bg.2, 255]);
        }
        Ok(Self {
            width: w,
            height: h,
            rgba,
        })
    }

    /// Builds a raster from RGBA bytes of `width * height * 4`.
    pub fn from_rgba(width: u32, height: u32, rgba: Vec<u8>) -> Result<Self, RasterError> {
        let (w, h) = check_size(width.into(), height.into(), MAX_DIM)?;
        let expected = u64::from(w) * u64::from(h) * 4;
        if u64::try_from(rgba.len()).ok() != Some(expected) {
            return Err(RasterError::BadBody {
                expected,
                got: u64::try_from(rgba.len()).unwrap_or(u64::MAX),
            });
        }
        Ok(Self {
            width: w,
            height: h,
            rgba,
        })
    }

    /// Width.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The RGBA bytes.
    pub fn rgba(&self) -> &[u8] {
        &self.rgba
    }

    fn index(&self, x: u32, y: u32) -> Option<usize> {
        (x < self.width && y < self.height)
            .then(|| to_usize((u64::from(y) * u64::from(self.width) + u64::from(x)) * 4))
    }

    /// Sets one pixel; outside pixels are ignored.
    pub fn put(&mut self, x: u32, y: u32, c: Rgb) {
        if let Some(i) = self.index(x, y) {
            self.rgba[i..i + 4].copy_from_slice(&[c.0, c.1, c.2, 255]);
        }
    }

    /// Mixes `fg` over `bg` by `coverage` (0..=255) at one pixel.
    pub fn blend(&mut self, x: u32, y: u32, fg: Rgb, bg: Rgb, coverage: u8) {
        let mix = |f: u8, b: u8| -> u8 {
            let (f, b, a) = (u32::from(f), u32::from(b), u32::from(coverage));
            u8::try_from((f * a + b * (255 - a)) / 255).unwrap_or(u8::MAX)
        };
        self.put(x, y, Rgb(mix(fg.0, bg.0), mix(fg.1, bg.1), mix(fg.2, bg.2)));
    }

    /// Fills a rectangle, clipped to the raster.
    pub fn fill(&mut self, x: u32, y: u32, w: u32, h: u32, c: Rgb) {
        let x_end = x.saturating_add(w).min(self.width);
        let y_end = y.saturating_add(h).min(self.height);
        for yy in y..y_end {
            for xx in x..x_end {
                self.put(xx, yy, c);
            }
        }
    }

    /// Number of pixels darker than mid-grey (a cheap "is there ink" test).
    pub fn dark_pixels(&self) -> usize {
        self.crop_dark_pixels(0, 0, self.width, self.height)
    }

    /// Dark pixels inside a rectangle, clipped to the raster.
    pub fn crop_dark_pixels(&self, x: u32, y: u32, w: u32, h: u32) -> usize {
        let x_end = x.saturating_add(w).min(self.width);
        let y_end = y.saturating_add(h).min(self.height);
        let mut n = 0;
        for yy in y..y_end {
            for xx in x..x_end {
                if let Some(i) = self.index(xx, yy) {
                    let p = &self.rgba[i..i + 3];
                    if u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2]) < 384 {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Copies `rect` out as tightly packed RGBA.
    pub fn crop(&self, rect: Rect) -> Vec<u8> {
        let mut out = Vec::with_capacity(to_usize(u64::from(rect.w) * u64::from(rect.h) * 4));
        for yy in rect.y..rect.y.saturating_add(rect.h).min(self.height) {
            if let (Some(start), Some(_)) =
                (self.index(rect.x, yy), self.index(rect.x + rect.w - 1, yy))
            {
                out.extend_from_slice(&self.rgba[start..start + to_usize(u64::from(rect.w)) * 4]);
            }
        }
        out
    }

    /// Cuts `damage` (clipped to the raster) into frames of at most
    /// `MAX_FRAME_PIXEL_BYTES`, as horizontal bands.
    pub fn frames(&self, page: u32, damage: Rect) -> Vec<Frame> {
        let x = damage.x.min(self.width);
        let y = damage.y.min(self.height);
        let w = damage.w.min(self.width - x);
        let h = damage.h.min(self.height - y);
        if w == 0 || h == 0 {
            return Vec::new();
        }
        let row_bytes = to_usize(u64::from(w) * 4);
        let band = u32::try_from(MAX_FRAME_PIXEL_BYTES / row_bytes)
            .unwrap_or(u32::MAX)
            .max(1);
        let mut frames = Vec::new();
        let mut top = y;
        while top < y + h {
            let bh = band.min(y + h - top);
            let rect = Rect {
                x,
                y: top,
                w,
                h: bh,
            };
            frames.push(Frame {
                page,
                width: self.width,
                height: self.height,
                rect,
                format: PixelFormat::Rgba8,
                pixels: self.crop(rect),
            });
            top += bh;
        }
        frames
    }

    /// Writes the raster as binary PPM (P6), dropping alpha.
    pub fn write_ppm(&self, path: &Path) -> Result<(), RasterError> {
        let mut out = format!("P6\n{} {}\n255\n", self.width, self.height).into_bytes();
        out.reserve(self.rgba.len() / 4 * 3);
        for p in self.rgba.chunks_exact(4) {
            out.extend_from_slice(&p[..3]);
        }
        std::fs::write(path, out)?;
        Ok(())
    }

    /// Reads a binary PPM (P6, maxval 255) written by a renderer, refusing
    /// anything above `max_w` x `max_h` before allocating the body.
    pub fn read_ppm(path: &Path, max_w: u32, max_h: u32) -> Result<Self, RasterError> {
        let mut file = std::fs::File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut head = [0u8; 64];
        let mut got = 0;
        while got < head.len() {
            let n = file.read(&mut head[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let (width, height, header_len) = parse_ppm_header(&head[..got])?;
        if width > u64::from(max_w) || height > u64::from(max_h) {
            return Err(RasterError::BadSize {
                width,
                height,
                max: max_w.max(max_h),
            });
        }
        let (w, h) = check_size(width, height, MAX_DIM)?;
        let body = u64::from(w) * u64::from(h) * 3;
        let header = u64::try_from(header_len).unwrap_or(u64::MAX);
        if file_len.checked_sub(header) != Some(body) {
            return Err(RasterError::BadBody {
                expected: body,
                got: file_len.saturating_sub(header),
            });
        }
        let mut rgb = Vec::with_capacity(to_usize(body));
        rgb.extend_from_slice(&head[header_len..got]);
        file.take(body.saturating_sub(u64::try_from(rgb.len()).unwrap_or(0)))
            .read_to_end(&mut rgb)?;
        if u64::try_from(rgb.len()).ok() != Some(body) {
            return Err(RasterError::BadBody {
                expected: body,
                got: u64::try_from(rgb.len()).unwrap_or(u64::MAX),
            });
        }
        let mut rgba = Vec::with_capacity(to_usize(body / 3 * 4));
        for p in rgb.chunks_exact(3) {
            rgba.extend_from_slice(&[p[0], p[1], p[2], 255]);
        }
        Self::from_rgba(w, h, rgba)
    }
}

/// Parses `P6 <ws> W <ws> H <ws> 255 <one ws>`; returns (w, h, header length).
fn parse_ppm_header(buf: &[u8]) -> Result<(u64, u64, usize), RasterError> {
    if !buf.starts_with(b"P6") {
        return Err(RasterError::BadHeader("not a binary PPM (P6)"));
    }
    let mut pos = 2;
    let mut fields = [0u64; 3];
    for field in &mut fields {
        // Whitespace and comments before each number.
        loop {
            match buf.get(pos) {
                Some(b) if b.is_ascii_whitespace() => pos += 1,
                Some(b'#') => {
                    while buf.get(pos).is_some_and(|b| *b != b'\n') {
                        pos += 1;
                    }
                }
                Some(_) => break,
                None => return Err(RasterError::BadHeader("header ends early")),
            }
        }
        let start = pos;
        while buf.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        if pos == start || pos - start > 6 {
            return Err(RasterError::BadHeader("bad number"));
        }
        let digits = std::str::from_utf8(&buf[start..pos])
            .map_err(|_| RasterError::BadHeader("bad number"))?;
        *field = digits
            .parse()
            .map_err(|_| RasterError::BadHeader("bad number"))?;
    }
    if fields[2] != 255 {
        return Err(RasterError::BadHeader("maxval must be 255"));
    }
    if !buf.get(pos).is_some_and(u8::is_ascii_whitespace) {
        return Err(RasterError::BadHeader("no whitespace after maxval"));
    }
    Ok((fields[0], fields[1], pos + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppm_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.ppm");
        let mut r = Raster::new(7, 5, Rgb::WHITE).unwrap();
        r.put(3, 2, Rgb(10, 20, 30));

        r.write_ppm(&path).unwrap();
        let back = Raster::read_ppm(&path, 100, 100).unwrap();

        assert_eq!(back, r);
    }

    #[test]
    fn ppm_larger_than_caps_is_refused_before_reading_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.ppm");
        std::fs::write(&path, b"P6\n100000 100000\n255\n").unwrap();

        let err = Raster::read_ppm(&path, 4096, 4096).unwrap_err();

        assert!(matches!(err, RasterError::BadSize { .. }), "{err}");
    }

    #[test]
    fn truncated_ppm_body_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.ppm");
        std::fs::write(&path, b"P6\n2 2\n255\n\x01\x02\x03").unwrap();

        let err = Raster::read_ppm(&path, 10, 10).unwrap_err();

        assert!(matches!(
            err,
            RasterError::BadBody {
                expected: 12,
                got: 3
            }
        ));
    }

    #[test]
    fn garbage_headers_are_typed_errors() {
        for head in [
            &b""[..],
            b"P5 1 1 255 x",
            b"P6 1",
            b"P6 1 1 65535 ",
            b"P6 1 1 255",
            b"P6 -1 1 255 ",
        ] {
            assert!(parse_ppm_header(head).is_err(), "{head:?}");
        }
    }

    #[test]
    fn large_damage_is_cut_into_bands_under_the_frame_cap() {
        let r = Raster::new(4000, 2000, Rgb::WHITE).unwrap();

        let frames = r.frames(
            0,
            Rect {
                x: 0,
                y: 0,
                w: 4000,
                h: 2000,
            },
        );

        assert!(frames.len() > 1);
        let rows: u32 = frames.iter().map(|f| f.rect.h).sum();
        assert_eq!(rows, 2000);
        for f in &frames {
            f.validate().unwrap();
        }
    }
}
