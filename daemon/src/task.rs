//! Drives one task over a guest channel: send the task and its input,
//! collect the page count, the frames (as pages), the export offers and the
//! final status, and time each step. A [`TaskObserver`] sees each frame as
//! it arrives (the daemon streams them to the viewer) and can feed input
//! back; [`fetch_export`] brings an offered file over after `Done`.
//!
//! Cancelling is the caller's job: it kills the VM from another thread, the
//! stream closes, and the blocked receive returns at once.
//!
//! The guest is not trusted. Beyond the protocol's own caps (checked by the
//! decoder), every frame must fit the limits the task was sent with: its page
//! size, its page index and the task's pixel budget, and the pages the host
//! holds in memory are charged against the same budget. A guest that breaks
//! one ends its task with an error; it cannot make the host allocate more.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vitrine_shim::protocol::{
    flatten_task_id, BudgetError, ByteBuf, EgressReply, ExportOffer, Frame, GuestMessage,
    HostMessage, Identity, IdentityApplied, InputEvent, Limits, MessageError, PagePrint,
    PixelBudget, SafeCopy, StreamReply, Task, TaskKind, TaskStatus, WireMessage, MAX_CHUNK_BYTES,
    MAX_EXPORT_BYTES, MAX_POLL_WAIT_MS, MAX_TASK_INPUT,
};

use crate::backend::{ChannelError, GuestChannel};
use crate::guest_log::{self, OfficeRun, PagesCut};
use crate::pages::{page_bytes, PageImage, PagesError};

/// Longest a user's input waits while the guest is silent.
const INPUT_POLL: Duration = Duration::from_millis(25);

/// Size of the input chunks sent (1 MiB; the protocol allows up to 4 MiB).
pub const CHUNK_BYTES: usize = 1024 * 1024;
const _: () = assert!(CHUNK_BYTES <= MAX_CHUNK_BYTES);
// The policy refuses a profile time limit the protocol could not carry.
const _: () = assert!(
    vitrine_policy::profile::limits::TIME_LIMIT.1.as_millis()
        == vitrine_shim::protocol::MAX_TIME_LIMIT_MS as u128
);

/// A task could not be driven to its end.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The input is larger than the protocol carries.
    #[error("input is {0} bytes, more than the {MAX_TASK_INPUT} a task may carry")]
    InputTooLarge(u64),
    /// The task breaks one of the protocol's caps (a link too long, too many
    /// arguments...): the guest would refuse it, so no VM is taken for it.
    #[error("refused before any VM was taken")]
    BreaksCap(#[source] MessageError),
    /// The channel failed (time-out, closed stream, bad frame).
    #[error("guest channel failed after {after:?} (messages so far: {seen})")]
    Channel {
        /// Why.
        #[source]
        source: ChannelError,
        /// Time since the task was sent.
        after: Duration,
        /// Short list of what arrived.
        seen: String,
    },
    /// The task's deadline (its time limit) passed before `Done`.
    #[error("the time limit was reached after {after:?} (messages so far: {seen})")]
    TimeLimit {
        /// Time since the task was sent.
        after: Duration,
        /// Short list of what arrived.
        seen: String,
    },
    /// A frame did not fit the page it named.
    #[error("frame does not fit its page")]
    Page(#[from] PagesError),
    /// The guest spoke about another task.
    #[error("guest answered for task {got}, the task is {want}")]
    WrongTask {
        /// Task id sent.
        want: u64,
        /// Task id received.
        got: u64,
    },
    /// A frame's page is larger than the task's limits allow.
    #[error(
        "guest sent a {width}x{height} page; the task allows at most {max_width}x{max_height}"
    )]
    PageTooLarge {
        /// Page width.
        width: u32,
        /// Page height.
        height: u32,
        /// Limit.
        max_width: u32,
        /// Limit.
        max_height: u32,
    },
    /// A frame names a page past the page count or the task's page limit.
    #[error("guest sent page index {page}; the task has {pages} page(s)")]
    PageOutOfRange {
        /// Page index, from 0.
        page: u32,
        /// Pages allowed (announced count, capped by the limit).
        pages: u32,
    },
    /// The guest sent more pixels, or made the host hold more pages, than
    /// the task's budget.
    #[error("the guest did not stop at the task's pixel budget")]
    Budget(#[from] BudgetError),
    /// No fresh seed could be drawn for the VM's identity.
    #[error("cannot draw a seed for the VM's identity: {0}")]
    Seed(String),
    /// The guest answered the identity with something else.
    #[error("the guest answered its identity with {0}")]
    IdentityRefused(String),
    /// A safe-copy page's pixels or print data disagree with each other.
    #[error("page {} of the safe copy: {reason}", page + 1)]
    PrintMismatch {
        /// Page index, from 0.
        page: u32,
        /// What disagreed.
        reason: String,
    },
    /// An export came back other than it was offered.
    #[error("export {id} broke its offer: {reason}")]
    ExportMismatch {
        /// Export.
        id: u32,
        /// What differed.
        reason: String,
    },
}

/// Sees a task while it runs. Every method has a do-nothing default.
pub trait TaskObserver {
    /// The guest announced the page count.
    fn page_count(&mut self, _count: u32) {}
    /// A frame that passed the host's checks, as it arrived.
    fn frame(&mut self, _frame: &Frame) {}
    /// The guest offered a file for export (not yet checked against a profile).
    fn export_offer(&mut self, _offer: &ExportOffer) {}
    /// The page a browser tab shows now (the guest's `Location`).
    fn location(&mut self, _url: &str, _title: &str) {}
    /// A live page's user is done with it (its window closed).
    fn live_over(&mut self) -> bool {
        true
    }
    /// User input to send to the guest now (called after each message).
    fn input(&mut self) -> Vec<InputEvent> {
        Vec::new()
    }
    /// An egress message from the guest (`Egress*` or `Stream*`); `Some` is
    /// the answer (`HostMessage::Egress` or `HostMessage::Stream`). By
    /// default the guest has no network; a poll still waits as asked, so a
    /// guest that polls to pace itself does not spin.
    fn egress(&mut self, msg: &GuestMessage, deadline: Instant) -> Option<HostMessage> {
        match msg {
            GuestMessage::EgressOpen { host, port } => Some(HostMessage::Egress(
                EgressReply::Refused(format!("{host}:{port}: this task has no egress tunnel")),
            )),
            GuestMessage::EgressRecv { .. } => Some(HostMessage::Egress(EgressReply::Failed(
                "no connection is open".into(),
            ))),
            GuestMessage::StreamOpen { stream, host, port } => {
                Some(HostMessage::Stream(StreamReply::Opened {
                    stream: *stream,
                    outcome: EgressReply::Refused(format!(
                        "{host}:{port}: this task has no egress tunnel"
                    )),
                }))
            }
            GuestMessage::StreamPoll { wait_ms } => {
                let wait = Duration::from_millis((*wait_ms).min(MAX_POLL_WAIT_MS).into());
                std::thread::sleep(wait.min(deadline.saturating_duration_since(Instant::now())));
                Some(HostMessage::Stream(StreamReply::Data(Vec::new())))
            }
            _ => None,
        }
    }
}

