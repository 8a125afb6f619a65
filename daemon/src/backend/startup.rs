//! What every backend does while a guest comes up: wait for the shim's
//! `Ready` on the channel, and quote the end of the console when it fails.

use std::fs;
use std::path::Path;
use std::time::Instant;

use vitrine_shim::protocol::{GuestMessage, Ready};

use super::channel::{ChannelError, GuestChannel};

/// Bytes of a log quoted in errors.
pub const TAIL_BYTES: usize = 3000;

/// Why no `Ready` came.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// The deadline passed.
    TimedOut,
    /// The shim's first real message was something else (shown).
    NotReady(String),
    /// The stream closed or broke; the VM is probably going away.
    Stream(ChannelError),
}

/// Receives until the shim's `Ready`, skipping its early log lines.
pub fn await_ready(
    channel: &mut GuestChannel,
    deadline: Instant,
) -> Result<Ready, HandshakeFailure> {
    loop {
        match channel.recv_until(deadline) {
            Ok(GuestMessage::Ready(ready)) => return Ok(ready),
            Ok(GuestMessage::Log { level, text }) => {
                log::debug!("shim before Ready ({level:?}): {text}");
            }
            Ok(other) => return Err(HandshakeFailure::NotReady(format!("{other:?}"))),
            Err(ChannelError::TimedOut(_)) => return Err(HandshakeFailure::TimedOut),
            Err(source) => return Err(HandshakeFailure::Stream(source)),
        }
    }
}

/// The last [`TAIL_BYTES`] of a file as text; empty if it cannot be read.
pub fn file_tail(path: &Path) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// A whole log as text; empty if it cannot be read.
pub fn file_text(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_tail_keeps_the_end_of_a_long_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut text = "x".repeat(TAIL_BYTES);
        text.push_str("kernel panic");
        fs::write(&path, &text).unwrap();

        let tail = file_tail(&path);

        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(tail.ends_with("kernel panic"));
        assert_eq!(file_tail(&dir.path().join("missing")), "");
    }
}
