//! End to end under QEMU (TCG): real inputs go into a fresh guest per task,
//! as the product does, and only frames and a status come back. Each test
//! boots the real image (`shim/image/build.sh`), sends one task, checks the
//! pixels (page count, ink, colours, OCR of the text), writes them as PNG
//! files and reads those back, then checks that QEMU is gone.
//!
//! Set `VITRINE_E2E_OUT=DIR` to keep the PNG files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure};
use vitrine_daemon::backend::qemu::QemuBackend;
use vitrine_daemon::backend::{GuestImage, VmConfig};
use vitrine_daemon::fresh_guest::{self, GuestDeadlines};
use vitrine_daemon::pages::{self, PageImage};
use vitrine_daemon::task::{TaskInput, TaskRun};
use vitrine_shim::protocol::{Limits, TaskStatus};
use vitrine_tests::fixtures;
use vitrine_tests::guest_image;
use vitrine_tests::ocr;

/// Where a test's PNG files go: `$VITRINE_E2E_OUT/<test>` or a temp dir.
struct OutDir {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl OutDir {
    fn new(test: &str) -> anyhow::Result<Self> {
        if let Some(root) = std::env::var_os("VITRINE_E2E_OUT").filter(|v| !v.is_empty()) {
            let path = Path::new(&root).join(test);
            std::fs::create_dir_all(&path)?;
            return Ok(Self { path, _temp: None });
        }
        let temp = tempfile::tempdir()?;
        Ok(Self {
            path: temp.path().to_owned(),
            _temp: Some(temp),
        })
    }
}

/// Runs `input` in a fresh guest; `None` when the image is not built (skip
/// line printed). QEMU being gone afterwards is checked by `run_in_fresh_guest`.
fn run_in_fresh_guest(test: &str, input: &TaskInput) -> anyhow::Result<Option<TaskRun>> {
    let Some(dir) = guest_image::require(test) else {
        return Ok(None);
    };
    let config = VmConfig::new(GuestImage::from_dir(&dir)?);
    let done = fresh_guest::run_in_fresh_guest(
        &QemuBackend::new(),
        &config,
        input,
        GuestDeadlines::after_shutdown(Duration::from_secs(10)),
    )?;
    let run = done.task;
    eprintln!(
        "{test}: status {:?}, {} page(s), {} frame(s), boot {:?}, times {:?}, vm {:?}",
        run.status,
        run.page_count.unwrap_or(0),
        run.frames,
        done.boot,
        run.times,
        done.exit
    );
    Ok(Some(run))
}

fn limits(time_limit_ms: u32) -> Limits {
    Limits {
        time_limit_ms,
        ..Limits::default()
    }
}

/// Writes every page as PNG (as `vitrine open` does), reads it back, and
/// checks that the file holds the same pixels.
fn write_pages(run: &TaskRun, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = pages::write_pages(&run.pages, out)?;
    for (path, page) in files.iter().zip(run.pages.values()) {
        let back = PageImage::read_png(path)?;
        ensure!(
            back == *page,
            "{} does not hold the page's pixels",
            path.display()
        );
    }
    Ok(files)
}

/// OCR of `page`, or `None` (with a skip line) when Tesseract is missing.
fn ocr_text(
    test: &str,
    page: &PageImage,
    scale: u32,
    out: &Path,
) -> anyhow::Result<Option<String>> {
    if !ocr::available() {
        eprintln!(
            "SKIPPED OCR check of {test}: tesseract not installed (apt-get install tesseract-ocr)"
        );
        return Ok(None);
    }
    let text = ocr::read_text(page, scale, out, test)?;
    eprintln!("{test}: OCR read {:?}", ocr::normalized(&text));
    Ok(Some(ocr::normalized(&text)))
}

fn near(px: [u8; 4], rgb: [u8; 3]) -> bool {
    px[..3].iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) <= 40)
}

