//! Documents (PDF, image, text, HTML): the renderer child draws pages and
//! the agent sends each one as it arrives, so memory holds a page or two
//! whatever the document's length. No page is kept: a page asked for again
//! (a page change) is drawn again.
//!
//! A task shows at most its page cap (`Limits::max_pages`) and what its
//! pixel budget holds; when a document has more, the agent logs
//! `page cap: shown=N total=M reason=page-cap|pixel-budget` for the host.
//!
//! A safe copy (`Task::safe_copy`) renders PDF pages at print resolution
//! and follows each page's frame with a `PagePrint`: the page's resolution
//! and, when asked, the words tesseract finds on it.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::memory::OomWatch;
use super::{chain, failed, Agent, FileDoc, Stop, View};
use crate::ocr::{OcrError, Tesseract};
use crate::protocol::{
    GuestMessage, LogLevel, PagePrint, PixelBudget, Rect, Task, TaskStatus, MAX_PRINT_DPI,
    MAX_WORDS_PER_PAGE, MIN_PRINT_DPI,
};
use crate::raster::Raster;
use crate::render::office::{self, Convert, Office, OfficeError};
use crate::render::page_stream::{PageReader, StreamHeader};
use crate::render::{pdf, DocKind};
use crate::sandbox::{describe, limited_command, tail_of, ChildLimits, ChildStdio, RunOutcome};

/// PDF pages rendered per `pdftoppm` run after the first page: few enough
/// that their files on the guest's tmpfs stay small, enough to amortise
/// poppler's start.
const PDF_BATCH: u32 = 4;
/// Long side of a safe copy's PDF page: A4 at 150 dpi.
const PRINT_LONG_SIDE: u32 = 1754;
/// Print resolution of a safe copy's page that has no size on paper.
const DEFAULT_PRINT_DPI: u32 = 150;

/// What a safe copy sends after each page's frames.
pub(super) struct Print {
    /// Tesseract and the language(s) to read, when OCR was asked for.
    ocr: Option<(Tesseract, String)>,
}

/// One page's print data to work out and send.
struct PrintPage<'a> {
    page: u32,
    /// The page as a PNM file (readable by the sandbox uid).
    image: &'a Path,
    size: (u32, u32),
    /// Long side on paper, in points (PDF); `None`: `DEFAULT_PRINT_DPI`.
    long_pts: Option<f64>,
    deadline: Instant,
}

/// A document being shown, for input events after `Done`.
pub(super) struct Document {
    kind: DocKind,
    /// False for a document converted only up to the page cap and one
    /// page more: its page count is then a lower bound.
    pages_known: bool,
    input: PathBuf,
    out_dir: PathBuf,
    /// Pages sent (the page cap and the budget may leave fewer than the
    /// document has).
    shown: u32,
    width: u32,
    height: u32,
    renders: u32,
    /// Safe copy: set for the first rendering only (resends and resizes
    /// send no print data).
    print: Option<Print>,
}

/// What the host is told about the pages a task shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PagePlan {
    /// Pages to send.
    pub shown: u32,
    /// Pages the document has.
    pub total: u32,
    /// Why `shown < total`, if it is.
    pub cut: Option<&'static str>,
}

/// How many of `total` pages of `page_bytes` each a task shows under its
/// page cap and what is left of its pixel budget.
pub(super) fn plan_pages(
    total: u32,
    max_pages: u32,
    budget_left: u64,
    page_bytes: u64,
) -> PagePlan {
    let by_cap = total.min(max_pages);
    let fit = budget_left / page_bytes.max(1);
    let by_budget = u32::try_from(fit).unwrap_or(u32::MAX);
    let shown = by_cap.min(by_budget);
    let cut = (shown < total).then_some(if by_budget < by_cap {
        "pixel-budget"
    } else {
        "page-cap"
    });
    PagePlan { shown, total, cut }
}

fn page_bytes(width: u32, height: u32) -> u64 {
    u64::from(width) * u64::from(height) * 4
}

/// What the worker's stdout gave, for the agent's loop.
enum Streamed {
    Header(StreamHeader),
    Page(Raster),
    Broken(String),
}

