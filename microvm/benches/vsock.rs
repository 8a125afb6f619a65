//! vsock device throughput on one core.
//!
//! One thread, pinned to one CPU, plays all three parts: the guest driver
//! (rings laid out with virtio-queue's MockSplitQueue in a real
//! GuestMemoryMmap), the device (the real VsockHandler, stepped through its
//! epoll loop), and the host program (a real Unix socket through the hybrid
//! vsock listener). So the numbers are the cost of the whole device path per
//! packet, guest and host bookkeeping included, without thread hand-offs.
//!
//! `cargo bench -p vitrine-microvm --bench vsock` prints a table.
//! VSOCK_BENCH_SECS sets the time per row (default 2).

#[path = "../tests/virtio_driver/mod.rs"]
mod virtio_driver;

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use virtio_driver::vsock_guest::{header, send, GUEST_CID};
use virtio_driver::{activate_context, desc, guest_memory, TestQueue, F_NEXT};
use vitrine_microvm::devices::virtio::features::VERSION_1;
use vitrine_microvm::devices::virtio::vsock::packet::{
    PacketHeader, HEADER_SIZE, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW,
};
use vitrine_microvm::devices::virtio::vsock::{VsockHandler, VsockMuxer};
use vitrine_microvm::devices::virtio::worker::EventLoop;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const QUEUE: u16 = 128;
const GUEST_PORT: u32 = 52;
/// The guest's receive buffer, as Linux advertises by default.
const GUEST_BUF_ALLOC: u32 = 256 * 1024;

struct Row {
    direction: &'static str,
    payload: usize,
    packets: u64,
    bytes: u64,
    secs: f64,
}

/// The device with one established host-initiated connection.
struct Rig<'m> {
    mem: &'m GuestMemoryMmap,
    rx: TestQueue<'m>,
    tx: TestQueue<'m>,
    evts: Vec<EventFd>,
    ev: EventLoop<VsockHandler>,
    host: UnixStream,
    local_port: u32,
    rx_seen: u16,
    _dir: tempfile::TempDir,
}

impl<'m> Rig<'m> {
    fn new(mem: &'m GuestMemoryMmap, rx_buf: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        listener.set_nonblocking(true).unwrap();
        let rx = TestQueue::new(mem, 0, QUEUE);
        let tx = TestQueue::new(mem, 1, QUEUE);
        let evq = TestQueue::new(mem, 2, 16);
        let (ctx, evts, _irq) = activate_context(mem, &[&rx, &tx, &evq], VERSION_1);
        let muxer = VsockMuxer::new(GUEST_CID, uds.clone(), listener);
        let ev = EventLoop::new(VsockHandler::new(ctx, muxer).unwrap()).unwrap();
        for _ in 0..QUEUE {
            rx.add_buffers(&[(rx_buf, true)]);
        }
        let mut host = UnixStream::connect(&uds).unwrap();
        writeln!(host, "CONNECT {GUEST_PORT}").unwrap();
        let mut rig = Self {
            mem,
            rx,
            tx,
            evts,
            ev,
            host,
            local_port: 0,
            rx_seen: 0,
            _dir: dir,
        };
        rig.notify(0);
        let req = loop {
            rig.step();
            if let Some(h) = rig.next_rx() {
                assert_eq!(h.op, OP_REQUEST);
                break h;
            }
        };
        rig.local_port = req.src_port;
        let mut resp = header(OP_RESPONSE, GUEST_PORT, req.src_port);
        resp.buf_alloc = GUEST_BUF_ALLOC;
        send(&rig.tx, &resp, &[]);
        rig.notify(1);
        rig.step();
        let mut ok = vec![0u8; format!("OK {}\n", req.src_port).len()];
        rig.host.read_exact(&mut ok).unwrap();
        rig.host.set_nonblocking(true).unwrap();
        rig
    }

    fn notify(&self, q: usize) {
        self.evts[q].write(1).unwrap();
    }

    fn step(&mut self) {
        self.ev.run_once(Some(Duration::ZERO)).unwrap();
    }

    /// Takes the next used rx buffer (header only; a guest would hand the
    /// payload to a socket) and gives it straight back.
    fn next_rx(&mut self) -> Option<PacketHeader> {
        if self.rx.used_idx() == self.rx_seen {
            return None;
        }
        let (id, _) = self.rx.used_elem(self.rx_seen);
        self.rx_seen = self.rx_seen.wrapping_add(1);
        let head = u16::try_from(id).unwrap();
        let mut raw = [0u8; HEADER_SIZE];
        self.mem
            .read_slice(&mut raw, GuestAddress(self.rx.slot(head)))
            .unwrap();
        self.rx.make_available(head);
        Some(PacketHeader::from_bytes(&raw))
    }

    fn credit_update(&mut self, fwd_cnt: u32) {
        let mut u = header(OP_CREDIT_UPDATE, GUEST_PORT, self.local_port);
        u.buf_alloc = GUEST_BUF_ALLOC;
        u.fwd_cnt = fwd_cnt;
        send(&self.tx, &u, &[]);
        self.notify(1);
    }
}

