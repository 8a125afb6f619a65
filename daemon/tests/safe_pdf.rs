//! The safe-copy PDF, checked with the real PDF tools: qpdf's structure
//! check, poppler's page count, text and word boxes, and extracted images.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use vitrine_daemon::pages::PageImage;
use vitrine_daemon::safe_pdf::{write_safe_pdf, SafePage, SafePdfMeta, SafeWord, INPUT_KEY};

const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Runs a tool; a missing tool fails the test naming its Debian package.
fn tool(program: &str, package: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): apt-get install {package}"))
}

fn tool_ok(program: &str, package: &str, args: &[&str]) -> String {
    let out = tool(program, package, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn page(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 4]) -> PageImage {
    let mut rgba = Vec::with_capacity(usize::try_from(width * height * 4).unwrap());
    for y in 0..height {
        for x in 0..width {
            rgba.extend_from_slice(&pixel(x, y));
        }
    }
    PageImage::from_rgba(width, height, rgba).unwrap()
}

/// White with black bars where the words are, like a scanned line of text.
fn text_like(width: u32, height: u32, words: &[SafeWord]) -> PageImage {
    page(width, height, |x, y| {
        let ink = words.iter().any(|w| {
            (w.x..w.x + w.w).contains(&x) && (w.y..w.y + w.h).contains(&y) && (x + y) % 3 == 0
        });
        if ink {
            [0, 0, 0, 255]
        } else {
            [255, 255, 255, 255]
        }
    })
}

fn word(x: u32, y: u32, w: u32, h: u32, text: &str) -> SafeWord {
    SafeWord {
        x,
        y,
        w,
        h,
        text: text.to_owned(),
    }
}

/// The safe copy of `pages`, also written to `out` for the poppler tools.
fn write_to(pages: &[SafePage<'_>], meta: &SafePdfMeta, out: &Path) -> Vec<u8> {
    let bytes = write_safe_pdf(pages, meta).unwrap();
    std::fs::write(out, &bytes).unwrap();
    bytes
}

fn meta(receipt: Option<&str>) -> SafePdfMeta {
    SafePdfMeta {
        producer: "Vitrine safe copy".to_owned(),
        input_sha256: receipt.map(str::to_owned),
    }
}

/// qpdf --check passes and pdfinfo counts `pages`.
fn assert_valid(path: &Path, pages: usize) {
    let p = path.to_str().unwrap();
    tool_ok("qpdf", "qpdf", &["--check", p]);
    let info = tool_ok("pdfinfo", "poppler-utils", &[p]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("Pages:") && l.ends_with(&format!(" {pages}"))),
        "pdfinfo: {info}"
    );
}

/// `(text, [xMin, yMin, xMax, yMax])` of each word pdftotext -bbox finds,
/// and the page size in points.
fn bbox_words(path: &Path) -> (Vec<(String, [f64; 4])>, [f64; 2]) {
    let html = tool_ok(
        "pdftotext",
        "poppler-utils",
        &["-bbox", path.to_str().unwrap(), "-"],
    );
    let attr = |line: &str, name: &str| -> f64 {
        let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        line[start..].split('"').next().unwrap().parse().unwrap()
    };
    let mut size = [0.0; 2];
    let mut words = Vec::new();
    for line in html.lines().map(str::trim) {
        if line.starts_with("<page ") {
            size = [attr(line, "width"), attr(line, "height")];
        } else if line.starts_with("<word ") {
            let text = line.split('>').nth(1).unwrap().split('<').next().unwrap();
            let b = ["xMin", "yMin", "xMax", "yMax"].map(|k| attr(line, k));
            words.push((text.to_owned(), b));
        }
    }
    (words, size)
}

#[test]
fn ocr_words_come_back_from_pdftotext_at_their_boxes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("safe.pdf");
    let first = [
        word(120, 200, 300, 40, "Invoice"),
        word(450, 200, 260, 40, "Grüße"),
        word(120, 900, 520, 60, "Ελληνικά"),
        word(700, 1600, 400, 30, "total:"),
    ];
    let second = [
        word(10, 10, 200, 50, "second"),
        word(1000, 1700, 230, 50, "end"),
        // Beyond the BMP: U+FFFD; control characters: dropped.
        word(300, 300, 200, 50, "a\u{1F600}b\u{7}c"),
        word(600, 600, 100, 50, "\u{1}\u{2}"),
    ];
    let (image1, image2) = (
        text_like(1240, 1754, &first),
        text_like(1240, 1754, &second),
    );
    let pages = [
        SafePage {
            image: &image1,
            dpi: 150,
            words: &first,
        },
        SafePage {
            image: &image2,
            dpi: 150,
            words: &second,
        },
    ];

    write_to(&pages, &meta(None), &out);

    assert_valid(&out, 2);
    assert_eq!(
        bbox_words(&out).0.len(),
        7,
        "the all-control word is not drawn"
    );
    let text = tool_ok("pdftotext", "poppler-utils", &[out.to_str().unwrap(), "-"]);
    for w in first.iter().chain(&second[..2]) {
        assert!(
            text.contains(&w.text),
            "{:?} missing from pdftotext: {text}",
            w.text
        );
    }
    assert!(text.contains("a\u{FFFD}bc"), "{text}");
    // Poppler draws the pages without complaint about the glyphless font,
    // and the words leave no mark: the same pixels as with no words at all.
    let bare_pages = pages.map(|p| SafePage { words: &[], ..p });
    let bare = dir.path().join("bare.pdf");
    write_to(&bare_pages, &meta(None), &bare);
    let render = |pdf: &Path, prefix: &str| {
        let prefix = dir.path().join(prefix);
        let args = [
            "-r",
            "50",
            "-png",
            pdf.to_str().unwrap(),
            prefix.to_str().unwrap(),
        ];
        let run = tool("pdftoppm", "poppler-utils", &args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.success() && stderr.is_empty(),
            "pdftoppm: {stderr}"
        );
        ["1", "2"].map(|n| decode_png(Path::new(&format!("{}-{n}.png", prefix.display()))))
    };
    assert!(
        render(&out, "ocr") == render(&bare, "bare"),
        "the OCR text is visible"
    );
    // Poppler reads Identity CIDs as Unicode even without a ToUnicode map;
    // other readers need the map, so check its entries (qpdf's QDF form
    // has the streams uncompressed).
    let qdf = tool_ok("qpdf", "qpdf", &["--qdf", out.to_str().unwrap(), "-"]).to_lowercase();
    for entry in [
        "<00fc> <00fc>",
        "<03bb> <03bb>",
        "<fffd> <fffd>",
        "<0049> <0049>",
    ] {
        assert!(qdf.contains(entry), "ToUnicode lacks {entry}");
    }
    assert!(!qdf.contains("<0007> "), "a control character was mapped");
    let (found, [page_w, page_h]) = bbox_words(&out);
    assert!(
        (page_w - 595.2).abs() < 0.1 && (page_h - 841.92).abs() < 0.1,
        "page {page_w}x{page_h}"
    );
    for w in first.iter().chain(&second[..2]) {
        let (_, b) = found
            .iter()
            .find(|(t, _)| *t == w.text)
            .unwrap_or_else(|| panic!("{:?} not in {found:?}", w.text));
        let s = 72.0 / 150.0;
        let want = [w.x, w.y, w.x + w.w, w.y + w.h].map(|v| f64::from(v) * s);
        eprintln!("{:?}: pdftotext {b:?}, image {want:?}", w.text);
        for k in 0..4 {
            let side = if k % 2 == 0 { page_w } else { page_h };
            assert!(
                (b[k] - want[k]).abs() <= 0.02 * side,
                "{:?}: pdftotext box {b:?}, image box {want:?}",
                w.text
            );
        }
    }
}