/// An observer that looks at nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl TaskObserver for NoObserver {}

/// Time of each step, from the moment the task header was sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskTimes {
    /// The guest accepted the header.
    pub accepted: Option<Duration>,
    /// The last input chunk was written.
    pub input_sent: Option<Duration>,
    /// The page count arrived.
    pub page_info: Option<Duration>,
    /// The first frame arrived.
    pub first_frame: Option<Duration>,
    /// `Done` arrived.
    pub done: Option<Duration>,
}

/// Everything a task sent back.
#[derive(Debug, Default)]
pub struct TaskRun {
    /// Page count, if the guest sent one.
    pub page_count: Option<u32>,
    /// Pages put together from frames, by index.
    pub pages: BTreeMap<u32, PageImage>,
    /// Frames received.
    pub frames: usize,
    /// Pixel bytes received.
    pub pixel_bytes: u64,
    /// Final status, if `Done` arrived.
    pub status: Option<TaskStatus>,
    /// Exit code and signal of a program task.
    pub program_exit: Option<(Option<i32>, Option<i32>)>,
    /// The guest's kernel killed the program for want of memory (the
    /// shim's `program-exit: out-of-memory` log line).
    pub program_oom: bool,
    /// The document had more pages than were sent: (shown, total, why),
    /// from the shim's `page cap: shown=N total=M reason=R` log line.
    pub pages_cut: Option<PagesCut>,
    /// An office document the guest's LibreOffice converted (the shim's
    /// `office: ...` log line).
    pub office: Option<OfficeRun>,
    /// The URL a browser tab showed last (the guest's `Location`).
    pub location: Option<String>,
    /// Files the guest offered for export, in order.
    pub exports: Vec<ExportOffer>,
    /// A safe-copy task's print data (resolution, OCR words), by page.
    pub prints: BTreeMap<u32, PagePrint>,
    /// Pixels painted on each page, to tell a whole page from one with holes.
    pub painted: BTreeMap<u32, u64>,
    /// Log lines of the guest.
    pub logs: Vec<String>,
    /// Messages outside a task's flow (an export offer, a second Ready):
    /// what a check that "only frames and a status come back" looks at.
    pub unexpected: Vec<String>,
    /// Step timings.
    pub times: TaskTimes,
}

impl TaskRun {
    /// How long the guest took to read the whole input after `Accepted`, from
    /// the shim's `timing input_ms=N` log line.
    pub fn guest_input_time(&self) -> Option<Duration> {
        self.logs.iter().find_map(|line| {
            let rest = &line[line.find("input_ms=")? + "input_ms=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok().map(Duration::from_millis)
        })
    }

    /// Time from sending the task until the guest held the whole input (its
    /// own count after `Accepted`), else until the host wrote it.
    pub fn transfer_in(&self) -> Option<Duration> {
        match (self.times.accepted, self.guest_input_time()) {
            (Some(accepted), Some(input)) => Some(accepted + input),
            _ => self.times.input_sent,
        }
    }
}

/// One task to send: header kind, its input bytes and limits.
#[derive(Debug, Clone)]
pub struct TaskInput {
    /// Task kind (its `size` must match `data`).
    pub kind: TaskKind,
    /// Input bytes.
    pub data: Vec<u8>,
    /// Limits the guest enforces, and the host checks.
    pub limits: Limits,
    /// Render for a safe copy (files only).
    pub safe_copy: Option<SafeCopy>,
    /// A window shows the task: a page that stays live (a browser tab)
    /// keeps serving after `Done` (see [`serve_live`]).
    pub live: bool,
}

impl TaskInput {
    /// A file to open.
    pub fn file(name: &str, mime: &str, data: Vec<u8>, limits: Limits) -> Self {
        Self {
            kind: TaskKind::OpenFile {
                name: name.to_owned(),
                mime_hint: Some(mime.to_owned()),
                size: u64::try_from(data.len()).unwrap_or(u64::MAX),
            },
            data,
            limits,
            safe_copy: None,
            live: false,
        }
    }

    /// A link for the guest to fetch through its egress tunnel.
    pub fn uri(uri: &str, extra_roots: Vec<Vec<u8>>, limits: Limits) -> Self {
        let now_unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            kind: TaskKind::OpenUri {
                uri: uri.to_owned(),
                now_unix_secs,
                extra_roots: extra_roots.into_iter().map(ByteBuf::from).collect(),
            },
            data: Vec::new(),
            limits,
            safe_copy: None,
            live: false,
        }
    }

    /// Checks the task against the protocol's caps as the guest will, so
    /// that a task that breaks one is refused before a VM is taken for it.
    pub fn check(&self) -> Result<(), TaskError> {
        let size = u64::try_from(self.data.len()).unwrap_or(u64::MAX);
        if size > MAX_TASK_INPUT {
            return Err(TaskError::InputTooLarge(size));
        }
        HostMessage::Task(Task {
            id: 0,
            kind: self.kind.clone(),
            limits: self.limits,
            safe_copy: self.safe_copy.clone(),
            live: false,
        })
        .validate()
        .map_err(TaskError::BreaksCap)
    }

    /// A program to run on a terminal.
    pub fn program(data: Vec<u8>, limits: Limits) -> Self {
        Self {
            kind: TaskKind::RunProgram {
                size: u64::try_from(data.len()).unwrap_or(u64::MAX),
                args: Vec::new(),
            },
            data,
            limits,
            safe_copy: None,
            live: false,
        }
    }
}

