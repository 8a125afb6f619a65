//! Message types of both directions and their cap checks.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    MAX_ARGS, MAX_ARG_BYTES, MAX_CAPABILITIES, MAX_CHUNK_BYTES, MAX_DIM, MAX_EXPORTS,
    MAX_EXPORT_BYTES, MAX_EXTRA_ROOTS, MAX_FRAME_PIXEL_BYTES, MAX_HOST_BYTES, MAX_MIME_BYTES,
    MAX_NAME_BYTES, MAX_OCR_LANG_BYTES, MAX_PAGES, MAX_POLL_WAIT_MS, MAX_PRINT_DPI, MAX_ROOT_BYTES,
    MAX_STREAMS, MAX_TASK_INPUT, MAX_TASK_PIXEL_BYTES, MAX_TEXT_BYTES, MAX_TIME_LIMIT_MS,
    MAX_URI_BYTES, MAX_VERSION_BYTES, MAX_WORDS_PER_PAGE, MAX_WORD_BYTES, MIN_PRINT_DPI,
};

/// A decoded message broke one of the protocol's caps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A string or byte field is longer than its cap.
    #[error("{field} is {len} bytes, more than the cap of {max}")]
    TooLong {
        /// Field name.
        field: &'static str,
        /// Actual length.
        len: usize,
        /// Cap.
        max: usize,
    },
    /// A count or size is above its cap.
    #[error("{field} is {value}, more than the cap of {max}")]
    OutOfRange {
        /// Field name.
        field: &'static str,
        /// Actual value.
        value: u64,
        /// Cap.
        max: u64,
    },
    /// A field that must be positive is zero.
    #[error("{field} must not be zero")]
    Zero {
        /// Field name.
        field: &'static str,
    },
    /// A damage rectangle reaches outside its page.
    #[error("rect {rect:?} lies outside the {width}x{height} page")]
    RectOutsidePage {
        /// The rectangle.
        rect: Rect,
        /// Page width.
        width: u32,
        /// Page height.
        height: u32,
    },
    /// A frame's pixel buffer does not match its rectangle.
    #[error("frame carries {got} pixel bytes, its rect needs {expected}")]
    PixelLength {
        /// w * h * 4.
        expected: u64,
        /// pixels.len().
        got: usize,
    },
    /// A file name is empty, `.`/`..`, or holds `/` or NUL.
    #[error("name {0:?} is not a plain file name")]
    BadName(String),
}

/// Shared behaviour of the two directions' message types.
pub trait WireMessage: Serialize + DeserializeOwned + std::fmt::Debug {
    /// Checks every cap. Called by the decoder on every message received and
    /// by the encoder on every message sent.
    fn validate(&self) -> Result<(), MessageError>;
}

/// Identifies a task within one VM's life.
pub type TaskId = u64;
/// Identifies one exported file within a task.
pub type ExportId = u32;

