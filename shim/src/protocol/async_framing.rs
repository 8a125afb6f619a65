//! Async (tokio) length-prefixed framing, for the host daemon.

use std::marker::PhantomData;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{decode_payload, encode_frame};
use super::framing::{check_prefix, FramingError};
use super::message::WireMessage;
use super::LEN_PREFIX_BYTES;

/// Reads messages of type `M` from an async byte stream.
#[derive(Debug)]
pub struct AsyncFrameReader<R, M> {
    inner: R,
    buf: Vec<u8>,
    _msg: PhantomData<fn() -> M>,
}

impl<R: AsyncRead + Unpin, M: WireMessage> AsyncFrameReader<R, M> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            _msg: PhantomData,
        }
    }

    /// Reads the next message; `Ok(None)` on a clean close between frames.
    /// Not cancel-safe: drop the reader if a `recv` future is dropped midway.
    pub async fn recv(&mut self) -> Result<Option<M>, FramingError> {
        let mut prefix = [0u8; LEN_PREFIX_BYTES];
        let mut have = 0;
        while have < LEN_PREFIX_BYTES {
            let n = self.inner.read(&mut prefix[have..]).await?;
            if n == 0 {
                if have == 0 {
                    return Ok(None);
                }
                return Err(FramingError::Truncated {
                    got: have,
                    expected: LEN_PREFIX_BYTES,
                });
            }
            have += n;
        }
        let len = check_prefix(prefix)?;
        self.buf.clear();
        let limit = u64::try_from(len).unwrap_or(u64::MAX);
        let got = (&mut self.inner)
            .take(limit)
            .read_to_end(&mut self.buf)
            .await?;
        if got < len {
            return Err(FramingError::Truncated { got, expected: len });
        }
        let msg = decode_payload(&self.buf)?;
        if self.buf.capacity() > 1024 * 1024 {
            self.buf = Vec::new();
        }
        Ok(Some(msg))
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes messages of type `M` to an async byte stream.
#[derive(Debug)]
pub struct AsyncFrameWriter<W, M> {
    inner: W,
    _msg: PhantomData<fn(M)>,
}

impl<W: AsyncWrite + Unpin, M: WireMessage> AsyncFrameWriter<W, M> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            _msg: PhantomData,
        }
    }

    /// Checks the caps of `msg`, then writes and flushes it as one frame.
    pub async fn send(&mut self, msg: &M) -> Result<(), FramingError> {
        let frame = encode_frame(msg)?;
        self.inner.write_all(&frame).await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> W {
        self.inner
    }
}
