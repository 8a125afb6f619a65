//! PNG, JPEG, GIF, WebP, BMP, TIFF and ICO through the `image` crate, with
//! hard limits on dimensions and allocation so that a decompression bomb
//! fails cleanly.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::raster::{Raster, RasterError, Rgb};

/// Largest decoded image side; bigger images are refused, not scaled.
pub const MAX_DECODE_DIM: u32 = 16_384;
/// Most bytes the decoder may allocate.
pub const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// What the decoder may allocate here: [`MAX_DECODE_ALLOC`], or half the
/// memory the system has free if that is less, so that in a small guest a
/// large picture fails as too large instead of waking the OOM killer.
fn decode_alloc_limit() -> u64 {
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let kib: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    });
    available.map_or(MAX_DECODE_ALLOC, |bytes| (bytes / 2).min(MAX_DECODE_ALLOC))
}

/// An image could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not one of the formats above.
    #[error("not a PNG, JPEG, GIF, WebP, BMP, TIFF or ICO image")]
    UnknownFormat,
    /// The decoder refused the input or hit a limit. Not a `source`: the
    /// `image` crate's message already ends with its cause, and its
    /// `source()` is that same cause, so a chain would print it twice.
    #[error("image decoding failed: {0}")]
    Decode(image::ImageError),
    /// The output raster could not be made.
    #[error("cannot make the page raster")]
    Raster(#[from] RasterError),
}

/// Guesses the format from magic bytes, accepting only the formats above.
/// BMP's magic is two letters, so a BMP must also carry a known header
/// size: a text that starts with "BM" stays text.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    match image::guess_format(bytes).ok()? {
        f @ (ImageFormat::Png
        | ImageFormat::Jpeg
        | ImageFormat::Gif
        | ImageFormat::WebP
        | ImageFormat::Tiff
        | ImageFormat::Ico) => Some(f),
        ImageFormat::Bmp if bmp_header(bytes) => Some(ImageFormat::Bmp),
        _ => None,
    }
}

/// Whether a "BM" file has one of the DIB header sizes BMP writers use.
fn bmp_header(bytes: &[u8]) -> bool {
    let Some(size) = bytes.get(14..18) else {
        return false;
    };
    let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
    matches!(size, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124)
}

