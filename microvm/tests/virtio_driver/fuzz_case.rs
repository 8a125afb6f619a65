//! Turns arbitrary bytes into what a hostile guest (and a careless host
//! program) can do to a device, runs it, and checks the device's promises.
//!
//! Shared by the property tests (`virtio_fuzz_gate.rs`, run in CI) and the
//! libFuzzer targets (`tests/fuzz`), so both exercise the same harness.
//! Missing input bytes read as zero, so every byte string is a valid case.
//!
//! Promises checked after every case:
//! - every chain the guest made available is returned exactly once;
//! - tx chains come back with used length 0; rx packets are well-formed
//!   (host to guest addressing, `len` matches the used length);
//! - a read-only disk is unchanged and no disk ever grows;
//! - the worker goes idle afterwards (no event keeps firing).

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use virtio_queue::desc::RawDescriptor;
use vitrine_microvm::devices::virtio::block::BlockHandler;
use vitrine_microvm::devices::virtio::features::VERSION_1;
use vitrine_microvm::devices::virtio::vsock::packet::{
    PacketHeader, HEADER_SIZE, HOST_CID, OP_REQUEST, TYPE_STREAM,
};
use vitrine_microvm::devices::virtio::vsock::{muxer, VsockHandler, VsockMuxer};
use vitrine_microvm::devices::virtio::worker::{EventHandler, EventLoop};

use super::vsock_guest::{RxReader, GUEST_CID};
use super::{activate_context, desc, guest_memory, TestQueue, F_NEXT, F_WRITE, MEM_SIZE};

