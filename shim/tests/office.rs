//! Office documents through the real `vitrine-shim` as a local process,
//! with the host's LibreOffice standing in for the app disk's: a .docx
//! the test makes comes back as its pages, converted by a LibreOffice
//! started for it or by one preloaded before `Ready` (over its own pipe);
//! a document whose load macro would write a file writes nothing; an OLE2
//! header with garbage after it ends with a clear verdict.

mod support;

// Shared with the D-Bus tests, which use all of it.
#[path = "../../daemon/tests/dbus_support/office_docs.rs"]
#[allow(dead_code)]
mod office_docs;

use std::path::Path;
use std::time::Instant;

use office_docs::{convert, soffice_or_skip, text_fodt, text_fodt_with};
use support::{have_poppler, limits, processes_of_uid, Guest};
use vitrine_shim::protocol::TaskStatus;
use vitrine_shim::render::office::{PRELOAD_ENV, SOFFICE_ENV};

const SOFFICE_BIN: &str = "/usr/lib/libreoffice/program/soffice.bin";

fn ready(test: &str) -> bool {
    have_poppler(test) && soffice_or_skip(test).is_some()
}

fn guest(preload: bool) -> Guest {
    let mut env = vec![(SOFFICE_ENV, Path::new(SOFFICE_BIN))];
    if preload {
        env.push((PRELOAD_ENV, Path::new("office")));
    }
    Guest::start_with_env(&env)
}

fn logs_with<'a>(logs: &'a [String], needle: &str) -> Vec<&'a String> {
    logs.iter().filter(|l| l.contains(needle)).collect()
}

#[test]
fn a_docx_comes_back_as_its_pages_from_a_libreoffice_started_for_it() {
    let test = "a_docx_comes_back_as_its_pages_from_a_libreoffice_started_for_it";
    if !ready(test) {
        return;
    }
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let docx = convert(
        dir.path(),
        "letter.fodt",
        text_fodt(&["First page", "Second page", "Third page"]).as_bytes(),
        "docx",
    );
    let mut guest = guest(false);

    // Act: named .txt, so only the content can say what it is.
    let out = guest.open_file("letter.txt", &docx, limits(120_000));

    // Assert
    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    assert_eq!(out.page_count, Some(3), "{:?}", out.logs);
    assert_eq!(out.pages.len(), 3);
    let converted = logs_with(&out.logs, "office: format=docx ");
    assert_eq!(converted.len(), 1, "{:?}", out.logs);
    assert!(
        converted[0].contains(" libreoffice=started "),
        "{converted:?}"
    );
    guest.shutdown();
}

#[test]
fn a_preloaded_libreoffice_converts_over_its_pipe_without_starting_another() {
    let test = "a_preloaded_libreoffice_converts_over_its_pipe_without_starting_another";
    if !ready(test) {
        return;
    }
    // Arrange: LibreOffice starts before Ready, as in an office template.
    let dir = tempfile::tempdir().unwrap();
    let docx = convert(
        dir.path(),
        "memo.fodt",
        text_fodt(&["Preloaded page"]).as_bytes(),
        "docx",
    );
    let started = Instant::now();
    let mut guest = guest(true);
    let to_ready = started.elapsed();

    // Act
    let t0 = Instant::now();
    let out = guest.open_file("memo.docx", &docx, limits(120_000));
    let first = out.first_frame.unwrap_or_default();

    // Assert
    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    assert_eq!(out.pages.len(), 1);
    let converted = logs_with(&out.logs, "office: format=docx ");
    assert!(
        converted
            .first()
            .is_some_and(|l| l.contains(" libreoffice=preloaded ")),
        "{:?}",
        out.logs
    );
    eprintln!(
        "{test}: Ready after {to_ready:?} (LibreOffice preloaded); first frame {first:?}, \
         task {:?}",
        t0.elapsed()
    );
    guest.shutdown();
}

#[test]
fn a_preloaded_libreoffice_dies_with_a_shim_that_was_killed() {
    let test = "a_preloaded_libreoffice_dies_with_a_shim_that_was_killed";
    if !ready(test) || !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {test} unless root with LibreOffice: it runs LibreOffice as a uid");
        return;
    }
    // Arrange: LibreOffice runs as the uid after the sandbox's.
    let mut guest = guest(true);
    let office_uid = guest.uid + 1;
    assert!(processes_of_uid(office_uid) > 0, "no preloaded LibreOffice");

    // Act: the shim dies without a word (a crash, a SIGKILL).
    guest.child.kill().unwrap();
    guest.child.wait().unwrap();

    // Assert: nothing of LibreOffice is left (one was left spinning at
    // 76% CPU for an hour before).
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while processes_of_uid(office_uid) > 0 && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        processes_of_uid(office_uid),
        0,
        "LibreOffice outlived the shim"
    );
}

#[test]
fn a_documents_load_macro_does_not_run_and_the_shim_says_nothing_was_written() {
    let test = "a_documents_load_macro_does_not_run_and_the_shim_says_nothing_was_written";
    if !ready(test) {
        return;
    }
    // Arrange: a Basic macro bound to the load event writes a file.
    let dir = tempfile::tempdir().unwrap();
    let canary = std::env::temp_dir().join(format!("vitrine-macro-ran-{}", std::process::id()));
    let _ = std::fs::remove_file(&canary);
    let source = text_fodt_with(
        &["Invoice with a macro"],
        &office_docs::load_macro(&canary.display().to_string()),
    );
    let odt = convert(dir.path(), "invoice.fodt", source.as_bytes(), "odt");
    assert!(
        odt.windows(12).any(|w| w == b"Basic/Standa"),
        "the document carries its macro library"
    );
    for preload in [false, true] {
        let mut guest = guest(preload);

        // Act
        let out = guest.open_file("invoice.odt", &odt, limits(120_000));

        // Assert
        assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
        assert_eq!(out.pages.len(), 1);
        assert!(!canary.exists(), "the macro wrote {}", canary.display());
        assert_eq!(
            logs_with(&out.logs, " written-outside=0").len(),
            1,
            "{:?}",
            out.logs
        );
        guest.shutdown();
    }
}

#[test]
fn an_ole2_header_with_garbage_after_it_ends_with_a_clear_verdict() {
    let test = "an_ole2_header_with_garbage_after_it_ends_with_a_clear_verdict";
    if !ready(test) {
        return;
    }
    let garbage = [
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1".as_slice(),
        &[0x5a; 8192],
    ]
    .concat();
    let mut guest = guest(false);

    let out = guest.open_file("report.doc", &garbage, limits(120_000));

    match &out.status {
        Some(TaskStatus::Failed(why)) => {
            assert!(why.starts_with("office: an OLE2 file"), "{why}");
        }
        other => panic!("expected a failure, got {other:?}: {:?}", out.logs),
    }
    assert!(out.pages.is_empty());
    guest.shutdown();
}
