//! Content sniffing: the MIME type from a file's first bytes, never from
//! its name. A `.txt` that starts with `%PDF-` is a PDF.
//!
//! The table is deliberately small and conservative. Anything it does not
//! recognise is `application/octet-stream`, which policies should treat as
//! the least trusted type.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// How many leading bytes the sniffer looks at. ISO 9660 images have their
/// signature at 32 KiB, so this must be more than that.
pub const SNIFF_LEN: usize = 64 * 1024;

pub const OCTET_STREAM: &str = "application/octet-stream";
pub const TEXT_PLAIN: &str = "text/plain";

const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
const PPTX: &str = "application/vnd.openxmlformats-officedocument.presentationml.presentation";

/// MIME types that a ZIP's stored `mimetype` entry may claim (ODF, EPUB).
const ZIP_DECLARED: &[&str] = &[
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "application/vnd.oasis.opendocument.graphics",
    "application/vnd.oasis.opendocument.formula",
    "application/vnd.oasis.opendocument.chart",
    "application/vnd.oasis.opendocument.database",
    "application/epub+zip",
];

/// Magic numbers at offset 0.
const MAGIC: &[(&[u8], &str)] = &[
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\0", "image/tiff"),
    (b"MM\0*", "image/tiff"),
    (b"\x7fELF", "application/x-executable"),
    (b"MZ", "application/vnd.microsoft.portable-executable"),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "application/x-ole-storage",
    ),
    (b"\x1f\x8b", "application/gzip"),
    (b"QFI\xfb", "application/x-qemu-disk"),
    (b"{\\rtf", "application/rtf"),
    (b"%!PS", "application/postscript"),
];

/// The MIME type of content starting with `prefix` (give it up to
/// [`SNIFF_LEN`] bytes; fewer only if the file is shorter).
pub fn sniff(prefix: &[u8]) -> &'static str {
    if prefix.is_empty() {
        return OCTET_STREAM;
    }
    // PDF readers accept the header anywhere in the first KiB, so a file
    // with junk before `%PDF-` is still a PDF to them, and so to us.
    if find(&prefix[..prefix.len().min(1024)], b"%PDF-").is_some() {
        return "application/pdf";
    }
    if let Some((_, mime)) = MAGIC.iter().find(|(m, _)| prefix.starts_with(m)) {
        return mime;
    }
    if prefix.len() >= 12 && &prefix[..4] == b"RIFF" && &prefix[8..12] == b"WEBP" {
        return "image/webp";
    }
    if let Some(image) = sniff_short_magic_image(prefix) {
        return image;
    }
    if prefix.starts_with(b"PK\x03\x04") || prefix.starts_with(b"PK\x05\x06") {
        return sniff_zip(prefix);
    }
    if prefix.get(0x8001..0x8006) == Some(b"CD001") {
        return "application/x-iso9660-image";
    }
    if prefix.starts_with(b"#!") {
        return "text/x-shellscript";
    }
    if let Some(markup) = sniff_markup(prefix) {
        return markup;
    }
    if is_text(prefix) {
        return TEXT_PLAIN;
    }
    OCTET_STREAM
}

/// Sniff an open file from offset 0 without moving its file position.
pub fn sniff_file(file: &File) -> io::Result<&'static str> {
    let mut buf = vec![0u8; SNIFF_LEN];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(sniff(&buf[..filled]))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn le16(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 2)
        .map(|s| usize::from(u16::from_le_bytes([s[0], s[1]])))
}

fn le32(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 4)
        .and_then(|s| usize::try_from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok())
}

/// BMP and ICO, whose magic is too short to trust alone: a BMP must also
/// carry a DIB header size that BMP writers use, and an icon a sane count
/// and first entry, so that text starting with "BM" stays text.
fn sniff_short_magic_image(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(b"BM") {
        let dib = le32(b, 14)?;
        return matches!(dib, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124).then_some("image/bmp");
    }
    if b.starts_with(b"\0\0\x01\0") {
        let count = le16(b, 4)?;
        // The first entry: reserved byte 0, then planes 0 or 1.
        let planes = le16(b, 10)?;
        let ok = (1..=256).contains(&count) && b.get(9) == Some(&0) && planes <= 1;
        return ok.then_some("image/vnd.microsoft.icon");
    }
    None
}