/// Guest to host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMessage {
    /// The guest is up and waits for a task: the template snapshot point.
    Ready(Ready),
    /// The task header was accepted; its input may follow.
    Accepted {
        /// Task.
        task: TaskId,
    },
    /// Number of pages of the rendered document (1 for an image or a terminal).
    PageInfo {
        /// Task.
        task: TaskId,
        /// Page count.
        count: u32,
    },
    /// Pixels of one damaged rectangle of one page.
    Frame(Frame),
    /// A file the guest offers for export.
    ExportOffer(ExportOffer),
    /// A piece of an export, in answer to `FetchExport`.
    ExportChunk {
        /// Export.
        id: ExportId,
        /// Offset of `data` in the file.
        offset: u64,
        /// Bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// All chunks of an export were sent.
    ExportEnd {
        /// Export.
        id: ExportId,
    },
    /// The program of a `RunProgram` task ended.
    ProgramExited {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if a signal killed it.
        signal: Option<i32>,
    },
    /// Rendering of the task finished. The guest still serves input events
    /// (page changes re-send pages, resize re-lays out) and exports until `Shutdown`.
    Done {
        /// Task.
        task: TaskId,
        /// Outcome.
        status: TaskStatus,
    },
    /// A diagnostic line.
    Log {
        /// Severity.
        level: LogLevel,
        /// Text.
        text: String,
    },
    /// Open a TCP connection through the host's egress tunnel, replacing any
    /// open one. The host answers with `Egress(Connected)` or a refusal.
    EgressOpen {
        /// DNS name or IP literal, as in the link.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// Bytes for the open connection (TLS records: TLS ends in the guest).
    /// No answer; a failed write shows at the next `EgressRecv`.
    EgressSend {
        /// Bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Asks for at most `max` bytes from the connection; the host answers
    /// with `Egress(Data)` (empty at the end of the stream) or `Failed`.
    EgressRecv {
        /// Most bytes wanted.
        max: u32,
    },
    /// Closes the open connection. No answer.
    EgressClose,
    /// The answer to `HostMessage::Identity`: the seed is mixed in, the
    /// kernel CRNG reseeded and the clock set.
    IdentityApplied(IdentityApplied),
    /// In a safe-copy task, after each page's frames: the page's print
    /// resolution and the words OCR found on it.
    PagePrint(PagePrint),
    /// Opens tunnel stream `stream` to `host:port` (a browser's connection;
    /// many may be open at once). The host answers with `Stream(Opened)`.
    StreamOpen {
        /// Stream id, chosen by the guest, unused among its open streams.
        stream: StreamId,
        /// DNS name or IP literal.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// Bytes for an open stream. No answer; a failed write shows as the
    /// stream's end at the next poll.
    StreamSend {
        /// Stream.
        stream: StreamId,
        /// Bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Closes a stream. No answer.
    StreamClose {
        /// Stream.
        stream: StreamId,
    },
    /// Asks for what arrived on any open stream, waiting at most `wait_ms`
    /// for the first byte. The host answers with `Stream(Data)`, which may
    /// be empty. It also paces a live task: the host sends user input after
    /// each guest message.
    StreamPoll {
        /// Longest wait, in ms.
        wait_ms: u32,
    },
    /// The page a live task shows now: the viewer's title.
    Location {
        /// The page's URL.
        url: String,
        /// The page's title, possibly empty.
        title: String,
    },
}

/// Identifies one tunnel stream of a task.
pub type StreamId = u32;

/// The host's answers on tunnel streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamReply {
    /// The answer to `StreamOpen`: `Connected`, `Refused` or `Failed`.
    Opened {
        /// Stream.
        stream: StreamId,
        /// Outcome.
        outcome: EgressReply,
    },
    /// The answer to `StreamPoll`: what arrived, by stream.
    Data(Vec<StreamData>),
}

/// Bytes that arrived on one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamData {
    /// Stream.
    pub stream: StreamId,
    /// Bytes, possibly none.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The stream ended after these bytes (closed by the peer, or broken).
    pub end: bool,
}

/// What a safe copy needs of one page beside its pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagePrint {
    /// Task.
    pub task: TaskId,
    /// Page index, from 0.
    pub page: u32,
    /// Pixels per inch of the page's frames (its size on paper).
    pub dpi: u32,
    /// Words found by OCR, in reading order; empty without OCR.
    pub words: Vec<OcrWord>,
}

/// One word OCR found, with its box in page pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OcrWord {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
    /// The word, without spaces or control characters.
    pub text: String,
}

/// What the guest says once its fresh identity is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityApplied {
    /// SHA-256 of the first 32 bytes `getrandom` gave after the reseed.
    /// For tests that two clones differ; never used as a key.
    pub random_digest: [u8; 32],
    /// The guest's wall clock after it was set, in ns since the epoch.
    pub clock_unix_ns: u64,
}

/// First message of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Version of the shim binary.
    pub shim_version: String,
    /// Task kinds and renderers this guest can serve.
    pub capabilities: Vec<Capability>,
}

/// What a guest can render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capability {
    /// PDF through poppler.
    Pdf,
    /// PNG, JPEG, GIF, WebP.
    Image,
    /// Plain text and source code.
    Text,
    /// HTML as a static page without scripts.
    Html,
    /// A program on a pty, rendered as a terminal.
    Terminal,
    /// Text recognition (tesseract) for safe copies.
    Ocr,
}

/// Outcome of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Rendered.
    Ok,
    /// The input could not be rendered; the reason is for logs, not for parsing.
    Failed(String),
    /// The time limit ran out.
    TimedOut,
}

/// Severity of a `Log` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Debug detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something went wrong but the task goes on.
    Warn,
    /// Something failed.
    Error,
}

