//! The vsock worker: moves packets between the three virtqueues and the
//! muxer's host sockets.
//!
//! Queue 0 (rx) carries packets to the guest, queue 1 (tx) packets from it,
//! queue 2 (event) carries the transport reset a restored device owes the
//! driver, once there is a buffer for it. A tx chain that breaks the rules, or is too short for a
//! header, is returned with used length 0; an rx chain that does is
//! returned the same way and the packet waits for the next buffer.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::muxer::{RxPacket, VsockMuxer};
use super::packet::{PacketHeader, HEADER_LEN, HEADER_SIZE, MAX_PAYLOAD};
use crate::devices::virtio::chain::{self, CheckedChain};
use crate::devices::virtio::queue::{DeviceQueue, QueuePosition};
use crate::devices::virtio::worker::{EpollToken, EventHandler, Registry, WorkerError};
use crate::devices::virtio::{ActivateContext, ActivateError, VirtioInterrupt};

/// `struct virtio_vsock_event { le32 id; }` with id
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (virtio 1.2, 5.10.6.6).
pub const EVENT_TRANSPORT_RESET: u32 = 0;
const EVENT_LEN: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VsockToken {
    RxQueue,
    TxQueue,
    EventQueue,
    Listener,
    /// A host socket still sending its CONNECT line.
    Handshake(u32),
    /// A connection's host socket.
    Conn(u32),
}

impl EpollToken for VsockToken {
    fn to_raw(self) -> u64 {
        match self {
            VsockToken::RxQueue => 0,
            VsockToken::TxQueue => 1,
            VsockToken::EventQueue => 2,
            VsockToken::Listener => 3,
            VsockToken::Handshake(id) => 4 << 32 | u64::from(id),
            VsockToken::Conn(id) => 5 << 32 | u64::from(id),
        }
    }

