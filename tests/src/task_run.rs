//! Drives one task over a guest channel, as the daemon will: send the task
//! and its input, collect pages, frames and the final status, and time each
//! step.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vitrine_daemon::backend::{ChannelError, GuestChannel};
use vitrine_shim::protocol::{
    GuestMessage, HostMessage, Limits, Task, TaskKind, TaskStatus, MAX_CHUNK_BYTES,
};

use crate::page_image::{PageImage, PageImageError};

/// Size of the input chunks sent (1 MiB; the protocol allows up to 4 MiB).
pub const CHUNK_BYTES: usize = 1024 * 1024;
const _: () = assert!(CHUNK_BYTES <= MAX_CHUNK_BYTES);

/// A task could not be driven to its end.
#[derive(Debug, thiserror::Error)]
pub enum TaskRunError {
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
    /// A frame did not fit the page it named.
    #[error("frame does not fit its page")]
    Page(#[from] PageImageError),
    /// The guest spoke about another task.
    #[error("guest answered for task {got}, the task is {want}")]
    WrongTask {
        /// Task id sent.
        want: u64,
        /// Task id received.
        got: u64,
    },
}

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
    /// Log lines of the guest.
    pub logs: Vec<String>,
    /// Messages outside a task's flow (an export offer, a second Ready):
    /// what a check that "only frames and a status come back" looks at.
    pub unexpected: Vec<String>,
    /// Step timings.
    pub times: TaskTimes,
}

/// One task to send: header kind, its input bytes and limits.
#[derive(Debug, Clone)]
pub struct TaskInput {
    /// Task kind (its `size` must match `data`).
    pub kind: TaskKind,
    /// Input bytes.
    pub data: Vec<u8>,
    /// Limits the guest enforces.
    pub limits: Limits,
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
        }
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
        }
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
) -> Result<TaskRun, TaskRunError> {
    let sent = Instant::now();
    let mut run = TaskRun::default();
    let mut seen: Vec<String> = Vec::new();
    let fail = |source, seen: &[String]| TaskRunError::Channel {
        source,
        after: sent.elapsed(),
        seen: summary(seen),
    };

    channel
        .send(&HostMessage::Task(Task {
            id,
            kind: input.kind.clone(),
            limits: input.limits,
        }))
        .map_err(|e| fail(e, &seen))?;
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
                run.times.page_info = run.times.page_info.or(at);
                seen.push(format!("PageInfo({count})"));
            }
            GuestMessage::Frame(frame) => {
                run.times.first_frame = run.times.first_frame.or(at);
                run.frames += 1;
                run.pixel_bytes += u64::try_from(frame.pixels.len()).unwrap_or(u64::MAX);
                let page = run
                    .pages
                    .entry(frame.page)
                    .or_insert_with(|| PageImage::new(frame.width, frame.height));
                if (page.width, page.height) != (frame.width, frame.height) {
                    // The page was laid out again (resize): start it afresh.
                    *page = PageImage::new(frame.width, frame.height);
                }
                page.apply(&frame)?;
                if seen.last().is_none_or(|s| !s.starts_with("Frame")) {
                    seen.push(format!("Frame(page {})", frame.page));
                }
            }
            GuestMessage::ProgramExited { code, signal } => {
                run.program_exit = Some((code, signal));
                seen.push(format!("ProgramExited({code:?}, {signal:?})"));
            }
            GuestMessage::Done { task, status } => {
                check_task(id, task)?;
                run.times.done = at;
                run.status = Some(status);
                return Ok(run);
            }
            GuestMessage::Log { level, text } => {
                run.logs.push(format!("{level:?}: {text}"));
            }
            other => {
                let text = format!("{other:?}");
                seen.push(text.clone());
                run.unexpected.push(text);
            }
        }
    }
}

fn check_task(want: u64, got: u64) -> Result<(), TaskRunError> {
    if want == got {
        Ok(())
    } else {
        Err(TaskRunError::WrongTask { want, got })
    }
}

fn summary(seen: &[String]) -> String {
    if seen.is_empty() {
        "none".to_owned()
    } else {
        seen.join(", ")
    }
}
