//! The wire between the daemon and `vitrine-viewer`.
//!
//! One socketpair carries length-prefixed messages both ways: the daemon sends
//! damage rectangles and status lines, the viewer sends input and "closed".
//! The format is tiny on purpose: a 4-byte little-endian body length, a tag
//! byte, then fixed little-endian fields and at most one byte string. Every
//! length and dimension has a hard cap that is checked before anything is
//! allocated, and [`decode`] is a pure function over a byte slice that never
//! panics, so it can be fuzzed on its own.

use std::io::Read;

use vitrine_shim::protocol::{
    Frame, InputEvent, Key, KeyEvent, Modifiers, MouseButton, PixelFormat, Rect, MAX_DIM,
    MAX_FRAME_PIXEL_BYTES, MAX_PAGES, MAX_TEXT_BYTES,
};

/// Bytes of the length prefix.
pub const LEN_PREFIX_BYTES: usize = 4;
/// Longest status line, in bytes.
pub const MAX_STATUS_BYTES: usize = 256;
/// Fixed fields of a frame body after its tag: page, page size, rect.
const FRAME_HEADER_BYTES: usize = 7 * 4;
/// Longest message body (tag included): a full-size frame.
pub const MAX_BODY_BYTES: usize = 1 + FRAME_HEADER_BYTES + MAX_FRAME_PIXEL_BYTES;

const TAG_FRAME: u8 = 1;
const TAG_STATUS: u8 = 2;
const TAG_PAGES: u8 = 3;
const TAG_TITLE: u8 = 4;
const TAG_KEY: u8 = 16;
const TAG_TEXT: u8 = 17;
const TAG_SCROLL: u8 = 18;
const TAG_PAGE_CHANGE: u8 = 19;
const TAG_RESIZE: u8 = 20;
const TAG_BUTTON: u8 = 21;
const TAG_MOTION: u8 = 22;
const TAG_CLOSED: u8 = 32;
const TAG_PRESENTED: u8 = 33;
const TAG_SAVE_SAFE_COPY: u8 = 34;

const MOD_CTRL: u8 = 1;
const MOD_ALT: u8 = 2;
const MOD_SHIFT: u8 = 4;

/// One message on the daemon/viewer socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Daemon to viewer: damaged pixels of one page (RGBA).
    Frame(Frame),
    /// Daemon to viewer: the status line ("rendering…", "finished: clean").
    Status(String),
    /// Daemon to viewer: how many pages the task has (1..=MAX_PAGES).
    Pages(u32),
    /// Daemon to viewer: what the window shows now (a live page's URL).
    Title(String),
    /// Viewer to daemon: something the user did.
    Input(InputEvent),
    /// Viewer to daemon: the user closed the window.
    Closed,
    /// Viewer to daemon: the window now shows everything from the first
    /// `frames` frames it received (sent after each redraw that put new
    /// frames on screen; the end-to-end timing reads it).
    Presented {
        /// Frames received and drawn so far.
        frames: u32,
    },
    /// Viewer to daemon: the user asked for a safe copy of what it shows.
    SaveSafeCopy,
}