/// A rectangle in page pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rect {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

/// Layout of `Frame::pixels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PixelFormat {
    /// 4 bytes per pixel, R G B A, rows top to bottom, no padding.
    Rgba8,
}

/// Damaged pixels of one page.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Page index, from 0.
    pub page: u32,
    /// Page width.
    pub width: u32,
    /// Page height.
    pub height: u32,
    /// Damaged rectangle, inside the page.
    pub rect: Rect,
    /// Pixel layout.
    pub format: PixelFormat,
    /// `rect.w * rect.h * 4` bytes.
    #[serde(with = "serde_bytes")]
    pub pixels: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    // Pixels would flood logs; show their size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("page", &self.page)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("rect", &self.rect)
            .field("format", &self.format)
            .field("pixels_len", &self.pixels.len())
            .finish()
    }
}

/// A file the guest offers for export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportOffer {
    /// Export id, below `MAX_EXPORTS`.
    pub id: ExportId,
    /// Plain file name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
    /// MIME type as guessed by the guest (informative only).
    pub mime: String,
}

/// Host to guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// The one task of this VM. Its input follows in `TaskData` chunks.
    Task(Task),
    /// A piece of the task input, in order.
    TaskData {
        /// Offset of `data` in the input.
        offset: u64,
        /// Bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A user input event.
    Input(InputEvent),
    /// Asks for the content of an offered export.
    FetchExport {
        /// Export.
        id: ExportId,
    },
    /// Asks, after `Done`, for an offered export as pixels instead of bytes
    /// (a profile that flattens exports): the guest renders it as a
    /// safe-copy task of id [`flatten_task_id`]`(id)` (`PageInfo`, frames,
    /// `PagePrint`, `Done`), and the host rebuilds it as a PDF.
    FlattenExport {
        /// Export.
        id: ExportId,
        /// How to render it.
        safe_copy: SafeCopy,
    },
    /// Stop: the guest powers off.
    Shutdown,
    /// The answer to `EgressOpen` or `EgressRecv`.
    Egress(EgressReply),
    /// A fresh identity, before the task: a VM cloned from a template
    /// wakes with the template's CRNG state and clock. The guest refuses a
    /// `Task` that comes before it.
    Identity(Identity),
    /// The answer to `StreamOpen` or `StreamPoll`.
    Stream(StreamReply),
}

/// The identity one VM gets before its task.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Mixed into the kernel's entropy pool, then the CRNG is reseeded.
    pub seed: [u8; 32],
    /// The host's wall clock, in ns since the epoch.
    pub clock_unix_ns: u64,
    /// The task this VM will serve.
    pub task: TaskId,
}

impl std::fmt::Debug for Identity {
    // The seed stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("clock_unix_ns", &self.clock_unix_ns)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

/// The host's answer on the egress tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EgressReply {
    /// The connection is open.
    Connected,
    /// Bytes from the connection; empty at its end.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The policy does not allow the connection; nothing was sent.
    Refused(String),
    /// The connection could not be made, or broke.
    Failed(String),
}

/// A task header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Task id, echoed in replies.
    pub id: TaskId,
    /// What to render.
    pub kind: TaskKind,
    /// Limits the guest enforces.
    pub limits: Limits,
    /// Render for a safe copy: print resolution, `PagePrint` after each
    /// page, and OCR when asked. Only for `OpenFile`.
    pub safe_copy: Option<SafeCopy>,
    /// A window shows the task: after `Done`, a page that stays live (a
    /// browser tab) keeps sending frames and taking input until `Shutdown`.
    #[serde(default)]
    pub live: bool,
}

/// The task id under which the guest renders export `id` for
/// `FlattenExport`: above any id a host gives a task of its own.
pub fn flatten_task_id(id: ExportId) -> TaskId {
    (1 << 32) | TaskId::from(id)
}

/// How a safe-copy task renders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafeCopy {
    /// Tesseract language(s), such as `eng` or `eng+deu`; `None`: no OCR.
    pub ocr: Option<String>,
}

impl SafeCopy {
    /// Checks the OCR language: tesseract's `lang[+lang...]` of letters,
    /// digits and `_`, which cannot name a path.
    pub fn validate(&self) -> Result<(), MessageError> {
        let Some(lang) = &self.ocr else { return Ok(()) };
        check_len("ocr language", lang.len(), MAX_OCR_LANG_BYTES)?;
        let word_ok =
            |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !lang.split('+').all(word_ok) {
            return Err(MessageError::BadName(lang.clone()));
        }
        Ok(())
    }
}