#[test]
fn only_producer_and_input_hash_are_written_and_no_active_content() {
    let words = [word(10, 10, 100, 20, "hello")];
    let image = text_like(400, 300, &words);
    let pages = [SafePage {
        image: &image,
        dpi: 96,
        words: &words,
    }];

    let bytes = write_safe_pdf(&pages, &meta(Some(HASH))).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.pdf");
    std::fs::write(&path, &bytes).unwrap();
    assert_valid(&path, 1);
    for key in [
        "/JS",
        "/JavaScript",
        "/OpenAction",
        "/AA",
        "/URI",
        "/Annots",
        "/AcroForm",
        "/EmbeddedFile",
        "/Names",
        "/Metadata",
        "/Title",
        "/Author",
        "/Creator",
        "/CreationDate",
        "/ModDate",
        "/Launch",
    ] {
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "{key} in the safe PDF"
        );
    }
    let info = tool_ok("pdfinfo", "poppler-utils", &[path.to_str().unwrap()]);
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {info}"))
    };
    assert_eq!(field("Producer:"), "Vitrine safe copy");
    assert_eq!(field("JavaScript:"), "no");
    assert_eq!(field("Form:"), "none");
    assert_eq!(field("Metadata Stream:"), "no");
    let receipt = format!("/{INPUT_KEY} ({HASH})");
    assert!(bytes
        .windows(receipt.len())
        .any(|w| w == receipt.as_bytes()));
}