/// Why bytes are not a message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// More bytes are needed; `needed` is the whole message length.
    #[error("incomplete message: {needed} bytes needed, {have} present")]
    Incomplete {
        /// Whole message length, prefix included (or the prefix alone).
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// The length prefix is over the cap, or zero.
    #[error("message body of {len} bytes (allowed 1..={max})")]
    BadLength {
        /// Announced length.
        len: u64,
        /// Cap.
        max: usize,
    },
    /// Unknown tag byte.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// The body does not have the size its tag requires.
    #[error("message tag {tag} with a body of {len} bytes, expected {expected}")]
    BodySize {
        /// Tag.
        tag: u8,
        /// Body bytes after the tag.
        len: usize,
        /// Expected body bytes after the tag.
        expected: usize,
    },
    /// A dimension or index is zero or over its cap.
    #[error("{field} = {value} out of range (max {max})")]
    OutOfRange {
        /// Field.
        field: &'static str,
        /// Value.
        value: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// The damaged rectangle does not lie inside the page.
    #[error("rectangle {x},{y} {w}x{h} outside a {width}x{height} page")]
    RectOutsidePage {
        /// Left.
        x: u32,
        /// Top.
        y: u32,
        /// Width.
        w: u32,
        /// Height.
        h: u32,
        /// Page width.
        width: u32,
        /// Page height.
        height: u32,
    },
    /// A frame's pixel buffer is not `w * h * 4` bytes.
    #[error("frame pixels: {len} bytes for a {w}x{h} rectangle")]
    PixelCount {
        /// Bytes given.
        len: usize,
        /// Width.
        w: u32,
        /// Height.
        h: u32,
    },
    /// A string field is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A string field is too long.
    #[error("{field} of {len} bytes (max {max})")]
    TooLong {
        /// Field.
        field: &'static str,
        /// Length.
        len: usize,
        /// Cap.
        max: usize,
    },
    /// A key code the protocol does not have.
    #[error("bad key code {code}/{value}")]
    BadKey {
        /// Key kind.
        code: u8,
        /// Key payload.
        value: u32,
    },
    /// Modifier bits outside ctrl/alt/shift.
    #[error("bad modifier bits {0:#x}")]
    BadModifiers(u8),
    /// Reading the socket failed.
    #[error("reading the viewer socket")]
    Io(#[from] std::io::Error),
}

/// Decodes one message from the start of `buf`, returning it and the bytes
/// it used. Pure, never panics; a short buffer gives `WireError::Incomplete`.
pub fn decode(buf: &[u8]) -> Result<(Message, usize), WireError> {
    let Some(prefix) = buf.get(..LEN_PREFIX_BYTES) else {
        return Err(WireError::Incomplete {
            needed: LEN_PREFIX_BYTES,
            have: buf.len(),
        });
    };
    let len = body_len(prefix)?;
    let total = LEN_PREFIX_BYTES + len;
    let Some(body) = buf.get(LEN_PREFIX_BYTES..total) else {
        return Err(WireError::Incomplete {
            needed: total,
            have: buf.len(),
        });
    };
    Ok((decode_body(body)?, total))
}

/// Encodes `msg`, checking the same caps that [`decode`] checks.
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    match msg {
        Message::Frame(frame) => encode_frame(frame),
        Message::Status(text) => {
            check_status(text)?;
            Ok(finish(TAG_STATUS, text.as_bytes()))
        }
        Message::Pages(count) => {
            check_page_count(*count)?;
            Ok(finish(TAG_PAGES, &count.to_le_bytes()))
        }
        Message::Title(text) => {
            check_status(text)?;
            Ok(finish(TAG_TITLE, text.as_bytes()))
        }
        Message::Input(event) => encode_input(event),
        Message::Closed => Ok(finish(TAG_CLOSED, &[])),
        Message::Presented { frames } => Ok(finish(TAG_PRESENTED, &frames.to_le_bytes())),
        Message::SaveSafeCopy => Ok(finish(TAG_SAVE_SAFE_COPY, &[])),
    }
}

/// Encodes a frame without copying it into a [`Message`] first.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let PixelFormat::Rgba8 = frame.format;
    check_frame(
        frame.page,
        frame.width,
        frame.height,
        frame.rect,
        frame.pixels.len(),
    )?;
    let mut out =
        Vec::with_capacity(LEN_PREFIX_BYTES + 1 + FRAME_HEADER_BYTES + frame.pixels.len());
    out.extend_from_slice(&[0; LEN_PREFIX_BYTES]);
    out.push(TAG_FRAME);
    for v in [
        frame.page,
        frame.width,
        frame.height,
        frame.rect.x,
        frame.rect.y,
        frame.rect.w,
        frame.rect.h,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&frame.pixels);
    set_prefix(&mut out)?;
    Ok(out)
}