/// ZIP-based formats: ODF and EPUB declare themselves in a first, stored
/// `mimetype` entry; OOXML is recognised by its part names.
fn sniff_zip(b: &[u8]) -> &'static str {
    let mut at = 0usize;
    let mut first = true;
    // Walk the local file headers that fit in the prefix.
    while b.get(at..at + 4) == Some(b"PK\x03\x04") {
        let (Some(flags), Some(method), Some(size), Some(name_len), Some(extra_len)) = (
            le16(b, at + 6),
            le16(b, at + 8),
            le32(b, at + 18),
            le16(b, at + 26),
            le16(b, at + 28),
        ) else {
            break;
        };
        let name_start = at + 30;
        let Some(name) = b.get(name_start..name_start + name_len) else {
            break;
        };
        let data = name_start + name_len + extra_len;
        if first && name == b"mimetype" && method == 0 {
            if let Some(declared) = b.get(data..data + size) {
                if let Some(m) = ZIP_DECLARED.iter().find(|m| m.as_bytes() == declared) {
                    return m;
                }
            }
        }
        first = false;
        for (dir, mime) in [(&b"word/"[..], DOCX), (b"xl/", XLSX), (b"ppt/", PPTX)] {
            if name.starts_with(dir) {
                return mime;
            }
        }
        // Bit 3: the sizes follow the data (LibreOffice writes OOXML so);
        // 0xFFFFFFFF: they are in a zip64 field. Either way the next
        // header is found by its signature.
        at = if flags & 0x8 != 0 || size == 0xffff_ffff {
            match b.get(data..).and_then(|rest| find(rest, b"PK\x03\x04")) {
                Some(k) => data + k,
                None => break,
            }
        } else {
            data + size
        };
    }
    "application/zip"
}

/// HTML and XML/SVG, after an optional BOM and leading white space.
fn sniff_markup(b: &[u8]) -> Option<&'static str> {
    let b = b.strip_prefix(b"\xef\xbb\xbf").unwrap_or(b);
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c'))?;
    let b = &b[start..];
    if b.first() != Some(&b'<') {
        return None;
    }
    // The WHATWG MIME sniffing patterns for HTML: a tag name followed by a
    // space or `>`.
    const HTML_TAGS: &[&[u8]] = &[
        b"<!doctype html",
        b"<html",
        b"<head",
        b"<script",
        b"<iframe",
        b"<h1",
        b"<div",
        b"<font",
        b"<table",
        b"<a",
        b"<style",
        b"<title",
        b"<b",
        b"<body",
        b"<br",
        b"<p",
    ];
    let lower: Vec<u8> = b.iter().take(64).map(u8::to_ascii_lowercase).collect();
    for tag in HTML_TAGS {
        if lower.starts_with(tag) && matches!(lower.get(tag.len()), Some(b' ' | b'>')) {
            return Some("text/html");
        }
    }
    if lower.starts_with(b"<!--") {
        return Some("text/html");
    }
    if lower.starts_with(b"<svg") {
        return Some("image/svg+xml");
    }
    if lower.starts_with(b"<?xml") {
        let head: Vec<u8> = b.iter().take(4096).map(u8::to_ascii_lowercase).collect();
        if find(&head, b"<svg").is_some() {
            return Some("image/svg+xml");
        }
        if find(&head, b"<html").is_some() {
            return Some("application/xhtml+xml");
        }
        return Some("application/xml");
    }
    None
}

/// UTF-8 without control characters other than tab, newlines, form feed
/// and escape. A multi-byte character cut off at the end of the prefix is
/// allowed: the prefix may end mid-character.
fn is_text(b: &[u8]) -> bool {
    let utf16 = |rest: &[u8], unit: fn([u8; 2]) -> u16| {
        let units = rest.chunks_exact(2).map(|p| unit([p[0], p[1]]));
        char::decode_utf16(units).all(|c| c.is_ok_and(text_char))
    };
    // Windows Notepad's "Unicode": UTF-16 with a byte order mark.
    if let Some(rest) = b.strip_prefix(b"\xff\xfe") {
        return utf16(rest, u16::from_le_bytes);
    }
    if let Some(rest) = b.strip_prefix(b"\xfe\xff") {
        return utf16(rest, u16::from_be_bytes);
    }
    let valid = match std::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() && b.len() - e.valid_up_to() < 4 => {
            // Only a truncated final character.
            match std::str::from_utf8(&b[..e.valid_up_to()]) {
                Ok(s) => s,
                Err(_) => return false,
            }
        }
        Err(_) => return false,
    };
    valid.chars().all(text_char)
}