/// The host's checks on what one task sends back.
struct Bounds {
    limits: Limits,
    /// Pixel bytes received.
    pixels: PixelBudget,
    /// Bytes of the pages held in memory.
    held: PixelBudget,
}

impl Bounds {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            pixels: PixelBudget::new(limits.max_pixel_bytes),
            held: PixelBudget::new(limits.max_pixel_bytes),
        }
    }

    fn check_frame(&mut self, frame: &Frame, page_count: Option<u32>) -> Result<(), TaskError> {
        let l = &self.limits;
        if frame.width > l.max_width || frame.height > l.max_height {
            return Err(TaskError::PageTooLarge {
                width: frame.width,
                height: frame.height,
                max_width: l.max_width,
                max_height: l.max_height,
            });
        }
        let pages = page_count.unwrap_or(u32::MAX).min(l.max_pages);
        if frame.page >= pages {
            return Err(TaskError::PageOutOfRange {
                page: frame.page,
                pages,
            });
        }
        self.pixels.charge_frame(frame)?;
        Ok(())
    }

    /// Charges a page about to be allocated.
    fn hold_page(&mut self, width: u32, height: u32) -> Result<(), TaskError> {
        Ok(self.held.charge(page_bytes(width, height))?)
    }
}

/// Sends task `id` and its input, then collects replies until `Done` or
/// `deadline`. Input is sent right after the header; the guest reads it
/// after `Accepted`.
pub fn run_task(
    channel: &mut GuestChannel,
    id: u64,
    input: &TaskInput,
    deadline: Instant,
) -> Result<TaskRun, TaskError> {
    run_task_observed(channel, id, input, deadline, &mut NoObserver)
}

/// [`run_task`], showing each message to `observer` as it arrives and
/// sending the input it gives back.
pub fn run_task_observed(
    channel: &mut GuestChannel,
    id: u64,
    input: &TaskInput,
    deadline: Instant,
    observer: &mut dyn TaskObserver,
) -> Result<TaskRun, TaskError> {
    drive(channel, id, input, None, deadline, observer)
}

/// After `Done`: asks the guest for `offer` as pixels (`FlattenExport`) and
/// collects its pages and print data as a safe-copy task of its own id,
/// under the same limits and checks as the task's own pages. `limits` are
/// the task's.
pub fn flatten_export(
    channel: &mut GuestChannel,
    offer: &ExportOffer,
    safe_copy: SafeCopy,
    limits: Limits,
    deadline: Instant,
) -> Result<TaskRun, TaskError> {
    let input = TaskInput {
        kind: TaskKind::OpenFile {
            name: offer.name.clone(),
            mime_hint: Some(offer.mime.clone()),
            size: offer.size,
        },
        data: Vec::new(),
        limits,
        safe_copy: Some(safe_copy),
        live: false,
    };
    drive(
        channel,
        flatten_task_id(offer.id),
        &input,
        Some(offer.id),
        deadline,
        &mut NoObserver,
    )
}

/// Starts task `id` (or, with `flatten`, the rendering of that export),
/// then collects replies until `Done` or `deadline`.
fn drive(
    channel: &mut GuestChannel,
    id: u64,
    input: &TaskInput,
    flatten: Option<u32>,
    deadline: Instant,
    observer: &mut dyn TaskObserver,
) -> Result<TaskRun, TaskError> {
    let size = u64::try_from(input.data.len()).unwrap_or(u64::MAX);
    if size > MAX_TASK_INPUT {
        return Err(TaskError::InputTooLarge(size));
    }
    let sent = Instant::now();
    let mut run = TaskRun::default();
    let mut bounds = Bounds::new(input.limits);
    let mut seen: Vec<String> = Vec::new();
    let fail = |source, seen: &[String]| match source {
        // The wait was cut by the deadline: the time limit, not the guest's silence.
        ChannelError::TimedOut(_) if Instant::now() >= deadline => TaskError::TimeLimit {
            after: sent.elapsed(),
            seen: summary(seen),
        },
        source => TaskError::Channel {
            source,
            after: sent.elapsed(),
            seen: summary(seen),
        },
    };

    let start = match (flatten, &input.safe_copy) {
        (Some(export), Some(copy)) => HostMessage::FlattenExport {
            id: export,
            safe_copy: copy.clone(),
        },
        _ => HostMessage::Task(Task {
            id,
            kind: input.kind.clone(),
            limits: input.limits,
            safe_copy: input.safe_copy.clone(),
            live: input.live,
        }),
    };
    channel.send(&start).map_err(|e| fail(e, &seen))?;
    let mut offset = 0u64;
    for chunk in input.data.chunks(CHUNK_BYTES) {
        channel
            .send(&HostMessage::TaskData {
                offset,
                data: chunk.to_vec(),
            })
            .map_err(|e| fail(e, &seen))?;
        offset += u64::try_from(chunk.len()).unwrap_or(u64::MAX);
    }
    run.times.input_sent = Some(sent.elapsed());

    loop {
        // Wait in short slices, so that the user's input (and a closed
        // window) reaches a guest that is silent, such as a program waiting
        // for a key.
        while Instant::now() < deadline
            && !channel.wait_readable(INPUT_POLL.min(deadline - Instant::now()))
        {
            for event in observer.input() {
                channel
                    .send(&HostMessage::Input(within(event, &input.limits)))
                    .map_err(|e| fail(e, &seen))?;
            }
        }
        let msg = channel.recv_until(deadline).map_err(|e| fail(e, &seen))?;
        let at = Some(sent.elapsed());
        match msg {
            GuestMessage::Accepted { task } => {
                check_task(id, task)?;
                run.times.accepted = at;
                seen.push("Accepted".into());
            }
            GuestMessage::PageInfo { task, count } => {
                check_task(id, task)?;
                run.page_count = Some(count);
                observer.page_count(count);
                run.times.page_info = run.times.page_info.or(at);
                seen.push(format!("PageInfo({count})"));
            }
            GuestMessage::Frame(frame) => {
                bounds.check_frame(&frame, run.page_count)?;
                run.times.first_frame = run.times.first_frame.or(at);
                run.frames += 1;
                run.pixel_bytes += u64::try_from(frame.pixels.len()).unwrap_or(u64::MAX);
                let held = run.pages.get(&frame.page).map(|p| (p.width, p.height));
                let fits = held == Some((frame.width, frame.height));
                if let (Some((w, h)), false, Some(_)) = (held, fits, &input.safe_copy) {
                    // A safe copy's pages are drawn once; no resize re-lays them out.
                    return Err(TaskError::PrintMismatch {
                        page: frame.page,
                        reason: format!(
                            "a frame for a {}x{} page after frames for a {w}x{h} one",
                            frame.width, frame.height
                        ),
                    });
                }
                if !fits {
                    run.painted.insert(frame.page, 0);
                    // A new page, or one laid out again (resize): start it afresh.
                    bounds.hold_page(frame.width, frame.height)?;
                    run.pages
                        .insert(frame.page, PageImage::new(frame.width, frame.height));
                }
                if let Some(page) = run.pages.get_mut(&frame.page) {
                    page.apply(&frame)?;
                }
                if let Some(painted) = run.painted.get_mut(&frame.page) {
                    *painted += u64::from(frame.rect.w) * u64::from(frame.rect.h);
                }
                observer.frame(&frame);
                if seen.last().is_none_or(|s| !s.starts_with("Frame")) {
                    seen.push(format!("Frame(page {})", frame.page));
                }
            }
            GuestMessage::ProgramExited { code, signal } => {
                run.program_exit = Some((code, signal));
                seen.push(format!("ProgramExited({code:?}, {signal:?})"));
            }
            GuestMessage::PagePrint(print) => {
                check_task(id, print.task)?;
                check_print(&run, &print, input.safe_copy.is_some())?;
                run.prints.insert(print.page, print);
            }
            GuestMessage::Done { task, status } => {
                check_task(id, task)?;
                run.times.done = at;
                run.status = Some(status);
                return Ok(run);
            }
            GuestMessage::Log { level, text } => {
                if text == guest_log::OUT_OF_MEMORY {
                    run.program_oom = true;
                }
                if let Some(cut) = guest_log::pages_cut(&text) {
                    run.pages_cut = Some(cut);
                }
                if let Some(office) = guest_log::office_run(&text) {
                    run.office = Some(office);
                }
                run.logs.push(format!("{level:?}: {text}"));
            }
            GuestMessage::Location { url, title } => {
                observer.location(&url, &title);
                run.location = Some(url);
            }
            GuestMessage::ExportOffer(offer) => {
                if run.exports.len() >= usize::try_from(MAX_EXPORTS_HELD).unwrap_or(usize::MAX) {
                    return Err(TaskError::ExportMismatch {
                        id: offer.id,
                        reason: format!("more than {MAX_EXPORTS_HELD} offers"),
                    });
                }
                observer.export_offer(&offer);
                seen.push(format!("ExportOffer({})", offer.id));
                run.exports.push(offer);
            }
            msg if is_tunnel(&msg) => {
                // `seen` lists single opens, not streams: a browser opens hundreds.
                if let GuestMessage::EgressOpen { host, port } = &msg {
                    seen.push(format!("EgressOpen({host}:{port})"));
                }
                if let Some(reply) = observer.egress(&msg, deadline) {
                    channel.send(&reply).map_err(|e| fail(e, &seen))?;
                }
            }
            other => {
                let text = format!("{other:?}");
                seen.push(text.clone());
                run.unexpected.push(text);
            }
        }
        for event in observer.input() {
            channel
                .send(&HostMessage::Input(within(event, &input.limits)))
                .map_err(|e| fail(e, &seen))?;
        }
    }
}

