//! Files a new user opens first, through `vitrine open --png`, a private
//! bus, the real `vitrined` and a QEMU guest: each comes back as what it
//! is. A BMP and a TIFF are pictures (they were pages of replacement
//! characters), an SVG is a picture (it was its XML source), binary data is a hex view that says so (it was 95 pages of
//! U+FFFD for 300 KB), UTF-16 text (Notepad's "Unicode") is text, and
//! an empty file says it is empty instead of
//! showing a blank page with a clean verdict.
//!
//! Needs dbus, QEMU and the guest image (tesseract for the hex view's
//! words); each missing piece prints a SKIPPED line.

mod dbus_support;

use std::path::Path;

use dbus_support::{
    example_policy, image_or_skip, loud, ocr_or_skip, text, tool_or_skip, PrivateBus,
};

const TEST: &str = "everyday_files_come_back_as_what_they_are";

/// The test's colour: every pixel of both pictures.
const RGB: [u8; 3] = [200, 40, 120];

/// A 24-bit BMP, `w` x `h`, every pixel [`RGB`] (rows bottom-up, BGR,
/// padded to four bytes).
fn bmp(w: u32, h: u32) -> Vec<u8> {
    let row = (w * 3).div_ceil(4) * 4;
    let size = 54 + row * h;
    let mut b = b"BM".to_vec();
    for v in [size, 0, 54, 40, w, h] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    for v in [0u32, row * h, 2835, 2835, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for _ in 0..h {
        for x in 0..row {
            b.push(if x < w * 3 {
                RGB[2 - (x % 3) as usize]
            } else {
                0
            });
        }
    }
    b
}

/// An uncompressed RGB TIFF, `w` x `h`, every pixel [`RGB`]: one strip
/// after an eight-entry IFD.
fn tiff(w: u32, h: u32) -> Vec<u8> {
    let entries: u16 = 8;
    let ifd_len = 2 + 12 * u32::from(entries) + 4;
    let bps_at = 8 + ifd_len;
    let data_at = bps_at + 6;
    let mut b = b"II*\0".to_vec();
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&entries.to_le_bytes());
    let mut entry = |tag: u16, kind: u16, count: u32, value: u32| {
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&value.to_le_bytes());
    };
    entry(256, 4, 1, w); // width
    entry(257, 4, 1, h); // height
    entry(258, 3, 3, bps_at); // 8 bits per sample, three samples
    entry(259, 3, 1, 1); // no compression
    entry(262, 3, 1, 2); // RGB
    entry(273, 4, 1, data_at); // the strip
    entry(277, 3, 1, 3); // samples per pixel
    entry(279, 4, 1, w * h * 3); // strip bytes
    b.extend_from_slice(&0u32.to_le_bytes());
    for _ in 0..3 {
        b.extend_from_slice(&8u16.to_le_bytes());
    }
    for _ in 0..w * h {
        b.extend_from_slice(&RGB);
    }
    b
}

/// An SVG, `w` x `h`, a rectangle of [`RGB`] over all of it and a caption.
fn svg(w: u32, h: u32) -> Vec<u8> {
    let [r, g, b] = RGB;
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"rgb({r},{g},{b})\"/>\n\
         <text x=\"2\" y=\"10\" font-family=\"sans-serif\" font-size=\"8\">chart</text>\n\
         </svg>\n"
    )
    .into_bytes()
}

/// The RGB of the middle pixel of a PNG page.
fn middle_pixel(png: &Path) -> [u8; 3] {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let at = (info.height as usize / 2 * info.width as usize + info.width as usize / 2) * channels;
    [buf[at], buf[at + 1], buf[at + 2]]
}

fn pages_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("page-"))
        })
        .count()
    })
}

#[test]
fn everyday_files_come_back_as_what_they_are() {
    let Some(image) = image_or_skip(TEST) else {
        return;
    };
    if !tool_or_skip(TEST, "dbus-daemon", "dbus") {
        return;
    }
    // Arrange
    let work = tempfile::tempdir().unwrap();
    let files = [
        ("holiday.bmp", bmp(64, 48)),
        ("scan.tiff", tiff(64, 48)),
        ("chart.svg", svg(64, 48)),
        // gzip's magic, then bytes that are no text.
        (
            "notes.dat",
            [
                b"\x1f\x8b\x08\x00".as_slice(),
                &(0..=255u8).cycle().take(3000).collect::<Vec<_>>(),
            ]
            .concat(),
        ),
        ("empty.pdf", Vec::new()),
        // Windows Notepad's "Unicode": UTF-16LE with a byte order mark.
        (
            "notepad.txt",
            [0xff, 0xfe]
                .into_iter()
                .chain(
                    "Written in NOTEPAD on Windows\r\n"
                        .encode_utf16()
                        .flat_map(u16::to_le_bytes),
                )
                .collect(),
        ),
    ];
    for (name, bytes) in &files {
        std::fs::write(work.path().join(name), bytes).unwrap();
    }
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--no-windows".as_ref(),
        ],
        &[],
    );
    let open = |name: &str| {
        let pages = work.path().join(format!("{name}-pages"));
        let out = bus.vitrine(&[
            "open".as_ref(),
            "--png".as_ref(),
            pages.as_os_str(),
            work.path().join(name).as_os_str(),
        ]);
        let report = text(&out);
        loud(&format!("{TEST}: {name}:\n{report}"));
        (out, pages, report)
    };

    // Act + Assert: the pictures are pictures, of the test's colour.
    for name in ["holiday.bmp", "scan.tiff", "chart.svg"] {
        let (out, pages, report) = open(name);
        assert_eq!(out.status.code(), Some(0), "{report}");
        assert!(report.contains("sandbox(document)"), "an image: {report}");
        assert_eq!(pages_in(&pages), 1, "{report}");
        let px = middle_pixel(&pages.join("page-1.png"));
        for (got, want) in px.iter().zip(RGB) {
            assert!(
                got.abs_diff(want) <= 2,
                "{name}: middle pixel {px:?}, drew {RGB:?}"
            );
        }
    }

    // Binary data is a hex view that says what it is.
    let (out, pages, report) = open("notes.dat");
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(pages_in(&pages) >= 1, "{report}");
    if let Some(words) = ocr_or_skip(
        &format!("{TEST} (OCR of the hex view)"),
        &pages.join("page-1.png"),
    ) {
        assert!(words.contains("BINARY DATA"), "OCR read: {words}");
        assert!(words.contains("HEXADECIMAL"), "OCR read: {words}");
    }

    // UTF-16 text is text, not a hex view of its NULs.
    let (out, pages, report) = open("notepad.txt");
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("text/plain"), "{report}");
    assert_eq!(pages_in(&pages), 1, "{report}");
    if let Some(words) = ocr_or_skip(
        &format!("{TEST} (OCR of the UTF-16 text)"),
        &pages.join("page-1.png"),
    ) {
        assert!(words.contains("WRITTEN IN NOTEPAD"), "OCR read: {words}");
    }

    // An empty file is said to be empty, and no VM or page folder is spent.
    let (out, pages, report) = open("empty.pdf");
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("empty.pdf is empty (0 bytes)")
            || String::from_utf8_lossy(&out.stdout).contains("empty.pdf is empty (0 bytes)"),
        "{report}"
    );
    assert!(
        !report.contains("\nvm "),
        "no VM for an empty file: {report}"
    );
    assert!(!pages.exists(), "{report}");
}
