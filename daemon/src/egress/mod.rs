//! The host's end of a guest's egress tunnel: the only network a guest
//! gets. The guest names `host:port`; the profile's egress list decides;
//! the host resolves the name, connects, and relays bytes it never reads
//! (TLS ends inside the guest).
//!
//! A wildcard entry (`*:443`, `*.example.org:443`) reaches only public
//! addresses, so a link cannot turn the guest into a probe of the host's
//! loopback or LAN services (DNS rebinding included: the check is on the
//! resolved address). An entry that names the host exactly may reach it
//! wherever it is. Every connection, allowed or refused, is recorded for the
//! task's details.
//!
//! Two ways to use it: one connection at a time, each receive a request
//! (`EgressOpen`/`Send`/`Recv`/`Close`, the shim's own fetcher), and tunnel
//! streams, many at once and polled together (`Stream*`, a browser's
//! connections; [`streams`]).

mod streams;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use vitrine_policy::pattern::HostPattern;
use vitrine_policy::profile::Egress;
use vitrine_shim::protocol::{EgressReply, GuestMessage, HostMessage, StreamId, MAX_CHUNK_BYTES};

pub use streams::{MAX_STREAMS_OPEN, MAX_STREAMS_OPENED};

/// Longest wait for one TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for bytes on one `EgressRecv`.
const RECV_WAIT: Duration = Duration::from_secs(30);
/// How often a blocked receive looks for a cancel.
const RECV_SLICE: Duration = Duration::from_millis(200);
/// Most single connections (`EgressOpen`) one task may ask for: enough for
/// redirects, too few to scan with. Streams have caps of their own.
pub const MAX_CONNECTIONS: usize = 32;
/// Most bytes relayed each way in one task.
pub const MAX_RELAYED_BYTES: u64 = 512 * 1024 * 1024;

/// One connection the guest asked for, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRecord {
    /// `host:port` as the guest asked.
    pub target: String,
    /// `connected to ADDR`, `refused: …` or `failed: …`.
    pub outcome: String,
}

/// The egress tunnel of one task.
#[derive(Debug)]
pub struct EgressTunnel {
    profile: String,
    allow: Egress,
    conn: Option<Connection>,
    /// `EgressOpen`s asked for.
    opens: usize,
    streams: BTreeMap<StreamId, streams::Stream>,
    /// `StreamOpen`s asked for.
    stream_opens: usize,
    records: Vec<EgressRecord>,
    sent: u64,
    received: u64,
}

#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    target: String,
}

impl EgressTunnel {
    /// A tunnel that allows what `allow` (profile `profile`'s list) allows.
    pub fn new(profile: &str, allow: Egress) -> Self {
        Self {
            profile: profile.to_owned(),
            allow,
            conn: None,
            opens: 0,
            streams: BTreeMap::new(),
            stream_opens: 0,
            records: Vec::new(),
            sent: 0,
            received: 0,
        }
    }

    /// Connections asked for so far, single and streams. Past a cap, only
    /// the first refusal is recorded, so a guest cannot grow the list.
    pub fn records(&self) -> &[EgressRecord] {
        &self.records
    }

    /// Bytes relayed guest to network, and network to guest.
    pub fn relayed(&self) -> (u64, u64) {
        (self.sent, self.received)
    }

    /// Serves one egress or stream message from the guest; `Some` is the
    /// answer to send back: `HostMessage::Egress` or `HostMessage::Stream`.
    /// `cancelled` is polled while a receive or a poll waits.
    pub fn handle(
        &mut self,
        msg: &GuestMessage,
        deadline: Instant,
        cancelled: &dyn Fn() -> bool,
    ) -> Option<HostMessage> {
        match msg {
            GuestMessage::EgressOpen { host, port } => {
                Some(HostMessage::Egress(self.open(host, *port, deadline)))
            }
            GuestMessage::EgressSend { data } => {
                self.send(data);
                None
            }
            GuestMessage::EgressRecv { max } => {
                Some(HostMessage::Egress(self.recv(*max, deadline, cancelled)))
            }
            GuestMessage::EgressClose => {
                self.close();
                None
            }
            GuestMessage::StreamOpen { stream, host, port } => Some(HostMessage::Stream(
                self.stream_open(*stream, host, *port, deadline),
            )),
            GuestMessage::StreamSend { stream, data } => {
                self.stream_send(*stream, data);
                None
            }
            GuestMessage::StreamClose { stream } => {
                self.stream_close(*stream);
                None
            }
            GuestMessage::StreamPoll { wait_ms } => Some(HostMessage::Stream(
                self.stream_poll(*wait_ms, deadline, cancelled),
            )),
            _ => None,
        }
    }

