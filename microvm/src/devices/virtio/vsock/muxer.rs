//! The host side of vsock: Firecracker's "hybrid vsock" over Unix sockets.
//!
//! - A host program connects to the listener at `uds_path`, writes
//!   `CONNECT <port>\n`, and, once the guest accepts, reads
//!   `OK <local port>\n`; after that the socket carries the stream.
//! - A guest connection to host port P is relayed to a connect on
//!   `<uds_path>_P`.
//!
//! The muxer owns every host fd and all per-connection buffers. A connection
//! is removed (fd closed, buffers freed, epoll entry dropped) on RST from
//! either side, on a protocol error, and when a close handshake times out, so
//! neither a vanished host program nor a guest that stops answering leaks
//! anything. Connection and handshake counts are capped.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virtio_queue::Writer;
use vmm_sys_util::epoll::EventSet;

use super::connection::{would_block, ConnError, ConnKey, ConnState, Connection};
use super::event_handler::VsockToken;
use super::packet::{
    check_guest_packet, PacketHeader, HEADER_LEN, HOST_CID, MAX_PAYLOAD, OP_CREDIT_REQUEST,
    OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV,
    SHUTDOWN_SEND, TYPE_STREAM,
};
use crate::devices::virtio::worker::Registry;

/// Open connections at most; a REQUEST past this gets RST.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host sockets still writing their CONNECT line, at most.
pub const MAX_HANDSHAKES: usize = 64;
/// Control packets waiting for rx buffers before the tx queue is paused.
pub const CONTROL_BACKLOG: usize = 256;
/// How long a host program has to send its CONNECT line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the guest has to answer a REQUEST, or to RST after a SHUTDOWN.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long data from a host that hung up may wait for guest credit.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after accept fails for lack of fds, so the listener does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const MAX_CONNECT_LINE: usize = 32;
const ACCEPTS_PER_EVENT: usize = 16;
/// Host-initiated connections take local ports from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A packet with no payload, built when an rx buffer is there to take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Control {
    key: ConnKey,
    op: u16,
    flags: u32,
}

#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuxerStats {
    pub host_connects: u64,
    pub guest_connects: u64,
    pub rsts_to_guest: u64,
    pub bad_packets: u64,
}

#[derive(Debug)]
pub struct VsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listener_paused_until: Option<Instant>,
    handshakes: HashMap<u32, Handshake>,
    conns: HashMap<ConnKey, Connection>,
    conn_ids: HashMap<u32, ConnKey>,
    control: VecDeque<Control>,
    data_ready: VecDeque<ConnKey>,
    next_id: u32,
    next_local_port: u32,
    stats: MuxerStats,
}

/// What the rx path put into a guest buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxPacket {
    /// A packet of this many bytes, header included.
    Written(u32),
    /// Nothing to send after all.
    Nothing,
}

impl VsockMuxer {
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> Self {
        Self {
            guest_cid,
            uds_path,
            listener,
            listener_paused_until: None,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            conn_ids: HashMap::new(),
            control: VecDeque::new(),
            data_ready: VecDeque::new(),
            next_id: 0,
            next_local_port: FIRST_LOCAL_PORT,
            stats: MuxerStats::default(),
        }
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn handshake_count(&self) -> usize {
        self.handshakes.len()
    }

    pub fn stats(&self) -> MuxerStats {
        self.stats
    }

    pub fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || !self.data_ready.is_empty()
    }

    /// Whether the tx queue should wait until the guest takes control
    /// packets: each guest packet can cause one, and they must not pile up
    /// while the guest withholds rx buffers.
    pub fn control_backlog_full(&self) -> bool {
        self.control.len() >= CONTROL_BACKLOG
    }

    // ---- host side -------------------------------------------------------

