//! SVG pictures: usvg parses, resvg draws, fitted into the page like the
//! other images and composited over white. Nothing outside the file is
//! read: file and `data:` references resolve to nothing, and text uses the
//! embedded monospace face, so a picture cannot reach the guest's files.

use resvg::{tiny_skia, usvg};

use crate::raster::{Raster, RasterError, Rgb};
use crate::render::font::MONO_TTF;

/// The embedded face's family name.
const FACE: &str = "DejaVu Sans Mono";
/// Largest factor a small picture is enlarged by to fill the page.
const MAX_ZOOM: f32 = 8.0;

/// An SVG could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum SvgError {
    /// usvg refused the document.
    #[error("SVG parsing failed: {0}")]
    Parse(usvg::Error),
    /// The picture has no area, or the page none to draw on.
    #[error("the SVG picture is {0}x{1}: nothing to draw")]
    Empty(f32, f32),
    /// The output raster could not be made.
    #[error("cannot make the page raster")]
    Raster(#[from] RasterError),
}

/// Whether `head` is an SVG document: optional BOM, XML declaration,
/// comments and doctype, then an `<svg` element within the first KiB.
pub fn sniff(head: &[u8]) -> bool {
    let head = &head[..head.len().min(1024)];
    let text = String::from_utf8_lossy(head);
    let mut rest = text.trim_start_matches('\u{feff}').trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("<?") {
            rest = r
                .split_once("?>")
                .map_or("", |(_, after)| after)
                .trim_start();
        } else if let Some(r) = rest.strip_prefix("<!--") {
            rest = r
                .split_once("-->")
                .map_or("", |(_, after)| after)
                .trim_start();
        } else if let Some(r) = rest.strip_prefix("<!") {
            rest = r
                .split_once('>')
                .map_or("", |(_, after)| after)
                .trim_start();
        } else {
            break;
        }
    }
    rest.starts_with("<svg") && rest[4..].starts_with(|c: char| c.is_whitespace() || c == '>')
}

/// Draws `bytes` to fit in `max_w` x `max_h`.
pub fn render(bytes: &[u8], max_w: u32, max_h: u32) -> Result<Raster, SvgError> {
    let mut options = usvg::Options {
        font_family: FACE.into(),
        image_href_resolver: usvg::ImageHrefResolver {
            resolve_data: Box::new(|_, _, _| None),
            resolve_string: Box::new(|_, _| None),
        },
        ..usvg::Options::default()
    };
    let fonts = options.fontdb_mut();
    fonts.load_font_data(MONO_TTF.to_vec());
    // Every family, named or generic, ends at serif: the one face there is.
    fonts.set_serif_family(FACE);
    fonts.set_sans_serif_family(FACE);
    fonts.set_monospace_family(FACE);
    fonts.set_cursive_family(FACE);
    fonts.set_fantasy_family(FACE);
    let tree = usvg::Tree::from_data(bytes, &options).map_err(SvgError::Parse)?;
    drop(options);
    let size = tree.size();
    let (w, h) = (size.width(), size.height());
    if !(w >= 1.0 && h >= 1.0) || max_w == 0 || max_h == 0 {
        return Err(SvgError::Empty(w, h));
    }
    let zoom = (max_w as f32 / w).min(max_h as f32 / h).min(MAX_ZOOM);
    let (out_w, out_h) = (pixels(w * zoom, max_w), pixels(h * zoom, max_h));
    let mut pixmap = tiny_skia::Pixmap::new(out_w, out_h).ok_or(SvgError::Empty(w, h))?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(zoom, zoom),
        &mut pixmap.as_mut(),
    );
    // Opaque after the white fill, so the premultiplied bytes are the colour.
    let rgba = pixmap.take();
    let mut raster = Raster::new(out_w, out_h, Rgb::WHITE)?;
    for (i, px) in rgba.chunks_exact(4).enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        raster.put(i % out_w, i / out_w, Rgb(px[0], px[1], px[2]));
    }
    Ok(raster)
}

/// `v` rounded to whole pixels in `1..=max`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn pixels(v: f32, max: u32) -> u32 {
    // Clamped first, so the cast sees a value in 1..=max (NaN goes to 1).
    let clamped = v.round().clamp(1.0, max as f32);
    if clamped.is_nan() {
        1
    } else {
        (clamped as u32).clamp(1, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUARE: &[u8] = br##"<?xml version="1.0"?>
<!-- a test picture -->
<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20" viewBox="0 0 40 20">
  <rect x="0" y="0" width="20" height="20" fill="#c82878"/>
</svg>"##;

    #[test]
    fn an_svg_is_sniffed_past_its_prolog_and_drawn_to_fit() {
        let r = render(SQUARE, 400, 400).unwrap();

        assert!(sniff(SQUARE));
        assert_eq!((r.width(), r.height()), (320, 160), "8x at most");
        let at = |x: u32, y: u32| {
            let i = ((y * r.width() + x) * 4) as usize;
            [r.rgba()[i], r.rgba()[i + 1], r.rgba()[i + 2]]
        };
        assert_eq!(at(40, 80), [0xc8, 0x28, 0x78], "inside the square");
        assert_eq!(at(280, 80), [255, 255, 255], "white beside it");
    }

    #[test]
    fn text_in_any_family_is_drawn_in_the_embedded_face() {
        let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" width="200" height="40"><text x="5" y="30" font-family="Helvetica, sans-serif" font-size="24">Invoice</text></svg>"#;

        let r = render(svg, 200, 40).unwrap();

        assert!(r.dark_pixels() > 100, "{} dark pixels", r.dark_pixels());
    }

    #[test]
    fn text_that_mentions_svg_is_not_svg() {
        assert!(!sniff(b"<svgs are nice> said the notes\n"));
        assert!(!sniff(b"notes about <svg> tags\n"));
    }

    #[test]
    fn external_files_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret.png");
        std::fs::write(&secret, b"\x89PNG\r\n\x1a\n").unwrap();
        let svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="10" height="10"><image width="10" height="10" xlink:href="{}"/></svg>"#,
            secret.display()
        );

        let r = render(svg.as_bytes(), 10, 10).unwrap();

        assert_eq!(r.dark_pixels(), 0, "nothing drawn from outside the file");
    }

    #[test]
    fn broken_and_empty_pictures_fail_cleanly() {
        assert!(matches!(
            render(b"<svg xmlns='http://www.w3.org/2000/svg'><rect", 100, 100),
            Err(SvgError::Parse(_))
        ));
        assert!(render(
            b"<svg xmlns='http://www.w3.org/2000/svg' width='0' height='5'/>",
            100,
            100,
        )
        .is_err());
    }
}