/// Whether `msg` is for the task's egress tunnel, which the observer serves.
fn is_tunnel(msg: &GuestMessage) -> bool {
    matches!(
        msg,
        GuestMessage::EgressOpen { .. }
            | GuestMessage::EgressSend { .. }
            | GuestMessage::EgressRecv { .. }
            | GuestMessage::EgressClose
            | GuestMessage::StreamOpen { .. }
            | GuestMessage::StreamSend { .. }
            | GuestMessage::StreamClose { .. }
            | GuestMessage::StreamPoll { .. }
    )
}

/// After `Done` of a live task (a browser tab in a window): carries the
/// page's frames to the observer and the user's input back, and serves its
/// network, until the observer says the user is done, the guest ends or
/// `deadline` passes. Each frame is checked as before `Done`: page 0, the
/// task's page limits.
pub fn serve_live(
    channel: &mut GuestChannel,
    input: &TaskInput,
    deadline: Instant,
    observer: &mut dyn TaskObserver,
) -> Result<(), TaskError> {
    let fail = |source| TaskError::Channel {
        source,
        after: Duration::ZERO,
        seen: "live page".into(),
    };
    while !observer.live_over() {
        let msg = match channel.recv_until(deadline) {
            Ok(msg) => msg,
            Err(ChannelError::TimedOut(_)) => return Ok(()),
            Err(e) => return Err(fail(e)),
        };
        match msg {
            GuestMessage::Frame(frame) => {
                if frame.page != 0 {
                    return Err(TaskError::PageOutOfRange {
                        page: frame.page,
                        pages: 1,
                    });
                }
                if frame.width > input.limits.max_width || frame.height > input.limits.max_height {
                    return Err(TaskError::PageTooLarge {
                        width: frame.width,
                        height: frame.height,
                        max_width: input.limits.max_width,
                        max_height: input.limits.max_height,
                    });
                }
                observer.frame(&frame);
            }
            GuestMessage::Location { url, title } => observer.location(&url, &title),
            GuestMessage::Log { level, text } => log::debug!("live page: {level:?}: {text}"),
            msg if is_tunnel(&msg) => {
                if let Some(reply) = observer.egress(&msg, deadline) {
                    channel.send(&reply).map_err(fail)?;
                }
            }
            other => log::debug!("live page: ignored {other:?}"),
        }
        for event in observer.input() {
            channel
                .send(&HostMessage::Input(within(event, &input.limits)))
                .map_err(fail)?;
        }
    }
    Ok(())
}

/// `event`, with a resize cut to the task's page limits: a window larger
/// than the profile's display must not ask the guest for a page the host
/// would then refuse (and end the task for).
fn within(event: InputEvent, limits: &Limits) -> InputEvent {
    match event {
        InputEvent::Resize { width, height } => InputEvent::Resize {
            width: width.clamp(1, limits.max_width.max(1)),
            height: height.clamp(1, limits.max_height.max(1)),
        },
        other => other,
    }
}

/// Most export offers one task may make (the protocol's own cap on ids).
pub const MAX_EXPORTS_HELD: u32 = vitrine_shim::protocol::MAX_EXPORTS;