/// Reads one whole message from a stream. `Ok(None)` is a clean end of
/// stream between messages. The body buffer grows only as bytes arrive.
pub fn read_message<R: Read>(reader: &mut R) -> Result<Option<Message>, WireError> {
    let mut prefix = [0u8; LEN_PREFIX_BYTES];
    let mut have = 0;
    while have < LEN_PREFIX_BYTES {
        match reader.read(&mut prefix[have..]) {
            Ok(0) if have == 0 => return Ok(None),
            Ok(0) => {
                return Err(WireError::Incomplete {
                    needed: LEN_PREFIX_BYTES,
                    have,
                })
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = body_len(&prefix)?;
    let mut body = Vec::new();
    let want = u64::try_from(len).unwrap_or(u64::MAX);
    reader.take(want).read_to_end(&mut body)?;
    if body.len() != len {
        return Err(WireError::Incomplete {
            needed: LEN_PREFIX_BYTES + len,
            have: LEN_PREFIX_BYTES + body.len(),
        });
    }
    decode_body(&body).map(Some)
}

fn body_len(prefix: &[u8]) -> Result<usize, WireError> {
    let mut raw = [0u8; LEN_PREFIX_BYTES];
    raw.copy_from_slice(prefix);
    let len = u32::from_le_bytes(raw);
    let bad = WireError::BadLength {
        len: len.into(),
        max: MAX_BODY_BYTES,
    };
    match usize::try_from(len) {
        Ok(n) if (1..=MAX_BODY_BYTES).contains(&n) => Ok(n),
        _ => Err(bad),
    }
}

fn decode_body(body: &[u8]) -> Result<Message, WireError> {
    let Some((&tag, rest)) = body.split_first() else {
        return Err(WireError::BadLength {
            len: 0,
            max: MAX_BODY_BYTES,
        });
    };
    let mut fields = Fields(rest);
    match tag {
        TAG_FRAME => {
            let header = fields.exact_prefix(tag, FRAME_HEADER_BYTES)?;
            let mut h = Fields(header);
            let page = h.u32()?;
            let width = h.u32()?;
            let height = h.u32()?;
            let rect = Rect {
                x: h.u32()?,
                y: h.u32()?,
                w: h.u32()?,
                h: h.u32()?,
            };
            let pixels = fields.0;
            check_frame(page, width, height, rect, pixels.len())?;
            Ok(Message::Frame(Frame {
                page,
                width,
                height,
                rect,
                format: PixelFormat::Rgba8,
                pixels: pixels.to_vec(),
            }))
        }
        TAG_STATUS => {
            let text = utf8("status", rest)?;
            check_status(&text)?;
            Ok(Message::Status(text))
        }
        TAG_TITLE => {
            let text = utf8("title", rest)?;
            check_status(&text)?;
            Ok(Message::Title(text))
        }
        TAG_PAGES => {
            fields.expect_len(tag, 4)?;
            let count = fields.u32()?;
            check_page_count(count)?;
            Ok(Message::Pages(count))
        }
        TAG_KEY => {
            fields.expect_len(tag, 6)?;
            let code = fields.u8()?;
            let value = fields.u32()?;
            let mods = fields.u8()?;
            let key = key_from_code(code, value)?;
            if mods & !(MOD_CTRL | MOD_ALT | MOD_SHIFT) != 0 {
                return Err(WireError::BadModifiers(mods));
            }
            Ok(Message::Input(InputEvent::Key(KeyEvent {
                key,
                modifiers: Modifiers {
                    ctrl: mods & MOD_CTRL != 0,
                    alt: mods & MOD_ALT != 0,
                    shift: mods & MOD_SHIFT != 0,
                },
            })))
        }
        TAG_TEXT => {
            let text = utf8("text", rest)?;
            check_len("text", text.len(), MAX_TEXT_BYTES)?;
            Ok(Message::Input(InputEvent::Text(text)))
        }
        TAG_SCROLL => {
            fields.expect_len(tag, 8)?;
            let dx = fields.i32()?;
            let dy = fields.i32()?;
            Ok(Message::Input(InputEvent::Scroll { dx, dy }))
        }
        TAG_PAGE_CHANGE => {
            fields.expect_len(tag, 4)?;
            let page = fields.u32()?;
            check_page(page)?;
            Ok(Message::Input(InputEvent::PageChange { page }))
        }
        TAG_RESIZE => {
            fields.expect_len(tag, 8)?;
            let width = fields.u32()?;
            let height = fields.u32()?;
            check_dim("width", width)?;
            check_dim("height", height)?;
            Ok(Message::Input(InputEvent::Resize { width, height }))
        }
        TAG_BUTTON => {
            fields.expect_len(tag, 14)?;
            let (page, x, y) = (fields.u32()?, fields.u32()?, fields.u32()?);
            check_point(page, x, y)?;
            let button = match fields.u8()? {
                0 => MouseButton::Left,
                1 => MouseButton::Middle,
                2 => MouseButton::Right,
                other => {
                    return Err(WireError::OutOfRange {
                        field: "button",
                        value: other.into(),
                        max: 2,
                    })
                }
            };
            let down = match fields.u8()? {
                0 => false,
                1 => true,
                other => {
                    return Err(WireError::OutOfRange {
                        field: "button state",
                        value: other.into(),
                        max: 1,
                    })
                }
            };
            Ok(Message::Input(InputEvent::Button {
                page,
                x,
                y,
                button,
                down,
            }))
        }
        TAG_MOTION => {
            fields.expect_len(tag, 12)?;
            let (page, x, y) = (fields.u32()?, fields.u32()?, fields.u32()?);
            check_point(page, x, y)?;
            Ok(Message::Input(InputEvent::Motion { page, x, y }))
        }
        TAG_CLOSED => {
            fields.expect_len(tag, 0)?;
            Ok(Message::Closed)
        }
        TAG_PRESENTED => {
            fields.expect_len(tag, 4)?;
            Ok(Message::Presented {
                frames: fields.u32()?,
            })
        }
        TAG_SAVE_SAFE_COPY => {
            fields.expect_len(tag, 0)?;
            Ok(Message::SaveSafeCopy)
        }
        other => Err(WireError::UnknownTag(other)),
    }
}

fn encode_input(event: &InputEvent) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::with_capacity(16);
    let tag = match event {
        InputEvent::Key(KeyEvent { key, modifiers }) => {
            let (code, value) = key_code(*key)?;
            body.push(code);
            body.extend_from_slice(&value.to_le_bytes());
            let mut mods = 0;
            for (held, bit) in [
                (modifiers.ctrl, MOD_CTRL),
                (modifiers.alt, MOD_ALT),
                (modifiers.shift, MOD_SHIFT),
            ] {
                if held {
                    mods |= bit;
                }
            }
            body.push(mods);
            TAG_KEY
        }
        InputEvent::Text(text) => {
            check_len("text", text.len(), MAX_TEXT_BYTES)?;
            body.extend_from_slice(text.as_bytes());
            TAG_TEXT
        }
        InputEvent::Scroll { dx, dy } => {
            body.extend_from_slice(&dx.to_le_bytes());
            body.extend_from_slice(&dy.to_le_bytes());
            TAG_SCROLL
        }
        InputEvent::PageChange { page } => {
            check_page(*page)?;
            body.extend_from_slice(&page.to_le_bytes());
            TAG_PAGE_CHANGE
        }
        InputEvent::Resize { width, height } => {
            check_dim("width", *width)?;
            check_dim("height", *height)?;
            body.extend_from_slice(&width.to_le_bytes());
            body.extend_from_slice(&height.to_le_bytes());
            TAG_RESIZE
        }
        InputEvent::Button {
            page,
            x,
            y,
            button,
            down,
        } => {
            check_point(*page, *x, *y)?;
            for v in [page, x, y] {
                body.extend_from_slice(&v.to_le_bytes());
            }
            body.push(match button {
                MouseButton::Left => 0,
                MouseButton::Middle => 1,
                MouseButton::Right => 2,
            });
            body.push(u8::from(*down));
            TAG_BUTTON
        }
        InputEvent::Motion { page, x, y } => {
            check_point(*page, *x, *y)?;
            for v in [page, x, y] {
                body.extend_from_slice(&v.to_le_bytes());
            }
            TAG_MOTION
        }
    };
    Ok(finish(tag, &body))
}

// Key codes on the wire: 0 is a character (value = its scalar), 1..=15 the
// named keys, 16 a function key (value 1..=12).
fn key_code(key: Key) -> Result<(u8, u32), WireError> {
    Ok(match key {
        Key::Char(c) => (0, u32::from(c)),
        Key::Enter => (1, 0),
        Key::Tab => (2, 0),
        Key::Backspace => (3, 0),
        Key::Escape => (4, 0),
        Key::Up => (5, 0),
        Key::Down => (6, 0),
        Key::Left => (7, 0),
        Key::Right => (8, 0),
        Key::Home => (9, 0),
        Key::End => (10, 0),
        Key::PageUp => (11, 0),
        Key::PageDown => (12, 0),
        Key::Insert => (13, 0),
        Key::Delete => (14, 0),
        Key::F(n) if (1..=12).contains(&n) => (16, u32::from(n)),
        Key::F(n) => {
            return Err(WireError::BadKey {
                code: 16,
                value: u32::from(n),
            })
        }
    })
}

fn key_from_code(code: u8, value: u32) -> Result<Key, WireError> {
    let bad = WireError::BadKey { code, value };
    let named = |key: Key| {
        if value == 0 {
            Ok(key)
        } else {
            Err(WireError::BadKey { code, value })
        }
    };
    match code {
        0 => char::from_u32(value)
            .filter(|c| !c.is_control())
            .map(Key::Char)
            .ok_or(bad),
        1 => named(Key::Enter),
        2 => named(Key::Tab),
        3 => named(Key::Backspace),
        4 => named(Key::Escape),
        5 => named(Key::Up),
        6 => named(Key::Down),
        7 => named(Key::Left),
        8 => named(Key::Right),
        9 => named(Key::Home),
        10 => named(Key::End),
        11 => named(Key::PageUp),
        12 => named(Key::PageDown),
        13 => named(Key::Insert),
        14 => named(Key::Delete),
        16 => u8::try_from(value)
            .ok()
            .filter(|n| (1..=12).contains(n))
            .map(Key::F)
            .ok_or(bad),
        _ => Err(bad),
    }
}

fn check_frame(
    page: u32,
    width: u32,
    height: u32,
    rect: Rect,
    len: usize,
) -> Result<(), WireError> {
    check_page(page)?;
    check_dim("width", width)?;
    check_dim("height", height)?;
    check_dim("rect.w", rect.w)?;
    check_dim("rect.h", rect.h)?;
    let inside = rect.x.checked_add(rect.w).is_some_and(|r| r <= width)
        && rect.y.checked_add(rect.h).is_some_and(|b| b <= height);
    if !inside {
        return Err(WireError::RectOutsidePage {
            x: rect.x,
            y: rect.y,
            w: rect.w,
            h: rect.h,
            width,
            height,
        });
    }
    // Both sides are at most MAX_DIM (2^13), so the product fits in u64.
    let want = u64::from(rect.w) * u64::from(rect.h) * 4;
    let cap = u64::try_from(MAX_FRAME_PIXEL_BYTES).unwrap_or(u64::MAX);
    if want > cap {
        return Err(WireError::OutOfRange {
            field: "rect pixels",
            value: want,
            max: cap,
        });
    }
    if u64::try_from(len).ok() != Some(want) {
        return Err(WireError::PixelCount {
            len,
            w: rect.w,
            h: rect.h,
        });
    }
    Ok(())
}

fn check_page(page: u32) -> Result<(), WireError> {
    if page >= MAX_PAGES {
        return Err(WireError::OutOfRange {
            field: "page",
            value: page.into(),
            max: (MAX_PAGES - 1).into(),
        });
    }
    Ok(())
}

/// A pointer position: on a page, and inside the largest page.
fn check_point(page: u32, x: u32, y: u32) -> Result<(), WireError> {
    check_page(page)?;
    for (field, v) in [("x", x), ("y", y)] {
        if v >= MAX_DIM {
            return Err(WireError::OutOfRange {
                field,
                value: v.into(),
                max: (MAX_DIM - 1).into(),
            });
        }
    }
    Ok(())
}

fn check_page_count(count: u32) -> Result<(), WireError> {
    if count == 0 || count > MAX_PAGES {
        return Err(WireError::OutOfRange {
            field: "pages",
            value: count.into(),
            max: MAX_PAGES.into(),
        });
    }
    Ok(())
}

fn check_dim(field: &'static str, value: u32) -> Result<(), WireError> {
    if value == 0 || value > MAX_DIM {
        return Err(WireError::OutOfRange {
            field,
            value: value.into(),
            max: MAX_DIM.into(),
        });
    }
    Ok(())
}

fn check_status(text: &str) -> Result<(), WireError> {
    check_len("status", text.len(), MAX_STATUS_BYTES)
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooLong { field, len, max });
    }
    Ok(())
}

