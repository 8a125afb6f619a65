//! Pages of RGBA pixels put together from the frames a guest sends, and the
//! PNG files they are written to: the only thing of a document that reaches
//! the host's disk.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use vitrine_shim::protocol::{Frame, PixelFormat};

/// A page could not be built, written or read.
#[derive(Debug, thiserror::Error)]
pub enum PagesError {
    /// A frame's size disagrees with the page it claims.
    #[error("frame for a {got_w}x{got_h} page does not fit the {w}x{h} page")]
    SizeMismatch {
        /// Page width.
        w: u32,
        /// Page height.
        h: u32,
        /// Frame's page width.
        got_w: u32,
        /// Frame's page height.
        got_h: u32,
    },
    /// PNG encoding failed.
    #[error("cannot encode PNG")]
    Encode(#[from] png::EncodingError),
    /// PNG decoding failed.
    #[error("cannot decode PNG")]
    Decode(#[from] png::DecodingError),
    /// The PNG is not 8-bit RGBA.
    #[error("PNG is {0:?}, not 8-bit RGBA")]
    NotRgba8(png::ColorType),
    /// A PNG file could not be written or read.
    #[error("PNG file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// One page of RGBA pixels.
#[derive(Clone, PartialEq, Eq)]
pub struct PageImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 4` bytes, R G B A, rows top to bottom.
    pub rgba: Vec<u8>,
}

impl std::fmt::Debug for PageImage {
    // Pixels would flood logs; show the size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageImage({}x{})", self.width, self.height)
    }
}

fn index(width: u32, x: u32, y: u32) -> usize {
    let i = (u64::from(y) * u64::from(width) + u64::from(x)) * 4;
    usize::try_from(i).unwrap_or(usize::MAX)
}

/// Bytes of a `width` x `height` RGBA page.
pub fn page_bytes(width: u32, height: u32) -> u64 {
    u64::from(width) * u64::from(height) * 4
}

impl PageImage {
    /// A transparent black page.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            rgba: vec![0; index(width, 0, height)],
        }
    }

    /// A page from pixels, if their length fits the size.
    pub fn from_rgba(width: u32, height: u32, rgba: Vec<u8>) -> Option<Self> {
        (rgba.len() == index(width, 0, height)).then_some(Self {
            width,
            height,
            rgba,
        })
    }

    /// Copies a frame's damage rectangle into the page (the protocol
    /// decoder already checked that it lies inside the frame's page).
    pub fn apply(&mut self, frame: &Frame) -> Result<(), PagesError> {
        if (frame.width, frame.height) != (self.width, self.height) {
            return Err(PagesError::SizeMismatch {
                w: self.width,
                h: self.height,
                got_w: frame.width,
                got_h: frame.height,
            });
        }
        let PixelFormat::Rgba8 = frame.format;
        let row_bytes = index(frame.rect.w, 0, 1);
        for row in 0..frame.rect.h {
            let src = index(frame.rect.w, 0, row);
            let dst = index(self.width, frame.rect.x, frame.rect.y + row);
            self.rgba[dst..dst + row_bytes].copy_from_slice(&frame.pixels[src..src + row_bytes]);
        }
        Ok(())
    }

    /// Pixel at (x, y) as [r, g, b, a].
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 4] {
        let i = index(self.width, x, y);
        [
            self.rgba[i],
            self.rgba[i + 1],
            self.rgba[i + 2],
            self.rgba[i + 3],
        ]
    }

    /// The most common colour (the background of a document or terminal).
    pub fn dominant_color(&self) -> [u8; 4] {
        let mut counts = std::collections::HashMap::new();
        for px in self.rgba.chunks_exact(4) {
            *counts.entry([px[0], px[1], px[2], px[3]]).or_insert(0usize) += 1;
        }
        counts
            .into_iter()
            .max_by_key(|&(color, n)| (n, color))
            .map_or([0; 4], |(color, _)| color)
    }

    /// Share of pixels (0..=1) that differ from the dominant colour: ink.
    pub fn ink_fraction(&self) -> f64 {
        let background = self.dominant_color();
        let total = self.rgba.len() / 4;
        if total == 0 {
            return 0.0;
        }
        let ink = self
            .rgba
            .chunks_exact(4)
            .filter(|px| **px != background)
            .count();
        ratio(ink, total)
    }

    /// Mean luminance (0..=255) of the page.
    pub fn mean_luminance(&self) -> f64 {
        let total = self.rgba.len() / 4;
        if total == 0 {
            return 0.0;
        }
        let sum: u64 = self
            .rgba
            .chunks_exact(4)
            .map(|px| u64::from(luminance(px)))
            .sum();
        ratio(usize::try_from(sum).unwrap_or(usize::MAX), total)
    }

    /// Writes the page as an 8-bit RGBA PNG, mode 0600. The file appears
    /// whole or not at all (a temporary file in the same directory is
    /// renamed over `path`), and an existing `path`, even a symlink, is
    /// replaced, never followed.
    pub fn write_png(&self, path: &Path) -> Result<(), PagesError> {
        let io_err = |source| PagesError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut temp = tempfile::Builder::new()
            .prefix(".vitrine-page-")
            .suffix(".png.part")
            .tempfile_in(dir)
            .map_err(io_err)?;
        {
            let mut out = BufWriter::new(temp.as_file_mut());
            let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
            encoder.set_color(png::ColorType::Rgba);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header()?;
            writer.write_image_data(&self.rgba)?;
            writer.finish()?;
            out.flush().map_err(io_err)?;
        }
        temp.persist(path).map_err(|e| io_err(e.error))?;
        Ok(())
    }

    /// Reads an 8-bit RGBA PNG.
    pub fn read_png(path: &Path) -> Result<Self, PagesError> {
        let file = File::open(path).map_err(|source| PagesError::Io {
            path: path.to_owned(),
            source,
        })?;
        let decoder = png::Decoder::new(io::BufReader::new(file));
        let mut reader = decoder.read_info()?;
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf)?;
        if info.color_type != png::ColorType::Rgba || info.bit_depth != png::BitDepth::Eight {
            return Err(PagesError::NotRgba8(info.color_type));
        }
        buf.truncate(info.buffer_size());
        Ok(Self {
            width: info.width,
            height: info.height,
            rgba: buf,
        })
    }
}

/// File name of page `index` (from 0): `page-1.png` for the first page.
pub fn page_file_name(index: u32) -> String {
    format!("page-{}.png", u64::from(index) + 1)
}

/// Writes every page into `dir` as `page-N.png` (N from 1, in page order)
/// and returns the paths written.
pub fn write_pages(
    pages: &BTreeMap<u32, PageImage>,
    dir: &Path,
) -> Result<Vec<PathBuf>, PagesError> {
    pages
        .iter()
        .map(|(&index, page)| {
            let path = dir.join(page_file_name(index));
            page.write_png(&path).map(|()| path)
        })
        .collect()
}

/// Luminance (0..=255) of an RGBA pixel, ITU-R BT.601 weights.
pub fn luminance(px: &[u8]) -> u8 {
    let l = (299 * u32::from(px[0]) + 587 * u32::from(px[1]) + 114 * u32::from(px[2])) / 1000;
    u8::try_from(l).unwrap_or(u8::MAX)
}

// Counts here are far below 2^52, so f64 holds them exactly.
#[allow(clippy::cast_precision_loss)]
fn ratio(part: usize, total: usize) -> f64 {
    part as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use vitrine_shim::protocol::Rect;

    fn frame(x: u32, y: u32, w: u32, h: u32, color: [u8; 4]) -> Frame {
        Frame {
            page: 0,
            width: 4,
            height: 3,
            rect: Rect { x, y, w, h },
            format: PixelFormat::Rgba8,
            pixels: color.repeat(usize::try_from(w * h).unwrap()),
        }
    }

    #[test]
    fn apply_paints_only_the_damage_rectangle() {
        let mut page = PageImage::new(4, 3);
        page.apply(&frame(0, 0, 4, 3, [255; 4])).unwrap();

        page.apply(&frame(1, 1, 2, 1, [0, 0, 0, 255])).unwrap();

        assert_eq!(page.pixel(1, 1), [0, 0, 0, 255]);
        assert_eq!(page.pixel(2, 1), [0, 0, 0, 255]);
        assert_eq!(page.pixel(3, 1), [255; 4]);
        assert_eq!(page.pixel(1, 0), [255; 4]);
        assert!((page.ink_fraction() - 2.0 / 12.0).abs() < 1e-9);
    }

    #[test]
    fn apply_rejects_a_frame_for_another_page_size() {
        let mut page = PageImage::new(5, 3);

        let err = page.apply(&frame(0, 0, 1, 1, [0; 4])).unwrap_err();

        assert!(matches!(err, PagesError::SizeMismatch { .. }));
    }

    #[test]
    fn png_round_trip_keeps_every_pixel() {
        let dir = tempfile::tempdir().unwrap();
        let mut page = PageImage::new(4, 3);
        page.apply(&frame(0, 0, 2, 3, [10, 20, 30, 255])).unwrap();
        let path = dir.path().join("page.png");

        page.write_png(&path).unwrap();
        let back = PageImage::read_png(&path).unwrap();

        assert_eq!(back, page);
    }

    #[test]
    fn write_pages_names_pages_from_one_and_leaves_no_part_files() {
        let dir = tempfile::tempdir().unwrap();
        let pages: BTreeMap<u32, PageImage> =
            [(0, PageImage::new(2, 2)), (1, PageImage::new(3, 1))].into();

        let written = write_pages(&pages, dir.path()).unwrap();

        assert_eq!(
            written,
            [dir.path().join("page-1.png"), dir.path().join("page-2.png")]
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["page-1.png", "page-2.png"]);
        assert_eq!(PageImage::read_png(&written[1]).unwrap().width, 3);
    }

    #[test]
    fn write_png_replaces_a_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let path = dir.path().join("page-1.png");
        std::os::unix::fs::symlink(&victim, &path).unwrap();

        PageImage::new(2, 2).write_png(&path).unwrap();

        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "page readable by others: {mode:o}");
    }

    #[test]
    fn read_png_names_the_missing_file() {
        let err = PageImage::read_png(Path::new("/nonexistent/page-1.png")).unwrap_err();

        assert!(matches!(err, PagesError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/page-1.png"), "{err}");
    }
}