impl Agent {
    /// Renders a document file: the renderer is chosen from its first bytes,
    /// then its name and MIME hint.
    pub(super) fn render_file(
        &mut self,
        task: &Task,
        file: &FileDoc<'_>,
        work: &Path,
        deadline: Instant,
        budget: &mut PixelBudget,
        view: &mut View,
    ) -> Result<(), Stop> {
        let mut head = Vec::with_capacity(crate::render::hex::PROBE);
        File::open(file.input)
            .and_then(|f| {
                let probe = u64::try_from(crate::render::hex::PROBE).unwrap_or(u64::MAX);
                f.take(probe).read_to_end(&mut head)
            })
            .map_err(failed)?;
        let mut kind = DocKind::detect(&head, file.name, file.mime_hint);
        self.log(
            LogLevel::Info,
            format!("rendering {} as {}", file.name, kind.as_str()),
        )?;
        let mut input = file.input.to_path_buf();
        if kind == DocKind::Office {
            input = self.office_to_pdf(task, file.input, work, deadline)?;
            kind = DocKind::Pdf;
        }
        // HTML is laid out by the browser engine, offline, into pages.
        if kind == DocKind::Html
            && crate::browser::Engine::find(self.config.in_guest, &self.config.work_root).is_some()
        {
            input = self.html_to_pdf(file.input, work, deadline)?;
            kind = DocKind::Pdf;
        }
        let print = match &task.safe_copy {
            None => None,
            Some(copy) => Some(self.print_setup(copy.ocr.as_deref())?),
        };
        let mut doc = Document {
            kind,
            pages_known: input == file.input,
            input,
            out_dir: work.join("out"),
            shown: 0,
            width: task.limits.max_width.min(900),
            height: task.limits.max_height.min(1100),
            renders: 0,
            print,
        };
        let result = self.render_document(&mut doc, task, deadline, budget);
        doc.print = None;
        *view = View::Document(doc);
        result
    }

    /// Converts an office document to PDF with LibreOffice (the preloaded
    /// one when the VM has it), up to the page cap and one page more.
    fn office_to_pdf(
        &mut self,
        task: &Task,
        input: &Path,
        work: &Path,
        deadline: Instant,
    ) -> Result<PathBuf, Stop> {
        let office = Office::find(self.config.in_guest, &self.config.work_root)
            .ok_or_else(|| failed(format!("office: {}", OfficeError::Missing)))?;
        let format = office::sniff_file(input)
            .map_err(failed)?
            .ok_or_else(|| failed("office: the content is not an office format"))?;
        let out_dir = work.join("office");
        self.office_identity().make_dir(&out_dir).map_err(failed)?;
        let started = Instant::now();
        let job = Convert {
            input,
            format,
            out_dir: &out_dir,
            pages: task.limits.max_pages.saturating_add(1),
            limits: ChildLimits::office(Duration::from_millis(task.limits.time_limit_ms.into())),
            identity: self.office_identity(),
            deadline,
        };
        let converted = office
            .convert(&job)
            .map_err(|e| failed(format!("office: {}", chain(&e))))?;
        // Numbers and keywords only: the host words them (`guest_log`).
        self.log(
            LogLevel::Info,
            format!(
                "office: format={} ms={} libreoffice={} written-outside=0",
                format.ext,
                started.elapsed().as_millis(),
                if converted.preloaded {
                    "preloaded"
                } else {
                    "started"
                }
            ),
        )?;
        Ok(converted.pdf)
    }

    /// A safe copy's OCR, checked before anything renders: no tesseract
    /// or a missing language fails the task with what to do.
    fn print_setup(&self, ocr: Option<&str>) -> Result<Print, Stop> {
        let Some(lang) = ocr else {
            return Ok(Print { ocr: None });
        };
        let tess = Tesseract::find(self.config.in_guest).ok_or_else(|| {
            failed(
                "OCR was asked for, but this VM has no application disk with tesseract \
                 (the image directory has no apps.squashfs: rebuild it with shim/image/build.sh)",
            )
        })?;
        tess.check_languages(lang).map_err(|e| failed(chain(&e)))?;
        Ok(Print {
            ocr: Some((tess, lang.to_owned())),
        })
    }

