//! Inputs for guest tests, made at test time so that every byte is known:
//! small real PDFs, PNGs, hostile files, and static programs built with `cc`.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::process::Command;

/// An input could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// PNG encoding failed.
    #[error("cannot encode the PNG fixture")]
    Png(#[from] png::EncodingError),
    /// File I/O failed.
    #[error("fixture file I/O failed")]
    Io(#[from] io::Error),
    /// The C compiler failed.
    #[error("cc -static failed for {name}: {stderr}")]
    Compile {
        /// Program name.
        name: String,
        /// What cc said.
        stderr: String,
    },
}

/// Page size of the fixture PDFs, in points (A6 landscape).
pub const PDF_PAGE_PT: (u32, u32) = (420, 298);

/// A real PDF with one page per entry of `lines`: the line in 36 pt
/// Helvetica (not embedded, so the guest's fontconfig must find a substitute)
/// above a filled blue bar. Text may hold letters, digits and spaces.
pub fn pdf_with_pages(lines: &[&str]) -> Vec<u8> {
    let page_count = lines.len();
    // Objects: 1 catalog, 2 pages, 3 font, then per page: page, contents.
    let page_obj = |i: usize| 4 + 2 * i;
    let mut objects: Vec<String> = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        format!(
            "<< /Type /Pages /Kids [{}] /Count {page_count} >>",
            (0..page_count)
                .map(|i| format!("{} 0 R", page_obj(i)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let (w, h) = PDF_PAGE_PT;
    for (i, line) in lines.iter().enumerate() {
        let text: String = line
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
            .collect();
        let content = format!(
            "0.1 0.3 0.8 rg 30 40 {} 30 re f\nBT /F1 36 Tf 0 0 0 rg 30 {} Td ({text}) Tj ET\n",
            w - 60,
            h / 2
        );
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w} {h}] \
             /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
            page_obj(i) + 1
        ));
        objects.push(format!(
            "<< /Length {} >>\nstream\n{content}endstream",
            content.len()
        ));
    }
    let mut pdf = String::from("%PDF-1.4\n");
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        let _ = write!(pdf, "{} 0 obj\n{body}\nendobj\n", i + 1);
    }
    let xref = pdf.len();
    let _ = write!(pdf, "xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
    for offset in offsets {
        let _ = writeln!(pdf, "{offset:010} 00000 n ");
    }
    let _ = write!(
        pdf,
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    );
    pdf.into_bytes()
}

/// A PDF that no reader can open: a header, then a truncated object with a
/// broken stream, no cross-reference table and no catalog.
pub fn malformed_pdf() -> Vec<u8> {
    let mut pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n7 0 obj\n<< /Length 99999999 /Filter /FlateDecode >>\nstream\n".to_vec();
    // Not a zlib stream: bytes of a simple generator, so the file is fixed.
    let mut x: u32 = 0x1234_5678;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        pdf.push(x.to_le_bytes()[0]);
    }
    pdf.extend_from_slice(b"\nstartxref\n987654321\n%%EOF\n");
    pdf
}

/// Width and height of [`png_two_colors`].
pub const PNG_SIZE: (u32, u32) = (96, 64);
/// Left half of [`png_two_colors`].
pub const PNG_LEFT: [u8; 3] = [220, 30, 30];
/// Right half of [`png_two_colors`].
pub const PNG_RIGHT: [u8; 3] = [30, 60, 220];

