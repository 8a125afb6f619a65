//! Large documents under QEMU (TCG) in a 512 MiB guest, the size the
//! `document` profile gives: a text file of 100,000 lines (before pages
//! were streamed, 4,200 lines had the guest's kernel kill the renderer)
//! shows its first page quickly and stops at the task's pixel budget,
//! saying so.

use std::time::Duration;

use vitrine_daemon::backend::qemu::QemuBackend;
use vitrine_daemon::backend::{GuestImage, VmConfig};
use vitrine_daemon::fresh_guest::{self, GuestDeadlines};
use vitrine_daemon::guest_log::CutBy;
use vitrine_daemon::task::TaskInput;
use vitrine_shim::protocol::{Limits, TaskStatus};
use vitrine_tests::{fixtures, guest_image};

#[test]
fn hundred_thousand_lines_of_text_stream_out_of_a_512_mib_guest() -> anyhow::Result<()> {
    let test = "hundred_thousand_lines_of_text_stream_out_of_a_512_mib_guest";
    let Some(dir) = guest_image::require(test) else {
        return Ok(());
    };
    // Arrange
    let text: String = (0..100_000)
        .map(|i| format!("{i:06} the quick brown fox jumps over the lazy dog, again\n"))
        .collect();
    let limits = Limits {
        time_limit_ms: 300_000,
        ..Limits::default()
    };
    let fit = u32::try_from(limits.max_pixel_bytes / (900 * 1100 * 4))?;
    let input = TaskInput::file("big.txt", "text/plain", text.into_bytes(), limits);
    let mut config = VmConfig::new(GuestImage::from_dir(&dir)?);
    config.memory_mib = 512;

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
        "{test}: status {:?}, {:?} page(s), cut {:?}, boot {:?}, times {:?}",
        run.status, run.page_count, run.pages_cut, done.boot, run.times
    );
    assert_eq!(run.status, Some(TaskStatus::Ok), "logs: {:?}", run.logs);
    assert_eq!(run.page_count, Some(fit));
    assert_eq!(run.pages.len(), usize::try_from(fit)?);
    let cut = run.pages_cut.expect("the cut is reported");
    assert_eq!((cut.shown, cut.by), (fit, CutBy::PixelBudget));
    assert!(cut.total > 1500, "{cut:?}");
    assert!(
        run.pages[&(fit - 1)].ink_fraction() > 0.002,
        "last page blank"
    );
    let first = run.times.first_frame.expect("a frame");
    let all = run.times.done.expect("done");
    // The first page leaves long before the last one.
    assert!(first < all / 4, "first frame {first:?} of {all:?}");
    Ok(())
}

#[test]
fn a_pdf_longer_than_the_page_cap_streams_in_batches_and_stops_at_the_cap() -> anyhow::Result<()> {
    let test = "a_pdf_longer_than_the_page_cap_streams_in_batches_and_stops_at_the_cap";
    let Some(dir) = guest_image::require(test) else {
        return Ok(());
    };
    // Arrange: 12 pages, a cap of 10 (page 1, then batches 2-5, 6-9, 10).
    let lines: Vec<String> = (1..=12).map(|n| format!("Page {n}")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let limits = Limits {
        time_limit_ms: 120_000,
        max_pages: 10,
        ..Limits::default()
    };
    let input = TaskInput::file(
        "long.pdf",
        "application/pdf",
        fixtures::pdf_with_pages(&lines),
        limits,
    );
    let config = VmConfig::new(GuestImage::from_dir(&dir)?);

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
        "{test}: status {:?}, {:?} page(s), cut {:?}, times {:?}",
        run.status, run.page_count, run.pages_cut, run.times
    );
    assert_eq!(run.status, Some(TaskStatus::Ok), "logs: {:?}", run.logs);
    assert_eq!(run.page_count, Some(10));
    assert_eq!(
        run.pages.keys().copied().collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    let cut = run.pages_cut.expect("the cut is reported");
    assert_eq!((cut.shown, cut.total, cut.by), (10, 12, CutBy::PageCap));
    // Each page has its own bar and line: no two pages are the same.
    for n in 1..10 {
        assert_ne!(
            run.pages[&(n - 1)],
            run.pages[&n],
            "pages {n} and {}",
            n + 1
        );
    }
    Ok(())
}