    /// Sends a safe copy's `PagePrint` for one page: its resolution and
    /// the words OCR found, if asked for. OCR runs in a limited child as
    /// the renderers do, against the task's deadline.
    fn send_print(&mut self, print: &Print, task: &Task, at: PrintPage<'_>) -> Result<(), Stop> {
        let (w, h) = at.size;
        let dpi = at
            .long_pts
            .map_or(DEFAULT_PRINT_DPI, |pts| print_dpi(w.max(h), pts));
        let mut words = Vec::new();
        if let Some((tess, lang)) = &print.ocr {
            let dir = at.image.parent().unwrap_or(Path::new("."));
            let limits =
                ChildLimits::renderer(Duration::from_millis(task.limits.time_limit_ms.into()));
            let started = Instant::now();
            let found = tess
                .words(
                    at.image,
                    at.size,
                    lang,
                    dir,
                    limits,
                    self.identity,
                    at.deadline,
                )
                .map_err(|e| match e {
                    OcrError::TimedOut => Stop::Task(TaskStatus::TimedOut),
                    other => failed(format!("ocr: page {}: {}", at.page + 1, chain(&other))),
                })?;
            self.log(
                LogLevel::Info,
                format!(
                    "ocr: page {}: {} words in {} ms",
                    at.page + 1,
                    found.words.len(),
                    started.elapsed().as_millis()
                ),
            )?;
            if found.dropped > 0 {
                self.log(
                    LogLevel::Info,
                    format!(
                        "ocr: page {}: kept {MAX_WORDS_PER_PAGE} words, dropped {}",
                        at.page + 1,
                        found.dropped
                    ),
                )?;
            }
            words = found.words;
        }
        self.send(GuestMessage::PagePrint(PagePrint {
            task: task.id,
            page: at.page,
            dpi,
            words,
        }))?;
        Ok(())
    }

    /// A fresh directory for one renderer run, writable by the sandbox uid.
    fn render_dir(&self, doc: &mut Document) -> Result<PathBuf, Stop> {
        doc.renders += 1;
        let dir = doc.out_dir.join(format!("r{}", doc.renders));
        self.identity.make_dir(&dir).map_err(failed)?;
        Ok(dir)
    }

    /// Sends a page file, then (a safe copy's first rendering) its print
    /// data: `print` is the page's long side in points, if known.
    fn send_page_file(
        &mut self,
        page: u32,
        path: &Path,
        task: &Task,
        budget: &mut PixelBudget,
        print: Option<(&Print, Option<f64>, Instant)>,
    ) -> Result<(), Stop> {
        let raster = Raster::read_ppm(path, task.limits.max_width, task.limits.max_height)
            .map_err(|e| failed(format!("page {}: {}", page + 1, chain(&e))));
        let result = raster.and_then(|raster| {
            let full = Rect {
                x: 0,
                y: 0,
                w: raster.width(),
                h: raster.height(),
            };
            self.send_raster(page, &raster, full, budget)?;
            let Some((print, long_pts, deadline)) = print else {
                return Ok(());
            };
            let at = PrintPage {
                page,
                image: path,
                size: (raster.width(), raster.height()),
                long_pts,
                deadline,
            };
            drop(raster);
            self.send_print(print, task, at)
        });
        // Sent pages are drawn again when asked for: nothing piles up.
        let _ = std::fs::remove_file(path);
        result
    }

    fn announce(&mut self, task: &Task, plan: PagePlan, known: bool) -> Result<(), Stop> {
        self.send(GuestMessage::PageInfo {
            task: task.id,
            count: plan.shown,
        })?;
        if let Some(reason) = plan.cut {
            self.log(
                LogLevel::Info,
                format!(
                    "page cap: shown={} total={}{} reason={reason}",
                    plan.shown,
                    plan.total,
                    if known { "" } else { "+" }
                ),
            )?;
        }
        Ok(())
    }

    /// Renders the whole document (again, after a resize), sending pages as
    /// they are drawn.
    pub(super) fn render_document(
        &mut self,
        doc: &mut Document,
        task: &Task,
        deadline: Instant,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        if doc.kind == DocKind::Pdf {
            return self.render_pdf(doc, task, deadline, budget);
        }
        let plan = self.stream_pages(doc, task, 0, task.limits.max_pages, deadline, budget)?;
        doc.shown = plan.shown;
        Ok(())
    }

    /// Lays a text or HTML document out again for a new page size; other
    /// documents keep their pages.
    pub(super) fn resize_document(
        &mut self,
        doc: &mut Document,
        task: &Task,
        width: u32,
        height: u32,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        if !doc.kind.reflows() {
            return Ok(());
        }
        doc.width = width.min(task.limits.max_width);
        doc.height = height.min(task.limits.max_height);
        let deadline = Instant::now() + Duration::from_millis(task.limits.time_limit_ms.into());
        self.render_document(doc, task, deadline, budget)
    }

