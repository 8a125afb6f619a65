//! Safe copies through the real `vitrine-shim` as a local process: pages
//! at print resolution, each followed by its `PagePrint`, with the words
//! the host's tesseract finds (the guest runs the app disk's).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::{have_poppler, limits, skip, Guest};
use vitrine_shim::ocr::{TESSDATA_ENV, TESSERACT_ENV};
use vitrine_shim::protocol::{Capability, SafeCopy, TaskStatus};

const PDF_FIXTURE: &[u8] = include_bytes!("../fixtures/three-pages.pdf");
const TESSERACT: &str = "/usr/bin/tesseract";
const TESSDATA: &str = "/usr/share/tesseract-ocr/5/tessdata";

/// The host's tesseract with English, or a SKIP line.
fn have_tesseract(test: &str) -> bool {
    let ok =
        Path::new(TESSERACT).is_file() && Path::new(TESSDATA).join("eng.traineddata").is_file();
    if !ok {
        skip(
            test,
            "tesseract missing (install tesseract-ocr tesseract-ocr-eng)",
        );
    }
    ok
}

/// A shim with the host's tesseract and a tessdata directory laid out as
/// the app disk's: the language file only (no `configs/`), readable by the
/// sandbox uid.
fn guest_with_tesseract() -> (Guest, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(
        Path::new(TESSDATA).join("eng.traineddata"),
        data.path().join("eng.traineddata"),
    )
    .unwrap();
    let guest = Guest::start_with_env(&[
        (TESSERACT_ENV, Path::new(TESSERACT)),
        (TESSDATA_ENV, data.path()),
    ]);
    (guest, data)
}

#[test]
fn a_safe_copy_sends_each_pages_print_data_after_its_frame_with_the_words_ocr_read() {
    let test = "a_safe_copy_sends_each_pages_print_data_after_its_frame_with_the_words_ocr_read";
    if !have_poppler(test) || !have_tesseract(test) {
        return;
    }
    // Arrange
    let (mut guest, _tessdata) = guest_with_tesseract();
    assert!(guest.capabilities.contains(&Capability::Ocr));
    let copy = SafeCopy {
        ocr: Some("eng".into()),
    };

    // Act
    let out = guest.safe_copy("three-pages.pdf", PDF_FIXTURE, limits(120_000), copy);

    // Assert
    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    assert_eq!(out.prints.len(), 3, "{:?}", out.logs);
    for (i, (print, after_frame)) in out.prints.iter().enumerate() {
        assert_eq!(print.page, u32::try_from(i).unwrap());
        assert!(after_frame, "page {i}'s print data came before its frame");
        // A4's long side at 1754 px: 150 dpi.
        assert!((148..=152).contains(&print.dpi), "dpi {}", print.dpi);
        let page = &out.pages[&print.page];
        assert_eq!(page.height(), 1754);
        for word in &print.words {
            assert!(word.x + word.w <= page.width() && word.y + word.h <= page.height());
        }
        let text: Vec<&str> = print.words.iter().map(|w| w.text.as_str()).collect();
        for expected in ["quick", "brown", "fox", "jumps", "lazy", "dog."] {
            assert!(
                text.contains(&expected),
                "page {i}: no {expected:?} in {text:?}"
            );
        }
    }
    guest.shutdown();
}

#[test]
fn a_safe_copy_without_ocr_sends_print_data_without_words() {
    if !have_poppler("a_safe_copy_without_ocr_sends_print_data_without_words") {
        return;
    }
    let mut guest = Guest::start();

    let out = guest.safe_copy(
        "three-pages.pdf",
        PDF_FIXTURE,
        limits(30_000),
        SafeCopy { ocr: None },
    );

    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    let dpis: Vec<u32> = out.prints.iter().map(|(p, _)| p.dpi).collect();
    assert_eq!(dpis, vec![150, 150, 150]);
    assert!(out
        .prints
        .iter()
        .all(|(p, after)| p.words.is_empty() && *after));
    guest.shutdown();
}

#[test]
fn ocr_without_tesseract_or_in_a_missing_language_fails_the_task_saying_what_to_do() {
    let test = "ocr_without_tesseract_or_in_a_missing_language_fails_the_task_saying_what_to_do";
    if !have_tesseract(test) {
        return;
    }
    let ocr = |lang: &str| SafeCopy {
        ocr: Some(lang.into()),
    };
    let mut bare = Guest::start();
    let (mut with, _tessdata) = guest_with_tesseract();

    let no_disk = bare.safe_copy("notes.txt", b"hello", limits(30_000), ocr("eng"));
    let no_lang = with.safe_copy("notes.txt", b"hello", limits(30_000), ocr("eng+zzz"));

    assert!(!bare.capabilities.contains(&Capability::Ocr));
    match no_disk.status {
        Some(TaskStatus::Failed(why)) => assert!(why.contains("application disk"), "{why}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    match no_lang.status {
        Some(TaskStatus::Failed(why)) => {
            assert!(why.contains("zzz.traineddata"), "{why}");
            assert!(why.contains("VITRINE_OCR_LANGS"), "{why}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(no_lang.prints.is_empty());
}

#[test]
fn a_safe_copy_of_a_text_file_reads_its_words_at_the_default_print_resolution() {
    let test = "a_safe_copy_of_a_text_file_reads_its_words_at_the_default_print_resolution";
    if !have_tesseract(test) {
        return;
    }
    let (mut guest, _tessdata) = guest_with_tesseract();
    let copy = SafeCopy {
        ocr: Some("eng".into()),
    };

    let out = guest.safe_copy(
        "notes.txt",
        b"Meeting moved to Thursday afternoon\n",
        limits(60_000),
        copy,
    );

    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    assert_eq!(out.prints.len(), 1);
    let (print, after_frame) = &out.prints[0];
    assert!(after_frame);
    assert_eq!(print.dpi, 150);
    let text: Vec<&str> = print.words.iter().map(|w| w.text.as_str()).collect();
    for expected in ["Meeting", "moved", "Thursday", "afternoon"] {
        assert!(text.contains(&expected), "no {expected:?} in {text:?}");
    }
    guest.shutdown();
}
