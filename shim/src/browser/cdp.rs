//! The DevTools protocol over Chromium's `--remote-debugging-pipe`: JSON
//! messages, each ended by a NUL byte, on the browser's fds 3 (to it) and
//! 4 (from it). The browser is hostile once a page has run in it, so a
//! message has a hard size cap and a broken one ends the session.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};

use serde_json::{json, Value};

/// Largest message read from the browser (a screencast frame of a large
/// viewport, base64).
pub const MAX_MESSAGE_BYTES: usize = 48 * 1024 * 1024;

/// The pipe broke or the browser sent something that is not a message.
#[derive(Debug, thiserror::Error)]
pub enum CdpError {
    /// Writing to the browser failed.
    #[error("writing to the browser")]
    Write(#[source] std::io::Error),
    /// Reading from the browser failed.
    #[error("reading from the browser")]
    Read(#[source] std::io::Error),
    /// A message over the cap.
    #[error("the browser sent a message of more than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    /// Not JSON.
    #[error("the browser sent a message that is not JSON: {0}")]
    NotJson(String),
}

/// One message from the browser.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The answer to call `id`: its result, or the browser's error text.
    Reply {
        /// Call id.
        id: u64,
        /// `result`, or `error.message`.
        result: Result<Value, String>,
    },
    /// An event of a session (`None`: the browser's own).
    Event {
        /// Method, such as `Page.loadEventFired`.
        method: String,
        /// Its parameters.
        params: Value,
        /// The session it belongs to.
        session: Option<String>,
    },
}

impl Incoming {
    /// Parses one message.
    pub fn parse(bytes: &[u8]) -> Result<Incoming, CdpError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| CdpError::NotJson(e.to_string()))?;
        let session = v
            .get("sessionId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(id) = v.get("id").and_then(Value::as_u64) {
            let result = match v.get("error") {
                Some(e) => Err(e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_owned()),
                None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
            };
            return Ok(Incoming::Reply { id, result });
        }
        match v.get("method").and_then(Value::as_str) {
            Some(method) => Ok(Incoming::Event {
                method: method.to_owned(),
                params: v.get("params").cloned().unwrap_or(Value::Null),
                session,
            }),
            None => Err(CdpError::NotJson("neither a reply nor an event".into())),
        }
    }
}

/// Reads messages until the pipe ends; `None` at its end.
#[derive(Debug)]
pub struct Reader {
    from: BufReader<File>,
}

impl Reader {
    /// Reads from the browser's fd 4.
    pub fn new(from: File) -> Self {
        Self {
            from: BufReader::with_capacity(1 << 20, from),
        }
    }

    /// The next message, `None` when the browser closed its end.
    pub fn read_message(&mut self) -> Result<Option<Incoming>, CdpError> {
        let mut buf = Vec::new();
        loop {
            let chunk = self.from.fill_buf().map_err(CdpError::Read)?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let (take, done) = match chunk.iter().position(|&b| b == 0) {
                Some(nul) => (nul + 1, true),
                None => (chunk.len(), false),
            };
            let body = if done { &chunk[..take - 1] } else { chunk };
            if buf.len() + body.len() > MAX_MESSAGE_BYTES {
                return Err(CdpError::TooLong);
            }
            buf.extend_from_slice(body);
            self.from.consume(take);
            if done {
                return Incoming::parse(&buf).map(Some);
            }
        }
    }
}

/// Sends calls to the browser (its fd 3).
#[derive(Debug)]
pub struct Writer {
    to: File,
    next_id: u64,
}

impl Writer {
    /// Writes to the browser's fd 3.
    pub fn new(to: File) -> Self {
        Self { to, next_id: 1 }
    }

    /// Sends `method(params)` in `session` (`None`: to the browser) and
    /// returns the call's id.
    pub fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<u64, CdpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s.to_owned());
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| CdpError::NotJson(e.to_string()))?;
        bytes.push(0);
        self.to.write_all(&bytes).map_err(CdpError::Write)?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_events_and_errors_are_told_apart() {
        let reply = Incoming::parse(br#"{"id":3,"result":{"frameId":"F"}}"#).unwrap();
        assert_eq!(
            reply,
            Incoming::Reply {
                id: 3,
                result: Ok(json!({"frameId":"F"}))
            }
        );
        let error =
            Incoming::parse(br#"{"id":4,"error":{"code":-32000,"message":"No target"}}"#).unwrap();
        assert_eq!(
            error,
            Incoming::Reply {
                id: 4,
                result: Err("No target".into())
            }
        );
        let event =
            Incoming::parse(br#"{"method":"Page.loadEventFired","params":{},"sessionId":"S"}"#)
                .unwrap();
        assert!(
            matches!(event, Incoming::Event { ref method, session: Some(ref s), .. }
            if method == "Page.loadEventFired" && s == "S")
        );
        assert!(Incoming::parse(b"{\"x\":1}").is_err());
        assert!(Incoming::parse(b"not json").is_err());
    }

    #[test]
    fn the_reader_splits_on_nul_and_ends_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipe");
        std::fs::write(&path, b"{\"id\":1,\"result\":{}}\0{\"method\":\"A.b\"}\0").unwrap();
        let mut reader = Reader::new(File::open(&path).unwrap());
        assert!(matches!(
            reader.read_message().unwrap(),
            Some(Incoming::Reply { id: 1, .. })
        ));
        assert!(matches!(
            reader.read_message().unwrap(),
            Some(Incoming::Event { .. })
        ));
        assert!(reader.read_message().unwrap().is_none());
    }
}
