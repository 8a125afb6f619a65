//! Office documents through `vitrine open --png`, a private bus, the real
//! `vitrined` and QEMU guests whose LibreOffice runs from the read-only
//! application disk: a .docx, .xlsx, .pptx and .odt the test makes come
//! back as pages whose words OCR reads, as many pages as the host's
//! LibreOffice makes of them, converted by the LibreOffice preloaded in the
//! office template; a .docm whose VBA auto-runs and an .odt whose load
//! macro would write a file show their pages and write nothing; hostile
//! files end with a clear verdict and the daemon keeps serving.
//!
//! Needs dbus, QEMU, the guest image (its application disk), the host's
//! LibreOffice and poppler-utils; each missing piece prints a SKIPPED line.

mod dbus_support;

use std::path::Path;

use dbus_support::docm::docm_with_auto_macro;
use dbus_support::office_docs::{
    convert, host_page_count, load_macro, sheet_fods, slides_fodp, soffice_or_skip, text_fodt,
    text_fodt_with,
};
use dbus_support::{
    example_policy, image_or_skip, loud, ocr_or_skip, text, tool_or_skip, PrivateBus,
};

fn pages_in(dir: &Path) -> u32 {
    std::fs::read_dir(dir).map_or(0, |d| {
        let n = d
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("page-"))
            })
            .count();
        u32::try_from(n).unwrap()
    })
}

fn start(image: &Path) -> PrivateBus {
    PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--no-windows".as_ref(),
        ],
        &[],
    )
}

/// `vitrine open --png DIR FILE`: its exit code, report and page folder.
fn open(bus: &PrivateBus, test: &str, file: &Path) -> (Option<i32>, String, std::path::PathBuf) {
    let pages = file.with_extension("pages");
    let out = bus.vitrine(&[
        "open".as_ref(),
        "--png".as_ref(),
        pages.as_os_str(),
        file.as_os_str(),
    ]);
    let report = text(&out);
    loud(&format!("{test}: {}:\n{report}", file.display()));
    (out.status.code(), report, pages)
}

fn ready(test: &str) -> Option<std::path::PathBuf> {
    let image = image_or_skip(test)?;
    if !tool_or_skip(test, "dbus-daemon", "dbus") || !tool_or_skip(test, "pdfinfo", "poppler-utils")
    {
        return None;
    }
    soffice_or_skip(test)?;
    Some(image)
}

#[test]
fn word_excel_powerpoint_and_opendocument_files_come_back_as_their_pages() {
    let test = "word_excel_powerpoint_and_opendocument_files_come_back_as_their_pages";
    let Some(image) = ready(test) else {
        return;
    };
    // Arrange: the files, made here by the host's LibreOffice.
    let work = tempfile::tempdir().unwrap();
    let text_doc = text_fodt(&["Quarterly REPORT for Vitrine", "Second PAGE of the letter"]);
    let sheet = sheet_fods(&[&["Revenue", "Costs"], &["SPREADSHEET", "Totals"]]);
    let slides = slides_fodp(&["OPENING slide title", "CLOSING slide words"]);
    let docs: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "letter.docx",
            convert(work.path(), "letter.fodt", text_doc.as_bytes(), "docx"),
            &["QUARTERLY", "REPORT"],
        ),
        (
            "budget.xlsx",
            convert(work.path(), "budget.fods", sheet.as_bytes(), "xlsx"),
            &["REVENUE", "SPREADSHEET"],
        ),
        (
            "deck.pptx",
            convert(work.path(), "deck.fodp", slides.as_bytes(), "pptx"),
            &["OPENING", "SLIDE"],
        ),
        (
            "memo.odt",
            convert(work.path(), "memo.fodt", text_doc.as_bytes(), "odt"),
            &["QUARTERLY", "VITRINE"],
        ),
    ];
    let bus = start(&image);

    for (name, bytes, words) in &docs {
        let file = work.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let want_pages = host_page_count(work.path(), name, bytes);

        // Act
        let (code, report, pages) = open(&bus, test, &file);

        // Assert
        assert_eq!(code, Some(0), "{name}: {report}");
        assert!(report.contains("sandbox(office)"), "{name}: {report}");
        assert!(
            report.contains("by the LibreOffice preloaded in its template"),
            "{name}: a template clone converts with the LibreOffice it holds: {report}"
        );
        assert_eq!(
            pages_in(&pages),
            want_pages,
            "{name}: pages shown vs the host's LibreOffice + pdfinfo: {report}"
        );
        if let Some(read) = ocr_or_skip(&format!("{test} ({name})"), &pages.join("page-1.png")) {
            for word in *words {
                assert!(read.contains(word), "{name}: OCR of page 1 read {read:?}");
            }
        }
    }
}