#[test]
fn gray_pages_are_stored_gray_and_color_pages_rgb_without_losing_pixels() {
    // Gray with some transparency (composited on white), and the same
    // with one red pixel.
    let gray = page(64, 48, |x, y| {
        let v = u8::try_from((x * 4 + y) % 256).unwrap();
        [v, v, v, if x < 8 { 0 } else { 255 }]
    });
    let mut color = gray.clone();
    color.rgba[4 * (10 * 64 + 20)..4 * (10 * 64 + 20) + 4].copy_from_slice(&[200, 0, 0, 255]);
    let pages = [
        SafePage {
            image: &gray,
            dpi: 72,
            words: &[],
        },
        SafePage {
            image: &color,
            dpi: 72,
            words: &[],
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.pdf");

    write_to(&pages, &meta(None), &out);

    assert_valid(&out, 2);
    let list = tool_ok(
        "pdfimages",
        "poppler-utils",
        &["-list", out.to_str().unwrap()],
    );
    let rows: Vec<Vec<&str>> = list
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{list}");
    // page num type width height color comp bpc enc
    assert_eq!(
        &rows[0][3..9],
        ["64", "48", "gray", "1", "8", "image"],
        "{list}"
    );
    assert_eq!(
        &rows[1][3..9],
        ["64", "48", "rgb", "3", "8", "image"],
        "{list}"
    );
    let prefix = dir.path().join("img");
    tool_ok(
        "pdfimages",
        "poppler-utils",
        &["-png", out.to_str().unwrap(), prefix.to_str().unwrap()],
    );
    let on_white = |c: u8, a: u8| {
        u8::try_from((u32::from(c) * u32::from(a) + 255 * (255 - u32::from(a)) + 127) / 255)
            .unwrap()
    };
    for (n, source) in [gray, color].iter().enumerate() {
        let decoded = decode_png(&dir.path().join(format!("img-{n:03}.png")));
        let expected: Vec<u8> = source
            .rgba
            .chunks_exact(4)
            .flat_map(|p| {
                [
                    on_white(p[0], p[3]),
                    on_white(p[1], p[3]),
                    on_white(p[2], p[3]),
                ]
            })
            .collect();
        assert!(
            decoded == expected,
            "page {n}: pixels differ after the round trip"
        );
    }
}

/// 8-bit gray or RGB PNG as RGB bytes.
fn decode_png(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    match info.color_type {
        png::ColorType::Grayscale => buf.iter().flat_map(|&v| [v, v, v]).collect(),
        png::ColorType::Rgb => buf,
        other => panic!("{other:?}"),
    }
}

fn png_page(path: &Path) -> PageImage {
    let rgb = decode_png(path);
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let info = decoder.read_info().unwrap().info().clone();
    let rgba = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    PageImage::from_rgba(info.width, info.height, rgba).unwrap()
}

/// An A4 page of 10-point Helvetica text (poppler substitutes a system
/// font), the kind of page a guest renders.
fn text_document(path: &Path) {
    use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};
    let mut pdf = Pdf::new();
    pdf.catalog(Ref::new(1)).pages(Ref::new(2));
    pdf.pages(Ref::new(2)).kids([Ref::new(3)]).count(1);
    let mut content = Content::new();
    content.begin_text();
    content.set_font(Name(b"F1"), 10.0);
    content.set_leading(12.0);
    content.next_line(56.0, 780.0);
    for i in 0..60 {
        let line = format!(
            "{i:2} Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor"
        );
        content.show(Str(line.as_bytes()));
        content.next_line_using_leading();
    }
    content.end_text();
    let content = content.finish();
    let mut p = pdf.page(Ref::new(3));
    p.parent(Ref::new(2))
        .media_box(Rect::new(0.0, 0.0, 595.2, 841.8))
        .contents(Ref::new(4));
    p.resources().fonts().pair(Name(b"F1"), Ref::new(5));
    p.finish();
    pdf.stream(Ref::new(4), &content);
    pdf.type1_font(Ref::new(5)).base_font(Name(b"Helvetica"));
    std::fs::write(path, pdf.finish()).unwrap();
}

/// Sizes for the report (printed with --nocapture): a rendered 150-dpi text
/// page against img2pdf of the same PNG, and a photographic page.
#[test]
fn rendered_text_page_stays_small_and_photo_page_takes_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("text.pdf");
    text_document(&source);
    let prefix = dir.path().join("page");
    tool_ok(
        "pdftoppm",
        "poppler-utils",
        &[
            "-r",
            "150",
            "-png",
            "-singlefile",
            source.to_str().unwrap(),
            prefix.to_str().unwrap(),
        ],
    );
    let png_path = dir.path().join("page.png");
    let text = png_page(&png_path);
    assert_eq!((text.width, text.height), (1240, 1754));
    // Smooth shading with grain, like a photograph: what Flate does badly.
    let photo = page(1240, 1754, |x, y| {
        let wave = |v: u32, period: u32| (v % (2 * period)).abs_diff(period) * 200 / period;
        let grain = (u64::from(x) * 2_654_435_761) ^ (u64::from(y) * 40_503);
        let c = |base: u32| u8::try_from(base + u32::try_from(grain % 17).unwrap()).unwrap();
        [
            c(wave(x + y, 400)),
            c(wave(2 * x + 5000 - y, 700)),
            c(y * 200 / 1754),
            255,
        ]
    });

    let text_pdf = write_safe_pdf(
        &[SafePage {
            image: &text,
            dpi: 150,
            words: &[],
        }],
        &meta(None),
    )
    .unwrap();
    let photo_pdf = write_safe_pdf(
        &[SafePage {
            image: &photo,
            dpi: 150,
            words: &[],
        }],
        &meta(None),
    )
    .unwrap();
    let ten: Vec<SafePage<'_>> = (0..10)
        .map(|_| SafePage {
            image: &text,
            dpi: 150,
            words: &[],
        })
        .collect();
    let started = Instant::now();
    let ten_out = dir.path().join("ten.pdf");
    let ten_bytes = write_to(&ten, &meta(None), &ten_out).len();
    let ten_time = started.elapsed();

    let img2pdf_out = dir.path().join("img2pdf.pdf");
    tool_ok(
        "img2pdf",
        "img2pdf",
        &[
            png_path.to_str().unwrap(),
            "-o",
            img2pdf_out.to_str().unwrap(),
        ],
    );
    let img2pdf = std::fs::metadata(&img2pdf_out).unwrap().len();
    let png_size = std::fs::metadata(&png_path).unwrap().len();
    eprintln!(
        "text page 150 dpi: safe {} B, img2pdf {img2pdf} B (PNG {png_size} B); photo page: safe {} B; \
         10 text pages: {} B in {ten_time:?}",
        text_pdf.len(),
        photo_pdf.len(),
        ten_bytes
    );
    assert_valid(&ten_out, 10);
    let list = tool_ok(
        "pdfimages",
        "poppler-utils",
        &["-list", ten_out.to_str().unwrap()],
    );
    assert!(
        list.lines()
            .skip(2)
            .all(|l| l.contains(" gray ") && l.contains(" image ")),
        "{list}"
    );
    assert!(ten_bytes < 3 << 20, "10 text pages are {ten_bytes} bytes");
    assert!(
        u64::try_from(text_pdf.len()).unwrap() <= img2pdf,
        "no bigger than img2pdf's {img2pdf}"
    );
    let photo_path = dir.path().join("photo.pdf");
    std::fs::write(&photo_path, &photo_pdf).unwrap();
    let list = tool_ok(
        "pdfimages",
        "poppler-utils",
        &["-list", photo_path.to_str().unwrap()],
    );
    assert!(
        list.contains(" jpeg "),
        "photo page not stored as JPEG: {list}"
    );
    assert_valid(&photo_path, 1);
    // The predictors and Flate are lossless on a real rendered page.
    let prefix = dir.path().join("back");
    let args = [
        "-png",
        "-f",
        "1",
        "-l",
        "1",
        ten_out.to_str().unwrap(),
        prefix.to_str().unwrap(),
    ];
    tool_ok("pdfimages", "poppler-utils", &args);
    let back = decode_png(&dir.path().join("back-000.png"));
    let source: Vec<u8> = text
        .rgba
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    assert!(back == source, "the text page's pixels changed");
}

