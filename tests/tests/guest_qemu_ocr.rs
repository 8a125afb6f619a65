//! Safe copies under QEMU (TCG): the image's application disk is mounted
//! in the guest and its tesseract reads a page the test made, in the VM.

use std::time::{Duration, Instant};

use vitrine_daemon::backend::qemu::QemuBackend;
use vitrine_daemon::backend::{GuestImage, VmConfig};
use vitrine_daemon::fresh_guest::{self, GuestDeadlines};
use vitrine_daemon::task::TaskInput;
use vitrine_shim::protocol::{Limits, SafeCopy, TaskStatus};
use vitrine_tests::fixtures;
use vitrine_tests::guest_image;

#[test]
fn a_safe_copy_in_a_fresh_guest_reads_the_pages_words_with_the_app_disks_tesseract(
) -> anyhow::Result<()> {
    let test = "a_safe_copy_in_a_fresh_guest_reads_the_pages_words_with_the_app_disks_tesseract";
    let Some(dir) = guest_image::require(test) else {
        return Ok(());
    };
    // Arrange
    let image = GuestImage::from_dir(&dir)?;
    assert!(
        image.app_disk.is_some(),
        "{} has no apps.squashfs: rebuild it with shim/image/build.sh",
        dir.display()
    );
    let config = VmConfig::new(image);
    let pdf = fixtures::pdf_with_pages(&["Quick brown foxes jump"]);
    let mut input = TaskInput::file(
        "letter.pdf",
        "application/pdf",
        pdf,
        Limits {
            time_limit_ms: 300_000,
            ..Limits::default()
        },
    );
    input.safe_copy = Some(SafeCopy {
        ocr: Some("eng".into()),
    });
    let started = Instant::now();

    // Act
    let done = fresh_guest::run_in_fresh_guest(
        &QemuBackend::new(),
        &config,
        &input,
        GuestDeadlines::after_shutdown(Duration::from_secs(10)),
    )?;

    // Assert
    let run = done.task;
    eprintln!(
        "{test}: {:?} in {:?} (boot {:?}); guest log: {:?}",
        run.status,
        started.elapsed(),
        done.boot,
        run.logs
            .iter()
            .filter(|l| l.contains("ocr"))
            .collect::<Vec<_>>()
    );
    assert_eq!(run.status, Some(TaskStatus::Ok), "logs: {:?}", run.logs);
    let page = &run.pages[&0];
    let print = &run.prints[&0];
    // Long side 1754 px over the page's long side in points.
    let long_pt = fixtures::PDF_PAGE_PT.0.max(fixtures::PDF_PAGE_PT.1);
    let dpi = (page.width.max(page.height) * 72 + long_pt / 2) / long_pt;
    assert_eq!(print.dpi, dpi);
    let words: Vec<&str> = print.words.iter().map(|w| w.text.as_str()).collect();
    for expected in ["Quick", "brown", "foxes", "jump"] {
        assert!(words.contains(&expected), "no {expected:?} in {words:?}");
    }
    for w in &print.words {
        assert!(w.x + w.w <= page.width && w.y + w.h <= page.height, "{w:?}");
    }
    Ok(())
}

#[test]
fn a_guest_without_the_app_disk_renders_but_refuses_ocr_saying_why() -> anyhow::Result<()> {
    let test = "a_guest_without_the_app_disk_renders_but_refuses_ocr_saying_why";
    let Some(dir) = guest_image::require(test) else {
        return Ok(());
    };
    let mut image = GuestImage::from_dir(&dir)?;
    image.app_disk = None;
    let config = VmConfig::new(image);
    let limits = Limits {
        time_limit_ms: 60_000,
        ..Limits::default()
    };
    let plain = TaskInput::file("a.txt", "text/plain", b"hello".to_vec(), limits);
    let mut ocr = plain.clone();
    ocr.safe_copy = Some(SafeCopy {
        ocr: Some("eng".into()),
    });
    let run = |input: &TaskInput| {
        fresh_guest::run_in_fresh_guest(
            &QemuBackend::new(),
            &config,
            input,
            GuestDeadlines::after_shutdown(Duration::from_secs(10)),
        )
    };

    let shown = run(&plain)?.task;
    let refused = run(&ocr)?.task;

    assert_eq!(shown.status, Some(TaskStatus::Ok), "logs: {:?}", shown.logs);
    match refused.status {
        Some(TaskStatus::Failed(why)) => assert!(why.contains("application disk"), "{why}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    Ok(())
}
