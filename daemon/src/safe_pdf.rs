//! The "safe copy" PDF: a document rebuilt on the host from nothing but the
//! pixels a guest rendered, plus an optional invisible OCR text layer.
//!
//! Written with `pdf-writer`, a low-level writer with no parser: we write
//! exactly the objects chosen here (catalog, page tree, one image and one
//! content stream per page, one font without glyphs, a two-key info
//! dictionary) and nothing of the input document can reach the file.

use std::collections::BTreeSet;

use pdf_writer::types::{
    CidFontType, FontFlags, Predictor, SystemInfo, TextRenderingMode, UnicodeCmap,
};
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

use crate::pages::PageImage;

use vitrine_shim::protocol::{MAX_PRINT_DPI, MIN_PRINT_DPI};
/// The protocol's caps on what a guest may say of a page: the writer holds
/// its input to the same.
pub use vitrine_shim::protocol::{MAX_WORDS_PER_PAGE, MAX_WORD_BYTES};

/// Lowest and highest resolution a page may claim, in dots per inch.
pub const DPI_RANGE: std::ops::RangeInclusive<u32> = MIN_PRINT_DPI..=MAX_PRINT_DPI;
/// Widest or tallest page, in pixels (JPEG's limit, and far above any render).
pub const MAX_PAGE_SIDE: u32 = 65_535;
/// Info key that carries the SHA-256 of the input, as the task's signed receipt
/// records it: the copy names its receipt without carrying anything of the input.
pub const INPUT_KEY: &str = "VitrineInputSHA256";

/// Glyph advance of every CID, in 1/1000 of the font size (the font's /DW).
const GLYPH_WIDTH: f32 = 500.0;
/// The font's descent, in 1/1000 of the font size: the baseline sits this
/// far above the bottom of a word's box.
const DESCENT: f32 = 200.0;
/// Flate level: 6 is zlib's default, the knee of size against time.
const FLATE_LEVEL: u8 = 6;
/// JPEG quality tried for every page.
const JPEG_QUALITY: u8 = 85;

/// A safe PDF could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum SafePdfError {
    /// No pages were given.
    #[error("a safe PDF needs at least one page")]
    NoPages,
    /// A page has no pixels, too many, or pixels that disagree with its size.
    #[error(
        "page {page} is {width}x{height} pixels with {bytes} bytes: empty, over \
         {MAX_PAGE_SIDE} pixels a side, or not width*height*4 RGBA bytes"
    )]
    PageSize {
        /// Page index, from 0.
        page: usize,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Length of the pixel buffer.
        bytes: usize,
    },
    /// A page's resolution is outside [`DPI_RANGE`].
    #[error("page {page} claims {dpi} dpi, outside {MIN_PRINT_DPI}..={MAX_PRINT_DPI}")]
    Dpi {
        /// Page index, from 0.
        page: usize,
        /// The resolution given.
        dpi: u32,
    },
    /// A word's box is empty or reaches outside its page.
    #[error(
        "word {word} on page {page} has box {w}x{h} at ({x}, {y}): \
         empty or outside the {width}x{height} page"
    )]
    WordOutside {
        /// Page index, from 0.
        page: usize,
        /// Word index on the page, from 0.
        word: usize,
        /// Left edge in pixels.
        x: u32,
        /// Top edge in pixels.
        y: u32,
        /// Box width in pixels.
        w: u32,
        /// Box height in pixels.
        h: u32,
        /// Page width in pixels.
        width: u32,
        /// Page height in pixels.
        height: u32,
    },
    /// A page has more than [`MAX_WORDS_PER_PAGE`] words.
    #[error("page {page} has {count} OCR words, more than {MAX_WORDS_PER_PAGE}")]
    TooManyWords {
        /// Page index, from 0.
        page: usize,
        /// Words given.
        count: usize,
    },
    /// A word is longer than [`MAX_WORD_BYTES`].
    #[error("word {word} on page {page} is {bytes} bytes, more than {MAX_WORD_BYTES}")]
    WordTooLong {
        /// Page index, from 0.
        page: usize,
        /// Word index on the page, from 0.
        word: usize,
        /// Its length in UTF-8 bytes.
        bytes: usize,
    },
    /// The input hash is not 64 lowercase hex digits.
    #[error("input hash {0:?} is not a SHA-256 in lowercase hex")]
    InputHash(String),
}