#[test]
fn bad_input_is_rejected() {
    let image = text_like(100, 80, &[]);
    let empty = PageImage::new(0, 10);
    let ok = [word(0, 0, 100, 80, "fits")];
    let outside = [word(50, 10, 51, 10, "wide")];
    let empty_box = [word(5, 5, 0, 10, "thin")];
    let long = [word(0, 0, 10, 10, &"x".repeat(101))];
    let many: Vec<SafeWord> = (0..8193).map(|_| word(0, 0, 1, 1, "w")).collect();
    let cases: Vec<(Vec<SafePage<'_>>, SafePdfMeta, &str)> = vec![
        (vec![], meta(None), "NoPages"),
        (
            vec![SafePage {
                image: &empty,
                dpi: 72,
                words: &[],
            }],
            meta(None),
            "PageSize",
        ),
        (
            vec![SafePage {
                image: &image,
                dpi: 35,
                words: &ok,
            }],
            meta(None),
            "Dpi",
        ),
        (
            vec![SafePage {
                image: &image,
                dpi: 1201,
                words: &ok,
            }],
            meta(None),
            "Dpi",
        ),
        (
            vec![
                SafePage {
                    image: &image,
                    dpi: 72,
                    words: &ok,
                },
                SafePage {
                    image: &image,
                    dpi: 72,
                    words: &outside,
                },
            ],
            meta(None),
            "WordOutside",
        ),
        (
            vec![SafePage {
                image: &image,
                dpi: 72,
                words: &empty_box,
            }],
            meta(None),
            "WordOutside",
        ),
        (
            vec![SafePage {
                image: &image,
                dpi: 72,
                words: &long,
            }],
            meta(None),
            "WordTooLong",
        ),
        (
            vec![SafePage {
                image: &image,
                dpi: 72,
                words: &many,
            }],
            meta(None),
            "TooManyWords",
        ),
        (
            vec![SafePage {
                image: &image,
                dpi: 72,
                words: &ok,
            }],
            meta(Some("not-a-hash")),
            "InputHash",
        ),
    ];

    for (pages, meta, want) in cases {
        let err = write_safe_pdf(&pages, &meta).unwrap_err();

        assert!(
            format!("{err:?}").starts_with(want),
            "want {want}, got {err:?}"
        );
    }
    // The word on the edge (0..100 of a 100-pixel page) is inside.
    write_safe_pdf(
        &[SafePage {
            image: &image,
            dpi: 72,
            words: &ok,
        }],
        &meta(None),
    )
    .unwrap();
}