    /// Accepts new host connections; each must then send its CONNECT line.
    pub fn accept(&mut self, reg: &Registry<VsockToken>) {
        for _ in 0..ACCEPTS_PER_EVENT {
            match self.listener.accept() {
                Ok((stream, _)) => self.start_handshake(stream, reg),
                Err(e) if would_block(&e) => return,
                Err(e) => {
                    // Out of fds or similar: the listener stays readable, so
                    // take it out of epoll for a moment instead of spinning.
                    log::warn!("vsock: accept failed: {e}");
                    if reg.remove(self.listener.as_raw_fd()).is_ok() {
                        self.listener_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    }
                    return;
                }
            }
        }
    }

    fn start_handshake(&mut self, stream: UnixStream, reg: &Registry<VsockToken>) {
        if self.handshakes.len() >= MAX_HANDSHAKES {
            log::warn!("vsock: too many pending host connections; closing one");
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("vsock: cannot make host socket non-blocking: {e}");
            return;
        }
        let id = self.alloc_id();
        if let Err(e) = reg.add(stream.as_raw_fd(), VsockToken::Handshake(id), EventSet::IN) {
            log::warn!("vsock: {e}");
            return;
        }
        self.handshakes.insert(
            id,
            Handshake {
                stream,
                line: Vec::with_capacity(MAX_CONNECT_LINE),
                deadline: Instant::now() + HANDSHAKE_TIMEOUT,
            },
        );
    }