#[test]
fn documents_whose_macros_would_write_a_file_show_their_pages_and_write_nothing() {
    let test = "documents_whose_macros_would_write_a_file_show_their_pages_and_write_nothing";
    let Some(image) = ready(test) else {
        return;
    };
    // Arrange: a .docm whose VBA AutoOpen and Document_Open write in /tmp
    // (olevba lists both as AutoExec), and an .odt whose Basic macro is
    // bound to the load event.
    let work = tempfile::tempdir().unwrap();
    let docm = work.path().join("invoice.docm");
    std::fs::write(
        &docm,
        docm_with_auto_macro("VBA invoice body", "/tmp/macro-ran"),
    )
    .unwrap();
    let source = text_fodt_with(&["MACRO document body"], &load_macro("/tmp/macro-ran"));
    let odt = work.path().join("invoice.odt");
    std::fs::write(
        &odt,
        convert(work.path(), "invoice.fodt", source.as_bytes(), "odt"),
    )
    .unwrap();
    let bus = start(&image);

    for (file, format) in [(&docm, "docx"), (&odt, "odt")] {
        // Act
        let (code, report, pages) = open(&bus, test, file);

        // Assert: clean, its page, and the shim's check found nothing
        // written outside LibreOffice's output.
        assert_eq!(code, Some(0), "{report}");
        assert!(report.contains("verdict   clean"), "{report}");
        assert_eq!(pages_in(&pages), 1, "{report}");
        assert!(
            report.contains(&format!("office    {format} converted to PDF in the VM"))
                && report.contains("macros did not run (nothing was written outside"),
            "{report}"
        );
    }
}

#[test]
fn hostile_office_files_end_with_a_clear_verdict_and_the_daemon_keeps_serving() {
    let test = "hostile_office_files_end_with_a_clear_verdict_and_the_daemon_keeps_serving";
    let Some(image) = ready(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let good = convert(
        work.path(),
        "good.fodt",
        text_fodt(&["Still SERVING documents"]).as_bytes(),
        "docx",
    );
    let sheet = convert(
        work.path(),
        "t.fods",
        sheet_fods(&[&["a", "b"] as &[&str]; 40]).as_bytes(),
        "xlsx",
    );
    let long: Vec<String> = (1..=5000).map(|i| format!("Page {i}")).collect();
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("bomb.docx", zip_bomb()),
        ("cut.xlsx", sheet[..sheet.len() / 2].to_vec()),
        (
            "long.odt",
            convert(work.path(), "long.fodt", text_fodt(&long).as_bytes(), "odt"),
        ),
        (
            "garbage.doc",
            [
                b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1".as_slice(),
                &[0x5a; 8192],
            ]
            .concat(),
        ),
        ("good.docx", good),
    ];
    let bus = start(&image);
    let mut reports = Vec::new();
    for (name, bytes) in &files {
        let file = work.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        reports.push((*name, open(&bus, test, &file)));
    }

    let [bomb, cut, long, garbage, good] = &reports[..] else {
        unreachable!()
    };
    for (name, (code, report, _)) in [bomb, cut, garbage] {
        assert_eq!(*code, Some(1), "{name}: {report}");
        assert!(report.contains("office:"), "{name}: {report}");
    }
    let (code, report, pages) = &long.1;
    assert_eq!(*code, Some(0), "{report}");
    // LibreOffice converts the cap and one page more: the verdict knows
    // only that there are more.
    assert!(
        report.contains("showing ")
            && (report.contains("of more than") || report.contains("of at least")),
        "long.odt says a limit cut it: {report}"
    );
    assert!(pages_in(pages) >= 1, "{report}");
    let (code, report, pages) = &good.1;
    assert_eq!(*code, Some(0), "the daemon still serves: {report}");
    assert_eq!(pages_in(pages), 1, "{report}");
}

/// A .docx-shaped zip whose document part inflates from about 1 MiB to
/// 1 GiB of zeros.
fn zip_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut out);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        zip.start_file("[Content_Types].xml", opts).unwrap();
        zip.write_all(br#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#).unwrap();
        zip.start_file("word/document.xml", opts).unwrap();
        zip.write_all(b"<?xml version=\"1.0\"?><w:document xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"><w:body><w:p><w:r><w:t>").unwrap();
        let zeros = vec![b' '; 1 << 20];
        for _ in 0..1024 {
            zip.write_all(&zeros).unwrap();
        }
        zip.write_all(b"</w:t></w:r></w:p></w:body></w:document>")
            .unwrap();
        zip.finish().unwrap();
    }
    out.into_inner()
}
