//! One stream connection between a guest port and a host Unix socket, with
//! the credit accounting of virtio 1.2, 5.10.6.3.
//!
//! Guest to host: bytes the host socket cannot take at once wait in
//! `to_host`, never more than the `buf_alloc` we advertise; `fwd_cnt` counts
//! bytes handed to the host socket. A guest that sends past that credit is
//! reset, so the buffer is bounded by construction.
//! Host to guest: we send at most `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`
//! bytes, as the guest last told us.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::{PacketHeader, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};

/// The receive buffer we advertise to the guest, per connection.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;

/// Host port, guest port. Unique per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST queued for the guest, RESPONSE not yet seen.
    LocalInit,
    Established,
    /// One side is gone; waiting for the guest's RST or for the last bytes
    /// to reach the host before we send ours.
    Closing,
}

/// The guest sent more than the credit we gave it.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("guest overran its credit: {buffered} buffered + {incoming} > {CONN_BUF_SIZE}")]
    CreditOverrun { buffered: usize, incoming: usize },
    #[error("host socket write failed")]
    HostWrite(#[source] io::Error),
}

#[derive(Debug)]
pub struct Connection {
    pub id: u32,
    pub key: ConnKey,
    pub stream: UnixStream,
    pub state: ConnState,
    pub deadline: Option<Instant>,
    /// The epoll interest currently registered; `None` once the fd is out
    /// of epoll (host hung up).
    pub registered: Option<EventSet>,
    /// Queued in the muxer's list of connections to read from.
    pub in_data_ready: bool,
    /// The host shut its write side (read returned 0).
    pub host_eof: bool,
    /// The host closed the socket entirely (EPOLLHUP).
    pub host_hup: bool,
    pub peer_shut_rcv: bool,
    pub peer_shut_send: bool,
    /// The guest shut down both ways: send RST once `to_host` is flushed.
    pub rst_after_flush: bool,
    pub credit_update_queued: bool,
    pub credit_request_sent: bool,
    to_host: VecDeque<u8>,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
}

impl Connection {
    pub fn new(id: u32, key: ConnKey, stream: UnixStream, state: ConnState) -> Self {
        Self {
            id,
            key,
            stream,
            state,
            deadline: None,
            registered: None,
            in_data_ready: false,
            host_eof: false,
            host_hup: false,
            peer_shut_rcv: false,
            peer_shut_send: false,
            rst_after_flush: false,
            credit_update_queued: false,
            credit_request_sent: false,
            to_host: VecDeque::new(),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Bytes we may still send to the guest.
    pub fn peer_free(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Every guest packet carries its receive buffer size and how much of
    /// it has been consumed. Returns true when the guest went from no
    /// credit to some.
    pub fn update_peer_credit(&mut self, hdr: &PacketHeader) -> bool {
        let was_stalled = self.peer_free() == 0;
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        let free = self.peer_free() > 0;
        if free {
            self.credit_request_sent = false;
        }
        was_stalled && free
    }

    pub fn record_sent(&mut self, n: u32) {
        self.tx_cnt += Wrapping(n);
    }

    /// Whether host data may flow to the guest now.
    pub fn can_send_data(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && !self.peer_shut_rcv
            && self.peer_free() > 0
    }

    /// The epoll interest this connection wants.
    pub fn desired_interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.can_send_data() && !self.in_data_ready {
            e |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }

    pub fn has_buffered_to_host(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// Takes a payload from the guest: straight to the host socket when
    /// nothing is queued, the rest into the bounded buffer.
    pub fn push_from_guest(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let buffered = self.to_host.len();
        if buffered + data.len() > CONN_BUF_SIZE as usize {
            return Err(ConnError::CreditOverrun {
                buffered,
                incoming: data.len(),
            });
        }
        self.rx_cnt += Wrapping(len_u32(data.len()));
        let mut rest = data;
        if self.to_host.is_empty() {
            match self.stream.write(data) {
                Ok(n) => {
                    self.fwd_cnt += Wrapping(len_u32(n));
                    rest = &data[n..];
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(ConnError::HostWrite(e)),
            }
        }
        self.to_host.extend(rest);
        Ok(())
    }

    /// Writes what the host socket takes of the buffer.
    pub fn flush_to_host(&mut self) -> Result<(), ConnError> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(len_u32(n));
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(ConnError::HostWrite(e)),
            }
        }
        if self.to_host.is_empty() && self.to_host.capacity() > MAX_PAYLOAD as usize {
            // An idle connection should not pin a quarter MiB.
            self.to_host = VecDeque::new();
        }
        Ok(())
    }

    /// Whether the guest should hear about freed buffer space now: it has
    /// less than one full packet of credit left in its view, and we have
    /// forwarded bytes since we last told it.
    pub fn needs_credit_update(&self) -> bool {
        let unacked = (self.rx_cnt - self.last_fwd_cnt_sent).0;
        self.fwd_cnt != self.last_fwd_cnt_sent
            && CONN_BUF_SIZE.saturating_sub(unacked) < MAX_PAYLOAD
    }

    /// A header from the host side of this connection; it carries our
    /// current credit, so the guest's view is now up to date.
    pub fn header(&mut self, guest_cid: u64, op: u16, len: u32, flags: u32) -> PacketHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Drops bytes the host will never read (it hung up).
    pub fn discard_to_host(&mut self) {
        self.to_host = VecDeque::new();
    }
}

pub(crate) fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Lengths here are bounded by CONN_BUF_SIZE or MAX_PAYLOAD.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn conn() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let key = ConnKey {
            local_port: 52,
            peer_port: 1024,
        };
        (Connection::new(1, key, a, ConnState::Established), b)
    }

