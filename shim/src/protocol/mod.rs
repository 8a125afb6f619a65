//! Host/guest protocol: the one contract between the guest agent and the
//! host (daemon, QEMU backend, tests).
//!
//! Wire format of one frame on a byte stream (AF_VSOCK, virtio-serial or a
//! Unix socket):
//!
//! ```text
//! u32 LE  payload length n   (1 + 2 <= n <= MAX_FRAME_BYTES, checked before any allocation)
//! u16 LE  protocol version   (== PROTOCOL_VERSION, checked before decoding the body)
//! n - 2   postcard body      (GuestMessage or HostMessage, then validated against the caps)
//! ```
//!
//! The version sits outside the serde body so that a peer speaking another
//! version gets `UnsupportedVersion`, not a confusing decode error.
//! Every length, dimension and count has a hard cap below; a violation is a
//! typed error that ends the task, never the process.

#[cfg(feature = "tokio")]
mod async_framing;
mod budget;
mod codec;
mod framing;
mod message;

pub use budget::{BudgetError, PixelBudget};
pub use codec::{decode_payload, encode_frame, encode_payload, CodecError};
pub use framing::{FrameReader, FrameWriter, FramingError};
pub use message::{
    flatten_task_id, Capability, EgressReply, ExportId, ExportOffer, Frame, GuestMessage,
    HostMessage, Identity, IdentityApplied, InputEvent, Key, KeyEvent, Limits, LogLevel,
    MessageError, Modifiers, MouseButton, OcrWord, PagePrint, PixelFormat, Ready, Rect, SafeCopy,
    StreamData, StreamId, StreamReply, Task, TaskId, TaskKind, TaskStatus, WireMessage,
};
/// The byte-string type of `TaskKind::OpenUri::extra_roots`.
pub use serde_bytes::ByteBuf;

/// Checks that `name` is a plain file name (no path, not `.`/`..`, no NUL)
/// of at most `MAX_NAME_BYTES`.
pub fn check_export_name(name: &str) -> Result<(), MessageError> {
    message::check_name(name)
}

#[cfg(feature = "tokio")]
pub use async_framing::{AsyncFrameReader, AsyncFrameWriter};

/// Version of the wire protocol. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 4;

/// Bytes of the length prefix.
pub const LEN_PREFIX_BYTES: usize = 4;
/// Bytes of the version field at the start of every payload.
pub const VERSION_BYTES: usize = 2;

/// Largest payload (version + body) of one frame.
pub const MAX_FRAME_BYTES: u32 = 32 * 1024 * 1024;
/// Largest pixel buffer carried by one `Frame`; bigger damage is split into bands.
pub const MAX_FRAME_PIXEL_BYTES: usize = 16 * 1024 * 1024;
/// Largest width or height of a page, in pixels.
pub const MAX_DIM: u32 = 8192;
/// Most pages a document may announce.
pub const MAX_PAGES: u32 = 10_000;
/// Largest task input (file or program), sent in `TaskData` chunks.
pub const MAX_TASK_INPUT: u64 = 256 * 1024 * 1024;
/// Largest `TaskData` or `ExportChunk` data.
pub const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Largest total of pixel bytes one task may send.
pub const MAX_TASK_PIXEL_BYTES: u64 = 1024 * 1024 * 1024;
/// Largest exported file.
pub const MAX_EXPORT_BYTES: u64 = 256 * 1024 * 1024;
/// Most exports one task may offer.
pub const MAX_EXPORTS: u32 = 64;
/// Longest file or export name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest MIME type, in bytes.
pub const MAX_MIME_BYTES: usize = 127;
/// Longest URI, in bytes.
pub const MAX_URI_BYTES: usize = 8192;
/// Most program arguments.
pub const MAX_ARGS: usize = 64;
/// Longest egress host name (a DNS name is at most 253 bytes).
pub const MAX_HOST_BYTES: usize = 253;
/// Most extra trust roots in an `OpenUri` task.
pub const MAX_EXTRA_ROOTS: usize = 16;
/// Largest extra trust root, DER.
pub const MAX_ROOT_BYTES: usize = 16 * 1024;
/// Longest program argument, in bytes.
pub const MAX_ARG_BYTES: usize = 4096;
/// Longest log line or typed text, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Longest version string, in bytes.
pub const MAX_VERSION_BYTES: usize = 64;
/// Most capabilities in `Ready`.
pub const MAX_CAPABILITIES: usize = 32;
/// Most OCR words on one page (a dense page of small print has ~1,500).
pub const MAX_WORDS_PER_PAGE: usize = 8192;
/// Longest OCR word, in bytes.
pub const MAX_WORD_BYTES: usize = 100;
/// Longest OCR language list (`eng+deu+...`).
pub const MAX_OCR_LANG_BYTES: usize = 64;
/// Lowest print resolution of a safe copy's page.
pub const MIN_PRINT_DPI: u32 = 36;
/// Highest print resolution of a safe copy's page.
pub const MAX_PRINT_DPI: u32 = 1200;
/// Highest tunnel stream id: a browser opens a few connections per host.
pub const MAX_STREAMS: u32 = 256;
/// Longest wait a `StreamPoll` may ask of the host.
pub const MAX_POLL_WAIT_MS: u32 = 1000;
/// Longest time limit a host may ask for (10 minutes).
pub const MAX_TIME_LIMIT_MS: u32 = 10 * 60 * 1000;

#[cfg(any(test, feature = "samples"))]
pub mod samples;
#[cfg(test)]
mod tests;
