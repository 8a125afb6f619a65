//! Safe copies through the real CLI, a private bus, `vitrined` and QEMU
//! guests: a PDF that carries JavaScript, an embedded file, a link, a form
//! field and an author comes back as a PDF of its pages' pixels with none of
//! them; with `--ocr` the words the guest's tesseract found are searchable
//! where they are on the page; and a batch with one hostile file converts
//! the rest, names the failure, writes nothing for it and exits 1.
//!
//! Needs dbus, QEMU, the guest image (its application disk for OCR),
//! qpdf and poppler-utils; each missing piece prints a SKIPPED line.

mod dbus_support;

use std::path::Path;

use dbus_support::pdf_files::{hostile_pdf, plain_pdf, SENTENCE};
use dbus_support::{
    example_policy, file_names, image_or_skip, loud, text, tool_or_skip, PrivateBus,
};

/// A 64x48 PNG of one colour.
fn png_picture() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 64, 48);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[30, 120, 200].repeat(64 * 48)).unwrap();
    }
    out
}

fn run(bus: &PrivateBus, program: &str, args: &[&str], file: &Path) -> std::process::Output {
    bus.command(program).args(args).arg(file).output().unwrap()
}

/// `pdftotext ARGS FILE -`: its text on stdout.
fn pdftotext(bus: &PrivateBus, args: &[&str], file: &Path) -> String {
    let out = bus
        .command("pdftotext")
        .args(args)
        .arg(file)
        .arg("-")
        .output()
        .unwrap();
    assert!(out.status.success(), "pdftotext: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pdfinfo`'s page count.
fn pages(bus: &PrivateBus, file: &Path) -> u32 {
    let out = run(bus, "pdfinfo", &[], file);
    let info = String::from_utf8_lossy(&out.stdout).into_owned();
    info.lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("pdfinfo {}: {info}", file.display()))
}

/// The first word of `word` in `pdftotext -bbox`, as fractions of the page:
/// (xMin, yMin).
fn word_position(bus: &PrivateBus, file: &Path, word: &str) -> Option<(f64, f64)> {
    let html = pdftotext(bus, &["-bbox", "-f", "1", "-l", "1"], file);
    let attr = |tag: &str, name: &str| -> Option<f64> {
        let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
        tag[at..].split('"').next()?.parse().ok()
    };
    let page = html.split("<page ").nth(1)?;
    let (w, h) = (attr(page, "width")?, attr(page, "height")?);
    let tag = html.split("<word ").skip(1).find(|t| {
        t.split('>')
            .nth(1)
            .is_some_and(|rest| rest.starts_with(word))
    })?;
    Some((attr(tag, "xMin")? / w, attr(tag, "yMin")? / h))
}

#[test]
fn safe_copy_keeps_the_pixels_and_the_words_and_drops_everything_active() {
    let test = "safe_copy_keeps_the_pixels_and_the_words_and_drops_everything_active";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    for (tool, package) in [
        ("dbus-daemon", "dbus"),
        ("qpdf", "qpdf"),
        ("pdfdetach", "poppler-utils"),
    ] {
        if !tool_or_skip(test, tool, package) {
            return;
        }
    }
    // Arrange
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("report.pdf");
    std::fs::write(&input, hostile_pdf()).unwrap();
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
    // The input really carries what must not survive.
    let listed = run(&bus, "pdfdetach", &["-list"], &input);
    assert!(
        text(&listed).contains("1 embedded files"),
        "{}",
        text(&listed)
    );
    assert_eq!(pages(&bus, &input), 2);

    // Act
    let out = bus.vitrine(&["convert".as_ref(), "--ocr".as_ref(), input.as_os_str()]);
    let report = text(&out);
    loud(&format!("{test}:\n{report}"));

    // Assert: beside the input, whole, and nothing active in it.
    assert_eq!(out.status.code(), Some(0), "{report}");
    let copy = work.path().join("report-safe.pdf");
    let bytes =
        std::fs::read(&copy).unwrap_or_else(|e| panic!("{}: {e}\n{report}", copy.display()));
    let checked = run(&bus, "qpdf", &["--check"], &copy);
    assert!(checked.status.success(), "qpdf --check: {}", text(&checked));
    let listed = run(&bus, "pdfdetach", &["-list"], &copy);
    assert!(
        text(&listed).contains("0 embedded files"),
        "{}",
        text(&listed)
    );
    for needle in [
        "/JS",
        "/JavaScript",
        "/EmbeddedFile",
        "/URI",
        "/AcroForm",
        "/OpenAction",
        "Mallory",
        "tracker.invalid",
        "top secret",
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the safe copy contains {needle}"
        );
    }
    assert_eq!(pages(&bus, &copy), 2, "the same page count");

    // The OCR layer: the sentence is searchable, where it is drawn.
    let found = pdftotext(&bus, &[], &copy);
    assert!(found.contains(SENTENCE), "pdftotext of the copy: {found}");
    let want = word_position(&bus, &input, "Quarterly").expect("the input's word box");
    let got = word_position(&bus, &copy, "Quarterly").expect("the copy's word box");
    loud(&format!(
        "{test}: first word at {got:?} of the page; drawn at {want:?}"
    ));
    assert!(
        (got.0 - want.0).abs() <= 0.02 && (got.1 - want.1).abs() <= 0.02,
        "the word lies at {got:?} of the page, drawn at {want:?}"
    );
}

#[test]
fn a_batch_converts_the_good_files_and_names_the_hostile_one() {
    let test = "a_batch_converts_the_good_files_and_names_the_hostile_one";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    if !tool_or_skip(test, "dbus-daemon", "dbus") || !tool_or_skip(test, "qpdf", "qpdf") {
        return;
    }
    // Arrange: four honest files and a PDF that is garbage after its header.
    let work = tempfile::tempdir().unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("trap.pdf", hostile_pdf()),
        ("letter.pdf", plain_pdf("Dear customer")),
        ("photo.png", png_picture()),
        ("notes.txt", b"Meeting notes\nBring the numbers.\n".to_vec()),
        (
            "broken.pdf",
            [b"%PDF-1.7\n".as_slice(), &[0xa5; 4096]].concat(),
        ),
    ];
    let mut paths = Vec::new();
    for (name, bytes) in &files {
        let path = work.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        paths.push(path);
    }
    let out_dir = work.path().join("safe");
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

    // Act
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "convert".as_ref(),
        "--no-ocr".as_ref(),
        "--out".as_ref(),
        out_dir.as_os_str(),
    ];
    args.extend(paths.iter().map(|p| p.as_os_str()));
    let out = bus.vitrine(&args);
    let report = text(&out);
    loud(&format!("{test}:\n{report}"));

    // Assert
    assert_eq!(out.status.code(), Some(1), "a failure exits 1: {report}");
    assert!(report.contains("4 of 5 converted, 1 failed"), "{report}");
    let failed_line = report
        .lines()
        .find(|l| l.contains("broken.pdf") && l.contains("FAILED"))
        .unwrap_or_else(|| panic!("no FAILED line for broken.pdf: {report}"));
    assert!(
        failed_line.contains("pdf"),
        "the reason names what failed: {failed_line}"
    );
    let written = file_names(&out_dir);
    assert_eq!(
        written,
        [
            "letter-safe.pdf",
            "notes-safe.pdf",
            "photo-safe.pdf",
            "trap-safe.pdf"
        ],
        "no partial or temporary file for the failed one"
    );
    for name in &written {
        let checked = run(&bus, "qpdf", &["--check"], &out_dir.join(name));
        assert!(checked.status.success(), "{name}: {}", text(&checked));
    }
}