impl PagePrint {
    /// Checks the resolution, the word count and every word's length and
    /// box against the protocol's page size cap (the host checks boxes
    /// against the page's real size).
    pub fn validate(&self) -> Result<(), MessageError> {
        check_range("page", self.page.into(), MAX_PAGES.into())?;
        if self.dpi < MIN_PRINT_DPI {
            return Err(MessageError::OutOfRange {
                field: "dpi (below the minimum)",
                value: self.dpi.into(),
                max: MIN_PRINT_DPI.into(),
            });
        }
        check_range("dpi", self.dpi.into(), MAX_PRINT_DPI.into())?;
        check_range(
            "OCR words on a page",
            u64::try_from(self.words.len()).unwrap_or(u64::MAX),
            u64::try_from(MAX_WORDS_PER_PAGE).unwrap_or(u64::MAX),
        )?;
        for word in &self.words {
            check_len("word", word.text.len(), MAX_WORD_BYTES)?;
            if word.text.is_empty() || word.text.chars().any(|c| c.is_control() || c == ' ') {
                return Err(MessageError::BadName(word.text.clone()));
            }
            check_dim("word w", word.w)?;
            check_dim("word h", word.h)?;
            let right = u64::from(word.x) + u64::from(word.w);
            let bottom = u64::from(word.y) + u64::from(word.h);
            check_range("word right edge", right, MAX_DIM.into())?;
            check_range("word bottom edge", bottom, MAX_DIM.into())?;
        }
        Ok(())
    }
}

impl Task {
    /// Bytes of input that follow in `TaskData`.
    pub fn input_size(&self) -> u64 {
        match &self.kind {
            TaskKind::OpenFile { size, .. } | TaskKind::RunProgram { size, .. } => *size,
            TaskKind::OpenUri { .. } => 0,
        }
    }
}

/// What a task renders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// A file; the renderer is chosen from its content, then name and hint.
    OpenFile {
        /// Plain file name (for the type guess and exports).
        name: String,
        /// MIME type the host believes it has.
        mime_hint: Option<String>,
        /// Input size in bytes.
        size: u64,
    },
    /// A link, fetched by the guest through the host's egress tunnel.
    OpenUri {
        /// The URI.
        uri: String,
        /// The host's clock, seconds since 1970, for certificate validity
        /// (the guest has no clock of its own worth trusting).
        now_unix_secs: u64,
        /// DER certificates the guest trusts beside its built-in web roots
        /// (an organisation's own CA).
        #[serde(default)]
        extra_roots: Vec<serde_bytes::ByteBuf>,
    },
    /// An untrusted program, run on a pty.
    RunProgram {
        /// Executable size in bytes.
        size: u64,
        /// Arguments after argv\[0\].
        args: Vec<String>,
    },
}

/// Limits of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock limit for rendering, or for the program's run.
    pub time_limit_ms: u32,
    /// Largest page width to render.
    pub max_width: u32,
    /// Largest page height to render.
    pub max_height: u32,
    /// Most pages to render.
    pub max_pages: u32,
    /// Most pixel bytes to send in all.
    pub max_pixel_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            time_limit_ms: 30_000,
            max_width: 2048,
            max_height: 4096,
            max_pages: 500,
            max_pixel_bytes: 512 * 1024 * 1024,
        }
    }
}

/// A user input event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputEvent {
    /// A key press.
    Key(KeyEvent),
    /// Typed or pasted text (terminal).
    Text(String),
    /// Scroll by lines (terminal scrolls keys; documents ignore it, the viewer scrolls).
    Scroll {
        /// Horizontal lines.
        dx: i32,
        /// Vertical lines, positive is down.
        dy: i32,
    },
    /// Show this page: the guest (re-)sends it.
    PageChange {
        /// Page index, from 0.
        page: u32,
    },
    /// The viewport changed size, in pixels: the terminal changes its grid,
    /// text re-wraps.
    Resize {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// A mouse button went down or up at a point of a page, in page pixels.
    Button {
        /// Page index, from 0.
        page: u32,
        /// Column.
        x: u32,
        /// Row.
        y: u32,
        /// Button.
        button: MouseButton,
        /// Pressed (`true`) or released.
        down: bool,
    },
    /// The pointer moved to a point of a page, in page pixels.
    Motion {
        /// Page index, from 0.
        page: u32,
        /// Column.
        x: u32,
        /// Row.
        y: u32,
    },
}

