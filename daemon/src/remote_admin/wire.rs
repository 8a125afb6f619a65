//! Requests and responses between `vitrine-admin` and the endpoint: one
//! JSON document per frame, after a 4-byte big-endian length, over TLS.
//! Each side caps what it reads before it allocates.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::bundle::PolicyBundle;

/// Largest response frame a client reads.
pub const MAX_RESPONSE_BYTES: u32 = 16 << 20;
/// Audit records per response frame.
pub const AUDIT_RECORDS_PER_FRAME: usize = 256;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection failed")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes is over the {cap}-byte cap")]
    TooLarge { len: u64, cap: u64 },
    #[error("connection closed inside a frame")]
    Truncated,
    #[error("frame is not a valid message")]
    Json(#[from] serde_json::Error),
}

/// What an admin asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Verify, validate and install a policy bundle.
    PushBundle { bundle: PolicyBundle },
    /// The last `last` audit records, oldest first.
    ReadAudit { last: u32 },
}

/// What the endpoint answers. `ReadAudit` gets `AuditRecords` frames, then
/// `AuditEnd`; every other request gets one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminResponse {
    /// The bundle's policy is active now.
    Applied {
        /// Hex SHA-256 of the installed policy.
        version: String,
        /// The version `vitrine-policy rollback` returns to.
        previous: Option<String>,
        /// False when this policy was already active.
        changed: bool,
        serial: u64,
    },
    /// The request changed nothing; `error` says why (with file:line for a
    /// policy that does not load).
    Refused { error: String },
    /// Some of the audit records asked for.
    AuditRecords { records: Vec<serde_json::Value> },
    /// No more audit records; `count` were sent.
    AuditEnd { count: u32 },
}

/// Writes `msg` as one frame and flushes.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge {
        len: u64::try_from(body.len()).unwrap_or(u64::MAX),
        cap: u64::from(u32::MAX),
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame of at most `cap` bytes. `Ok(None)`: the peer closed the
/// connection between frames.
pub async fn read_frame<R, T>(r: &mut R, cap: u32) -> Result<Option<T>, WireError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut prefix = [0u8; 4];
    let mut have = 0;
    while have < prefix.len() {
        let n = r.read(&mut prefix[have..]).await?;
        if n == 0 {
            return if have == 0 {
                Ok(None)
            } else {
                Err(WireError::Truncated)
            };
        }
        have += n;
    }
    let len = u32::from_be_bytes(prefix);
    if len > cap {
        return Err(WireError::TooLarge {
            len: u64::from(len),
            cap: u64::from(cap),
        });
    }
    // Grows as bytes arrive: a large prefix alone costs nothing.
    let mut body = Vec::new();
    r.take(u64::from(len)).read_to_end(&mut body).await?;
    if body.len() != usize::try_from(len).unwrap_or(usize::MAX) {
        return Err(WireError::Truncated);
    }
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused_unread() {
        let msg = AdminRequest::ReadAudit { last: 3 };
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).await.unwrap();

        let back: Option<AdminRequest> = read_frame(&mut buf.as_slice(), 1024).await.unwrap();
        assert_eq!(back, Some(msg));
        let small = read_frame::<_, AdminRequest>(&mut buf.as_slice(), 4).await;
        assert!(matches!(small, Err(WireError::TooLarge { .. })));
        let cut = read_frame::<_, AdminRequest>(&mut &buf[..buf.len() - 1], 1024).await;
        assert!(matches!(cut, Err(WireError::Truncated)));
        let none = read_frame::<_, AdminRequest>(&mut &[][..], 1024)
            .await
            .unwrap();
        assert_eq!(none, None);
    }
}
