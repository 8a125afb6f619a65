//! Blocking length-prefixed framing over `Read`/`Write`.

use std::io::{self, Read, Write};
use std::marker::PhantomData;

use super::codec::{decode_payload, encode_frame, CodecError};
use super::message::WireMessage;
use super::{LEN_PREFIX_BYTES, MAX_FRAME_BYTES, VERSION_BYTES};

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// The stream failed.
    #[error("stream I/O failed")]
    Io(#[from] io::Error),
    /// The length prefix announces more than `MAX_FRAME_BYTES`.
    #[error("frame of {0} bytes exceeds the cap of {MAX_FRAME_BYTES}")]
    FrameTooLarge(u32),
    /// The length prefix announces less than a version field.
    #[error("frame of {0} bytes is shorter than the version field")]
    FrameTooShort(u32),
    /// The stream ended inside a frame.
    #[error("stream ended after {got} of {expected} bytes of a frame")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        expected: usize,
    },
    /// The payload is not a valid message.
    #[error("bad frame payload")]
    Codec(#[from] CodecError),
}

/// Checks a length prefix before any buffer is sized by it.
pub(crate) fn check_prefix(prefix: [u8; LEN_PREFIX_BYTES]) -> Result<usize, FramingError> {
    let len = u32::from_le_bytes(prefix);
    if len > MAX_FRAME_BYTES {
        return Err(FramingError::FrameTooLarge(len));
    }
    let len_usize = usize::try_from(len).map_err(|_| FramingError::FrameTooLarge(len))?;
    if len_usize < VERSION_BYTES + 1 {
        return Err(FramingError::FrameTooShort(len));
    }
    Ok(len_usize)
}

/// Reads messages of type `M` from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R, M> {
    inner: R,
    buf: Vec<u8>,
    _msg: PhantomData<fn() -> M>,
}

impl<R: Read, M: WireMessage> FrameReader<R, M> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            _msg: PhantomData,
        }
    }

    /// Reads the next message. `Ok(None)` means the peer closed the stream
    /// cleanly between frames.
    ///
    /// The buffer grows only as bytes arrive, so a prefix that announces a
    /// large frame and then stalls or ends costs no more memory than was sent.
    pub fn recv(&mut self) -> Result<Option<M>, FramingError> {
        let mut prefix = [0u8; LEN_PREFIX_BYTES];
        let mut have = 0;
        while have < LEN_PREFIX_BYTES {
            match self.inner.read(&mut prefix[have..]) {
                Ok(0) if have == 0 => return Ok(None),
                Ok(0) => {
                    return Err(FramingError::Truncated {
                        got: have,
                        expected: LEN_PREFIX_BYTES,
                    })
                }
                Ok(n) => have += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = check_prefix(prefix)?;
        self.buf.clear();
        let limit = u64::try_from(len).unwrap_or(u64::MAX);
        let got = (&mut self.inner).take(limit).read_to_end(&mut self.buf)?;
        if got < len {
            return Err(FramingError::Truncated { got, expected: len });
        }
        let msg = decode_payload(&self.buf)?;
        // Do not keep a large frame's buffer alive for the whole session.
        if self.buf.capacity() > 1024 * 1024 {
            self.buf = Vec::new();
        }
        Ok(Some(msg))
    }

    /// Capacity of the internal buffer (to test that it tracks bytes received).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes messages of type `M` to a byte stream.
#[derive(Debug)]
pub struct FrameWriter<W, M> {
    inner: W,
    _msg: PhantomData<fn(M)>,
}

impl<W: Write, M: WireMessage> FrameWriter<W, M> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            _msg: PhantomData,
        }
    }

    /// Checks the caps of `msg`, then writes and flushes it as one frame.
    pub fn send(&mut self, msg: &M) -> Result<(), FramingError> {
        let frame = encode_frame(msg)?;
        self.inner.write_all(&frame)?;
        self.inner.flush()?;
        Ok(())
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> W {
        self.inner
    }
}