/// Decodes `bytes` and fits the picture into `max_w` x `max_h`, compositing
/// transparency over white.
pub fn render(bytes: &[u8], max_w: u32, max_h: u32) -> Result<Raster, ImageError> {
    let format = sniff(bytes).ok_or(ImageError::UnknownFormat)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_DIM);
    limits.max_image_height = Some(MAX_DECODE_DIM);
    limits.max_alloc = Some(decode_alloc_limit());
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits.clone());
    let mut decoder = reader.into_decoder().map_err(ImageError::Decode)?;
    // What `ImageReader::decode` checks before it allocates the pixels.
    limits
        .reserve(decoder.total_bytes())
        .map_err(ImageError::Decode)?;
    // Phones store photos sideways and say so in Exif; a photo is shown
    // the way up its camera meant.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut decoded = DynamicImage::from_decoder(decoder).map_err(ImageError::Decode)?;
    decoded.apply_orientation(orientation);
    let fitted = if decoded.width() > max_w || decoded.height() > max_h {
        decoded.thumbnail(max_w, max_h)
    } else {
        decoded
    };
    let rgba = fitted.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut raster = Raster::new(w, h, Rgb::WHITE)?;
    for (x, y, p) in rgba.enumerate_pixels() {
        raster.blend(x, y, Rgb(p[0], p[1], p[2]), Rgb::WHITE, p[3]);
    }
    Ok(raster)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: &image::RgbaImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgba8(img.clone())
            .to_rgb8()
            .write_to(&mut out, format)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn png_decodes_to_its_pixels() {
        let mut img = image::RgbaImage::from_pixel(20, 10, image::Rgba([255, 255, 255, 255]));
        img.put_pixel(3, 4, image::Rgba([0, 0, 0, 255]));

        let r = render(&encode(&img, ImageFormat::Png), 100, 100).unwrap();

        assert_eq!((r.width(), r.height()), (20, 10));
        assert_eq!(r.dark_pixels(), 1);
    }

    #[test]
    fn bmp_tiff_and_ico_decode_to_their_pixels() {
        let mut img = image::RgbaImage::from_pixel(16, 16, image::Rgba([255, 255, 255, 255]));
        img.put_pixel(5, 6, image::Rgba([0, 0, 0, 255]));

        for format in [ImageFormat::Bmp, ImageFormat::Tiff, ImageFormat::Ico] {
            let bytes = if format == ImageFormat::Ico {
                // An icon's PNG is RGBA, as icon writers make it.
                let mut out = Cursor::new(Vec::new());
                img.write_to(&mut out, format).unwrap();
                out.into_inner()
            } else {
                encode(&img, format)
            };
            assert_eq!(sniff(&bytes), Some(format));
            let r = render(&bytes, 100, 100).unwrap();

            assert_eq!((r.width(), r.height()), (16, 16), "{format:?}");
            assert_eq!(r.dark_pixels(), 1, "{format:?}");
        }
    }

    #[test]
    fn text_that_starts_with_bm_is_no_bitmap() {
        assert_eq!(
            sniff(b"BMW service notes, 2024\n\nOil change at 30000 km\n"),
            None
        );
    }

    /// `jpeg` with an Exif APP1 segment saying `orientation` right after SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"II*\0\x08\0\0\0\x01\0".to_vec();
        tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let len = u16::try_from(app1.len() + 2).unwrap();
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xff, 0xe1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn a_photo_stored_sideways_is_shown_upright() {
        // 40 wide, 20 high, as the sensor stored it; Exif 6: turn 90° clockwise.
        let img = image::RgbaImage::from_pixel(40, 20, image::Rgba([255, 255, 255, 255]));
        let jpeg = with_exif_orientation(&encode(&img, ImageFormat::Jpeg), 6);

        let r = render(&jpeg, 100, 100).unwrap();

        assert_eq!((r.width(), r.height()), (20, 40));
    }

    #[test]
    fn big_image_is_scaled_to_fit() {
        let img = image::RgbaImage::from_pixel(400, 200, image::Rgba([0, 0, 0, 255]));

        let r = render(&encode(&img, ImageFormat::Png), 100, 100).unwrap();

        assert_eq!((r.width(), r.height()), (100, 50));
    }

    #[test]
    fn png_header_claiming_huge_size_fails_cleanly() {
        // A valid 1x1 PNG whose IHDR says 100000 x 100000 (CRC fixed up).
        let img = image::RgbaImage::from_pixel(1, 1, image::Rgba([0, 0, 0, 255]));
        let mut png = encode(&img, ImageFormat::Png);
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());

        assert!(render(&png, 100, 100).is_err());
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn random_bytes_with_png_magic_fail_cleanly() {
        let mut junk = b"\x89PNG\r\n\x1a\n".to_vec();
        junk.extend((0..200u8).map(|i| i.wrapping_mul(37)));

        assert!(render(&junk, 100, 100).is_err());
    }

    #[test]
    fn a_truncated_jpeg_names_its_cause_once() {
        let img = image::RgbaImage::from_pixel(64, 64, image::Rgba([30, 60, 90, 255]));
        let jpeg = encode(&img, ImageFormat::Jpeg);
        let cut = &jpeg[..jpeg.len() / 2];

        let err = render(cut, 100, 100).unwrap_err();

        // As the render worker prints it: every cause in the chain.
        let text = format!("{:#}", anyhow::Error::new(err));
        let cause = text.rsplit(": ").next().unwrap().to_owned();
        assert_eq!(text.matches(cause.as_str()).count(), 1, "{text}");
        assert!(text.starts_with("image decoding failed: "), "{text}");
    }

    #[test]
    fn a_jpeg_cut_after_its_header_fails_with_no_more_bytes_said_once() {
        let header_only = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00";

        let err = render(header_only, 100, 100).unwrap_err();

        assert_eq!(
            format!("{:#}", anyhow::Error::new(err)),
            "image decoding failed: Format error decoding Jpeg: \"No more bytes\""
        );
    }
}