    fn open(&mut self, host: &str, port: u16, deadline: Instant) -> EgressReply {
        self.close();
        self.opens = self.opens.saturating_add(1);
        let host = host.to_ascii_lowercase();
        let target = endpoint_text(&host, port);
        let result = if self.opens > MAX_CONNECTIONS {
            Err(Refusal::Policy(format!(
                "the task already asked for {MAX_CONNECTIONS} connections"
            )))
        } else {
            self.connect(&host, port, deadline)
        };
        let result = result.map(|(stream, addr)| {
            self.conn = Some(Connection {
                stream,
                target: target.clone(),
            });
            addr
        });
        let record = self.opens <= MAX_CONNECTIONS + 1;
        self.settle(target, result, record)
    }

    /// Logs what became of the connection to `target` asked for, records it
    /// when `record`, and turns it into the guest's answer.
    fn settle(
        &mut self,
        target: String,
        result: Result<SocketAddr, Refusal>,
        record: bool,
    ) -> EgressReply {
        let (reply, outcome) = match result {
            Ok(addr) => (EgressReply::Connected, format!("connected to {addr}")),
            Err(Refusal::Policy(why)) => {
                (EgressReply::Refused(why.clone()), format!("refused: {why}"))
            }
            Err(Refusal::Network(why)) => {
                (EgressReply::Failed(why.clone()), format!("failed: {why}"))
            }
        };
        match &reply {
            EgressReply::Connected => log::info!("egress: {target}: {outcome}"),
            _ if record => log::warn!("egress: {target}: {outcome}"),
            _ => log::debug!("egress: {target}: {outcome}"),
        }
        if record {
            self.records.push(EgressRecord { target, outcome });
        }
        reply
    }

    /// Applies the profile's egress list to `host:port` and connects.
    fn connect(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<(TcpStream, SocketAddr), Refusal> {
        let list = match &self.allow {
            Egress::None => {
                return Err(Refusal::Policy(format!(
                    "profile `{}` allows no network (egress = \"none\")",
                    self.profile
                )))
            }
            Egress::Allow(list) => list,
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let target = endpoint_text(host, port);
        let matching: Vec<_> = list
            .iter()
            .filter(|e| e.allows(host, port) || e.allows(bare, port))
            .collect();
        if matching.is_empty() {
            return Err(Refusal::Policy(format!(
                "{target} is not in profile `{}`'s egress list ({})",
                self.profile, self.allow
            )));
        }
        let named = matching
            .iter()
            .any(|e| matches!(e.host, HostPattern::Exact(_)));
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => (bare, port)
                .to_socket_addrs()
                .map_err(|e| Refusal::Network(format!("{host} does not resolve: {e}")))?
                .collect(),
        };
        let reachable: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| named || is_public(a.ip()))
            .collect();
        if reachable.is_empty() {
            let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            return Err(Refusal::Policy(format!(
                "{host} resolves only to local or private addresses ({}), which a wildcard \
                 egress entry does not reach; name {target} in the profile to allow it",
                shown.join(", ")
            )));
        }
        let mut last = String::new();
        for addr in reachable {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Refusal::Network("the task's time ran out".into()));
            }
            match TcpStream::connect_timeout(&addr, left.min(CONNECT_TIMEOUT)) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, addr));
                }
                Err(e) => last = format!("connecting to {addr} failed: {e}"),
            }
        }
        Err(Refusal::Network(last))
    }

    fn send(&mut self, data: &[u8]) {
        let Some(conn) = &mut self.conn else { return };
        self.sent = self
            .sent
            .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        let over = self.sent > MAX_RELAYED_BYTES;
        if over || conn.stream.write_all(data).is_err() {
            // The next receive reports the broken connection.
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
    }

    fn recv(&mut self, max: u32, deadline: Instant, cancelled: &dyn Fn() -> bool) -> EgressReply {
        let Some(conn) = &mut self.conn else {
            return EgressReply::Failed("no connection is open".into());
        };
        if self.received > MAX_RELAYED_BYTES || self.sent > MAX_RELAYED_BYTES {
            return EgressReply::Failed(format!(
                "the task relayed more than {} MiB",
                MAX_RELAYED_BYTES >> 20
            ));
        }
        let want = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_CHUNK_BYTES);
        let mut buf = vec![0u8; want];
        let give_up = (Instant::now() + RECV_WAIT).min(deadline);
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() || cancelled() {
                return EgressReply::Failed(format!(
                    "no data from {} for {} s",
                    conn.target,
                    RECV_WAIT.as_secs()
                ));
            }
            if conn
                .stream
                .set_read_timeout(Some(left.min(RECV_SLICE)))
                .is_err()
            {
                return EgressReply::Failed("the connection broke".into());
            }
            match conn.stream.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    self.received = self
                        .received
                        .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                    return EgressReply::Data(buf);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return EgressReply::Failed(format!("reading from {}: {e}", conn.target)),
            }
        }
    }

    fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
    }
}