    fn from_raw(raw: u64) -> Option<Self> {
        let id = u32::try_from(raw & 0xffff_ffff).ok()?;
        match (raw >> 32, raw) {
            (0, 0) => Some(VsockToken::RxQueue),
            (0, 1) => Some(VsockToken::TxQueue),
            (0, 2) => Some(VsockToken::EventQueue),
            (0, 3) => Some(VsockToken::Listener),
            (4, _) => Some(VsockToken::Handshake(id)),
            (5, _) => Some(VsockToken::Conn(id)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Packets put in the rx queue.
    pub rx_packets: u64,
    /// Packets taken from the tx queue and acted on.
    pub tx_packets: u64,
    /// Chains returned with used length 0 because they broke the rules.
    pub dropped_chains: u64,
    /// Transport reset events put in the event queue.
    pub transport_resets: u64,
}

#[derive(Debug)]
pub struct VsockHandler {
    mem: GuestMemoryMmap,
    rxq: DeviceQueue,
    txq: DeviceQueue,
    evq: DeviceQueue,
    irq: Arc<VirtioInterrupt>,
    muxer: VsockMuxer,
    scratch: Vec<u8>,
    tx_paused: bool,
    /// A transport reset waits for an event buffer.
    reset_pending: bool,
    stats: VsockStats,
}

impl VsockHandler {
    pub fn new(ctx: ActivateContext, muxer: VsockMuxer) -> Result<Self, ActivateError> {
        let ActivateContext {
            mem,
            queues,
            queue_evts,
            interrupt,
            ..
        } = ctx;
        let got = queues.len();
        if got != 3 || queue_evts.len() != 3 {
            return Err(ActivateError::QueueCount { expected: 3, got });
        }
        let mut qs = queues.into_iter().zip(queue_evts).zip(0u16..);
        let mut next = || {
            qs.next()
                .map(|((q, evt), i)| DeviceQueue::new(i, q, evt))
                .ok_or(ActivateError::QueueCount { expected: 3, got })
        };
        let (rxq, txq, evq) = (next()?, next()?, next()?);
        Ok(Self {
            mem,
            rxq,
            txq,
            evq,
            irq: interrupt,
            muxer,
            scratch: vec![0; MAX_PAYLOAD as usize],
            tx_paused: false,
            reset_pending: false,
            stats: VsockStats::default(),
        })
    }

    pub fn muxer(&self) -> &VsockMuxer {
        &self.muxer
    }

    pub fn stats(&self) -> VsockStats {
        self.stats
    }

    pub fn rx_queue(&self) -> &DeviceQueue {
        &self.rxq
    }

    pub fn tx_queue(&self) -> &DeviceQueue {
        &self.txq
    }

    /// Where the rx, tx and event queues stand, in queue order.
    pub fn queue_positions(&self) -> Vec<QueuePosition> {
        vec![
            self.rxq.position(),
            self.txq.position(),
            self.evq.position(),
        ]
    }

    /// Tells the driver that every connection it had is gone and the CID
    /// may have changed: now if it has posted an event buffer, else as
    /// soon as it posts one.
    pub fn reset_transport(&mut self) {
        self.reset_pending = true;
        self.process_events();
    }

    /// Delivers a pending transport reset into the next usable event
    /// buffer. A buffer too small for the event, or with device-readable
    /// parts, is returned empty and the next one is tried.
    pub fn process_events(&mut self) {
        let mut added = 0u32;
        let mut budget = usize::from(self.evq.size());
        while self.reset_pending && budget > 0 {
            budget -= 1;
            let chain = match self.evq.pop(&self.mem, &self.irq) {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            let head = chain.head_index();
            let usable = CheckedChain::check(&chain, &self.mem)
                .ok()
                .filter(|c| c.readable_len == 0 && c.writable_len >= EVENT_LEN);
            let written = usable.and_then(|_| {
                let mut w = chain::writer(chain, &self.mem).ok()?;
                std::io::Write::write_all(&mut w, &EVENT_TRANSPORT_RESET.to_le_bytes()).ok()
            });
            let len = match written {
                Some(()) => {
                    self.reset_pending = false;
                    self.stats.transport_resets += 1;
                    EVENT_LEN
                }
                None => {
                    log::warn!("vsock: dropped malformed event buffer {head}");
                    self.stats.dropped_chains += 1;
                    0
                }
            };
            if self.evq.add_used(&self.mem, &self.irq, head, len).is_err() {
                break;
            }
            added += 1;
        }
        if added > 0 {
            self.evq.notify(&self.mem, &self.irq);
        }
    }

    /// Delivers pending packets into the guest's rx buffers.
    pub fn process_rx(&mut self, reg: &Registry<VsockToken>) {
        let mut added = 0u32;
        let mut budget = 2 * usize::from(self.rxq.size());
        while self.muxer.has_rx_work() {
            if budget == 0 {
                self.rxq.requeue_notification();
                break;
            }
            budget -= 1;
            let chain = match self.rxq.pop(&self.mem, &self.irq) {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            let head = chain.head_index();
            let usable = CheckedChain::check(&chain, &self.mem)
                .ok()
                .filter(|c| c.readable_len == 0 && c.writable_len >= HEADER_LEN);
            let written = match usable.map(|c| (c, chain::writer(chain, &self.mem))) {
                Some((checked, Ok(mut writer))) => self.muxer.write_next_packet(
                    &mut writer,
                    checked.writable_len,
                    &mut self.scratch,
                    reg,
                ),
                _ => {
                    log::warn!("vsock: dropped malformed rx buffer {head}");
                    self.stats.dropped_chains += 1;
                    RxPacket::Written(0)
                }
            };
            match written {
                RxPacket::Written(len) => {
                    if len > 0 {
                        self.stats.rx_packets += 1;
                    }
                    if self.rxq.add_used(&self.mem, &self.irq, head, len).is_err() {
                        break;
                    }
                    added += 1;
                }
                RxPacket::Nothing => {
                    self.rxq.undo_pop();
                    break;
                }
            }
        }
        if added > 0 {
            self.rxq.notify(&self.mem, &self.irq);
        }
    }

    /// Takes packets from the guest's tx queue.
    pub fn process_tx(&mut self, reg: &Registry<VsockToken>) {
        let mut added = 0u32;
        let mut budget = 2 * usize::from(self.txq.size());
        self.tx_paused = false;
        loop {
            if self.muxer.control_backlog_full() {
                // Resumed from the rx side once the guest takes packets.
                self.tx_paused = true;
                break;
            }
            if budget == 0 {
                self.txq.requeue_notification();
                break;
            }
            budget -= 1;
            let chain = match self.txq.pop(&self.mem, &self.irq) {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            let head = chain.head_index();
            let checked = CheckedChain::check(&chain, &self.mem)
                .ok()
                .filter(|c| c.writable_len == 0 && c.readable_len >= HEADER_LEN);
            let mut raw = [0u8; HEADER_SIZE];
            let reader = checked.and_then(|c| {
                let mut r = chain::reader(chain, &self.mem).ok()?;
                std::io::Read::read_exact(&mut r, &mut raw).ok()?;
                Some((c, r))
            });
            match reader {
                Some((checked, mut reader)) => {
                    let hdr = PacketHeader::from_bytes(&raw);
                    self.muxer.handle_guest_packet(
                        &hdr,
                        checked.readable_len - HEADER_LEN,
                        &mut reader,
                        &mut self.scratch,
                        reg,
                    );
                    self.stats.tx_packets += 1;
                }
                _ => {
                    log::warn!("vsock: dropped malformed tx chain {head}");
                    self.stats.dropped_chains += 1;
                }
            }
            if self.txq.add_used(&self.mem, &self.irq, head, 0).is_err() {
                break;
            }
            added += 1;
        }
        if added > 0 {
            self.txq.notify(&self.mem, &self.irq);
        }
    }

    /// After any event: deliver what is pending, and resume a paused tx
    /// queue once the control backlog has room.
    fn pump(&mut self, reg: &Registry<VsockToken>) {
        self.process_rx(reg);
        if self.tx_paused && !self.muxer.control_backlog_full() {
            self.process_tx(reg);
            self.process_rx(reg);
        }
    }
}

impl EventHandler for VsockHandler {
    type Token = VsockToken;

    fn init(&mut self, reg: &Registry<VsockToken>) -> Result<(), WorkerError> {
        reg.add(
            self.rxq.evt().as_raw_fd(),
            VsockToken::RxQueue,
            EventSet::IN,
        )?;
        reg.add(
            self.txq.evt().as_raw_fd(),
            VsockToken::TxQueue,
            EventSet::IN,
        )?;
        reg.add(
            self.evq.evt().as_raw_fd(),
            VsockToken::EventQueue,
            EventSet::IN,
        )?;
        reg.add(
            self.muxer.listener().as_raw_fd(),
            VsockToken::Listener,
            EventSet::IN,
        )
    }

    fn handle_event(&mut self, token: VsockToken, events: EventSet, reg: &Registry<VsockToken>) {
        match token {
            VsockToken::RxQueue => self.rxq.consume_notification(),
            VsockToken::TxQueue => {
                self.txq.consume_notification();
                self.process_tx(reg);
            }
            VsockToken::EventQueue => {
                self.evq.consume_notification();
                self.process_events();
            }
            VsockToken::Listener => self.muxer.accept(reg),
            VsockToken::Handshake(id) => self.muxer.handshake_readable(id, reg),
            VsockToken::Conn(id) => self.muxer.conn_event(id, events, reg),
        }
        self.pump(reg);
    }

    fn next_deadline(&self) -> Option<std::time::Instant> {
        self.muxer.next_deadline()
    }

    fn handle_deadline(&mut self, now: std::time::Instant, reg: &Registry<VsockToken>) {
        self.muxer.expire(now, reg);
        self.pump(reg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_raw() {
        for t in [
            VsockToken::RxQueue,
            VsockToken::TxQueue,
            VsockToken::EventQueue,
            VsockToken::Listener,
            VsockToken::Handshake(0),
            VsockToken::Handshake(u32::MAX),
            VsockToken::Conn(7),
        ] {
            assert_eq!(VsockToken::from_raw(t.to_raw()), Some(t));
        }
        assert_eq!(VsockToken::from_raw(4), None);
        assert_eq!(VsockToken::from_raw(u64::MAX), None);
    }
}
