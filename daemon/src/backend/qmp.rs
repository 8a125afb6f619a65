//! A small QMP client: the JSON lines QEMU's monitor speaks on a Unix
//! socket. Templates need four things of it: stop a VM, save its device
//! state to a descriptor with `x-ignore-shared` (RAM stays in the
//! template's memory file), load that state into a clone, and resume it.
//! Descriptors go over the socket with `getfd` (SCM_RIGHTS), so QEMU never
//! needs `exec:` and can keep `-sandbox spawn=deny`.

use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(5);
/// Longest QMP line read (QEMU's answers here are small).
const MAX_LINE: usize = 1024 * 1024;

/// A QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The monitor socket could not be reached.
    #[error("cannot connect to QEMU's monitor {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    /// Reading or writing the socket failed.
    #[error("QEMU's monitor connection failed")]
    Io(#[from] std::io::Error),
    /// QEMU said something that is not QMP.
    #[error("QEMU's monitor sent {0:?}, which is not QMP")]
    Malformed(String),
    /// QEMU refused a command.
    #[error("QEMU refused `{command}`: {class}: {desc}")]
    Refused {
        /// The command.
        command: String,
        /// QMP's error class.
        class: String,
        /// QEMU's words.
        desc: String,
    },
    /// A migration ended in failure.
    #[error("QEMU's migration {status}: {desc}")]
    Migration {
        /// `failed` or `cancelled`.
        status: String,
        /// QEMU's words, when it gave some.
        desc: String,
    },
    /// Nothing came in time.
    #[error("QEMU's monitor did not answer `{0}` within {1:?}")]
    TimedOut(String, Duration),
}

/// One QMP session, past its capabilities negotiation.
#[derive(Debug)]
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    timeout: Duration,
}

impl Qmp {
    /// Connects to `socket` (waiting until `deadline` for QEMU to create
    /// it), reads the greeting and enters command mode.
    pub fn connect(socket: &Path, deadline: Instant, timeout: Duration) -> Result<Self, QmpError> {
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e)
                    if Instant::now() < deadline
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    std::thread::sleep(POLL);
                }
                Err(e) => return Err(QmpError::Connect(socket.to_owned(), e)),
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        let mut qmp = Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            timeout,
        };
        let greeting = qmp.line("greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Malformed(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.send(command, arguments, None)
    }

    /// Hands QEMU the descriptor `fd` under `name` (`getfd`), for a later
    /// `fd:NAME` migration URI.
    pub fn send_fd(&mut self, name: &str, fd: impl AsFd) -> Result<(), QmpError> {
        self.send("getfd", Some(json!({ "fdname": name })), Some(fd.as_fd()))
            .map(|_| ())
    }

    /// Turns on `x-ignore-shared`: RAM in a shared memory backend is not
    /// copied into the migration stream.
    pub fn ignore_shared_ram(&mut self) -> Result<(), QmpError> {
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [ { "capability": "x-ignore-shared", "state": true } ] })),
        )
        .map(|_| ())
    }

    /// Polls `query-migrate` until it completes, fails, or `limit` passes.
    pub fn wait_migration(&mut self, limit: Duration) -> Result<Value, QmpError> {
        let until = Instant::now() + limit;
        loop {
            let info = self.execute("query-migrate", None)?;
            match info.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => return Ok(info),
                status @ ("failed" | "cancelled") => {
                    return Err(QmpError::Migration {
                        status: status.to_owned(),
                        desc: info
                            .get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("no reason given")
                            .to_owned(),
                    })
                }
                _ if Instant::now() >= until => {
                    return Err(QmpError::TimedOut("query-migrate".into(), limit))
                }
                _ => std::thread::sleep(POLL),
            }
        }
    }

    /// Polls `query-status` until the VM is past an incoming migration
    /// (paused, waiting for `cont`), or `limit` passes. An incoming
    /// migration that failed ends QEMU, which shows as a closed socket.
    pub fn wait_incoming(&mut self, limit: Duration) -> Result<(), QmpError> {
        let until = Instant::now() + limit;
        loop {
            let status = self.execute("query-status", None)?;
            match status.get("status").and_then(Value::as_str).unwrap_or("") {
                "inmigrate" if Instant::now() < until => std::thread::sleep(POLL),
                "inmigrate" => return Err(QmpError::TimedOut("migrate-incoming".into(), limit)),
                _ => return Ok(()),
            }
        }
    }

    fn send(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        match fd {
            None => self.writer.write_all(line.as_bytes())?,
            Some(fd) => {
                use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
                let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                let fds = [fd];
                if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                    return Err(QmpError::Io(std::io::Error::other(
                        "no room for SCM_RIGHTS",
                    )));
                }
                let sent = sendmsg(
                    &self.writer,
                    &[IoSlice::new(line.as_bytes())],
                    &mut control,
                    SendFlags::empty(),
                )
                .map_err(std::io::Error::from)?;
                // The descriptor went with the first byte; the rest is plain.
                self.writer.write_all(&line.as_bytes()[sent..])?;
            }
        }
        loop {
            let answer = self.line(command)?;
            if answer.get("event").is_some() {
                continue;
            }
            if let Some(value) = answer.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = answer.get("error") {
                let text = |k: &str| {
                    error
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                return Err(QmpError::Refused {
                    command: command.to_owned(),
                    class: text("class"),
                    desc: text("desc"),
                });
            }
            return Err(QmpError::Malformed(answer.to_string()));
        }
    }

    fn line(&mut self, waiting_for: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let read = (&mut self.reader)
            .take(u64::try_from(MAX_LINE).unwrap_or(u64::MAX))
            .read_line(&mut line);
        match read {
            Ok(0) => Err(QmpError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "QEMU closed its monitor",
            ))),
            Ok(_) => serde_json::from_str(&line).map_err(|_| QmpError::Malformed(line)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(QmpError::TimedOut(waiting_for.to_owned(), self.timeout))
            }
            Err(e) => Err(e.into()),
        }
    }
}