/// One OCR word: its text and its box in page pixels, origin top left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeWord {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
    /// The word as recognised (control characters are dropped).
    pub text: String,
}

/// One page of the safe copy: its pixels, their resolution and its words.
#[derive(Debug, Clone, Copy)]
pub struct SafePage<'a> {
    /// The rendered page, RGBA (alpha is composited on white).
    pub image: &'a PageImage,
    /// Resolution it was rendered at; sets the page size in points.
    pub dpi: u32,
    /// OCR words drawn as invisible text over their boxes.
    pub words: &'a [SafeWord],
}

/// The only metadata a safe copy carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafePdfMeta {
    /// The info dictionary's `/Producer`.
    pub producer: String,
    /// SHA-256 (lowercase hex) of the input as the receipt records it, in the info key
    /// [`INPUT_KEY`].
    pub input_sha256: Option<String>,
}

/// How one page's pixels are stored.
struct EncodedImage {
    data: Vec<u8>,
    gray: bool,
    jpeg: bool,
}

/// A checked page: its encoded image, size in points and words as CIDs.
struct PreparedPage {
    image: EncodedImage,
    width: u32,
    height: u32,
    width_pt: f32,
    height_pt: f32,
    words: Vec<(Vec<u16>, [f32; 4])>,
}

/// Checks every input, then builds the safe copy in memory.
pub fn write_safe_pdf(pages: &[SafePage<'_>], meta: &SafePdfMeta) -> Result<Vec<u8>, SafePdfError> {
    if pages.is_empty() {
        return Err(SafePdfError::NoPages);
    }
    if let Some(hash) = &meta.input_sha256 {
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if hash.len() != 64 || !hash.bytes().all(hex) {
            return Err(SafePdfError::InputHash(hash.clone()));
        }
    }
    let prepared = pages
        .iter()
        .enumerate()
        .map(|(i, page)| prepare(i, page))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(assemble(&prepared, meta))
}

fn prepare(index: usize, page: &SafePage<'_>) -> Result<PreparedPage, SafePdfError> {
    let image = page.image;
    let (width, height) = (image.width, image.height);
    let expected = crate::pages::page_bytes(width, height);
    if width == 0
        || height == 0
        || width > MAX_PAGE_SIDE
        || height > MAX_PAGE_SIDE
        || u64::try_from(image.rgba.len()).ok() != Some(expected)
    {
        return Err(SafePdfError::PageSize {
            page: index,
            width,
            height,
            bytes: image.rgba.len(),
        });
    }
    if !DPI_RANGE.contains(&page.dpi) {
        return Err(SafePdfError::Dpi {
            page: index,
            dpi: page.dpi,
        });
    }
    if page.words.len() > MAX_WORDS_PER_PAGE {
        return Err(SafePdfError::TooManyWords {
            page: index,
            count: page.words.len(),
        });
    }
    let scale = 72.0 / to_f32(page.dpi);
    let height_pt = to_f32(height) * scale;
    let mut words = Vec::with_capacity(page.words.len());
    for (i, word) in page.words.iter().enumerate() {
        if word.text.len() > MAX_WORD_BYTES {
            return Err(SafePdfError::WordTooLong {
                page: index,
                word: i,
                bytes: word.text.len(),
            });
        }
        let inside = |start: u32, len: u32, side: u32| {
            len > 0 && start.checked_add(len).is_some_and(|end| end <= side)
        };
        if !inside(word.x, word.w, width) || !inside(word.y, word.h, height) {
            return Err(SafePdfError::WordOutside {
                page: index,
                word: i,
                x: word.x,
                y: word.y,
                w: word.w,
                h: word.h,
                width,
                height,
            });
        }
        let cids = to_cids(&word.text);
        if cids.is_empty() {
            continue;
        }
        // [left, bottom, width, height] in points, origin bottom left.
        let bottom = height_pt - to_f32(word.y + word.h) * scale;
        words.push((
            cids,
            [
                to_f32(word.x) * scale,
                bottom,
                to_f32(word.w) * scale,
                to_f32(word.h) * scale,
            ],
        ));
    }
    Ok(PreparedPage {
        image: encode_image(image),
        width,
        height,
        width_pt: to_f32(width) * scale,
        height_pt,
        words,
    })
}

/// The CIDs of a word: its UTF-16 code units, one per BMP character;
/// characters beyond the BMP become U+FFFD and control characters are
/// dropped. CID and Unicode value agree, so the ToUnicode map is the identity
/// over the CIDs used.
fn to_cids(text: &str) -> Vec<u16> {
    text.chars()
        .filter(|c| !c.is_control())
        .map(|c| u16::try_from(u32::from(c)).unwrap_or(0xFFFD))
        .collect()
}

#[allow(
    clippy::cast_precision_loss,
    reason = "page sides are at most 65535 pixels, exact in f32"
)]
fn to_f32(n: u32) -> f32 {
    n as f32
}

