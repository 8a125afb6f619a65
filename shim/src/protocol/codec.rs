//! Payload encoding: version + postcard body, with caps checked both ways.

use super::message::{MessageError, WireMessage};
use super::{LEN_PREFIX_BYTES, MAX_FRAME_BYTES, PROTOCOL_VERSION, VERSION_BYTES};

/// A payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Shorter than the version field.
    #[error("payload of {0} bytes is shorter than the version field")]
    Truncated(usize),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {got}, this side speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion {
        /// Version the peer sent.
        got: u16,
    },
    /// The body is not a valid postcard message.
    #[error("malformed message body")]
    Malformed(#[source] postcard::Error),
    /// Bytes follow the message inside the payload.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The message breaks a cap.
    #[error("message breaks a protocol cap")]
    Invalid(#[from] MessageError),
    /// The encoded payload is larger than `MAX_FRAME_BYTES`.
    #[error("payload of {0} bytes exceeds the frame cap")]
    TooLarge(usize),
}

/// Encodes `msg` as a payload (version + body), after checking its caps.
pub fn encode_payload<M: WireMessage>(msg: &M) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// Encodes `msg` as a whole frame (length prefix + payload), ready to write.
pub fn encode_frame<M: WireMessage>(msg: &M) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; LEN_PREFIX_BYTES];
    encode_into(msg, &mut out)?;
    let payload_len = out.len() - LEN_PREFIX_BYTES;
    // encode_into checked payload_len <= MAX_FRAME_BYTES, which fits u32.
    let len = u32::try_from(payload_len).map_err(|_| CodecError::TooLarge(payload_len))?;
    out[..LEN_PREFIX_BYTES].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

fn encode_into<M: WireMessage>(msg: &M, out: &mut Vec<u8>) -> Result<(), CodecError> {
    msg.validate()?;
    let start = out.len();
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    let body = postcard::to_allocvec(msg).map_err(CodecError::Malformed)?;
    out.extend_from_slice(&body);
    let payload_len = out.len() - start;
    if payload_len > max_frame_bytes() {
        return Err(CodecError::TooLarge(payload_len));
    }
    Ok(())
}

/// Decodes one payload (version + body) and checks the message's caps.
///
/// Never panics on any input; allocation stays within `payload.len()` plus
/// serde's bounded pre-allocation, because postcard checks every length
/// against the bytes that remain before it copies.
pub fn decode_payload<M: WireMessage>(payload: &[u8]) -> Result<M, CodecError> {
    if payload.len() > max_frame_bytes() {
        return Err(CodecError::TooLarge(payload.len()));
    }
    let (version, body) = payload
        .split_first_chunk::<VERSION_BYTES>()
        .ok_or(CodecError::Truncated(payload.len()))?;
    let got = u16::from_le_bytes(*version);
    if got != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion { got });
    }
    let (msg, rest): (M, &[u8]) = postcard::take_from_bytes(body).map_err(CodecError::Malformed)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    msg.validate()?;
    Ok(msg)
}

pub(crate) fn max_frame_bytes() -> usize {
    usize::try_from(MAX_FRAME_BYTES).unwrap_or(usize::MAX)
}