/// An opaque 96x64 RGB PNG: left half red, right half blue.
pub fn png_two_colors() -> Result<Vec<u8>, FixtureError> {
    let (w, h) = PNG_SIZE;
    let mut data = Vec::with_capacity(usize::try_from(w * h * 3).unwrap_or(0));
    for _y in 0..h {
        for x in 0..w {
            data.extend_from_slice(if x < w / 2 { &PNG_LEFT } else { &PNG_RIGHT });
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&data)?;
    writer.finish()?;
    Ok(out)
}

/// Side of [`png_decompression_bomb`]: 20000x20000 grey pixels, 400 MB
/// decoded (1.6 GB as RGBA), from a file of about 2.5 MB.
pub const BOMB_SIDE: u32 = 20_000;

/// A valid PNG whose pixel data inflates about 160 times: all-zero rows,
/// deflated by hand as one fixed-Huffman block of maximal back-references.
pub fn png_decompression_bomb() -> Vec<u8> {
    let side = BOMB_SIDE;
    // Each row: filter byte 0, then `side` zero pixels.
    let raw_len = u64::from(side) * (u64::from(side) + 1);
    let mut zlib = vec![0x78, 0x01];
    zlib.extend(deflate_zeros(raw_len));
    // Adler-32 of n zero bytes: a stays 1, b grows by 1 per byte.
    let adler = (u32::try_from(raw_len % 65_521).unwrap_or(0) << 16) | 1;
    zlib.extend_from_slice(&adler.to_be_bytes());

    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit greyscale, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(&mut png, b"IDAT", &zlib);
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// A raw deflate stream of `n` zero bytes: literal 0, then copies of 258
/// bytes at distance 1, then literals for the rest.
fn deflate_zeros(n: u64) -> Vec<u8> {
    let mut bits = BitWriter::default();
    bits.push_lsb(1, 1); // BFINAL
    bits.push_lsb(1, 2); // BTYPE = fixed Huffman
    let literal_zero = |bits: &mut BitWriter| bits.push_code(0x30, 8);
    if n > 0 {
        literal_zero(&mut bits);
    }
    let rest = n.saturating_sub(1);
    for _ in 0..rest / 258 {
        bits.push_code(0xC5, 8); // length symbol 285 = 258 bytes
        bits.push_code(0, 5); // distance code 0 = distance 1
    }
    for _ in 0..rest % 258 {
        literal_zero(&mut bits);
    }
    bits.push_code(0, 7); // end of block (256)
    bits.finish()
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u32,
    used: u32,
}

impl BitWriter {
    /// Pushes `len` bits of `value`, least significant first (header fields).
    fn push_lsb(&mut self, value: u32, len: u32) {
        for i in 0..len {
            self.push_bit((value >> i) & 1);
        }
    }

    /// Pushes a Huffman code of `len` bits, most significant first.
    fn push_code(&mut self, code: u32, len: u32) {
        for i in (0..len).rev() {
            self.push_bit((code >> i) & 1);
        }
    }

    fn push_bit(&mut self, bit: u32) {
        self.acc |= bit << self.used;
        self.used += 1;
        if self.used == 8 {
            self.out.push(self.acc.to_le_bytes()[0]);
            self.acc = 0;
            self.used = 0;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.used > 0 {
            self.out.push(self.acc.to_le_bytes()[0]);
        }
        self.out
    }
}

fn png_chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    png.extend_from_slice(&len.to_be_bytes());
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let mut crc = Crc32::default();
    crc.update(kind);
    crc.update(data);
    png.extend_from_slice(&crc.value().to_be_bytes());
}

struct Crc32 {
    table: [u32; 256],
    state: u32,
}

impl Default for Crc32 {
    fn default() -> Self {
        let mut table = [0u32; 256];
        for (n, slot) in (0u32..).zip(table.iter_mut()) {
            let mut c = n;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        Self {
            table,
            state: 0xFFFF_FFFF,
        }
    }
}

impl Crc32 {
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            let i = usize::from((self.state.to_le_bytes()[0]) ^ b);
            self.state = self.table[i] ^ (self.state >> 8);
        }
    }

    fn value(&self) -> u32 {
        self.state ^ 0xFFFF_FFFF
    }
}

/// A C program that prints two known lines and exits 0.
pub const HELLO_C: &str = r#"#include <stdio.h>
int main(void) {
    printf("VITRINE TERMINAL WORKS\n");
    printf("sum %d plus %d is %d\n", 20, 22, 20 + 22);
    return 0;
}
"#;

/// A C program that forks until something stops it.
pub const FORK_BOMB_C: &str = r#"#include <unistd.h>
int main(void) {
    for (;;) fork();
}
"#;

/// A C program that writes to stdout as fast as it can, forever.
pub const STDOUT_FLOOD_C: &str = r#"#include <string.h>
#include <unistd.h>
int main(void) {
    char buf[65536];
    memset(buf, 'F', sizeof buf);
    for (int i = 79; i < (int)sizeof buf; i += 80) buf[i] = '\n';
    for (;;) write(1, buf, sizeof buf);
}
"#;

/// Compiles `source` with `cc -static -Os` in `dir` and returns the binary.
pub fn static_program(dir: &Path, name: &str, source: &str) -> Result<Vec<u8>, FixtureError> {
    let src = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&src, source)?;
    let out = Command::new("cc")
        .args(["-static", "-Os", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()?;
    if !out.status.success() {
        return Err(FixtureError::Compile {
            name: name.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(std::fs::read(bin)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_xref_offsets_point_at_their_objects() {
        let pdf = pdf_with_pages(&["One", "Two"]);
        let text = String::from_utf8(pdf).unwrap();

        let xref_at: usize = text
            .lines()
            .skip_while(|l| *l != "startxref")
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let entries: Vec<usize> = text[xref_at..]
            .lines()
            .skip(3)
            .take_while(|l| l.ends_with(" n "))
            .map(|l| l[..10].parse().unwrap())
            .collect();

        assert!(text[xref_at..].starts_with("xref\n"));
        assert_eq!(entries.len(), 7);
        for (i, offset) in entries.iter().enumerate() {
            assert!(text[*offset..].starts_with(&format!("{} 0 obj", i + 1)));
        }
    }

    /// Runs the host's `pdfinfo` on `pdf`; `None` (after a skip line) if
    /// poppler-utils is not installed.
    fn host_pdfinfo(test: &str, pdf: &[u8]) -> Option<(bool, String)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.pdf");
        std::fs::write(&path, pdf).unwrap();
        match Command::new("pdfinfo").arg(&path).output() {
            Ok(out) => Some((
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )),
            Err(e) => {
                eprintln!(
                    "SKIPPED {test}: pdfinfo not runnable ({e}); apt-get install poppler-utils"
                );
                None
            }
        }
    }

    #[test]
    fn pdf_fixture_opens_in_host_poppler_with_its_page_count() {
        let pdf = pdf_with_pages(&["One", "Two", "Three"]);

        let Some((ok, text)) = host_pdfinfo("pdf_fixture_opens_in_host_poppler", &pdf) else {
            return;
        };

        assert!(ok, "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("Pages:") && l.ends_with(" 3")),
            "{text}"
        );
        assert!(!text.contains("Error"), "{text}");
    }

    #[test]
    fn malformed_pdf_is_refused_by_host_poppler() {
        let Some((ok, text)) = host_pdfinfo("malformed_pdf_is_refused", &malformed_pdf()) else {
            return;
        };

        assert!(!ok, "poppler opened the malformed PDF: {text}");
    }

    #[test]
    fn two_color_png_decodes_to_its_halves() {
        let png = png_two_colors().unwrap();

        let mut reader = png::Decoder::new(png.as_slice()).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();

        assert_eq!((info.width, info.height), PNG_SIZE);
        assert_eq!(buf[..3], PNG_LEFT);
        assert_eq!(buf[buf.len() - 3..], PNG_RIGHT);
    }

    #[test]
    fn bomb_is_small_but_declares_a_huge_image() {
        let png = png_decompression_bomb();

        let reader = png::Decoder::new(png.as_slice()).read_info().unwrap();

        assert_eq!(reader.info().width, BOMB_SIDE);
        assert!(png.len() < 3 * 1024 * 1024, "{} bytes", png.len());
    }

    #[test]
    fn bomb_rows_inflate_to_zeros() {
        let png = png_decompression_bomb();
        let mut decoder = png::Decoder::new(png.as_slice());
        decoder.set_limits(png::Limits { bytes: usize::MAX });
        let mut reader = decoder.read_info().unwrap();

        let first = reader.next_row().unwrap().unwrap().data().to_vec();

        assert_eq!(first.len(), usize::try_from(BOMB_SIDE).unwrap());
        assert!(first.iter().all(|&b| b == 0));
    }

    #[test]
    fn deflate_zeros_round_trips_through_a_real_inflater() {
        // Through the png crate: a tiny image built the same way decodes fully.
        let raw_len = 5 * (7 + 1);
        let mut zlib = vec![0x78, 0x01];
        zlib.extend(deflate_zeros(raw_len));
        let adler = (u32::try_from(raw_len % 65_521).unwrap() << 16) | 1;
        zlib.extend_from_slice(&adler.to_be_bytes());
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&7u32.to_be_bytes());
        ihdr.extend_from_slice(&5u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png_chunk(&mut png, b"IHDR", &ihdr);
        png_chunk(&mut png, b"IDAT", &zlib);
        png_chunk(&mut png, b"IEND", &[]);

        let mut reader = png::Decoder::new(png.as_slice()).read_info().unwrap();
        let mut buf = vec![1; reader.output_buffer_size()];
        reader.next_frame(&mut buf).unwrap();

        assert_eq!(buf, vec![0; 35]);
    }
}