#[test]
fn pdf_arrives_as_its_pages_with_readable_text() -> anyhow::Result<()> {
    let test = "pdf_arrives_as_its_pages_with_readable_text";
    let out = OutDir::new(test)?;
    let pdf = fixtures::pdf_with_pages(&["Vitrine page one", "Second page", "Third page"]);
    let input = TaskInput::file("report.pdf", "application/pdf", pdf, limits(60_000));

    let Some(run) = run_in_fresh_guest(test, &input)? else {
        return Ok(());
    };

    assert_eq!(run.status, Some(TaskStatus::Ok), "logs: {:?}", run.logs);
    assert_eq!(run.page_count, Some(3));
    assert_eq!(run.pages.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    for (index, page) in &run.pages {
        let (w, h) = fixtures::PDF_PAGE_PT;
        let aspect = f64::from(page.width) / f64::from(page.height);
        assert!(
            (aspect - f64::from(w) / f64::from(h)).abs() < 0.05,
            "page {index}: {page:?}"
        );
        assert!(page.ink_fraction() > 0.01, "page {index} is blank");
    }
    write_pages(&run, &out.path)?;
    if let Some(text) = ocr_text(test, &run.pages[&0], 1, &out.path)? {
        assert!(text.contains("VITRINE PAGE ONE"), "OCR: {text}");
    }
    assert!(run.unexpected.is_empty(), "{:?}", run.unexpected);
    Ok(())
}

#[test]
fn png_arrives_with_its_shape_and_colors() -> anyhow::Result<()> {
    let test = "png_arrives_with_its_shape_and_colors";
    let out = OutDir::new(test)?;
    let input = TaskInput::file(
        "photo.png",
        "image/png",
        fixtures::png_two_colors()?,
        limits(30_000),
    );

    let Some(run) = run_in_fresh_guest(test, &input)? else {
        return Ok(());
    };

    assert_eq!(run.status, Some(TaskStatus::Ok), "logs: {:?}", run.logs);
    assert_eq!(run.page_count, Some(1));
    let page = &run.pages[&0];
    let (w, h) = fixtures::PNG_SIZE;
    assert_eq!(
        u64::from(page.width) * u64::from(h),
        u64::from(page.height) * u64::from(w),
        "{page:?}"
    );
    let mid = page.height / 2;
    assert!(
        near(page.pixel(page.width / 4, mid), fixtures::PNG_LEFT),
        "{:?}",
        page.pixel(page.width / 4, mid)
    );
    assert!(
        near(page.pixel(page.width * 3 / 4, mid), fixtures::PNG_RIGHT),
        "{:?}",
        page.pixel(page.width * 3 / 4, mid)
    );
    write_pages(&run, &out.path)?;
    assert!(run.unexpected.is_empty(), "{:?}", run.unexpected);
    Ok(())
}

#[test]
fn text_file_arrives_as_readable_glyphs() -> anyhow::Result<()> {
    let test = "text_file_arrives_as_readable_glyphs";
    let out = OutDir::new(test)?;
    let text = "Vitrine text check\nThe quick brown fox jumps over the lazy dog\n";
    let input = TaskInput::file(
        "notes.txt",
        "text/plain",
        text.as_bytes().to_vec(),
        limits(30_000),
    );

    let Some(run) = run_in_fresh_guest(test, &input)? else {
        return Ok(());
    };

    assert_eq!(run.status, Some(TaskStatus::Ok), "logs: {:?}", run.logs);
    assert!(run.page_count >= Some(1));
    let page = &run.pages[&0];
    assert!(page.ink_fraction() > 0.002, "text page is blank");
    write_pages(&run, &out.path)?;
    if let Some(read) = ocr_text(test, page, 2, &out.path)? {
        assert!(read.contains("QUICK BROWN FOX"), "OCR: {read}");
    }
    Ok(())
}

#[test]
fn static_program_output_shows_in_the_terminal_frame() -> anyhow::Result<()> {
    let test = "static_program_output_shows_in_the_terminal_frame";
    let out = OutDir::new(test)?;
    let program = fixtures::static_program(&out.path, "hello", fixtures::HELLO_C)?;
    let input = TaskInput::program(program, limits(30_000));

    let Some(run) = run_in_fresh_guest(test, &input)? else {
        return Ok(());
    };

    assert_eq!(run.status, Some(TaskStatus::Ok), "logs: {:?}", run.logs);
    assert_eq!(run.program_exit, Some((Some(0), None)));
    assert_eq!(run.page_count, Some(1));
    let terminal = &run.pages[&0];
    assert!(terminal.ink_fraction() > 0.001, "terminal frame is blank");
    write_pages(&run, &out.path)?;
    if let Some(read) = ocr_text(test, terminal, 3, &out.path)? {
        assert!(read.contains("VITRINE TERMINAL WORKS"), "OCR: {read}");
        assert!(read.contains("42"), "OCR: {read}");
    }
    Ok(())
}

/// A hostile input ends as Failed or TimedOut, sends back nothing but frames
/// and a status, within its pixel budget; the guest is then shut down and
/// QEMU is gone (checked in `run_in_fresh_guest`).
fn assert_contained(test: &str, run: &TaskRun, input: &TaskInput) -> anyhow::Result<()> {
    match &run.status {
        Some(TaskStatus::Failed(reason)) => eprintln!("{test}: failed as it should: {reason}"),
        Some(TaskStatus::TimedOut) => eprintln!("{test}: timed out as it should"),
        other => bail!(
            "{test}: hostile input ended as {other:?}, logs: {:?}",
            run.logs
        ),
    }
    ensure!(
        run.unexpected.is_empty(),
        "{test}: unexpected messages {:?}",
        run.unexpected
    );
    ensure!(
        run.pixel_bytes <= input.limits.max_pixel_bytes,
        "{test}: {} pixel bytes over the budget",
        run.pixel_bytes
    );
    Ok(())
}

#[test]
fn malformed_pdf_ends_as_a_failed_task() -> anyhow::Result<()> {
    let test = "malformed_pdf_ends_as_a_failed_task";
    let input = TaskInput::file(
        "broken.pdf",
        "application/pdf",
        fixtures::malformed_pdf(),
        limits(20_000),
    );

    let Some(run) = run_in_fresh_guest(test, &input)? else {
        return Ok(());
    };

    assert_contained(test, &run, &input)?;
    assert!(
        matches!(run.status, Some(TaskStatus::Failed(_))),
        "{:?}",
        run.status
    );
    Ok(())
}

#[test]
fn png_decompression_bomb_is_contained() -> anyhow::Result<()> {
    let test = "png_decompression_bomb_is_contained";
    let input = TaskInput::file(
        "bomb.png",
        "image/png",
        fixtures::png_decompression_bomb(),
        limits(20_000),
    );

    let Some(run) = run_in_fresh_guest(test, &input)? else {
        return Ok(());
    };

    assert_contained(test, &run, &input)
}

#[test]
fn fork_bomb_program_is_contained() -> anyhow::Result<()> {
    let test = "fork_bomb_program_is_contained";
    let out = OutDir::new(test)?;
    let program = fixtures::static_program(&out.path, "forkbomb", fixtures::FORK_BOMB_C)?;
    let input = TaskInput::program(program, limits(5_000));

    let Some(run) = run_in_fresh_guest(test, &input)? else {
        return Ok(());
    };

    assert_contained(test, &run, &input)
}

#[test]
fn stdout_flood_program_is_contained() -> anyhow::Result<()> {
    let test = "stdout_flood_program_is_contained";
    let out = OutDir::new(test)?;
    let program = fixtures::static_program(&out.path, "flood", fixtures::STDOUT_FLOOD_C)?;
    let input = TaskInput::program(program, limits(5_000));

    let Some(run) = run_in_fresh_guest(test, &input)? else {
        return Ok(());
    };

    assert_contained(test, &run, &input)
}