enum Refusal {
    /// The policy says no.
    Policy(String),
    /// The policy says yes, the network says no.
    Network(String),
}

/// Whether `ip` is a globally routed unicast address: not loopback,
/// private, link-local, shared (CGNAT), documentation, benchmarking,
/// multicast, broadcast or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        || (first == 0x0064 && ip.segments()[1] == 0xff9b))
}

/// `host:port` as a URL writes it: an IPv6 address in brackets
/// (`[::1]:443`), whether or not the guest sent them.
fn endpoint_text(host: &str, port: u16) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use vitrine_policy::pattern::Endpoint;

    use super::*;

    fn allow(entries: &[&str]) -> Egress {
        Egress::Allow(
            entries
                .iter()
                .map(|e| Endpoint::parse(e).unwrap())
                .collect(),
        )
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    /// The tunnel's answer, which must be an `Egress` one.
    fn egress_reply(answer: Option<HostMessage>) -> EgressReply {
        match answer {
            Some(HostMessage::Egress(reply)) => reply,
            other => panic!("not an egress answer: {other:?}"),
        }
    }

    #[test]
    fn an_ipv6_target_is_written_in_brackets_in_the_refusal_and_the_record() {
        let mut tunnel = EgressTunnel::new("web", allow(&["*:443"]));

        let reply = egress_reply(tunnel.handle(
            &GuestMessage::EgressOpen {
                host: "::1".into(),
                port: 443,
            },
            soon(),
            &|| false,
        ));

        let EgressReply::Refused(why) = reply else {
            panic!("{reply:?}");
        };
        assert_eq!(
            why,
            "::1 resolves only to local or private addresses (::1), which a wildcard egress \
             entry does not reach; name [::1]:443 in the profile to allow it"
        );
        assert_eq!(tunnel.records()[0].target, "[::1]:443");
        assert_eq!(endpoint_text("[2001:db8::1]", 8443), "[2001:db8::1]:8443");
        assert_eq!(endpoint_text("example.org", 443), "example.org:443");
    }

    fn open(t: &mut EgressTunnel, host: &str, port: u16) -> EgressReply {
        let msg = GuestMessage::EgressOpen {
            host: host.into(),
            port,
        };
        egress_reply(t.handle(&msg, soon(), &|| false))
    }

    #[test]
    fn a_profile_without_egress_refuses_every_connection() {
        let mut t = EgressTunnel::new("document", Egress::None);
        let reply = open(&mut t, "example.org", 443);
        let EgressReply::Refused(why) = reply else {
            panic!("{reply:?}")
        };
        assert!(
            why.contains("profile `document` allows no network"),
            "{why}"
        );
        assert_eq!(t.records()[0].target, "example.org:443");
    }

    #[test]
    fn a_port_outside_the_list_is_refused_before_any_lookup() {
        let mut t = EgressTunnel::new("web", allow(&["*:443"]));
        let reply = open(&mut t, "no-such-host.invalid", 80);
        let EgressReply::Refused(why) = reply else {
            panic!("{reply:?}")
        };
        assert!(
            why.contains("no-such-host.invalid:80 is not in profile `web`"),
            "{why}"
        );
    }

    #[test]
    fn a_wildcard_entry_does_not_reach_loopback() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let mut t = EgressTunnel::new("web", allow(&[&format!("*:{port}")]));
        for host in ["localhost", "127.0.0.1"] {
            let reply = open(&mut t, host, port);
            let EgressReply::Refused(why) = reply else {
                panic!("{host}: {reply:?}")
            };
            assert!(why.contains("local or private addresses"), "{why}");
        }
        server.set_nonblocking(true).unwrap();
        assert!(server.accept().is_err(), "nothing may have connected");
    }

    #[test]
    fn a_named_host_is_reached_and_bytes_flow_both_ways() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase())).unwrap();
        });
        let mut t = EgressTunnel::new("web", allow(&[&format!("localhost:{port}")]));
        assert_eq!(open(&mut t, "LOCALHOST", port), EgressReply::Connected);
        let send = GuestMessage::EgressSend {
            data: b"hello".to_vec(),
        };
        assert_eq!(t.handle(&send, soon(), &|| false), None);
        let mut got = Vec::new();
        loop {
            let recv = GuestMessage::EgressRecv { max: 3 };
            match egress_reply(t.handle(&recv, soon(), &|| false)) {
                EgressReply::Data(d) if d.is_empty() => break,
                EgressReply::Data(d) => {
                    assert!(d.len() <= 3);
                    got.extend(d);
                }
                other => panic!("{other:?}"),
            }
        }
        echo.join().unwrap();
        assert_eq!(got, b"HELLO");
        assert_eq!(t.relayed(), (5, 5));
        assert!(t.records()[0]
            .outcome
            .starts_with("connected to 127.0.0.1:"));
    }

    #[test]
    fn single_connections_past_the_cap_are_refused_and_recorded_once() {
        let mut t = EgressTunnel::new("web", allow(&["*:443"]));
        for _ in 0..MAX_CONNECTIONS {
            open(&mut t, "example.org", 80);
        }

        let over = open(&mut t, "example.org", 443);
        let again = open(&mut t, "example.org", 443);

        let expected = "the task already asked for 32 connections";
        assert_eq!(over, EgressReply::Refused(expected.into()));
        assert_eq!(again, EgressReply::Refused(expected.into()));
        assert_eq!(t.records().len(), MAX_CONNECTIONS + 1);
    }

    #[test]
    fn a_closed_port_fails_with_the_reason() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut t = EgressTunnel::new("web", allow(&[&format!("127.0.0.1:{port}")]));
        let reply = open(&mut t, "127.0.0.1", port);
        let EgressReply::Failed(why) = reply else {
            panic!("{reply:?}")
        };
        assert!(why.contains("refused"), "{why}");
    }

    #[test]
    fn a_cancel_ends_a_waiting_receive() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let mut t = EgressTunnel::new("web", allow(&[&format!("127.0.0.1:{port}")]));
        assert_eq!(open(&mut t, "127.0.0.1", port), EgressReply::Connected);
        let _peer = server.accept().unwrap();
        let started = Instant::now();
        let recv = GuestMessage::EgressRecv { max: 10 };
        let reply = egress_reply(t.handle(&recv, soon(), &|| {
            started.elapsed() > Duration::from_millis(300)
        }));
        assert!(matches!(reply, EgressReply::Failed(_)), "{reply:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn receiving_without_a_connection_fails_cleanly() {
        let mut t = EgressTunnel::new("web", allow(&["*:443"]));
        let recv = GuestMessage::EgressRecv { max: 10 };
        assert_eq!(
            t.handle(&recv, soon(), &|| false),
            Some(HostMessage::Egress(EgressReply::Failed(
                "no connection is open".into()
            )))
        );
    }

    #[test]
    fn only_globally_routed_addresses_are_public() {
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
