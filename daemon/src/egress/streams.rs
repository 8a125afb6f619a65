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
            log::debug!("egress: stream {id} is {target}");
            let stream = Stream {
                socket,
                target: target.clone(),
                broken: false,
            };
            self.streams.insert(id, stream);
            addr
        });
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
        if self.over_relayed_cap() && !self.streams.is_empty() {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::net::TcpListener;
    use std::thread;

    use vitrine_policy::pattern::Endpoint;
    use vitrine_policy::profile::Egress;
    use vitrine_shim::protocol::{EgressReply, GuestMessage, HostMessage};

    use super::*;

    /// A tunnel whose profile names each of `ports` on 127.0.0.1 exactly.
    fn tunnel_to(ports: &[u16]) -> EgressTunnel {
        let list = ports
            .iter()
            .map(|p| Endpoint::parse(&format!("127.0.0.1:{p}")).unwrap())
            .collect();
        EgressTunnel::new("web", Egress::Allow(list))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    fn open(t: &mut EgressTunnel, stream: StreamId, port: u16) -> EgressReply {
        let msg = GuestMessage::StreamOpen {
            stream,
            host: "127.0.0.1".into(),
            port,
        };
        match t.handle(&msg, soon(), &|| false) {
            Some(HostMessage::Stream(StreamReply::Opened { stream: s, outcome })) => {
                assert_eq!(s, stream);
                outcome
            }
            other => panic!("not an Opened answer: {other:?}"),
        }
    }

    fn send(t: &mut EgressTunnel, stream: StreamId, data: &[u8]) {
        let msg = GuestMessage::StreamSend {
            stream,
            data: data.to_vec(),
        };
        assert_eq!(t.handle(&msg, soon(), &|| false), None);
    }

    fn poll_once(t: &mut EgressTunnel, wait_ms: u32) -> Vec<StreamData> {
        match t.handle(&GuestMessage::StreamPoll { wait_ms }, soon(), &|| false) {
            Some(HostMessage::Stream(StreamReply::Data(data))) => data,
            other => panic!("not a Data answer: {other:?}"),
        }
    }

    /// Polls until every stream in `streams` ended: each one's bytes, and
    /// how many times its end was reported.
    fn drain(t: &mut EgressTunnel, streams: &[StreamId]) -> BTreeMap<StreamId, (Vec<u8>, u32)> {
        let mut got: BTreeMap<StreamId, (Vec<u8>, u32)> = BTreeMap::new();
        let give_up = Instant::now() + Duration::from_secs(10);
        while streams.iter().any(|s| got.get(s).is_none_or(|g| g.1 == 0)) {
            assert!(Instant::now() < give_up, "streams did not end: {got:?}");
            for d in poll_once(t, 200) {
                let entry = got.entry(d.stream).or_default();
                entry.0.extend(d.data);
                entry.1 += u32::from(d.end);
            }
        }
        got
    }

    /// A server that answers one connection with the upper case of the
    /// `len` bytes it reads, then closes.
    fn shouting_server(len: usize) -> (u16, thread::JoinHandle<()>) {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = vec![0u8; len];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf.to_ascii_uppercase()).unwrap();
        });
        (port, handle)
    }

    #[test]
    fn two_streams_open_at_once_each_carry_their_own_servers_bytes() {
        let (port_a, server_a) = shouting_server(6);
        let (port_b, server_b) = shouting_server(7);
        let mut t = tunnel_to(&[port_a, port_b]);

        assert_eq!(open(&mut t, 1, port_a), EgressReply::Connected);
        assert_eq!(open(&mut t, 2, port_b), EgressReply::Connected);
        send(&mut t, 2, b"bravo-");
        send(&mut t, 1, b"alpha-");
        send(&mut t, 2, b"2");
        let got = drain(&mut t, &[1, 2]);

        server_a.join().unwrap();
        server_b.join().unwrap();
        assert_eq!(got[&1], (b"ALPHA-".to_vec(), 1));
        assert_eq!(got[&2], (b"BRAVO-2".to_vec(), 1));
        assert_eq!(t.relayed(), (13, 13));
        assert_eq!(t.records().len(), 2);
        assert!(t.records()[0]
            .outcome
            .starts_with("connected to 127.0.0.1:"));
    }

    #[test]
    fn a_poll_on_idle_streams_waits_about_its_wait_and_answers_nothing() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let mut t = tunnel_to(&[port]);
        assert_eq!(open(&mut t, 0, port), EgressReply::Connected);
        let _peer = server.accept().unwrap();

        let started = Instant::now();
        let got = poll_once(&mut t, 300);
        let waited = started.elapsed();

        assert_eq!(got, Vec::new());
        assert!(waited >= Duration::from_millis(290), "{waited:?}");
        assert!(waited < Duration::from_millis(900), "{waited:?}");
    }

    #[test]
    fn a_poll_with_no_stream_open_waits_its_wait_rather_than_spin() {
        let mut t = tunnel_to(&[]);

        let started = Instant::now();
        let got = poll_once(&mut t, 200);
        let waited = started.elapsed();

        assert_eq!(got, Vec::new());
        assert!(waited >= Duration::from_millis(190), "{waited:?}");
        assert!(waited < Duration::from_millis(600), "{waited:?}");
    }

    #[test]
    fn a_cancel_ends_a_waiting_poll_early() {
        let mut t = tunnel_to(&[]);
        let started = Instant::now();

        let answer = t.handle(&GuestMessage::StreamPoll { wait_ms: 1000 }, soon(), &|| {
            started.elapsed() > Duration::from_millis(50)
        });

        assert_eq!(
            answer,
            Some(HostMessage::Stream(StreamReply::Data(Vec::new())))
        );
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_streams_end_is_reported_once_and_then_it_is_forgotten() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let peer = thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            s.write_all(b"bye").unwrap();
        });
        let mut t = tunnel_to(&[port]);
        assert_eq!(open(&mut t, 9, port), EgressReply::Connected);
        peer.join().unwrap();

        let got = drain(&mut t, &[9]);
        let after = poll_once(&mut t, 50);
        send(&mut t, 9, b"late");

        assert_eq!(got[&9], (b"bye".to_vec(), 1));
        assert_eq!(after, Vec::new());
        assert_eq!(t.relayed(), (0, 3));
    }

    #[test]
    fn a_stream_to_a_host_outside_the_list_is_refused_and_nothing_connects() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let mut t = tunnel_to(&[port.wrapping_add(1)]);

        let reply = open(&mut t, 3, port);

        let EgressReply::Refused(why) = reply else {
            panic!("{reply:?}")
        };
        assert!(
            why.contains(&format!("127.0.0.1:{port} is not in profile `web`")),
            "{why}"
        );
        assert_eq!(t.records()[0].target, format!("127.0.0.1:{port}"));
        assert!(t.records()[0].outcome.starts_with("refused: "));
        server.set_nonblocking(true).unwrap();
        assert!(server.accept().is_err(), "nothing may have connected");
        assert_eq!(poll_once(&mut t, 0), Vec::new());
    }

    #[test]
    fn a_profile_without_egress_refuses_every_stream() {
        let mut t = EgressTunnel::new("document", Egress::None);

        let reply = open(&mut t, 0, 443);

        let EgressReply::Refused(why) = reply else {
            panic!("{reply:?}")
        };
        assert!(
            why.contains("profile `document` allows no network"),
            "{why}"
        );
        assert_eq!(t.records().len(), 1);
    }

    #[test]
    fn no_more_than_the_cap_of_streams_are_open_at_once() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let mut t = tunnel_to(&[port]);
        let cap = StreamId::try_from(MAX_STREAMS_OPEN).unwrap();
        for id in 0..cap {
            assert_eq!(
                open(&mut t, id, port),
                EgressReply::Connected,
                "stream {id}"
            );
        }

        let over = open(&mut t, cap, port);
        let close = GuestMessage::StreamClose { stream: 0 };
        assert_eq!(t.handle(&close, soon(), &|| false), None);
        let after_close = open(&mut t, cap, port);

        assert_eq!(
            over,
            EgressReply::Refused(
                "the task has 64 streams open, the most at once; close one first".into()
            )
        );
        assert_eq!(after_close, EgressReply::Connected);
    }

    #[test]
    fn no_more_than_the_cap_of_streams_are_asked_for_and_the_records_stop_growing() {
        let mut t = tunnel_to(&[]);
        let cap = StreamId::try_from(MAX_STREAMS_OPENED).unwrap();
        for id in 0..cap {
            let reply = open(&mut t, id % 8, 1);
            assert!(matches!(reply, EgressReply::Refused(_)), "{reply:?}");
        }

        let over = open(&mut t, 0, 1);
        let again = open(&mut t, 0, 1);

        let expected = "the task already asked for 512 streams, the most one task may";
        assert_eq!(over, EgressReply::Refused(expected.into()));
        assert_eq!(again, EgressReply::Refused(expected.into()));
        assert_eq!(t.records().len(), MAX_STREAMS_OPENED + 1);
        assert_eq!(
            t.records().last().unwrap().outcome,
            format!("refused: {expected}")
        );
    }

    #[test]
    fn a_stream_id_already_open_is_refused_and_the_open_one_keeps_working() {
        let (port, server) = shouting_server(2);
        let mut t = tunnel_to(&[port]);
        assert_eq!(open(&mut t, 5, port), EgressReply::Connected);

        let again = open(&mut t, 5, port);
        send(&mut t, 5, b"ok");
        let got = drain(&mut t, &[5]);

        server.join().unwrap();
        assert_eq!(
            again,
            EgressReply::Refused("stream 5 is already open".into())
        );
        assert_eq!(got[&5], (b"OK".to_vec(), 1));
        assert_eq!(t.records()[1].outcome, "refused: stream 5 is already open");
    }

    #[test]
    fn a_send_or_close_on_an_unknown_stream_is_ignored() {
        let mut t = tunnel_to(&[]);

        send(&mut t, 42, b"nobody");
        let close = t.handle(&GuestMessage::StreamClose { stream: 42 }, soon(), &|| false);

        assert_eq!(close, None);
        assert_eq!(t.relayed(), (0, 0));
        assert_eq!(poll_once(&mut t, 0), Vec::new());
    }

    #[test]
    fn streams_and_single_connections_count_against_their_own_caps() {
        let mut t = tunnel_to(&[]);
        for _ in 0..crate::egress::MAX_CONNECTIONS {
            let msg = GuestMessage::EgressOpen {
                host: "127.0.0.1".into(),
                port: 1,
            };
            t.handle(&msg, soon(), &|| false);
        }

        let reply = open(&mut t, 0, 1);

        let EgressReply::Refused(why) = reply else {
            panic!("{reply:?}")
        };
        assert!(why.contains("is not in profile `web`"), "{why}");
    }

    #[test]
    fn one_poll_carries_at_most_one_chunk_shared_between_busy_streams_and_loses_no_byte() {
        const SENT: usize = 3 * 1024 * 1024;
        let servers: Vec<_> = (0..2)
            .map(|_| {
                let server = TcpListener::bind("127.0.0.1:0").unwrap();
                let port = server.local_addr().unwrap().port();
                let peer = thread::spawn(move || {
                    let (mut s, _) = server.accept().unwrap();
                    s.write_all(&vec![b'x'; SENT]).unwrap();
                });
                (port, peer)
            })
            .collect();
        let ports: Vec<u16> = servers.iter().map(|(p, _)| *p).collect();
        let mut t = tunnel_to(&ports);
        assert_eq!(open(&mut t, 0, ports[0]), EgressReply::Connected);
        assert_eq!(open(&mut t, 1, ports[1]), EgressReply::Connected);
        // Room for more than a chunk to wait on the host's side.
        for stream in t.streams.values() {
            rustix::net::sockopt::set_socket_recv_buffer_size(&stream.socket, SENT).unwrap();
        }
        thread::sleep(Duration::from_millis(300));

        let first = poll_once(&mut t, 1000);
        let rest = drain(&mut t, &[0, 1]);

        let total: usize = first.iter().map(|d| d.data.len()).sum();
        assert!(total <= MAX_CHUNK_BYTES, "{total}");
        let share = MAX_CHUNK_BYTES / first.len();
        assert!(first.iter().all(|d| d.data.len() <= share), "{first:?}");
        for id in [0, 1] {
            let before: usize = first
                .iter()
                .filter(|d| d.stream == id)
                .map(|d| d.data.len())
                .sum();
            assert_eq!(before + rest[&id].0.len(), SENT, "stream {id}");
            assert_eq!(rest[&id].1, 1);
        }
        for (_, peer) in servers {
            peer.join().unwrap();
        }
    }
}