fn assemble(pages: &[PreparedPage], meta: &SafePdfMeta) -> Vec<u8> {
    let mut pdf = Pdf::new();
    let catalog_id = Ref::new(1);
    let tree_id = Ref::new(2);
    let info_id = Ref::new(3);
    let font_id = Ref::new(4);
    let cid_font_id = Ref::new(5);
    let descriptor_id = Ref::new(6);
    let cmap_id = Ref::new(7);
    let first_page = 8;
    // Three objects per page: the page, its content stream, its image.
    let page_ref = |i: usize, k: i32| {
        let base = i32::try_from(i).unwrap_or(i32::MAX / 4);
        Ref::new(first_page + base * 3 + k)
    };

    pdf.catalog(catalog_id).pages(tree_id);
    pdf.pages(tree_id)
        .kids((0..pages.len()).map(|i| page_ref(i, 0)))
        .count(i32::try_from(pages.len()).unwrap_or(i32::MAX));
    {
        let mut info = pdf.document_info(info_id);
        info.producer(TextStr(&meta.producer));
        if let Some(hash) = &meta.input_sha256 {
            info.pair(Name(INPUT_KEY.as_bytes()), TextStr(hash));
        }
    }

    let mut used = BTreeSet::new();
    let mut word_count = 0;
    for (i, page) in pages.iter().enumerate() {
        let (page_id, content_id, image_id) = (page_ref(i, 0), page_ref(i, 1), page_ref(i, 2));
        write_image(&mut pdf, image_id, page);
        let content = page_content(page);
        let content = miniz_oxide::deflate::compress_to_vec_zlib(&content, FLATE_LEVEL);
        pdf.stream(content_id, &content).filter(Filter::FlateDecode);

        let mut pdf_page = pdf.page(page_id);
        pdf_page
            .parent(tree_id)
            .media_box(Rect::new(0.0, 0.0, page.width_pt, page.height_pt))
            .contents(content_id);
        let mut resources = pdf_page.resources();
        resources.x_objects().pair(Name(b"Im0"), image_id);
        if !page.words.is_empty() {
            resources.fonts().pair(Name(b"F0"), font_id);
        }
        resources.finish();
        pdf_page.finish();
        for (cids, _) in &page.words {
            used.extend(cids.iter().copied());
        }
        word_count += page.words.len();
    }
    if word_count > 0 {
        write_font(
            &mut pdf,
            [font_id, cid_font_id, descriptor_id, cmap_id],
            &used,
        );
    }
    pdf.finish()
}