/// Asks the guest, after `Done`, for the content of `offer` and checks it
/// against the offer: chunks in order, no more than the offered size (and the
/// protocol's cap), and the offered SHA-256. Log lines in between are skipped;
/// anything else ends the fetch with an error.
pub fn fetch_export(
    channel: &mut GuestChannel,
    offer: &ExportOffer,
    deadline: Instant,
) -> Result<Vec<u8>, TaskError> {
    let mismatch = |reason: String| TaskError::ExportMismatch {
        id: offer.id,
        reason,
    };
    if offer.size > MAX_EXPORT_BYTES {
        return Err(mismatch(format!(
            "offered {} bytes, over the {MAX_EXPORT_BYTES}-byte cap",
            offer.size
        )));
    }
    let fail = |source| TaskError::Channel {
        source,
        after: Duration::ZERO,
        seen: format!("FetchExport({})", offer.id),
    };
    channel
        .send(&HostMessage::FetchExport { id: offer.id })
        .map_err(fail)?;
    let mut data = Vec::new();
    loop {
        match channel.recv_until(deadline).map_err(fail)? {
            GuestMessage::ExportChunk {
                id,
                offset,
                data: chunk,
            } if id == offer.id => {
                if offset != u64::try_from(data.len()).unwrap_or(u64::MAX) {
                    return Err(mismatch(format!(
                        "chunk at offset {offset}, expected {}",
                        data.len()
                    )));
                }
                let total = offset + u64::try_from(chunk.len()).unwrap_or(u64::MAX);
                if total > offer.size {
                    return Err(mismatch(format!(
                        "more than the {} bytes offered",
                        offer.size
                    )));
                }
                data.extend_from_slice(&chunk);
            }
            GuestMessage::ExportEnd { id } if id == offer.id => break,
            GuestMessage::Log { .. } => {}
            other => {
                let head: String = format!("{other:?}").chars().take(80).collect();
                return Err(mismatch(format!("unexpected message {head}")));
            }
        }
    }
    if u64::try_from(data.len()).unwrap_or(u64::MAX) != offer.size {
        return Err(mismatch(format!(
            "{} bytes arrived, {} were offered",
            data.len(),
            offer.size
        )));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &data);
    if digest.as_ref() != offer.sha256 {
        return Err(mismatch(
            "content does not match the offered SHA-256".into(),
        ));
    }
    Ok(data)
}

/// Gives the VM a fresh identity before its task: a 32-byte seed from the
/// host's CSPRNG that the guest mixes in before it reseeds its kernel CRNG,
/// the host's clock, and the task id. A VM cloned from a template wakes
/// with the template's CRNG state and clock; this is what makes two clones
/// differ. The guest refuses a task before it.
pub fn give_identity(
    channel: &mut GuestChannel,
    task: u64,
    deadline: Instant,
) -> Result<IdentityApplied, TaskError> {
    let started = Instant::now();
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| TaskError::Seed(e.to_string()))?;
    let clock_unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(1);
    let channel_error = |source| TaskError::Channel {
        source,
        after: started.elapsed(),
        seen: "identity".to_owned(),
    };
    channel
        .send(&HostMessage::Identity(Identity {
            seed,
            clock_unix_ns,
            task,
        }))
        .map_err(channel_error)?;
    loop {
        match channel.recv_until(deadline).map_err(channel_error)? {
            GuestMessage::IdentityApplied(applied) => return Ok(applied),
            // A guest may log while it applies it.
            GuestMessage::Log { level, text } => log::debug!("guest {level:?}: {text}"),
            GuestMessage::Done {
                status: TaskStatus::Failed(why),
                ..
            } => return Err(TaskError::IdentityRefused(format!("a failure: {why}"))),
            other => {
                let name = format!("{other:?}");
                let name = name.split([' ', '(', '{']).next().unwrap_or("?").to_owned();
                return Err(TaskError::IdentityRefused(name));
            }
        }
    }
}

/// A page's print data must follow its pixels, once, in a safe-copy task,
/// and every word must lie on the page.
fn check_print(run: &TaskRun, print: &PagePrint, safe_copy: bool) -> Result<(), TaskError> {
    let mismatch = |reason: String| TaskError::PrintMismatch {
        page: print.page,
        reason,
    };
    if !safe_copy {
        return Err(mismatch(
            "print data in a task that is not a safe copy".into(),
        ));
    }
    if run.prints.contains_key(&print.page) {
        return Err(mismatch("print data sent twice".into()));
    }
    let Some(page) = run.pages.get(&print.page) else {
        return Err(mismatch(
            "print data before any of the page's pixels".into(),
        ));
    };
    for word in &print.words {
        let inside = u64::from(word.x) + u64::from(word.w) <= u64::from(page.width)
            && u64::from(word.y) + u64::from(word.h) <= u64::from(page.height);
        if !inside {
            return Err(mismatch(format!(
                "the box of word {:?} ({}x{} at {},{}) lies outside the {}x{} page",
                word.text, word.w, word.h, word.x, word.y, page.width, page.height
            )));
        }
    }
    Ok(())
}

fn check_task(want: u64, got: u64) -> Result<(), TaskError> {
    if want == got {
        Ok(())
    } else {
        Err(TaskError::WrongTask { want, got })
    }
}

fn summary(seen: &[String]) -> String {
    if seen.is_empty() {
        "none".to_owned()
    } else {
        seen.join(", ")
    }
}

#[cfg(test)]
mod tests {
    //! A scripted guest on the other end of a Unix socket pair: the real
    //! channel and framing, the guest's messages written by the test.

    use super::*;
    use std::os::unix::net::UnixStream;
    use std::thread;
    use vitrine_shim::protocol::{FrameReader, FrameWriter, LogLevel, PixelFormat, Rect};

    fn limits() -> Limits {
        Limits {
            time_limit_ms: 5_000,
            max_width: 8,
            max_height: 8,
            max_pages: 3,
            max_pixel_bytes: 1024,
        }
    }

    fn frame(page: u32, width: u32, height: u32) -> GuestMessage {
        let (w, h) = (width.min(2), height.min(2));
        GuestMessage::Frame(Frame {
            page,
            width,
            height,
            rect: Rect { x: 0, y: 0, w, h },
            format: PixelFormat::Rgba8,
            pixels: [200, 10, 10, 255].repeat(usize::try_from(w * h).unwrap()),
        })
    }