    /// Sends page `page` again (a page change after `Done`), drawn anew.
    pub(super) fn resend_page(
        &mut self,
        doc: &mut Document,
        task: &Task,
        page: u32,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        if page >= doc.shown {
            return Ok(self.log(LogLevel::Warn, format!("no page {page}"))?);
        }
        let deadline = Instant::now() + Duration::from_millis(task.limits.time_limit_ms.into());
        if doc.kind == DocKind::Pdf {
            let dir = self.render_dir(doc)?;
            let job = self.pdf_job(doc, &dir, task, deadline);
            let files = job.render(page + 1, page + 1).map_err(pdf_stop);
            let result = files.and_then(|f| self.send_page_file(page, &f[0], task, budget, None));
            let _ = std::fs::remove_dir_all(&dir);
            return result;
        }
        self.stream_pages(doc, task, page, 1, deadline, budget)
            .map(|_| ())
    }

    /// Runs the render worker for pages `first..first + count` and sends
    /// each as it arrives. From page 0 it also announces the page count,
    /// cut to what the task's cap and budget allow.
    fn stream_pages(
        &mut self,
        doc: &mut Document,
        task: &Task,
        first: u32,
        count: u32,
        deadline: Instant,
        budget: &mut PixelBudget,
    ) -> Result<PagePlan, Stop> {
        let out_dir = self.render_dir(doc)?;
        let (w, h) = match doc.kind {
            DocKind::Image | DocKind::Svg => (task.limits.max_width, task.limits.max_height),
            _ => (doc.width, doc.height),
        };
        let exe = std::env::current_exe().map_err(failed)?;
        let args: Vec<OsString> = vec![
            "render-worker".into(),
            doc.kind.as_str().into(),
            w.to_string().into(),
            h.to_string().into(),
            first.to_string().into(),
            count.to_string().into(),
            doc.input.clone().into(),
        ];
        let stderr_path = out_dir.join("worker.stderr");
        let (pipe_r, pipe_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| failed(chain(&e)))?;
        let limits = ChildLimits::renderer(Duration::from_millis(task.limits.time_limit_ms.into()));
        let mut cmd = limited_command(limits, self.identity, ChildStdio::Plain, &exe, &args)
            .map_err(failed)?;
        cmd.stdout(Stdio::from(pipe_w))
            .stderr(Stdio::from(File::create(&stderr_path).map_err(failed)?));
        let mut oom = OomWatch::start();
        let mut child = oom.spawn(cmd, self.identity, deadline).map_err(failed)?;

        // Reader: pages off the pipe, one in flight, so the worker runs at
        // most a page or two ahead of what the host has been sent.
        let (tx, rx) = mpsc::sync_channel::<Streamed>(1);
        let (max_w, max_h) = (task.limits.max_width, task.limits.max_height);
        std::thread::spawn(move || {
            let mut reader = match PageReader::new(File::from(pipe_r), max_w, max_h) {
                Ok(r) => r,
                Err(e) => return drop(tx.send(Streamed::Broken(chain(&e)))),
            };
            if tx.send(Streamed::Header(reader.header())).is_err() {
                return;
            }
            loop {
                let item = match reader.next_page() {
                    Ok(Some(page)) => Streamed::Page(page),
                    Ok(None) => return,
                    Err(e) => Streamed::Broken(chain(&e)),
                };
                let last = matches!(item, Streamed::Broken(_));
                if tx.send(item).is_err() || last {
                    return;
                }
            }
        });

        let what = doc.kind.as_str();
        let mut plan = None;
        let mut sent = 0u32;
        let mut broken = None;
        let outcome = loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Streamed::Header(header)) => {
                    let budget_left = task.limits.max_pixel_bytes.saturating_sub(budget.used());
                    let p = if first == 0 {
                        let p = plan_pages(
                            header.total,
                            task.limits.max_pages,
                            budget_left,
                            page_bytes(w, h),
                        );
                        if p.shown == 0 && p.total > 0 {
                            return Err(budget_spent(w, h));
                        }
                        self.announce(task, p, true)?;
                        p
                    } else {
                        PagePlan {
                            shown: header.count.min(count),
                            total: header.total,
                            cut: None,
                        }
                    };
                    plan = Some(p);
                    if p.shown == 0 {
                        child.kill();
                        break None;
                    }
                }
                Ok(Streamed::Page(page)) => {
                    let full = Rect {
                        x: 0,
                        y: 0,
                        w: page.width(),
                        h: page.height(),
                    };
                    self.send_raster(first + sent, &page, full, budget)?;
                    if let Some(print) = &doc.print {
                        let image = out_dir.join("print.ppm");
                        page.write_ppm(&image).map_err(|e| {
                            failed(format!("page {}: {}", first + sent + 1, chain(&e)))
                        })?;
                        let at = PrintPage {
                            page: first + sent,
                            image: &image,
                            size: (page.width(), page.height()),
                            long_pts: None,
                            deadline,
                        };
                        let sent_print = self.send_print(print, task, at);
                        let _ = std::fs::remove_file(&image);
                        sent_print?;
                    }
                    sent += 1;
                    if plan.is_some_and(|p| sent >= p.shown) {
                        // The cap: the rest is not drawn.
                        child.kill();
                        break None;
                    }
                }
                Ok(Streamed::Broken(why)) => broken = Some(why),
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(RunOutcome::TimedOut) = child.poll().map_err(failed)? {
                        return Err(Stop::Task(TaskStatus::TimedOut));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break Some(child.wait().map_err(failed)?),
            }
        };
        // Read before the folder that holds it goes.
        let stderr_tail = tail_of(&stderr_path, 400);
        let _ = std::fs::remove_dir_all(&out_dir).map_err(|_| ());
        match outcome {
            None => {}
            Some(RunOutcome::TimedOut) => return Err(Stop::Task(TaskStatus::TimedOut)),
            Some(RunOutcome::Exited(s)) if !s.success() => {
                return Err(failed(renderer_failed(
                    what,
                    &describe(s),
                    oom.struck(),
                    &stderr_tail,
                )))
            }
            Some(RunOutcome::Exited(_)) => {}
        }
        let plan = match (plan, broken) {
            (_, Some(why)) => return Err(failed(format!("{what} renderer: {why}"))),
            (None, None) => return Err(failed(format!("{what} renderer sent no pages"))),
            (Some(p), None) => p,
        };
        if sent < plan.shown {
            return Err(failed(format!(
                "{what} renderer sent {sent} of {} pages",
                plan.shown
            )));
        }
        Ok(plan)
    }

    fn pdf_job(
        &self,
        doc: &Document,
        out_dir: &Path,
        task: &Task,
        deadline: Instant,
    ) -> pdf::PdfJob {
        pdf::PdfJob {
            input: doc.input.clone(),
            out_dir: out_dir.to_path_buf(),
            limits: ChildLimits::renderer(Duration::from_millis(task.limits.time_limit_ms.into())),
            identity: self.identity,
            deadline,
            scale_to: task.limits.max_width.min(task.limits.max_height).min(
                if doc.print.is_some() {
                    PRINT_LONG_SIDE
                } else {
                    1200
                },
            ),
        }
    }

    fn render_pdf(
        &mut self,
        doc: &mut Document,
        task: &Task,
        deadline: Instant,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        let out_dir = self.render_dir(doc)?;
        let job = self.pdf_job(doc, &out_dir, task, deadline);
        let result = self.stream_pdf(doc, &job, task, budget);
        let _ = std::fs::remove_dir_all(&out_dir);
        result
    }

    /// Page 1 first, then batches: each page is sent, then its file deleted.
    fn stream_pdf(
        &mut self,
        doc: &mut Document,
        job: &pdf::PdfJob,
        task: &Task,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        // pdfinfo and page 1 run side by side: the first frame waits for
        // neither the page count nor the other pages.
        // A safe copy also needs each page's size on paper.
        let sizes_to = doc.print.is_some().then_some(task.limits.max_pages);
        let (info, first) = std::thread::scope(|scope| {
            let info = scope.spawn(|| job.page_info(sizes_to));
            let first = job.render(1, 1);
            let info = info.join().unwrap_or(Err(pdf::PdfError::NoPageCount));
            (info, first)
        });
        let info = info.map_err(pdf_stop)?;
        let total = info.pages;
        let first = first.map_err(pdf_stop)?;
        if total == 0 {
            return Err(failed("pdf: document has no pages"));
        }
        let (w, h) = Raster::read_ppm(&first[0], task.limits.max_width, task.limits.max_height)
            .map(|r| (r.width(), r.height()))
            .map_err(|e| failed(format!("page 1: {}", chain(&e))))?;
        let budget_left = task.limits.max_pixel_bytes.saturating_sub(budget.used());
        let plan = plan_pages(total, task.limits.max_pages, budget_left, page_bytes(w, h));
        if plan.shown == 0 {
            return Err(budget_spent(w, h));
        }
        self.announce(task, plan, doc.pages_known)?;
        let print = doc.print.as_ref();
        let print_of =
            |page: u32| print.map(|p| (p, info.long_sides.get(&(page + 1)).copied(), job.deadline));
        self.send_page_file(0, &first[0], task, budget, print_of(0))?;
        doc.shown = 1;
        let mut next = 2;
        while next <= plan.shown {
            let last = (next + PDF_BATCH - 1).min(plan.shown);
            let files = job.render(next, last).map_err(pdf_stop)?;
            for (page, file) in (next - 1..).zip(&files) {
                self.send_page_file(page, file, task, budget, print_of(page))?;
                doc.shown = page + 1;
            }
            next = last + 1;
        }
        Ok(())
    }
}

