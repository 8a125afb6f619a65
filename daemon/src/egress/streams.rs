//! Tunnel streams: many connections open at once (a browser's), each named
//! by the guest's stream id, and one poll that answers with what arrived on
//! any of them. Same policy as a single connection (`connect`), and the
//! same records and relayed-bytes cap; caps of their own on how many.
//!
//! The guest is not trusted: an id already open is refused, a send or close
//! on an unknown id is ignored, and nothing here panics on what it sends.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{recv, RecvFlags};
use vitrine_shim::protocol::{
    StreamData, StreamId, StreamReply, MAX_CHUNK_BYTES, MAX_POLL_WAIT_MS,
};

use super::{endpoint_text, EgressTunnel, Refusal, MAX_RELAYED_BYTES};

/// Most `StreamOpen`s one task may ask for: a browser the user clicks
/// through opens a few per page, a scan needs far more.
pub const MAX_STREAMS_OPENED: usize = 512;
/// Most streams open at once (a browser keeps about six per host).
pub const MAX_STREAMS_OPEN: usize = 64;
/// Longest a send may wait for a peer that does not read: the task's
/// other streams wait meanwhile.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting poll looks for a cancel.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// One open stream.
#[derive(Debug)]
pub(super) struct Stream {
    socket: TcpStream,
    target: String,
    /// A send failed or the relayed-bytes cap was passed: the next poll
    /// reports the stream's end.
    broken: bool,
}

impl Stream {
    fn break_off(&mut self) {
        self.broken = true;
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

impl EgressTunnel {
    pub(super) fn stream_open(
        &mut self,
        id: StreamId,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> StreamReply {
        self.stream_opens = self.stream_opens.saturating_add(1);
        let host = host.to_ascii_lowercase();
        let target = endpoint_text(&host, port);
        let result = match self.stream_refusal(id) {
            Some(why) => Err(Refusal::Policy(why)),
            None => self.connect(&host, port, deadline),
        };
        let result = result.map(|(socket, addr)| {
            let _ = socket.set_write_timeout(Some(SEND_TIMEOUT));
            let stream = Stream {
                socket,
                target: target.clone(),
                broken: false,
            };
            self.streams.insert(id, stream);
            addr
        });
        log::debug!("egress: stream {id} is {target}");
        let record = self.stream_opens <= MAX_STREAMS_OPENED + 1;
        StreamReply::Opened {
            stream: id,
            outcome: self.settle(target, result, record),
        }
    }

    /// Why stream `id` may not open whatever its target, if it may not.
    fn stream_refusal(&self, id: StreamId) -> Option<String> {
        if self.stream_opens > MAX_STREAMS_OPENED {
            return Some(format!(
                "the task already asked for {MAX_STREAMS_OPENED} streams, the most one task may"
            ));
        }
        if self.over_relayed_cap() {
            return Some(relayed_cap_text());
        }
        if self.streams.contains_key(&id) {
            return Some(format!("stream {id} is already open"));
        }
        if self.streams.len() >= MAX_STREAMS_OPEN {
            return Some(format!(
                "the task has {MAX_STREAMS_OPEN} streams open, the most at once; close one first"
            ));
        }
        None
    }

    pub(super) fn stream_send(&mut self, id: StreamId, data: &[u8]) {
        let Some(stream) = self.streams.get_mut(&id) else {
            log::debug!("egress: a send on stream {id}, which is not open, is dropped");
            return;
        };
        if stream.broken {
            return;
        }
        self.sent = self
            .sent
            .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        if self.sent > MAX_RELAYED_BYTES {
            stream.break_off();
        } else if let Err(e) = stream.socket.write_all(data) {
            log::debug!("egress: stream {id} ({}): send: {e}", stream.target);
            stream.break_off();
        }
    }

    pub(super) fn stream_close(&mut self, id: StreamId) {
        match self.streams.remove(&id) {
            Some(stream) => {
                let _ = stream.socket.shutdown(Shutdown::Both);
            }
            None => log::debug!("egress: a close of stream {id}, which is not open, is ignored"),
        }
    }

    /// What arrived on any open stream, waiting at most `wait_ms` (and not
    /// past `deadline`, nor past a cancel) for the first byte.
    pub(super) fn stream_poll(
        &mut self,
        wait_ms: u32,
        deadline: Instant,
        cancelled: &dyn Fn() -> bool,
    ) -> StreamReply {
        let wait = Duration::from_millis(wait_ms.min(MAX_POLL_WAIT_MS).into());
        let give_up = (Instant::now() + wait).min(deadline);
        if self.over_relayed_cap() {
            log::warn!("egress: {}; every stream ends", relayed_cap_text());
            self.streams.values_mut().for_each(Stream::break_off);
        }
        let mut out = self.take_broken();
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            let stop = left.is_zero() || cancelled();
            let slice = if stop || !out.is_empty() {
                Duration::ZERO
            } else {
                left.min(POLL_SLICE)
            };
            let ready = self.ready(slice);
            self.read_ready(&ready, &mut out);
            if stop || !out.is_empty() {
                return StreamReply::Data(out);
            }
        }
    }

    /// Broken streams, reported ended and forgotten.
    fn take_broken(&mut self) -> Vec<StreamData> {
        let ids: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.broken)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.streams.remove(id);
        }
        ids.into_iter()
            .map(|stream| StreamData {
                stream,
                data: Vec::new(),
                end: true,
            })
            .collect()
    }

    /// The streams with something to read (bytes, their end or an error),
    /// waiting at most `wait`; with none open this only waits.
    fn ready(&self, wait: Duration) -> Vec<StreamId> {
        let timeout = Timespec {
            tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        let mut fds: Vec<PollFd<'_>> = self
            .streams
            .values()
            .map(|s| PollFd::new(&s.socket, PollFlags::IN))
            .collect();
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(Errno::INTR) => return Vec::new(),
            Ok(_) => {}
            Err(e) => {
                // Not expected on sockets we own; wait as asked, not in a spin.
                log::warn!("egress: poll over the streams failed: {e}");
                std::thread::sleep(wait);
                return Vec::new();
            }
        }
        self.streams
            .keys()
            .zip(&fds)
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Reads each of `ready` once, without blocking, its fair share of one
    /// answer's bytes; a stream at its end or broken is reported ended and
    /// forgotten.
    fn read_ready(&mut self, ready: &[StreamId], out: &mut Vec<StreamData>) {
        if ready.is_empty() {
            return;
        }
        let share = (MAX_CHUNK_BYTES / ready.len()).max(1);
        for &id in ready {
            let Some(stream) = self.streams.get(&id) else {
                continue;
            };
            let mut data = Vec::with_capacity(share);
            let end = match recv(
                &stream.socket,
                spare_capacity(&mut data),
                RecvFlags::DONTWAIT,
            ) {
                Ok((0, _)) => true,
                Ok((n, _)) => {
                    self.received = self
                        .received
                        .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                    data.shrink_to_fit();
                    false
                }
                Err(Errno::AGAIN | Errno::INTR) => continue,
                Err(e) => {
                    log::debug!("egress: stream {id} ({}): {e}", stream.target);
                    true
                }
            };
            if end {
                self.streams.remove(&id);
            }
            out.push(StreamData {
                stream: id,
                data,
                end,
            });
        }
    }

    fn over_relayed_cap(&self) -> bool {
        self.sent > MAX_RELAYED_BYTES || self.received > MAX_RELAYED_BYTES
    }
}

fn relayed_cap_text() -> String {
    format!("the task relayed more than {} MiB", MAX_RELAYED_BYTES >> 20)
}