/// The page: its image over the whole media box, then each word as
/// invisible text scaled to its box.
fn page_content(page: &PreparedPage) -> Vec<u8> {
    let mut content = Content::new();
    content.save_state();
    content.transform([page.width_pt, 0.0, 0.0, page.height_pt, 0.0, 0.0]);
    content.x_object(Name(b"Im0"));
    content.restore_state();
    if !page.words.is_empty() {
        content.begin_text();
        content.set_text_rendering_mode(TextRenderingMode::Invisible);
        for (cids, [x, bottom, w, h]) in &page.words {
            // Font size = box height; horizontal scaling stretches the
            // glyph advances (GLYPH_WIDTH each) to the box width.
            let advance = to_f32(u32::try_from(cids.len()).unwrap_or(u32::MAX)) * GLYPH_WIDTH;
            content.set_font(Name(b"F0"), *h);
            content.set_horizontal_scaling(100.0 * 1000.0 * w / (advance * h));
            content.set_text_matrix([1.0, 0.0, 0.0, 1.0, *x, bottom + h * DESCENT / 1000.0]);
            let bytes: Vec<u8> = cids.iter().flat_map(|c| c.to_be_bytes()).collect();
            content.show(Str(&bytes));
        }
        content.end_text();
    }
    content.finish().into_vec()
}

fn write_image(pdf: &mut Pdf, id: Ref, page: &PreparedPage) {
    let image = &page.image;
    let channels = if image.gray { 1 } else { 3 };
    let mut xobject = pdf.image_xobject(id, &image.data);
    xobject
        .width(i32::try_from(page.width).unwrap_or(i32::MAX))
        .height(i32::try_from(page.height).unwrap_or(i32::MAX))
        .color_space_name(Name(if image.gray {
            b"DeviceGray"
        } else {
            b"DeviceRGB"
        }))
        .bits_per_component(8);
    if image.jpeg {
        xobject.filter(Filter::DctDecode);
    } else {
        xobject.filter(Filter::FlateDecode);
        xobject
            .decode_parms()
            .predictor(Predictor::PngOptimum)
            .colors(channels)
            .columns(i32::try_from(page.width).unwrap_or(i32::MAX))
            .bits_per_component(8);
    }
}

/// A Type0 font with no glyphs (it is never drawn, render mode 3) and no
/// font file: Identity-H, every CID GLYPH_WIDTH wide, and a ToUnicode map
/// from each CID used back to its character, so any BMP text is searchable
/// and copyable without embedding a font.
fn write_font(pdf: &mut Pdf, [font, cid_font, descriptor, cmap]: [Ref; 4], used: &BTreeSet<u16>) {
    let name = Name(b"VitrineInvisible");
    let system_info = SystemInfo {
        registry: Str(b"Adobe"),
        ordering: Str(b"Identity"),
        supplement: 0,
    };
    pdf.type0_font(font)
        .base_font(name)
        .encoding_predefined(Name(b"Identity-H"))
        .descendant_font(cid_font)
        .to_unicode(cmap);
    pdf.cid_font(cid_font)
        .subtype(CidFontType::Type2)
        .base_font(name)
        .system_info(system_info)
        .font_descriptor(descriptor)
        .default_width(GLYPH_WIDTH)
        .cid_to_gid_map_predefined(Name(b"Identity"));
    pdf.font_descriptor(descriptor)
        .name(name)
        .flags(FontFlags::NON_SYMBOLIC)
        .bbox(Rect::new(0.0, -DESCENT, GLYPH_WIDTH, 1000.0 - DESCENT))
        .italic_angle(0.0)
        .ascent(1000.0 - DESCENT)
        .descent(-DESCENT)
        .cap_height(1000.0 - DESCENT)
        .stem_v(80.0);
    let mut map = UnicodeCmap::new(Name(b"Vitrine-UTF16"), system_info);
    for &cid in used {
        map.pair(cid, char::from_u32(u32::from(cid)).unwrap_or('\u{FFFD}'));
    }
    let map = map.finish();
    let map = miniz_oxide::deflate::compress_to_vec_zlib(map.as_slice(), FLATE_LEVEL);
    pdf.cmap(cmap, &map)
        .name(Name(b"Vitrine-UTF16"))
        .system_info(system_info)
        .filter(Filter::FlateDecode);
}