/// A mouse button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MouseButton {
    /// The primary button.
    Left,
    /// The wheel button.
    Middle,
    /// The context-menu button.
    Right,
}

/// A key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEvent {
    /// Key.
    pub key: Key,
    /// Held modifiers.
    pub modifiers: Modifiers,
}

/// Held modifier keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Modifiers {
    /// Control.
    pub ctrl: bool,
    /// Alt.
    pub alt: bool,
    /// Shift.
    pub shift: bool,
}

/// A key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Key {
    /// A character key.
    Char(char),
    /// Enter.
    Enter,
    /// Tab.
    Tab,
    /// Backspace.
    Backspace,
    /// Escape.
    Escape,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Arrow left.
    Left,
    /// Arrow right.
    Right,
    /// Home.
    Home,
    /// End.
    End,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Insert.
    Insert,
    /// Delete.
    Delete,
    /// Function key 1 to 12.
    F(u8),
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), MessageError> {
    if len > max {
        return Err(MessageError::TooLong { field, len, max });
    }
    Ok(())
}

fn check_range(field: &'static str, value: u64, max: u64) -> Result<(), MessageError> {
    if value > max {
        return Err(MessageError::OutOfRange { field, value, max });
    }
    Ok(())
}

fn check_dim(field: &'static str, value: u32) -> Result<(), MessageError> {
    if value == 0 {
        return Err(MessageError::Zero { field });
    }
    check_range(field, value.into(), MAX_DIM.into())
}

/// Checks that `name` is a plain file name of at most `MAX_NAME_BYTES`.
pub(crate) fn check_name(name: &str) -> Result<(), MessageError> {
    check_len("name", name.len(), MAX_NAME_BYTES)?;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(MessageError::BadName(name.to_owned()));
    }
    Ok(())
}

fn check_chunk(offset: u64, data: &[u8], max_total: u64) -> Result<(), MessageError> {
    check_len("chunk", data.len(), MAX_CHUNK_BYTES)?;
    let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
    let end = offset.saturating_add(len);
    check_range("chunk end", end, max_total)
}

impl Frame {
    /// Checks dimensions, that the rect lies inside the page and that the
    /// pixel buffer has exactly `w * h * 4` bytes.
    pub fn validate(&self) -> Result<(), MessageError> {
        check_range("page", self.page.into(), MAX_PAGES.into())?;
        check_dim("width", self.width)?;
        check_dim("height", self.height)?;
        check_dim("rect.w", self.rect.w)?;
        check_dim("rect.h", self.rect.h)?;
        let inside = self
            .rect
            .x
            .checked_add(self.rect.w)
            .is_some_and(|r| r <= self.width)
            && self
                .rect
                .y
                .checked_add(self.rect.h)
                .is_some_and(|b| b <= self.height);
        if !inside {
            return Err(MessageError::RectOutsidePage {
                rect: self.rect,
                width: self.width,
                height: self.height,
            });
        }
        // Both factors are <= MAX_DIM, so this cannot overflow u64.
        let expected = u64::from(self.rect.w) * u64::from(self.rect.h) * 4;
        if u64::try_from(self.pixels.len()).ok() != Some(expected) {
            return Err(MessageError::PixelLength {
                expected,
                got: self.pixels.len(),
            });
        }
        check_len("pixels", self.pixels.len(), MAX_FRAME_PIXEL_BYTES)
    }
}

impl Limits {
    /// Checks every limit against the protocol caps.
    pub fn validate(&self) -> Result<(), MessageError> {
        if self.time_limit_ms == 0 {
            return Err(MessageError::Zero {
                field: "time_limit_ms",
            });
        }
        check_range(
            "time_limit_ms",
            self.time_limit_ms.into(),
            MAX_TIME_LIMIT_MS.into(),
        )?;
        check_dim("max_width", self.max_width)?;
        check_dim("max_height", self.max_height)?;
        if self.max_pages == 0 {
            return Err(MessageError::Zero { field: "max_pages" });
        }
        check_range("max_pages", self.max_pages.into(), MAX_PAGES.into())?;
        check_range(
            "max_pixel_bytes",
            self.max_pixel_bytes,
            MAX_TASK_PIXEL_BYTES,
        )
    }
}