    /// Runs task 7 against a guest that reads the task and its input, then
    /// sends `script`.
    fn run_against(input: TaskInput, script: Vec<GuestMessage>) -> Result<TaskRun, TaskError> {
        let (host, guest) = UnixStream::pair().unwrap();
        let mut channel = GuestChannel::new(host).unwrap();
        let expect_chunks = input.data.len().div_ceil(CHUNK_BYTES);
        let guest = thread::spawn(move || {
            let mut reader = FrameReader::<_, HostMessage>::new(&guest);
            let mut got = Vec::new();
            for _ in 0..=expect_chunks {
                got.push(reader.recv().unwrap().unwrap());
            }
            let mut writer = FrameWriter::<_, GuestMessage>::new(&guest);
            for msg in script {
                // The host may stop reading early (that is the point of
                // some tests); a closed socket is fine then.
                if writer.send(&msg).is_err() {
                    break;
                }
            }
            got
        });
        let result = run_task(
            &mut channel,
            7,
            &input,
            Instant::now() + Duration::from_secs(5),
        );
        drop(channel);
        let got = guest.join().unwrap();
        assert!(matches!(&got[0], HostMessage::Task(t) if t.id == 7));
        result
    }

    fn pdf_input() -> TaskInput {
        TaskInput::file("a.pdf", "application/pdf", b"%PDF-1.4".to_vec(), limits())
    }

    fn print(page: u32, x: u32, w: u32) -> GuestMessage {
        GuestMessage::PagePrint(vitrine_shim::protocol::PagePrint {
            task: 7,
            page,
            dpi: 150,
            words: vec![vitrine_shim::protocol::OcrWord {
                x,
                y: 0,
                w,
                h: 2,
                text: "word".into(),
            }],
        })
    }

    fn safe_copy_input() -> TaskInput {
        TaskInput {
            safe_copy: Some(SafeCopy {
                ocr: Some("eng".into()),
            }),
            ..pdf_input()
        }
    }

    #[test]
    fn a_safe_copy_keeps_each_pages_print_data_beside_its_pixels() {
        let script = vec![
            GuestMessage::PageInfo { task: 7, count: 1 },
            frame(0, 2, 2),
            print(0, 0, 2),
            GuestMessage::Done {
                task: 7,
                status: TaskStatus::Ok,
            },
        ];

        let run = run_against(safe_copy_input(), script).unwrap();

        assert_eq!(run.prints[&0].dpi, 150);
        assert_eq!(run.prints[&0].words[0].text, "word");
        assert_eq!(run.painted[&0], 4);
    }

