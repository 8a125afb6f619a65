//! The daemon's end of one viewer window: spawns `vitrine-viewer` with a
//! socketpair as its stdin (its only channel), sends frames, status lines
//! and titles, and collects the user's input on a reader thread.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vitrine_shim::protocol::{Frame, InputEvent};

use super::wire::{self, Message, WireError};

/// How long a write may wait on a viewer that stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Drop waits for the viewer to exit after the socket closes.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Input events kept for `poll_input`; a flood beyond this is dropped.
const MAX_PENDING_INPUT: usize = 4096;
/// Longest window title, in characters, before " (sandboxed)".
const MAX_TITLE_CHARS: usize = 120;

/// Why a viewer could not be started or fed.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// The socketpair could not be made.
    #[error("creating the viewer socket")]
    Socket(#[source] std::io::Error),
    /// The viewer binary did not start.
    #[error("starting the viewer {path}")]
    Spawn {
        /// Binary.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The message breaks a wire cap.
    #[error("encoding a viewer message")]
    Encode(#[from] WireError),
    /// Writing to the viewer failed: it exited, or stopped reading.
    #[error("sending to the viewer")]
    Send(#[source] std::io::Error),
    /// The user closed the window, or the viewer exited.
    #[error("the viewer window is closed")]
    Closed,
}

/// One viewer window per task.
#[derive(Debug)]
pub struct ViewerLink {
    child: Child,
    stream: UnixStream,
    inputs: Receiver<InputEvent>,
    closed: Arc<AtomicBool>,
    shown: Arc<Shown>,
    reader: Option<JoinHandle<()>>,
}

/// What the viewer reported as on screen.
#[derive(Debug, Default)]
struct Shown {
    /// Frames drawn so far, as the viewer last reported.
    frames: AtomicU32,
    /// When the first frame was reported on screen.
    first: Mutex<Option<Instant>>,
    /// Clicks on "save safe copy" not yet taken.
    save_asked: AtomicU32,
}

impl ViewerLink {
    /// Spawns `vitrine-viewer` (path given) on the current $DISPLAY with a
    /// socketpair as its only channel; `title` shows the file name +
    /// "(sandboxed)".
    pub fn spawn(viewer_bin: &Path, title: &str) -> Result<ViewerLink, ViewerError> {
        let (ours, theirs) = UnixStream::pair().map_err(ViewerError::Socket)?;
        ours.set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(ViewerError::Socket)?;
        let reader_end = ours.try_clone().map_err(ViewerError::Socket)?;
        // The child's end becomes its stdin: std dup2()s it there, so no fd
        // juggling (and no unsafe pre_exec) is needed, and nothing else leaks.
        let child = Command::new(viewer_bin)
            .arg("--title")
            .arg(window_title(title))
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .map_err(|source| ViewerError::Spawn {
                path: viewer_bin.to_path_buf(),
                source,
            })?;
        let closed = Arc::new(AtomicBool::new(false));
        let shown = Arc::new(Shown::default());
        let (tx, inputs) = mpsc::sync_channel(MAX_PENDING_INPUT);
        let reader = {
            let (closed, shown) = (Arc::clone(&closed), Arc::clone(&shown));
            std::thread::Builder::new()
                .name("viewer-input".into())
                .spawn(move || read_inputs(reader_end, tx, &closed, &shown))
                .map_err(ViewerError::Socket)?
        };
        Ok(ViewerLink {
            child,
            stream: ours,
            inputs,
            closed,
            shown,
            reader: Some(reader),
        })
    }

    /// Forwards one damage frame (already bounds-checked by task.rs).
    pub fn send_frame(&mut self, frame: &Frame) -> Result<(), ViewerError> {
        let bytes = wire::encode_frame(frame)?;
        self.write(&bytes)
    }

    /// Status line shown in the window ("rendering…", "finished: clean").
    /// Control characters are dropped and the text is cut to the wire cap.
    pub fn send_status(&mut self, text: &str) -> Result<(), ViewerError> {
        let bytes = wire::encode(&Message::Status(status_text(text)))?;
        self.write(&bytes)
    }

    /// What the window shows now (a live page's address): the viewer titles
    /// its window with it and adds " (sandboxed)" itself. Control
    /// characters are dropped and the text is cut to the wire cap.
    pub fn send_title(&mut self, text: &str) -> Result<(), ViewerError> {
        let bytes = wire::encode(&Message::Title(status_text(text)))?;
        self.write(&bytes)
    }

    /// How many pages the task has, for "page 2 of 5" and the page buttons
    /// (counts beyond the protocol's page cap are cut to it; 0 is ignored).
    pub fn send_page_count(&mut self, count: u32) -> Result<(), ViewerError> {
        if count == 0 {
            return Ok(());
        }
        let count = count.min(vitrine_shim::protocol::MAX_PAGES);
        let bytes = wire::encode(&Message::Pages(count))?;
        self.write(&bytes)
    }

    /// Input the user gave since the last call (non-blocking).
    pub fn poll_input(&mut self) -> Vec<InputEvent> {
        self.inputs.try_iter().collect()
    }

    /// True once the user closed the window (the task should be cancelled).
    pub fn closed(&mut self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.closed.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// How many of the frames sent so far the window has drawn, as the
    /// viewer last reported (it reports after each redraw).
    pub fn frames_presented(&self) -> u32 {
        self.shown.frames.load(Ordering::Acquire)
    }

    /// Whether the user clicked "save safe copy" since the last call.
    pub fn take_safe_copy_request(&self) -> bool {
        self.shown.save_asked.swap(0, Ordering::AcqRel) > 0
    }

    /// When the viewer first reported a frame on screen: the end of the
    /// "first frame on screen" timing.
    pub fn first_presented(&self) -> Option<Instant> {
        *self.shown.first.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The viewer's process id (for logs and tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ViewerError> {
        if self.closed() {
            return Err(ViewerError::Closed);
        }
        self.stream.write_all(bytes).map_err(ViewerError::Send)
    }
}

impl Drop for ViewerLink {
    /// Closes the window (the viewer exits at end of stream), reaps the
    /// process, and kills it if it does not go within a grace period.
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Where `vitrine-viewer` is: `$VITRINE_VIEWER`, else next to the running
/// binary (or one folder up, for cargo's test binaries in `deps/`).
pub fn viewer_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("VITRINE_VIEWER") {
        return PathBuf::from(path);
    }
    let name = "vitrine-viewer";
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = dir.join(name);
    if beside.exists() {
        return beside;
    }
    match dir.parent() {
        Some(up) if up.join(name).exists() => up.join(name),
        _ => beside,
    }
}

/// The window title: the name without control characters, cut short, and
/// always ending in "(sandboxed)" so that no file name can hide it.
pub fn window_title(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_TITLE_CHARS)
        .collect();
    format!("{} (sandboxed)", clean.trim())
}

/// `text` without control characters, cut on a character boundary to the
/// wire's cap for a status line or a title.
fn status_text(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > wire::MAX_STATUS_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

fn read_inputs(
    mut stream: UnixStream,
    tx: mpsc::SyncSender<InputEvent>,
    closed: &AtomicBool,
    shown: &Shown,
) {
    loop {
        match wire::read_message(&mut stream) {
            Ok(Some(Message::Input(event))) => {
                // A full queue means nobody polls; dropping input is safe.
                let _ = tx.try_send(event);
            }
            Ok(Some(Message::Presented { frames })) => {
                let now = Instant::now();
                let mut first = shown.first.lock().unwrap_or_else(|e| e.into_inner());
                if frames > 0 && first.is_none() {
                    *first = Some(now);
                }
                shown.frames.fetch_max(frames, Ordering::AcqRel);
            }
            Ok(Some(Message::SaveSafeCopy)) => {
                shown.save_asked.fetch_add(1, Ordering::AcqRel);
            }
            Ok(Some(Message::Closed)) | Ok(None) => break,
            Ok(Some(other)) => {
                log::warn!("viewer sent a daemon-only message: {other:?}");
                break;
            }
            Err(e) => {
                log::warn!("viewer input ended: {e}");
                break;
            }
        }
    }
    closed.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_always_ends_in_sandboxed_and_drops_control_characters() {
        assert_eq!(window_title("a\u{1b}[31mb.pdf\n"), "a[31mb.pdf (sandboxed)");
        let long = window_title(&"x".repeat(1000));
        assert!(long.ends_with(" (sandboxed)"));
        assert!(long.chars().count() <= MAX_TITLE_CHARS + 12);
    }

    #[test]
    fn status_is_cut_at_the_wire_cap_on_a_char_boundary() {
        let s = status_text(&"é".repeat(500));
        assert!(s.len() <= wire::MAX_STATUS_BYTES);
        assert!(s.chars().all(|c| c == 'é'));
    }

    #[test]
    fn spawning_a_missing_binary_is_an_error_not_a_panic() {
        let err = ViewerLink::spawn(Path::new("/nonexistent/vitrine-viewer"), "x").unwrap_err();
        assert!(matches!(err, ViewerError::Spawn { .. }));
    }

    #[test]
    fn link_to_a_process_that_exits_reports_closed() {
        // `true` reads nothing and exits: the link must notice, not hang.
        let mut link = ViewerLink::spawn(Path::new("/bin/true"), "x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !link.closed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(link.closed());
        assert!(matches!(link.send_status("late"), Err(ViewerError::Closed)));
    }
}