impl WireMessage for GuestMessage {
    fn validate(&self) -> Result<(), MessageError> {
        match self {
            GuestMessage::Ready(ready) => {
                check_len("shim_version", ready.shim_version.len(), MAX_VERSION_BYTES)?;
                check_len("capabilities", ready.capabilities.len(), MAX_CAPABILITIES)
            }
            GuestMessage::Accepted { .. } | GuestMessage::ProgramExited { .. } => Ok(()),
            GuestMessage::PageInfo { count, .. } => {
                check_range("page count", (*count).into(), MAX_PAGES.into())
            }
            GuestMessage::Frame(frame) => frame.validate(),
            GuestMessage::ExportOffer(offer) => {
                check_range("export id", offer.id.into(), (MAX_EXPORTS - 1).into())?;
                check_name(&offer.name)?;
                check_range("export size", offer.size, MAX_EXPORT_BYTES)?;
                check_len("mime", offer.mime.len(), MAX_MIME_BYTES)
            }
            GuestMessage::ExportChunk { id, offset, data } => {
                check_range("export id", (*id).into(), (MAX_EXPORTS - 1).into())?;
                check_chunk(*offset, data, MAX_EXPORT_BYTES)
            }
            GuestMessage::ExportEnd { id } => {
                check_range("export id", (*id).into(), (MAX_EXPORTS - 1).into())
            }
            GuestMessage::Done { status, .. } => match status {
                TaskStatus::Failed(reason) => check_len("reason", reason.len(), MAX_TEXT_BYTES),
                TaskStatus::Ok | TaskStatus::TimedOut => Ok(()),
            },
            GuestMessage::Log { text, .. } => check_len("log", text.len(), MAX_TEXT_BYTES),
            GuestMessage::EgressOpen { host, port } => {
                check_len("egress host", host.len(), MAX_HOST_BYTES)?;
                if host.is_empty() {
                    return Err(MessageError::BadName(host.clone()));
                }
                if *port == 0 {
                    return Err(MessageError::Zero {
                        field: "egress port",
                    });
                }
                Ok(())
            }
            GuestMessage::EgressSend { data } => {
                check_len("egress data", data.len(), MAX_CHUNK_BYTES)
            }
            GuestMessage::EgressRecv { max } => {
                if *max == 0 {
                    return Err(MessageError::Zero {
                        field: "egress max",
                    });
                }
                check_range(
                    "egress max",
                    (*max).into(),
                    u64::try_from(MAX_CHUNK_BYTES).unwrap_or(u64::MAX),
                )
            }
            GuestMessage::EgressClose | GuestMessage::IdentityApplied(_) => Ok(()),
            GuestMessage::PagePrint(print) => print.validate(),
            GuestMessage::StreamOpen { stream, host, port } => {
                check_range("stream", (*stream).into(), MAX_STREAMS.into())?;
                check_len("stream host", host.len(), MAX_HOST_BYTES)?;
                if host.is_empty() {
                    return Err(MessageError::BadName(host.clone()));
                }
                if *port == 0 {
                    return Err(MessageError::Zero {
                        field: "stream port",
                    });
                }
                Ok(())
            }
            GuestMessage::StreamSend { stream, data } => {
                check_range("stream", (*stream).into(), MAX_STREAMS.into())?;
                check_len("stream data", data.len(), MAX_CHUNK_BYTES)
            }
            GuestMessage::StreamClose { stream } => {
                check_range("stream", (*stream).into(), MAX_STREAMS.into())
            }
            GuestMessage::StreamPoll { wait_ms } => {
                check_range("poll wait", (*wait_ms).into(), MAX_POLL_WAIT_MS.into())
            }
            GuestMessage::Location { url, title } => {
                check_len("location url", url.len(), MAX_URI_BYTES)?;
                check_len("location title", title.len(), MAX_TEXT_BYTES)
            }
        }
    }
}