fn host_to_guest(payload: usize, dur: Duration) -> Row {
    let mem = guest_memory();
    let rx_buf = u32::try_from(HEADER_SIZE + payload).unwrap();
    let mut rig = Rig::new(&mem, rx_buf);
    let chunk = vec![0x5au8; 64 * 1024];
    let (mut packets, mut bytes, mut acked) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < dur {
        loop {
            match rig.host.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("host write: {e}"),
            }
        }
        rig.step();
        let mut returned = false;
        while let Some(h) = rig.next_rx() {
            returned = true;
            if h.op == OP_RW {
                packets += 1;
                bytes += u64::from(h.len);
            }
        }
        if returned {
            rig.notify(0);
        }
        // Like Linux: tell the device about consumed bytes every half buffer.
        if bytes - acked >= u64::from(GUEST_BUF_ALLOC / 2) {
            acked = bytes;
            rig.credit_update(u32::try_from(bytes % (1 << 32)).unwrap());
        }
    }
    Row {
        direction: "host -> guest",
        payload,
        packets,
        bytes,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn guest_to_host(payload: usize, dur: Duration) -> Row {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, 4096 + 44);
    let len = u32::try_from(payload).unwrap();
    // The tx ring: fixed [header | payload] chains, reused as they come
    // back. Descriptors 0..2 carried the RESPONSE; start above them.
    let first = 2u16;
    let chains = (QUEUE - first) / 2;
    let fill = vec![0xa5u8; payload];
    for c in 0..chains {
        let d = first + 2 * c;
        rig.tx
            .vq
            .desc_table()
            .store(d, desc(rig.tx.slot(d), 44, F_NEXT, d + 1))
            .unwrap();
        rig.tx
            .vq
            .desc_table()
            .store(d + 1, desc(rig.tx.slot(d + 1), len, 0, 0))
            .unwrap();
        rig.tx.write(rig.tx.slot(d + 1), &fill);
        let mut h = header(OP_RW, GUEST_PORT, rig.local_port);
        h.len = len;
        h.buf_alloc = GUEST_BUF_ALLOC;
        rig.tx.write(rig.tx.slot(d), &h.to_bytes());
    }
    let mut free: Vec<u16> = (0..chains).map(|c| first + 2 * c).collect();
    let mut tx_seen = rig.tx.used_idx();
    // The device's credit, as its packets tell us.
    let (mut dev_buf_alloc, mut dev_fwd_cnt) = (256 * 1024u32, 0u32);
    let (mut sent, mut packets, mut received) = (0u32, 0u64, 0u64);
    let mut sink = vec![0u8; 1 << 20];
    let start = Instant::now();
    while start.elapsed() < dur {
        let mut queued = false;
        while let Some(&d) = free.last() {
            let in_flight = sent.wrapping_sub(dev_fwd_cnt);
            if in_flight.saturating_add(len) > dev_buf_alloc {
                break;
            }
            free.pop();
            rig.tx.make_available(d);
            sent = sent.wrapping_add(len);
            packets += 1;
            queued = true;
        }
        if queued {
            rig.notify(1);
        }
        rig.step();
        loop {
            match rig.host.read(&mut sink) {
                Ok(0) => panic!("device closed the connection"),
                Ok(n) => received += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("host read: {e}"),
            }
        }
        while tx_seen != rig.tx.used_idx() {
            let (id, _) = rig.tx.used_elem(tx_seen);
            tx_seen = tx_seen.wrapping_add(1);
            let id = u16::try_from(id).unwrap();
            if id >= first {
                free.push(id);
            }
        }
        let mut returned = false;
        while let Some(h) = rig.next_rx() {
            returned = true;
            dev_buf_alloc = h.buf_alloc;
            dev_fwd_cnt = h.fwd_cnt;
        }
        if returned {
            rig.notify(0);
        }
        // A full socket buffer in the device drains on the next step.
        rig.step();
    }
    Row {
        direction: "guest -> host",
        payload,
        packets,
        bytes: received,
        secs: start.elapsed().as_secs_f64(),
    }
}

/// Runs the benchmark on one CPU so "per core" means what it says.
fn pin_to_one_cpu() -> bool {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit inside the set it is given.
    unsafe { libc::CPU_SET(0, &mut set) };
    // SAFETY: pid 0 is this thread; `set` is a valid cpu_set_t of the size
    // passed, and outlives the call.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

fn main() {
    // `cargo test --benches` runs bench binaries with --bench absent; keep
    // that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("VSOCK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.2 } else { 2.0 });
    let dur = Duration::from_secs_f64(secs);
    let pinned = pin_to_one_cpu();

    let rows = [
        guest_to_host(64 * 1024, dur),
        host_to_guest(64 * 1024, dur),
        guest_to_host(64, dur),
        host_to_guest(64, dur),
    ];

    println!(
        "vsock device, one thread{} (guest rings + device + host Unix socket)",
        if pinned { " pinned to CPU 0" } else { "" }
    );
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>10}",
        "direction", "max payload", "avg payload", "packets/s", "MiB/s"
    );
    for r in rows {
        let payload = if r.payload >= 1024 {
            format!("{} KiB", r.payload / 1024)
        } else {
            format!("{} B", r.payload)
        };
        let avg = r.bytes as f64 / (r.packets.max(1)) as f64;
        println!(
            "{:<14} {:>12} {:>10.0} B {:>12.0} {:>10.1}",
            r.direction,
            payload,
            avg,
            r.packets as f64 / r.secs,
            r.bytes as f64 / r.secs / (1024.0 * 1024.0)
        );
    }
    println!(
        "(host -> guest packets carry what the host socket holds, up to the \
         guest buffer; a packet is one device read of the socket)"
    );
}