    fn credit(buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
        PacketHeader {
            buf_alloc,
            fwd_cnt,
            ..Default::default()
        }
    }

    #[test]
    fn peer_free_tracks_sent_and_forwarded_bytes() {
        let (mut c, _host) = conn();
        c.update_peer_credit(&credit(1000, 0));

        c.record_sent(600);
        assert_eq!(c.peer_free(), 400);

        c.update_peer_credit(&credit(1000, 500));
        assert_eq!(c.peer_free(), 900);
    }

    #[test]
    fn peer_free_survives_counter_wrap() {
        let (mut c, _host) = conn();
        c.record_sent(u32::MAX - 10);
        c.update_peer_credit(&credit(100, u32::MAX - 10));

        c.record_sent(50);

        assert_eq!(c.peer_free(), 50);
    }

    #[test]
    fn lying_fwd_cnt_ahead_of_sent_gives_no_credit() {
        let (mut c, _host) = conn();
        c.record_sent(10);

        c.update_peer_credit(&credit(1000, 5000));

        assert_eq!(c.peer_free(), 0);
    }

    #[test]
    fn guest_data_beyond_buffer_is_a_credit_overrun() {
        let (mut c, host) = conn();
        // Fill the host socket so nothing more goes straight through.
        let chunk = vec![0u8; 64 * 1024];
        while c.push_from_guest(&chunk).is_ok() {}
        let room = CONN_BUF_SIZE as usize - c.to_host.len();

        let err = c.push_from_guest(&vec![0; room + 1]).unwrap_err();
        c.push_from_guest(&vec![0; room]).unwrap();

        assert!(matches!(err, ConnError::CreditOverrun { .. }));
        assert_eq!(c.to_host.len(), CONN_BUF_SIZE as usize);
        drop(host);
    }

    #[test]
    fn buffered_bytes_reach_host_in_order_after_flush() {
        let (mut c, mut host) = conn();
        let big: Vec<u8> = (0..600_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let mut sent = 0;
        let mut got = Vec::new();
        while got.len() < big.len() {
            if sent < big.len() {
                let n = (big.len() - sent).min(64 * 1024);
                if c.push_from_guest(&big[sent..sent + n]).is_ok() {
                    sent += n;
                }
            }
            let mut buf = vec![0u8; 100_000];
            host.set_nonblocking(true).unwrap();
            if let Ok(n) = host.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            c.flush_to_host().unwrap();
        }

        assert_eq!(got, big);
        assert_eq!(c.fwd_cnt.0 as usize, big.len());
    }
}