impl EgressReply {
    fn validate(&self) -> Result<(), MessageError> {
        match self {
            EgressReply::Connected => Ok(()),
            EgressReply::Data(data) => check_len("egress data", data.len(), MAX_CHUNK_BYTES),
            EgressReply::Refused(reason) | EgressReply::Failed(reason) => {
                check_len("reason", reason.len(), MAX_TEXT_BYTES)
            }
        }
    }
}

impl WireMessage for HostMessage {
    fn validate(&self) -> Result<(), MessageError> {
        match self {
            HostMessage::Task(task) => {
                task.limits.validate()?;
                if let Some(copy) = &task.safe_copy {
                    if !matches!(task.kind, TaskKind::OpenFile { .. }) {
                        return Err(MessageError::BadName("safe copy of a non-file task".into()));
                    }
                    copy.validate()?;
                }
                match &task.kind {
                    TaskKind::OpenFile {
                        name,
                        mime_hint,
                        size,
                    } => {
                        check_name(name)?;
                        if let Some(mime) = mime_hint {
                            check_len("mime_hint", mime.len(), MAX_MIME_BYTES)?;
                        }
                        check_range("input size", *size, MAX_TASK_INPUT)
                    }
                    TaskKind::OpenUri {
                        uri, extra_roots, ..
                    } => {
                        check_len("uri", uri.len(), MAX_URI_BYTES)?;
                        check_len("extra_roots", extra_roots.len(), MAX_EXTRA_ROOTS)?;
                        for root in extra_roots {
                            check_len("extra root", root.len(), MAX_ROOT_BYTES)?;
                        }
                        Ok(())
                    }
                    TaskKind::RunProgram { size, args } => {
                        check_range("input size", *size, MAX_TASK_INPUT)?;
                        if *size == 0 {
                            return Err(MessageError::Zero {
                                field: "program size",
                            });
                        }
                        check_len("args", args.len(), MAX_ARGS)?;
                        for arg in args {
                            check_len("arg", arg.len(), MAX_ARG_BYTES)?;
                        }
                        Ok(())
                    }
                }
            }
            HostMessage::TaskData { offset, data } => check_chunk(*offset, data, MAX_TASK_INPUT),
            HostMessage::Input(event) => match event {
                InputEvent::Text(text) => check_len("text", text.len(), MAX_TEXT_BYTES),
                InputEvent::PageChange { page } => {
                    check_range("page", (*page).into(), MAX_PAGES.into())
                }
                InputEvent::Resize { width, height } => {
                    check_dim("width", *width)?;
                    check_dim("height", *height)
                }
                InputEvent::Key(KeyEvent { key: Key::F(n), .. }) if !(1..=12).contains(n) => {
                    Err(MessageError::OutOfRange {
                        field: "function key",
                        value: (*n).into(),
                        max: 12,
                    })
                }
                InputEvent::Button { page, x, y, .. } | InputEvent::Motion { page, x, y } => {
                    check_range("page", (*page).into(), MAX_PAGES.into())?;
                    check_range("x", (*x).into(), MAX_DIM.into())?;
                    check_range("y", (*y).into(), MAX_DIM.into())
                }
                InputEvent::Key(_) | InputEvent::Scroll { .. } => Ok(()),
            },
            HostMessage::FetchExport { id } => {
                check_range("export id", (*id).into(), (MAX_EXPORTS - 1).into())
            }
            HostMessage::FlattenExport { id, safe_copy } => {
                check_range("export id", (*id).into(), (MAX_EXPORTS - 1).into())?;
                safe_copy.validate()
            }
            HostMessage::Shutdown => Ok(()),
            HostMessage::Identity(identity) => {
                if identity.clock_unix_ns == 0 {
                    return Err(MessageError::Zero { field: "clock" });
                }
                Ok(())
            }
            HostMessage::Egress(reply) => reply.validate(),
            HostMessage::Stream(StreamReply::Opened { stream, outcome }) => {
                check_range("stream", (*stream).into(), MAX_STREAMS.into())?;
                outcome.validate()
            }
            HostMessage::Stream(StreamReply::Data(data)) => {
                check_len("streams in a poll", data.len(), MAX_STREAMS as usize)?;
                let mut total = 0usize;
                for d in data {
                    check_range("stream", d.stream.into(), MAX_STREAMS.into())?;
                    total = total.saturating_add(d.data.len());
                }
                check_len("stream data", total, MAX_CHUNK_BYTES)
            }
        }
    }
}