    /// Reads the CONNECT line byte by byte, so that stream data the host
    /// sends right behind it stays in the socket for the guest.
    pub fn handshake_readable(&mut self, id: u32, reg: &Registry<VsockToken>) {
        let Some(hs) = self.handshakes.get_mut(&id) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&hs.line),
                Ok(1) if hs.line.len() < MAX_CONNECT_LINE => hs.line.push(byte[0]),
                Err(e) if would_block(&e) => return,
                // EOF, error, or a line that is too long.
                _ => break None,
            }
        };
        let Some(hs) = self.handshakes.remove(&id) else {
            return;
        };
        let Some(peer_port) = port else {
            log::warn!("vsock: host sent a malformed CONNECT line");
            let _ = reg.remove(hs.stream.as_raw_fd());
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            log::warn!("vsock: connection limit reached; refusing host connect");
            let _ = reg.remove(hs.stream.as_raw_fd());
            return;
        }
        let local_port = self.alloc_local_port(peer_port);
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let conn_id = self.alloc_id();
        let mut conn = Connection::new(conn_id, key, hs.stream, ConnState::LocalInit);
        conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
        // Until the guest answers, only hang-ups matter.
        if let Err(e) = reg.modify(conn.fd(), VsockToken::Conn(conn_id), EventSet::empty()) {
            log::warn!("vsock: {e}");
            let _ = reg.remove(conn.fd());
            return;
        }
        conn.registered = Some(EventSet::empty());
        self.conn_ids.insert(conn_id, key);
        self.conns.insert(key, conn);
        self.stats.host_connects += 1;
        self.push_control(key, OP_REQUEST, 0);
    }

    /// Readiness on an established host socket.
    pub fn conn_event(&mut self, id: u32, events: EventSet, reg: &Registry<VsockToken>) {
        let Some(&key) = self.conn_ids.get(&id) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::ERROR) {
            self.reset(key, reg);
            return;
        }
        if events.contains(EventSet::HANG_UP) {
            self.host_hung_up(key, reg);
            return;
        }
        if events.contains(EventSet::IN) && !conn.in_data_ready {
            conn.in_data_ready = true;
            self.data_ready.push_back(key);
        }
        if events.contains(EventSet::OUT) {
            self.flush(key, reg);
        }
        self.sync_interest(key, reg);
    }

    fn host_hung_up(&mut self, key: ConnKey, reg: &Registry<VsockToken>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        // EPOLLHUP is reported whatever the interest, so the fd leaves epoll.
        let _ = reg.remove(conn.fd());
        conn.registered = None;
        conn.host_hup = true;
        conn.discard_to_host();
        match conn.state {
            ConnState::LocalInit => self.reset(key, reg),
            // The guest already closed and only waited for the flush.
            ConnState::Closing if conn.rst_after_flush => self.reset(key, reg),
            ConnState::Closing => {}
            ConnState::Established if conn.host_eof || conn.peer_shut_rcv => {
                conn.state = ConnState::Closing;
                conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                self.push_control(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
            }
            ConnState::Established => {
                // Bytes may still sit in the socket: read them out through
                // the data path, which sends SHUTDOWN at EOF.
                conn.deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                if !conn.in_data_ready {
                    conn.in_data_ready = true;
                    self.data_ready.push_back(key);
                }
            }
        }
    }

    fn flush(&mut self, key: ConnKey, reg: &Registry<VsockToken>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Err(e) = conn.flush_to_host() {
            log::debug!("vsock: {e}");
            self.reset(key, reg);
            return;
        }
        self.after_forward(key, reg);
    }

    /// After bytes went to the host: finish a close the guest asked for,
    /// pass on a half-close, or tell the guest it has credit again.
    fn after_forward(&mut self, key: ConnKey, reg: &Registry<VsockToken>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.has_buffered_to_host() {
            return;
        }
        if conn.rst_after_flush {
            self.reset(key, reg);
            return;
        }
        if conn.peer_shut_send {
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
        if conn.needs_credit_update() && !conn.credit_update_queued {
            conn.credit_update_queued = true;
            self.push_control(key, OP_CREDIT_UPDATE, 0);
        }
    }

    // ---- guest side ------------------------------------------------------

    /// Acts on one packet from the tx queue. `payload` holds at least
    /// `payload_present` readable bytes after the header.
    pub fn handle_guest_packet(
        &mut self,
        hdr: &PacketHeader,
        payload_present: u32,
        payload: &mut impl Read,
        scratch: &mut [u8],
        reg: &Registry<VsockToken>,
    ) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Err(e) = check_guest_packet(hdr, self.guest_cid, payload_present) {
            log::debug!("vsock: bad guest packet: {e}");
            self.stats.bad_packets += 1;
            if e.wants_rst() && hdr.op != OP_RST {
                self.reset(key, reg);
            }
            return;
        }
        match hdr.op {
            OP_REQUEST => return self.guest_connect(key, hdr, reg),
            OP_RST => return self.remove(key, reg),
            _ => {}
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.reset(key, reg);
            return;
        };
        let credit_returned = conn.update_peer_credit(hdr);
        match hdr.op {
            OP_RESPONSE => self.guest_accepted(key, reg),
            OP_RW => self.guest_data(key, hdr.len, payload, scratch, reg),
            OP_SHUTDOWN => self.guest_shutdown(key, hdr.flags, reg),
            OP_CREDIT_REQUEST if !conn.credit_update_queued => {
                conn.credit_update_queued = true;
                self.push_control(key, OP_CREDIT_UPDATE, 0);
            }
            // OP_CREDIT_UPDATE: the credit is already taken in above.
            _ => {}
        }
        if credit_returned {
            if let Some(conn) = self.conns.get_mut(&key) {
                // A hung-up host is out of epoll; wake its drain directly.
                if conn.host_hup && conn.can_send_data() && !conn.in_data_ready {
                    conn.in_data_ready = true;
                    self.data_ready.push_back(key);
                }
            }
        }
        self.sync_interest(key, reg);
    }

    fn guest_connect(&mut self, key: ConnKey, hdr: &PacketHeader, reg: &Registry<VsockToken>) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            log::debug!("vsock: refusing guest connect to {}", key.local_port);
            self.push_rst(key);
            return;
        }
        let path = port_path(&self.uds_path, key.local_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("vsock: guest connect to {}: {e}", path.display());
                self.push_rst(key);
                return;
            }
        };
        let id = self.alloc_id();
        let mut conn = Connection::new(id, key, stream, ConnState::Established);
        conn.update_peer_credit(hdr);
        let interest = conn.desired_interest();
        if let Err(e) = reg.add(conn.fd(), VsockToken::Conn(id), interest) {
            log::warn!("vsock: {e}");
            self.push_rst(key);
            return;
        }
        conn.registered = Some(interest);
        self.conn_ids.insert(id, key);
        self.conns.insert(key, conn);
        self.stats.guest_connects += 1;
        self.push_control(key, OP_RESPONSE, 0);
    }

    fn guest_accepted(&mut self, key: ConnKey, reg: &Registry<VsockToken>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state != ConnState::LocalInit {
            self.reset(key, reg);
            return;
        }
        conn.state = ConnState::Established;
        conn.deadline = None;
        // A fresh socket's send buffer is empty, so this short line fits;
        // if it does not, the host end is broken.
        let line = format!("OK {}\n", key.local_port);
        match conn.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {}
            _ => self.reset(key, reg),
        }
    }

    fn guest_data(
        &mut self,
        key: ConnKey,
        len: u32,
        payload: &mut impl Read,
        scratch: &mut [u8],
        reg: &Registry<VsockToken>,
    ) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state != ConnState::Established || conn.peer_shut_send {
            self.reset(key, reg);
            return;
        }
        if conn.host_hup {
            // Nobody will read it; the close is already under way.
            return;
        }
        let Some(buf) = scratch.get_mut(..len as usize) else {
            self.reset(key, reg);
            return;
        };
        if payload.read_exact(buf).is_err() {
            self.reset(key, reg);
            return;
        }
        match conn.push_from_guest(buf) {
            Ok(()) => self.after_forward(key, reg),
            Err(e @ ConnError::CreditOverrun { .. }) => {
                log::warn!("vsock: port {}: {e}", key.local_port);
                self.reset(key, reg);
            }
            Err(e) => {
                log::debug!("vsock: port {}: {e}", key.local_port);
                self.reset(key, reg);
            }
        }
    }

    fn guest_shutdown(&mut self, key: ConnKey, flags: u32, reg: &Registry<VsockToken>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.peer_shut_rcv |= flags & SHUTDOWN_RCV != 0;
        conn.peer_shut_send |= flags & SHUTDOWN_SEND != 0;
        if conn.peer_shut_rcv && conn.peer_shut_send {
            // The guest waits for our RST to finish its close (5.10.6.5).
            if conn.has_buffered_to_host() && !conn.host_hup {
                conn.rst_after_flush = true;
                conn.state = ConnState::Closing;
                conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            } else {
                self.reset(key, reg);
            }
        } else if conn.peer_shut_send && !conn.has_buffered_to_host() {
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
    }

    // ---- rx path ---------------------------------------------------------

    /// Fills one guest rx buffer (`capacity` device-writable bytes, at
    /// least a header) with the next packet: control packets first, then
    /// data from connections in turn.
    pub fn write_next_packet(
        &mut self,
        writer: &mut Writer,
        capacity: u32,
        scratch: &mut [u8],
        reg: &Registry<VsockToken>,
    ) -> RxPacket {
        loop {
            if let Some(c) = self.control.pop_front() {
                let hdr = self.control_header(c);
                if c.op == OP_RST {
                    self.stats.rsts_to_guest += 1;
                }
                return write_packet(writer, &hdr, &[]);
            }
            let Some(key) = self.data_ready.pop_front() else {
                return RxPacket::Nothing;
            };
            let guest_cid = self.guest_cid;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_data_ready = false;
            if !conn.can_send_data() {
                self.sync_interest(key, reg);
                continue;
            }
            let room = capacity.saturating_sub(HEADER_LEN);
            let max = room
                .min(conn.peer_free())
                .min(MAX_PAYLOAD)
                .min(u32::try_from(scratch.len()).unwrap_or(u32::MAX));
            if max == 0 {
                // A buffer that fits only a header: use it for credit news
                // and try this connection again with the next buffer.
                conn.in_data_ready = true;
                self.data_ready.push_front(key);
                let hdr = conn.header(guest_cid, OP_CREDIT_UPDATE, 0, 0);
                return write_packet(writer, &hdr, &[]);
            }
            match conn.stream.read(&mut scratch[..max as usize]) {
                Ok(0) => {
                    conn.host_eof = true;
                    if !conn.host_hup && peer_hung_up(&conn.stream) {
                        // Closed, not just half-closed: say both at once
                        // rather than SEND now and RCV when EPOLLHUP comes.
                        let _ = reg.remove(conn.fd());
                        conn.registered = None;
                        conn.host_hup = true;
                        conn.discard_to_host();
                    }
                    let mut flags = SHUTDOWN_SEND;
                    if conn.host_hup {
                        flags |= SHUTDOWN_RCV;
                        conn.state = ConnState::Closing;
                        conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                    }
                    let hdr = conn.header(guest_cid, OP_SHUTDOWN, 0, flags);
                    self.sync_interest(key, reg);
                    return write_packet(writer, &hdr, &[]);
                }
                Ok(n) => {
                    let n32 = u32::try_from(n).unwrap_or(max);
                    conn.record_sent(n32);
                    let hdr = conn.header(guest_cid, OP_RW, n32, 0);
                    if conn.peer_free() == 0 && !conn.credit_request_sent {
                        conn.credit_request_sent = true;
                        self.control.push_back(Control {
                            key,
                            op: OP_CREDIT_REQUEST,
                            flags: 0,
                        });
                    } else if conn.peer_free() > 0 {
                        conn.in_data_ready = true;
                        self.data_ready.push_back(key);
                    }
                    self.sync_interest(key, reg);
                    return write_packet(writer, &hdr, &scratch[..n]);
                }
                Err(e) if would_block(&e) => {
                    self.sync_interest(key, reg);
                }
                Err(e) => {
                    log::debug!("vsock: host read on port {}: {e}", key.local_port);
                    let hdr = conn.header(guest_cid, OP_RST, 0, 0);
                    self.remove(key, reg);
                    self.stats.rsts_to_guest += 1;
                    return write_packet(writer, &hdr, &[]);
                }
            }
        }
    }

    fn control_header(&mut self, c: Control) -> PacketHeader {
        match self.conns.get_mut(&c.key) {
            Some(conn) => {
                if c.op == OP_CREDIT_UPDATE {
                    conn.credit_update_queued = false;
                }
                conn.header(self.guest_cid, c.op, 0, c.flags)
            }
            // RST for a connection that is gone or never was.
            None => PacketHeader {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: c.key.local_port,
                dst_port: c.key.peer_port,
                type_: TYPE_STREAM,
                op: c.op,
                flags: c.flags,
                ..Default::default()
            },
        }
    }

    // ---- timers ----------------------------------------------------------

    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|c| c.deadline);
        let handshakes = self.handshakes.values().map(|h| h.deadline);
        conns
            .chain(handshakes)
            .chain(self.listener_paused_until)
            .min()
    }

    pub fn expire(&mut self, now: Instant, reg: &Registry<VsockToken>) {
        if self.listener_paused_until.is_some_and(|t| t <= now) {
            self.listener_paused_until = None;
            if let Err(e) = reg.add(
                self.listener.as_raw_fd(),
                VsockToken::Listener,
                EventSet::IN,
            ) {
                log::error!("vsock: cannot re-arm the listener: {e}");
            }
        }
        let stale: Vec<u32> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            if let Some(h) = self.handshakes.remove(&id) {
                log::debug!("vsock: host connection sent no CONNECT line in time");
                let _ = reg.remove(h.stream.as_raw_fd());
            }
        }
        let expired: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.deadline.is_some_and(|d| d <= now))
            .map(|c| c.key)
            .collect();
        for key in expired {
            log::debug!("vsock: port {} timed out; resetting", key.local_port);
            self.reset(key, reg);
        }
    }

    // ---- bookkeeping -----------------------------------------------------

    /// Sends RST for `key` and forgets the connection, if there is one.
    fn reset(&mut self, key: ConnKey, reg: &Registry<VsockToken>) {
        self.push_rst(key);
        self.remove(key, reg);
    }

    fn push_rst(&mut self, key: ConnKey) {
        self.push_control(key, OP_RST, 0);
    }

    fn push_control(&mut self, key: ConnKey, op: u16, flags: u32) {
        self.control.push_back(Control { key, op, flags });
    }

    /// Closes the host fd and frees the connection's buffers.
    fn remove(&mut self, key: ConnKey, reg: &Registry<VsockToken>) {
        if let Some(conn) = self.conns.remove(&key) {
            if conn.registered.is_some() {
                let _ = reg.remove(conn.fd());
            }
            if conn.in_data_ready {
                // A later connection may reuse the key; it must not inherit
                // a place in the queue.
                self.data_ready.retain(|k| *k != key);
            }
            self.conn_ids.remove(&conn.id);
        }
    }

    fn sync_interest(&mut self, key: ConnKey, reg: &Registry<VsockToken>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(current) = conn.registered else {
            return;
        };
        let want = conn.desired_interest();
        if want != current {
            match reg.modify(conn.fd(), VsockToken::Conn(conn.id), want) {
                Ok(()) => conn.registered = Some(want),
                Err(e) => log::warn!("vsock: {e}"),
            }
        }
    }

    fn alloc_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.conn_ids.contains_key(&id) && !self.handshakes.contains_key(&id) {
                return id;
            }
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return port;
            }
        }
    }
}