/// Stores the page as gray when every pixel (composited on white) is gray,
/// else as RGB; Flate with PNG predictors, or JPEG when that is clearly
/// smaller (photographs).
fn encode_image(image: &PageImage) -> EncodedImage {
    let on_white = |c: u8, a: u8| {
        let v = (u32::from(c) * u32::from(a) + 255 * (255 - u32::from(a)) + 127) / 255;
        u8::try_from(v).unwrap_or(u8::MAX)
    };
    let rgb: Vec<u8> = image
        .rgba
        .chunks_exact(4)
        .flat_map(|px| {
            [
                on_white(px[0], px[3]),
                on_white(px[1], px[3]),
                on_white(px[2], px[3]),
            ]
        })
        .collect();
    let gray = rgb
        .chunks_exact(3)
        .all(|px| px[0] == px[1] && px[1] == px[2]);
    let samples = if gray {
        rgb.iter().step_by(3).copied().collect()
    } else {
        rgb
    };
    let channels = if gray { 1 } else { 3 };
    let columns = usize::try_from(image.width).unwrap_or(usize::MAX);
    let flate = miniz_oxide::deflate::compress_to_vec_zlib(
        &png_filter(&samples, columns, channels),
        FLATE_LEVEL,
    );
    let jpeg = encode_jpeg(&samples, image.width, image.height, gray);
    match jpeg {
        // A clear margin: JPEG blurs text edges, so only a photograph,
        // where it wins by far, is worth it.
        Some(jpeg) if jpeg.len() < flate.len() / 4 * 3 => EncodedImage {
            data: jpeg,
            gray,
            jpeg: true,
        },
        _ => EncodedImage {
            data: flate,
            gray,
            jpeg: false,
        },
    }
}

fn encode_jpeg(samples: &[u8], width: u32, height: u32, gray: bool) -> Option<Vec<u8>> {
    let (w, h) = (u16::try_from(width).ok()?, u16::try_from(height).ok()?);
    let mut out = Vec::new();
    let color = if gray {
        jpeg_encoder::ColorType::Luma
    } else {
        jpeg_encoder::ColorType::Rgb
    };
    jpeg_encoder::Encoder::new(&mut out, JPEG_QUALITY)
        .encode(samples, w, h, color)
        .ok()?;
    Some(out)
}

/// PNG row filtering (PDF predictor 15): each row gets the filter whose
/// output has the least sum of absolute values (the PNG spec's heuristic),
/// prefixed by the filter's type byte.
fn png_filter(samples: &[u8], columns: usize, channels: usize) -> Vec<u8> {
    let stride = columns * channels;
    let zero = vec![0u8; stride];
    let mut out = Vec::with_capacity(samples.len() + samples.len() / stride.max(1));
    let mut candidate = vec![0u8; stride];
    let mut best = vec![0u8; stride];
    for (r, row) in samples.chunks_exact(stride).enumerate() {
        let above = if r == 0 {
            &zero[..]
        } else {
            &samples[(r - 1) * stride..r * stride]
        };
        let mut best_type = 0u8;
        let mut best_cost = u64::MAX;
        for kind in 0u8..5 {
            for i in 0..stride {
                let a = if i >= channels { row[i - channels] } else { 0 };
                let b = above[i];
                let c = if i >= channels {
                    above[i - channels]
                } else {
                    0
                };
                let predicted = match kind {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => u8::try_from((u16::from(a) + u16::from(b)) / 2).unwrap_or(0),
                    _ => paeth(a, b, c),
                };
                candidate[i] = row[i].wrapping_sub(predicted);
            }
            let cost = candidate
                .iter()
                .map(|&v| u64::from(v.min(0u8.wrapping_sub(v))))
                .sum();
            if cost < best_cost {
                best_cost = cost;
                best_type = kind;
                std::mem::swap(&mut best, &mut candidate);
            }
        }
        out.push(best_type);
        out.extend_from_slice(&best);
    }
    out
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}