fn utf8(field: &'static str, bytes: &[u8]) -> Result<String, WireError> {
    // Check the cap before copying: the body cap is far above the field caps.
    let max = if matches!(field, "status" | "title") {
        MAX_STATUS_BYTES
    } else {
        MAX_TEXT_BYTES
    };
    check_len(field, bytes.len(), max)?;
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| WireError::NotUtf8(field))
}

fn finish(tag: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(1 + body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(LEN_PREFIX_BYTES + 1 + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.push(tag);
    out.extend_from_slice(body);
    out
}

fn set_prefix(out: &mut [u8]) -> Result<(), WireError> {
    let body = out.len().saturating_sub(LEN_PREFIX_BYTES);
    let len = u32::try_from(body).map_err(|_| WireError::BadLength {
        len: u64::try_from(body).unwrap_or(u64::MAX),
        max: MAX_BODY_BYTES,
    })?;
    if let Some(prefix) = out.get_mut(..LEN_PREFIX_BYTES) {
        prefix.copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

/// Cursor over fixed little-endian fields.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn exact_prefix(&mut self, tag: u8, n: usize) -> Result<&'a [u8], WireError> {
        let len = self.0.len();
        self.take(n).ok_or(WireError::BodySize {
            tag,
            len,
            expected: n,
        })
    }

    fn expect_len(&self, tag: u8, n: usize) -> Result<(), WireError> {
        if self.0.len() != n {
            return Err(WireError::BodySize {
                tag,
                len: self.0.len(),
                expected: n,
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let len = self.0.len();
        let bytes = self.take(N).ok_or(WireError::BodySize {
            tag: 0,
            len,
            expected: N,
        })?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_le_bytes)
    }

    fn i32(&mut self) -> Result<i32, WireError> {
        self.array().map(i32::from_le_bytes)
    }
}

#[cfg(test)]
mod tests;