fn write_packet(writer: &mut Writer, hdr: &PacketHeader, payload: &[u8]) -> RxPacket {
    let mut hdr = *hdr;
    hdr.len = u32::try_from(payload.len()).unwrap_or(0);
    // The buffer was checked to be in guest memory and big enough.
    if writer.write_all(&hdr.to_bytes()).is_err() || writer.write_all(payload).is_err() {
        log::warn!("vsock: cannot write an rx packet into guest memory");
    }
    RxPacket::Written(u32::try_from(writer.bytes_written()).unwrap_or(0))
}

/// Whether the other end of a stream closed entirely (POLLHUP), as
/// opposed to shutting down only its write side.
fn peer_hung_up(stream: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for an fd this stream owns, the
    // count is 1, and a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLHUP != 0
}

/// `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// `<uds_path>_<port>`.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p = OsString::from(uds_path.as_os_str());
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects without blocking: a host listener with a full backlog gets
/// EAGAIN (and the guest an RST) instead of stalling the worker.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid, initialised sockaddr_un that outlives the
    // call, and `len` covers the family plus the NUL-terminated path, which
    // the length check above keeps inside `sun_path`.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_accepts_only_a_decimal_port() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT +1"), None);
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"\xffCONNECT 1"), None);
    }

    #[test]
    fn port_path_appends_underscore_and_port() {
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 52),
            PathBuf::from("/run/v.sock_52")
        );
    }

    #[test]
    fn hang_up_is_told_apart_from_half_close() {
        let (a, b) = UnixStream::pair().unwrap();

        b.shutdown(Shutdown::Write).unwrap();
        let after_half_close = peer_hung_up(&a);
        drop(b);

        assert!(!after_half_close);
        assert!(peer_hung_up(&a));
    }

    #[test]
    fn nonblocking_connect_reaches_a_listener_and_refuses_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        let listener = UnixListener::bind(&path).unwrap();

        let s = connect_nonblocking(&path).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        (&s).write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        peer.read_exact(&mut b).unwrap();

        assert_eq!(&b, b"x");
        assert!(connect_nonblocking(&dir.path().join("none")).is_err());
        let long = dir.path().join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