fn text_char(c: char) -> bool {
    !c.is_control() || matches!(c, '\t' | '\n' | '\r' | '\x0c' | '\x1b')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_entry(name: &str, data: &[u8]) -> Vec<u8> {
        let mut v = b"PK\x03\x04".to_vec();
        v.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let len = u32::try_from(data.len()).unwrap().to_le_bytes();
        v.extend_from_slice(&len); // compressed size
        v.extend_from_slice(&len); // uncompressed size
        v.extend_from_slice(&u16::try_from(name.len()).unwrap().to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(data);
        v
    }

    /// A local header with bit 3 set: sizes zero, the data then a
    /// descriptor, as LibreOffice writes every part of a .docx.
    fn streamed_zip_entry(name: &str, data: &[u8]) -> Vec<u8> {
        let mut v = zip_entry(name, &[]);
        v[6] = 0x08;
        v.extend_from_slice(data);
        v.extend_from_slice(b"PK\x07\x08");
        v.extend_from_slice(&[0; 12]);
        v
    }

    #[test]
    fn ooxml_written_with_data_descriptors_is_still_told_by_its_parts() {
        // LibreOffice's own .docx came back as application/zip and opened
        // as a hex view in the strict profile.
        let mut docx = streamed_zip_entry("[Content_Types].xml", b"<Types/>");
        docx.extend(streamed_zip_entry("_rels/.rels", b"<Relationships/>"));
        docx.extend(streamed_zip_entry("word/document.xml", b"<w:document/>"));
        assert_eq!(sniff(&docx), DOCX);
        let mut xlsx = streamed_zip_entry("[Content_Types].xml", b"<Types/>");
        xlsx.extend(streamed_zip_entry("xl/workbook.xml", b"<x/>"));
        assert_eq!(sniff(&xlsx), XLSX);
        // A zip64 writer's sizes, 0xFFFFFFFF in the local header.
        let mut big = zip_entry("[Content_Types].xml", b"<Types/>");
        big[18..26].copy_from_slice(&[0xff; 8]);
        big.extend(zip_entry("word/document.xml", b"<w/>"));
        assert_eq!(sniff(&big), DOCX);
    }

    #[test]
    fn magic_numbers_win_over_names() {
        assert_eq!(sniff(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(sniff(b"junk\n%PDF-1.4"), "application/pdf");
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0"), "image/png");
        assert_eq!(sniff(b"\xff\xd8\xff\xe0"), "image/jpeg");
        assert_eq!(sniff(b"GIF89a..."), "image/gif");
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), "image/webp");
        assert_eq!(sniff(b"\x7fELF\x02\x01\x01"), "application/x-executable");
        assert_eq!(sniff(b"#!/bin/sh\necho hi\n"), "text/x-shellscript");
        assert_eq!(sniff(b"QFI\xfb\0\0\0\x03"), "application/x-qemu-disk");
    }

    #[test]
    fn bmp_tiff_and_icons_are_images_and_bm_text_is_text() {
        let mut bmp = b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0".to_vec();
        bmp.extend_from_slice(&40u32.to_le_bytes());
        bmp.extend_from_slice(&[0; 24]);
        // One 16x16 entry: width, height, colours, reserved 0, planes 1.
        let ico = b"\0\0\x01\0\x01\0\x10\x10\0\0\x01\0\x20\0";

        assert_eq!(sniff(&bmp), "image/bmp");
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), "image/tiff");
        assert_eq!(sniff(b"MM\0*\0\0\0\x08"), "image/tiff");
        assert_eq!(sniff(ico), "image/vnd.microsoft.icon");
        assert_eq!(
            sniff(b"BMW service notes, 2024\n\nOil change\n"),
            TEXT_PLAIN
        );
    }

    #[test]
    fn utf16_text_with_a_byte_order_mark_is_text() {
        let le: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain("Notes\r\n".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        let be: Vec<u8> = [0xfe, 0xff]
            .into_iter()
            .chain("Notes".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();

        assert_eq!(sniff(&le), TEXT_PLAIN);
        assert_eq!(sniff(&be), TEXT_PLAIN);
        assert_eq!(sniff(b"\xff\xfe\x01\0\x02\0"), OCTET_STREAM);
    }

    #[test]
    fn zip_family_is_told_apart_by_content() {
        assert_eq!(sniff(&zip_entry("hello.txt", b"hi")), "application/zip");
        let odt = zip_entry("mimetype", b"application/vnd.oasis.opendocument.text");
        assert_eq!(sniff(&odt), "application/vnd.oasis.opendocument.text");
        let mut docx = zip_entry("[Content_Types].xml", b"<Types/>");
        docx.extend(zip_entry("word/document.xml", b"<w/>"));
        assert_eq!(sniff(&docx), DOCX);
        let xlsx = zip_entry("xl/workbook.xml", b"<x/>");
        assert_eq!(sniff(&xlsx), XLSX);
        // A made-up declared type is not believed.
        let fake = zip_entry("mimetype", b"text/plain");
        assert_eq!(sniff(&fake), "application/zip");
    }

    #[test]
    fn macro_enabled_ooxml_and_every_office_kind_sniff_as_their_family() {
        // .docm/.xlsm/.pptm differ from .docx/.xlsx/.pptx only in the content
        // type inside [Content_Types].xml and a vbaProject.bin part.
        let macro_zip = |dir: &str, main: &str| {
            let mut z = zip_entry(
                "[Content_Types].xml",
                b"<Types><Override ContentType=\"application/vnd.ms-word.document.macroEnabled.main+xml\"/></Types>",
            );
            z.extend(zip_entry(&format!("{dir}{main}"), b"<x/>"));
            z.extend(zip_entry(&format!("{dir}vbaProject.bin"), b"\xd0\xcf"));
            z
        };
        let ods = zip_entry(
            "mimetype",
            b"application/vnd.oasis.opendocument.spreadsheet",
        );
        let odp = zip_entry(
            "mimetype",
            b"application/vnd.oasis.opendocument.presentation",
        );

        assert_eq!(sniff(&macro_zip("word/", "document.xml")), DOCX);
        assert_eq!(sniff(&macro_zip("xl/", "workbook.xml")), XLSX);
        assert_eq!(sniff(&macro_zip("ppt/", "presentation.xml")), PPTX);
        assert_eq!(
            sniff(&ods),
            "application/vnd.oasis.opendocument.spreadsheet"
        );
        assert_eq!(
            sniff(&odp),
            "application/vnd.oasis.opendocument.presentation"
        );
        assert_eq!(
            sniff(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\0\0"),
            "application/x-ole-storage",
            ".doc, .xls and .ppt are OLE2 compound files"
        );
        assert_eq!(sniff(b"{\\rtf1\\ansi hello}"), "application/rtf");
    }

    #[test]
    fn markup_and_text_are_recognised() {
        assert_eq!(sniff(b"\xef\xbb\xbf  <!DOCTYPE html><p>x"), "text/html");
        assert_eq!(sniff(b"<html>"), "text/html");
        assert_eq!(
            sniff(b"<?xml version=\"1.0\"?><svg xmlns=\"x\"/>"),
            "image/svg+xml"
        );
        assert_eq!(sniff(b"<?xml version=\"1.0\"?><doc/>"), "application/xml");
        assert_eq!(sniff("plain text, ünïcode\n".as_bytes()), TEXT_PLAIN);
        assert_eq!(sniff(b"<htmlx>"), TEXT_PLAIN);
        // Cut in the middle of a two-byte character: still text.
        assert_eq!(sniff(b"abc \xc3"), TEXT_PLAIN);
    }

    #[test]
    fn everything_else_is_octet_stream() {
        assert_eq!(sniff(b""), OCTET_STREAM);
        assert_eq!(sniff(b"\0\x01\x02\x03"), OCTET_STREAM);
        assert_eq!(sniff(b"text\0with nul"), OCTET_STREAM);
        assert_eq!(sniff(b"\xc3\x28 invalid utf8"), OCTET_STREAM);
    }

    #[test]
    fn iso_signature_is_found_at_32k() {
        let mut iso = vec![0u8; 0x8010];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(sniff(&iso), "application/x-iso9660-image");
    }
}