/// Reads fuzz bytes front to back; past the end everything is zero.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn take(&mut self, n: usize) -> Vec<u8> {
        let k = n.min(self.data.len());
        let mut v = self.data[..k].to_vec();
        self.data = &self.data[k..];
        v.resize(n, 0);
        v
    }

    pub fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take(2).try_into().unwrap())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }

    /// True one time in eight: for the less likely branch of a choice.
    pub fn rare(&mut self) -> bool {
        let v = self.u8();
        // Zero padding past the input must take the common branch.
        v != 0 && v < 32
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A chain at table index `base`: either the well-formed layout
/// `[(len, writable)]` in the descriptors' own slots, or (when `hostile`)
/// descriptors with fuzzed addresses, lengths, flags and next indices.
fn chain(
    b: &mut Bytes,
    q: &TestQueue,
    base: u16,
    layout: &[(u32, bool)],
    hostile: bool,
) -> Vec<RawDescriptor> {
    let n = u16::try_from(layout.len()).unwrap();
    if !hostile {
        return (0..n)
            .map(|j| {
                let (len, write) = layout[usize::from(j)];
                let mut flags = if write { F_WRITE } else { 0 };
                if j + 1 < n {
                    flags |= F_NEXT;
                }
                desc(q.slot(base + j), len, flags, base + j + 1)
            })
            .collect();
    }
    let end = u64::try_from(MEM_SIZE).unwrap();
    (0..n)
        .map(|j| {
            let mode = b.u8();
            let len = match mode >> 4 {
                0..=10 => b.u32() % 0x11000,
                11 | 12 => 0,
                13 => b.u32(),
                14 => 44,
                _ => 16,
            };
            let addr = match mode & 7 {
                0..=2 => q.slot(base + j),
                3 => end.saturating_sub(u64::from(len / 2)),
                4 => b.u64(),
                5 => q.slot(base),
                // Free guest memory, away from rings and slots.
                6 => 0x10_0000,
                _ => end,
            };
            // All flag bits, indirect included; next may leave the queue.
            let flags = u16::from(b.u8() & 7);
            let next = u16::from(b.u8()) % (q.size + 16);
            desc(addr, len, flags, next)
        })
        .collect()
}

/// Runs the loop until nothing more happens; returns events handled in a
/// final window that should be quiet.
fn settle<H: EventHandler>(ev: &mut EventLoop<H>) -> u64 {
    let mut last = u64::MAX;
    for _ in 0..50 {
        // Sockets and eventfds are ready as soon as they are written.
        ev.run_once(Some(Duration::ZERO)).unwrap();
        if ev.events_handled() == last {
            break;
        }
        last = ev.events_handled();
    }
    let before = ev.events_handled();
    for _ in 0..3 {
        ev.run_once(Some(Duration::from_millis(1))).unwrap();
    }
    ev.events_handled() - before
}

/// Guest packets on the vsock tx queue, interleaved with host programs
/// connecting, writing and vanishing.
pub fn run_vsock_case(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mem = guest_memory();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port_listeners: Vec<UnixListener> = (5000..5002)
        .map(|p| {
            let l = UnixListener::bind(muxer::port_path(&uds, p)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let (rx, tx, evq) = (
        TestQueue::new(&mem, 0, 64),
        TestQueue::new(&mem, 1, 64),
        TestQueue::new(&mem, 2, 16),
    );
    let (ctx, evts, _irq) = activate_context(&mem, &[&rx, &tx, &evq], VERSION_1);
    let mux = VsockMuxer::new(GUEST_CID, uds.clone(), listener);
    let mut ev = EventLoop::new(VsockHandler::new(ctx, mux).unwrap()).unwrap();
    let reader = RxReader::new();
    reader.post(&rx, 24, 4096 + 44);
    evts[0].write(1).unwrap();
    let mut hosts: Vec<UnixStream> = Vec::new();
    let mut rx_checked = 0u16;

    // Connections the guest knows of: (host port, guest port).
    let mut known: Vec<(u32, u32)> = Vec::new();
    for i in 0..8u16 {
        if b.is_empty() {
            break;
        }
        let mut hdr = PacketHeader::from_bytes(&b.take(HEADER_SIZE).try_into().unwrap());
        let payload_len = if b.rare() {
            usize::from(b.u16() % 4096)
        } else {
            usize::from(b.u8() % 64)
        };
        let payload = b.take(payload_len);
        // Each field is right unless the input says to garble it, so most
        // packets get past the checks and reach the connection logic.
        if !b.rare() {
            hdr.src_cid = GUEST_CID;
            hdr.dst_cid = HOST_CID;
            hdr.type_ = TYPE_STREAM;
        }
        if !b.rare() {
            const OPS: [u16; 9] = [1, 5, 5, 5, 2, 4, 3, 6, 7];
            hdr.op = OPS[usize::from(b.u8()) % OPS.len()];
        }
        if !b.rare() {
            hdr.len = u32::try_from(payload.len()).unwrap();
        }
        if !b.rare() {
            hdr.buf_alloc = 64 * 1024;
            hdr.fwd_cnt = 0;
        }
        if !b.rare() {
            let pick = usize::from(b.u8());
            match known.get(pick % (known.len() + 1)) {
                Some(&(host, guest)) if hdr.op != OP_REQUEST => {
                    hdr.dst_port = host;
                    hdr.src_port = guest;
                }
                _ => {
                    hdr.dst_port = 5000 + u32::from(b.u8() % 2);
                    hdr.src_port = u32::from(b.u8() % 4);
                }
            }
        }
        if hdr.op == OP_REQUEST {
            known.push((hdr.dst_port, hdr.src_port));
        }
        let base = i * 4;
        let mut layout = vec![(u32::try_from(HEADER_SIZE).unwrap(), false)];
        if !payload.is_empty() {
            layout.push((u32::try_from(payload.len()).unwrap(), false));
        }
        let hostile = b.rare();
        let descs = chain(&mut b, &tx, base, &layout, hostile);
        tx.write(tx.slot(base), &hdr.to_bytes());
        tx.write(tx.slot(base + 1), &payload);
        tx.publish(&descs, base);
        evts[1].write(1).unwrap();

        // The host side of the same moment.
        match b.u8() % 5 {
            1 => {
                for h in &mut hosts {
                    let _ = h.write(&[0x33; 100]);
                }
            }
            2 => {
                hosts.pop();
            }
            3 => {
                if let Ok(mut s) = UnixStream::connect(&uds) {
                    s.set_nonblocking(true).unwrap();
                    let _ = writeln!(s, "CONNECT {}", b.u8() % 4);
                    hosts.push(s);
                }
            }
            4 => {
                // Give consumed rx buffers back, as a driver does.
                while reader.try_recv(&rx, Duration::ZERO).is_some() {}
                evts[0].write(1).unwrap();
            }
            _ => {}
        }
        settle(&mut ev);
        let from = rx_checked;
        rx_checked = check_rx_packets(&rx, rx_checked);
        learn_requests(&rx, from, rx_checked, &mut known);
        for l in &port_listeners {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).unwrap();
                hosts.push(s);
            }
        }
    }
    let busy = settle(&mut ev);
    check_rx_packets(&rx, rx_checked);

    assert_eq!(tx.used_idx(), tx.avail_idx(), "a tx chain was not returned");
    for k in 0..tx.used_idx() {
        assert_eq!(tx.used_elem(k).1, 0, "tx used length must be 0");
    }
    assert!(ev.handler().muxer().connection_count() <= muxer::MAX_CONNECTIONS);
    assert_eq!(busy, 0, "vsock worker keeps handling events while idle");
}

/// Remembers connections the host asked the guest for.
fn learn_requests(rx: &TestQueue, from: u16, to: u16, known: &mut Vec<(u32, u32)>) {
    let mut k = from;
    while k != to {
        let (id, len) = rx.used_elem(k);
        k = k.wrapping_add(1);
        if len < 44 {
            continue;
        }
        let raw = rx.read(rx.slot(u16::try_from(id).unwrap()), HEADER_SIZE);
        let h = PacketHeader::from_bytes(&raw.try_into().unwrap());
        if h.op == OP_REQUEST {
            known.push((h.src_port, h.dst_port));
        }
    }
}

/// Checks rx packets from used ring position `from` on, before the buffers
/// go back to the device; returns the next position to check.
fn check_rx_packets(rx: &TestQueue, from: u16) -> u16 {
    let to = rx.used_idx();
    let mut k = from;
    while k != to {
        let at = k;
        k = k.wrapping_add(1);
        let (id, len) = rx.used_elem(at);
        assert!(id < u32::from(rx.size));
        if len == 0 {
            continue;
        }
        assert!((44..=4096 + 44).contains(&len), "rx used length {len}");
        let head = u16::try_from(id).unwrap();
        let raw = rx.read(rx.slot(head), HEADER_SIZE);
        let h = PacketHeader::from_bytes(&raw.try_into().unwrap());
        assert_eq!(
            (h.src_cid, h.dst_cid, h.type_),
            (HOST_CID, GUEST_CID, TYPE_STREAM)
        );
        assert_eq!(h.len, len - 44);
        assert!((1..=7).contains(&h.op));
    }
    to
}

const DISK_SECTORS: u64 = 64;

/// A file that lives in memory (tmpfs), else an ordinary temporary file.
fn memory_file() -> std::fs::File {
    tempfile::tempfile_in("/dev/shm").unwrap_or_else(|_| tempfile::tempfile().unwrap())
}

/// Block requests, well-formed or not, against a read-only or writable disk.
pub fn run_blk_case(data: &[u8]) {
    let mut b = Bytes::new(data);
    let read_only = b.u8() & 1 == 0;
    // In memory: a flush request fsyncs the disk, and on a real filesystem
    // that waits for the journal, which after a large build stalled one
    // case for 26 s and failed the run as a slow unit. The device's logic,
    // not the host's disk, is what is fuzzed.
    let mut disk = memory_file();
    let image: Vec<u8> = (0..DISK_SECTORS * 512)
        .map(|i| u8::try_from(i % 253).unwrap())
        .collect();
    disk.write_all(&image).unwrap();
    let mem = guest_memory();
    let q = TestQueue::new(&mem, 0, 64);
    let (ctx, evts, _irq) = activate_context(&mem, &[&q], VERSION_1);
    let handler = BlockHandler::new(
        ctx,
        disk.try_clone().unwrap(),
        read_only,
        DISK_SECTORS,
        [0; 20],
    )
    .unwrap();
    let mut ev = EventLoop::new(handler).unwrap();

    for i in 0..4u16 {
        if b.is_empty() {
            break;
        }
        let mut request_type = b.u32();
        let mut sector = b.u64();
        if !b.rare() {
            request_type = [0, 0, 1, 1, 4, 8, 11, 13, 14][usize::from(b.u8() % 9)];
        }
        if !b.rare() {
            sector %= DISK_SECTORS + 8;
        }
        let data_in = request_type != 1;
        let mut layout = vec![(16u32, false)];
        for _ in 0..b.u8() % 4 {
            let len = if b.rare() {
                u32::from(b.u16())
            } else {
                512 * (1 + u32::from(b.u8() % 8))
            };
            // Data is device-writable for reads, readable for writes.
            layout.push((len, data_in != b.rare()));
        }
        if !b.rare() {
            layout.push((1, true));
        }
        let base = i * 8;
        let hostile = b.rare();
        let descs = chain(&mut b, &q, base, &layout, hostile);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&request_type.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        q.write(q.slot(base), &h);
        q.publish(&descs, base);
        evts[0].write(1).unwrap();
        settle(&mut ev);
    }
    let busy = settle(&mut ev);

    assert_eq!(q.used_idx(), q.avail_idx(), "a request was not returned");
    let mut after = Vec::new();
    disk.seek(SeekFrom::Start(0)).unwrap();
    disk.read_to_end(&mut after).unwrap();
    assert_eq!(after.len(), image.len(), "the disk changed size");
    if read_only {
        assert!(after == image, "a read-only disk was written");
    }
    assert_eq!(busy, 0, "blk worker keeps handling events while idle");
}