    #[test]
    fn print_data_that_disagrees_with_its_page_ends_the_task() {
        let done = GuestMessage::Done {
            task: 7,
            status: TaskStatus::Ok,
        };
        let info = GuestMessage::PageInfo { task: 7, count: 1 };
        let cases = [
            // A word box reaching past the 4-pixel-wide page.
            (
                safe_copy_input(),
                vec![info.clone(), frame(0, 4, 4), print(0, 3, 2)],
            ),
            // Print data for a page with no pixels yet.
            (safe_copy_input(), vec![info.clone(), print(0, 0, 2)]),
            // Print data sent twice.
            (
                safe_copy_input(),
                vec![info.clone(), frame(0, 2, 2), print(0, 0, 2), print(0, 0, 2)],
            ),
            // A page that changes its size half-way.
            (
                safe_copy_input(),
                vec![info.clone(), frame(0, 4, 4), frame(0, 2, 2)],
            ),
            // Print data in a task that is no safe copy.
            (
                pdf_input(),
                vec![info.clone(), frame(0, 2, 2), print(0, 0, 2)],
            ),
        ];

        for (input, mut script) in cases {
            script.push(done.clone());
            let err = run_against(input, script).unwrap_err();
            assert!(
                matches!(err, TaskError::PrintMismatch { page: 0, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn run_task_collects_pages_status_and_the_guest_input_time() {
        let script = vec![
            GuestMessage::Accepted { task: 7 },
            GuestMessage::Log {
                level: LogLevel::Info,
                text: "timing input_ms=12 bytes=8".into(),
            },
            GuestMessage::PageInfo { task: 7, count: 2 },
            frame(0, 4, 4),
            frame(1, 4, 4),
            GuestMessage::Done {
                task: 7,
                status: TaskStatus::Ok,
            },
        ];

        let run = run_against(pdf_input(), script).unwrap();

        assert_eq!(run.status, Some(TaskStatus::Ok));
        assert_eq!(run.page_count, Some(2));
        assert_eq!(run.pages.keys().copied().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(run.pages[&1].pixel(1, 1), [200, 10, 10, 255]);
        assert_eq!(run.frames, 2);
        assert_eq!(run.pixel_bytes, 32);
        assert_eq!(run.guest_input_time(), Some(Duration::from_millis(12)));
        assert!(run.transfer_in().unwrap() >= Duration::from_millis(12));
        assert!(run.times.first_frame.is_some());
    }

    #[test]
    fn run_task_reads_the_guests_page_cap_and_out_of_memory_lines() {
        let log = |text: &str| GuestMessage::Log {
            level: LogLevel::Info,
            text: text.into(),
        };
        let script = vec![
            GuestMessage::Accepted { task: 7 },
            log("page cap: shown=2 total=900 reason=pixel-budget"),
            log("page cap: shown=9 total=9 reason=page-cap"),
            log("program-exit: out-of-memory"),
            GuestMessage::Done {
                task: 7,
                status: TaskStatus::Ok,
            },
        ];

        let run = run_against(pdf_input(), script).unwrap();

        assert_eq!(
            run.pages_cut,
            Some(PagesCut {
                shown: 2,
                total: 900,
                at_least: false,
                by: crate::guest_log::CutBy::PixelBudget
            })
        );
        assert!(run.program_oom);
    }

    #[test]
    fn run_task_ends_on_a_page_larger_than_the_limits() {
        let script = vec![GuestMessage::Accepted { task: 7 }, frame(0, 9, 4)];

        let err = run_against(pdf_input(), script).unwrap_err();

        assert!(
            matches!(err, TaskError::PageTooLarge { width: 9, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn run_task_ends_on_a_page_past_the_announced_count() {
        let script = vec![GuestMessage::PageInfo { task: 7, count: 1 }, frame(1, 4, 4)];

        let err = run_against(pdf_input(), script).unwrap_err();

        assert!(
            matches!(err, TaskError::PageOutOfRange { page: 1, pages: 1 }),
            "{err:?}"
        );
    }

    #[test]
    fn run_task_ends_when_pages_held_would_overspend_the_budget() {
        // Frames cost 16 bytes each, but every page the host allocates is
        // charged whole: 3 x 256 + 224 fits the 1024 bytes, re-laying out
        // page 0 once more does not.
        let script = vec![
            frame(0, 8, 8),
            frame(1, 8, 8),
            frame(2, 8, 8),
            frame(0, 8, 7),
            frame(0, 8, 8),
        ];

        let err = run_against(pdf_input(), script).unwrap_err();

        assert!(matches!(err, TaskError::Budget(_)), "{err:?}");
    }

    #[test]
    fn run_task_refuses_to_answer_for_another_task() {
        let script = vec![GuestMessage::Accepted { task: 8 }];

        let err = run_against(pdf_input(), script).unwrap_err();

        assert!(
            matches!(err, TaskError::WrongTask { want: 7, got: 8 }),
            "{err:?}"
        );
    }

    #[test]
    fn run_task_keeps_messages_outside_the_flow_as_unexpected() {
        let script = vec![
            GuestMessage::ExportEnd { id: 1 },
            GuestMessage::Done {
                task: 7,
                status: TaskStatus::Failed("no".into()),
            },
        ];

        let run = run_against(pdf_input(), script).unwrap();

        assert_eq!(run.unexpected.len(), 1, "{:?}", run.unexpected);
        assert!(run.exports.is_empty());
        assert_eq!(run.status, Some(TaskStatus::Failed("no".into())));
    }

    fn offer_of(data: &[u8]) -> ExportOffer {
        let digest = ring::digest::digest(&ring::digest::SHA256, data);
        ExportOffer {
            id: 0,
            name: "result.txt".into(),
            size: u64::try_from(data.len()).unwrap(),
            sha256: digest.as_ref().try_into().unwrap(),
            mime: "text/plain".into(),
        }
    }

    /// Fetches `offer` from a guest that answers `FetchExport` with `script`.
    fn fetch_against(offer: &ExportOffer, script: Vec<GuestMessage>) -> Result<Vec<u8>, TaskError> {
        let (host, guest) = UnixStream::pair().unwrap();
        let mut channel = GuestChannel::new(host).unwrap();
        let guest = thread::spawn(move || {
            let got = FrameReader::<_, HostMessage>::new(&guest).recv().unwrap();
            let mut writer = FrameWriter::<_, GuestMessage>::new(&guest);
            for msg in script {
                if writer.send(&msg).is_err() {
                    break;
                }
            }
            got
        });
        let result = fetch_export(&mut channel, offer, Instant::now() + Duration::from_secs(5));
        drop(channel);
        assert_eq!(
            guest.join().unwrap(),
            Some(HostMessage::FetchExport { id: 0 })
        );
        result
    }

    fn chunk(offset: u64, data: &[u8]) -> GuestMessage {
        GuestMessage::ExportChunk {
            id: 0,
            offset,
            data: data.to_vec(),
        }
    }

    #[test]
    fn fetch_export_returns_the_offered_bytes() {
        let offer = offer_of(b"hello world");

        let data = fetch_against(
            &offer,
            vec![
                chunk(0, b"hello "),
                chunk(6, b"world"),
                GuestMessage::ExportEnd { id: 0 },
            ],
        )
        .unwrap();

        assert_eq!(data, b"hello world");
    }

    #[test]
    fn fetch_export_refuses_other_bytes_than_the_offered_hash() {
        let offer = offer_of(b"hello world");

        let err = fetch_against(
            &offer,
            vec![chunk(0, b"HELLO WORLD"), GuestMessage::ExportEnd { id: 0 }],
        )
        .unwrap_err();

        assert!(
            matches!(&err, TaskError::ExportMismatch { reason, .. } if reason.contains("SHA-256")),
            "{err:?}"
        );
    }

    #[test]
    fn fetch_export_stops_a_guest_that_sends_more_than_it_offered() {
        let offer = offer_of(b"short");

        let err = fetch_against(&offer, vec![chunk(0, &[b'x'; 4096])]).unwrap_err();

        assert!(
            matches!(&err, TaskError::ExportMismatch { reason, .. } if reason.contains("more than")),
            "{err:?}"
        );
    }

    /// A user who types one key 300 ms in, after the guest fell silent.
    struct LateKey {
        from: Instant,
        typed: bool,
    }

    impl TaskObserver for LateKey {
        fn input(&mut self) -> Vec<InputEvent> {
            if self.typed || self.from.elapsed() < Duration::from_millis(300) {
                return Vec::new();
            }
            self.typed = true;
            vec![InputEvent::Text("y".into())]
        }
    }

    #[test]
    fn input_reaches_a_guest_that_waits_silently_for_it() {
        // Arrange: a guest that, like a program at a prompt, sends nothing
        // until it gets a key, then ends.
        let (host, guest) = UnixStream::pair().unwrap();
        let mut channel = GuestChannel::new(host).unwrap();
        let guest = thread::spawn(move || {
            let mut reader = FrameReader::<_, HostMessage>::new(&guest);
            let mut writer = FrameWriter::<_, GuestMessage>::new(&guest);
            let task = reader.recv().unwrap().unwrap();
            assert!(matches!(task, HostMessage::Task(_)));
            writer.send(&GuestMessage::Accepted { task: 7 }).unwrap();
            let key = reader.recv().unwrap().unwrap();
            writer
                .send(&GuestMessage::Done {
                    task: 7,
                    status: TaskStatus::Ok,
                })
                .unwrap();
            key
        });
        let input = TaskInput {
            kind: TaskKind::OpenUri {
                uri: "https://example.org/".into(),
                now_unix_secs: 0,
                extra_roots: Vec::new(),
            },
            data: Vec::new(),
            limits: limits(),
            safe_copy: None,
            live: false,
        };
        let started = Instant::now();

        // Act
        let run = run_task_observed(
            &mut channel,
            7,
            &input,
            started + Duration::from_secs(5),
            &mut LateKey {
                from: started,
                typed: false,
            },
        )
        .unwrap();

        // Assert
        let key = guest.join().unwrap();
        assert_eq!(key, HostMessage::Input(InputEvent::Text("y".into())));
        assert_eq!(run.status, Some(TaskStatus::Ok));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_resize_past_the_page_limits_is_cut_to_them() {
        let limits = limits();

        let big = within(
            InputEvent::Resize {
                width: 872,
                height: 968,
            },
            &limits,
        );
        let small = within(
            InputEvent::Resize {
                width: 5,
                height: 6,
            },
            &limits,
        );
        let key = within(InputEvent::Text("a".into()), &limits);

        assert_eq!(
            big,
            InputEvent::Resize {
                width: 8,
                height: 8
            }
        );
        assert_eq!(
            small,
            InputEvent::Resize {
                width: 5,
                height: 6
            }
        );
        assert_eq!(key, InputEvent::Text("a".into()));
    }

    #[test]
    fn run_task_names_what_arrived_when_the_guest_hangs_up() {
        let script = vec![GuestMessage::Accepted { task: 7 }];

        let err = run_against(pdf_input(), script).unwrap_err();

        assert!(
            matches!(&err, TaskError::Channel { seen, source: ChannelError::Closed, .. } if seen == "Accepted"),
            "{err:?}"
        );
    }

    #[test]
    fn a_guest_silent_past_the_deadline_ends_at_the_time_limit_not_a_0ns_wait() {
        let (host, guest) = UnixStream::pair().unwrap();
        let mut channel = GuestChannel::new(host).unwrap();
        let silent = thread::spawn(move || {
            let mut reader = FrameReader::<_, HostMessage>::new(&guest);
            let mut writer = FrameWriter::<_, GuestMessage>::new(&guest);
            let _task = reader.recv();
            let _input = reader.recv();
            writer.send(&GuestMessage::Accepted { task: 7 }).unwrap();
            // Stays silent (and open) until the host gives up.
            let _ = reader.recv();
        });

        let err = run_task(
            &mut channel,
            7,
            &pdf_input(),
            Instant::now() + Duration::from_millis(300),
        )
        .unwrap_err();
        drop(channel);
        silent.join().unwrap();

        assert!(
            matches!(&err, TaskError::TimeLimit { seen, .. } if seen == "Accepted"),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("the time limit was reached after ") && !text.contains("0ns"),
            "{text}"
        );
    }

    #[test]
    fn a_link_past_the_protocol_cap_is_refused_before_a_vm() {
        let long = format!("https://example.org/{}", "a".repeat(100_000));
        let input = TaskInput::uri(&long, Vec::new(), limits());

        let err = input.check().unwrap_err();

        assert_eq!(
            crate::service::worker::chain(&err),
            "refused before any VM was taken: uri is 100020 bytes, more than the cap of 8192"
        );
        assert!(pdf_input().check().is_ok());
    }

    #[test]
    fn a_task_without_a_tunnel_refuses_streams_and_its_polls_find_nothing() {
        let mut observer = NoObserver;
        let deadline = Instant::now() + Duration::from_secs(1);
        let open = GuestMessage::StreamOpen {
            stream: 3,
            host: "example.org".into(),
            port: 443,
        };
        let send = GuestMessage::StreamSend {
            stream: 3,
            data: b"hello".to_vec(),
        };

        let opened = observer.egress(&open, deadline);
        let sent = observer.egress(&send, deadline);
        let closed = observer.egress(&GuestMessage::StreamClose { stream: 3 }, deadline);
        let started = Instant::now();
        let polled = observer.egress(&GuestMessage::StreamPoll { wait_ms: 50 }, deadline);
        let waited = started.elapsed();

        assert_eq!(
            opened,
            Some(HostMessage::Stream(StreamReply::Opened {
                stream: 3,
                outcome: EgressReply::Refused(
                    "example.org:443: this task has no egress tunnel".into()
                ),
            }))
        );
        assert_eq!(sent, None);
        assert_eq!(closed, None);
        assert_eq!(
            polled,
            Some(HostMessage::Stream(StreamReply::Data(Vec::new())))
        );
        assert!(waited >= Duration::from_millis(45), "{waited:?}");
        assert!(waited < Duration::from_millis(500), "{waited:?}");
    }

    #[test]
    fn the_task_loop_answers_a_guests_streams_through_its_observer() {
        // Arrange: a guest that opens a stream, polls, then ends.
        let (host, guest) = UnixStream::pair().unwrap();
        let mut channel = GuestChannel::new(host).unwrap();
        let guest = thread::spawn(move || {
            let mut reader = FrameReader::<_, HostMessage>::new(&guest);
            let mut writer = FrameWriter::<_, GuestMessage>::new(&guest);
            reader.recv().unwrap().unwrap();
            writer.send(&GuestMessage::Accepted { task: 7 }).unwrap();
            let open = GuestMessage::StreamOpen {
                stream: 1,
                host: "example.org".into(),
                port: 443,
            };
            writer.send(&open).unwrap();
            let opened = reader.recv().unwrap().unwrap();
            writer
                .send(&GuestMessage::StreamClose { stream: 1 })
                .unwrap();
            writer
                .send(&GuestMessage::StreamPoll { wait_ms: 10 })
                .unwrap();
            let polled = reader.recv().unwrap().unwrap();
            writer
                .send(&GuestMessage::Done {
                    task: 7,
                    status: TaskStatus::Ok,
                })
                .unwrap();
            (opened, polled)
        });
        let input = TaskInput {
            kind: TaskKind::OpenUri {
                uri: "https://example.org/".into(),
                now_unix_secs: 0,
                extra_roots: Vec::new(),
            },
            data: Vec::new(),
            limits: limits(),
            safe_copy: None,
            live: false,
        };

        // Act
        let deadline = Instant::now() + Duration::from_secs(5);
        let run = run_task_observed(&mut channel, 7, &input, deadline, &mut NoObserver).unwrap();

        // Assert
        let (opened, polled) = guest.join().unwrap();
        let HostMessage::Stream(StreamReply::Opened { stream: 1, outcome }) = opened else {
            panic!("{opened:?}")
        };
        assert!(matches!(outcome, EgressReply::Refused(_)), "{outcome:?}");
        assert_eq!(polled, HostMessage::Stream(StreamReply::Data(Vec::new())));
        assert_eq!(run.status, Some(TaskStatus::Ok));
        assert!(run.unexpected.is_empty(), "{:?}", run.unexpected);
    }
}