/// Not one page of `width` x `height` fits what is left of the budget
/// (a task that re-lays out its pages again and again spends it).
fn budget_spent(width: u32, height: u32) -> Stop {
    failed(format!(
        "the task's pixel budget is spent: not one more {width}x{height} page fits"
    ))
}

/// Pixels per inch of a page whose long side is `long_px` pixels and
/// `long_pts` points (1/72 inch), within the protocol's range.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn print_dpi(long_px: u32, long_pts: f64) -> u32 {
    let dpi = f64::from(long_px) * 72.0 / long_pts;
    if !dpi.is_finite() {
        return DEFAULT_PRINT_DPI;
    }
    // Clamped into the u32 range first: the cast is exact.
    dpi.round()
        .clamp(f64::from(MIN_PRINT_DPI), f64::from(MAX_PRINT_DPI)) as u32
}

fn pdf_stop(e: pdf::PdfError) -> Stop {
    match e {
        pdf::PdfError::TimedOut(_) => Stop::Task(TaskStatus::TimedOut),
        other => failed(format!("pdf: {}", chain(&other))),
    }
}

/// Why a renderer child failed, in words: the kernel's out-of-memory kill
/// by name, and its stderr only when it wrote any.
fn renderer_failed(what: &str, status: &str, oom: bool, stderr_tail: &str) -> String {
    let mut text = if oom {
        format!("{what} renderer ran out of memory (killed by the kernel's out-of-memory killer)")
    } else {
        format!("{what} renderer failed ({status})")
    };
    let tail = stderr_tail.trim();
    if !tail.is_empty() {
        text.push_str(": ");
        text.push_str(tail);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_cap_or_the_budget_cuts_a_long_document_and_names_which() {
        let page = page_bytes(900, 1100);

        let small = plan_pages(3, 500, 512 << 20, page);
        let capped = plan_pages(2000, 40, 512 << 20, page);
        let budgeted = plan_pages(2000, 500, 512 << 20, page);

        assert_eq!(
            small,
            PagePlan {
                shown: 3,
                total: 3,
                cut: None
            }
        );
        assert_eq!(capped.shown, 40);
        assert_eq!(capped.cut, Some("page-cap"));
        assert_eq!(budgeted.shown, 135);
        assert_eq!(budgeted.cut, Some("pixel-budget"));
    }

    #[test]
    fn print_dpi_is_pixels_per_inch_within_the_protocols_range() {
        assert_eq!(print_dpi(1754, 841.89), 150);
        assert_eq!(print_dpi(1754, 420.0), 301);
        assert_eq!(print_dpi(1754, 1.0), MAX_PRINT_DPI);
        assert_eq!(print_dpi(10, 14_400.0), MIN_PRINT_DPI);
        assert_eq!(print_dpi(1754, 0.0), DEFAULT_PRINT_DPI);
    }

    #[test]
    fn a_renderer_failure_names_an_oom_kill_and_quotes_stderr_only_when_there_is_some() {
        let (empty, said) = ("", "bad glyph table\n");

        assert_eq!(
            renderer_failed("text", "killed by SIGKILL", true, empty),
            "text renderer ran out of memory (killed by the kernel's out-of-memory killer)"
        );
        assert_eq!(
            renderer_failed("text", "killed by SIGKILL", false, empty),
            "text renderer failed (killed by SIGKILL)"
        );
        assert_eq!(
            renderer_failed("html", "exit code 2", false, said),
            "html renderer failed (exit code 2): bad glyph table"
        );
    }
}
