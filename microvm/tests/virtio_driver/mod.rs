//! The guest driver's side of virtio, for device tests: it programs the
//! virtio-mmio registers the way Linux's virtio_mmio driver does, and lays
//! out driver rings in a real `GuestMemoryMmap` with virtio-queue's
//! `MockSplitQueue`.
//!
//! `MockSplitQueue::create` places its used ring right after the first
//! `size` *bytes* of the avail ring (it adds an element count as a byte
//! count), so past 8 entries the two would overlap. Each `TestQueue`
//! therefore gives the device the mock's descriptor table and avail ring
//! but a used ring of its own, well clear of both.

#![allow(dead_code)]

pub mod fuzz_case;

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueState};
use vitrine_microvm::bus::BusDevice;
use vitrine_microvm::devices::virtio::{
    ActivateContext, MmioTransport, VirtioDevice, VirtioInterrupt,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const MEM_SIZE: usize = 64 << 20;
/// Per-descriptor buffer slot: a 64 KiB payload plus room for a header.
pub const SLOT: u64 = 0x11000;
/// VRING_DESC_F_* (virtio 1.2, 2.7.5).
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

pub const WAIT: Duration = Duration::from_secs(5);

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// A driver-side split virtqueue in guest memory.
pub struct TestQueue<'m> {
    pub mem: &'m GuestMemoryMmap,
    pub vq: MockSplitQueue<'m, GuestMemoryMmap>,
    pub used_addr: GuestAddress,
    pub size: u16,
    data_base: u64,
    next_desc: Cell<u16>,
}

impl<'m> TestQueue<'m> {
    /// Queue `index` of a device: rings at 64 KiB * (index + 1), buffers
    /// from 16 MiB + 12 MiB * index.
    pub fn new(mem: &'m GuestMemoryMmap, index: u64, size: u16) -> Self {
        let data_end = (16 << 20) + (12 << 20) * index + u64::from(size) * SLOT;
        assert!(
            data_end <= MEM_SIZE as u64,
            "queue buffers past guest memory"
        );
        let base = 0x1_0000 * (index + 1);
        Self {
            mem,
            vq: MockSplitQueue::create(mem, GuestAddress(base), size),
            used_addr: GuestAddress(base + 0x8000),
            size,
            data_base: (16 << 20) + (12 << 20) * index,
            next_desc: Cell::new(0),
        }
    }

    /// The queue as virtio-queue would see it after a driver set it up.
    pub fn state(&self) -> QueueState {
        QueueState {
            max_size: self.size,
            size: self.size,
            ready: true,
            desc_table: self.vq.desc_table_addr().0,
            avail_ring: self.vq.avail_addr().0,
            used_ring: self.used_addr.0,
            ..Default::default()
        }
    }

    /// The buffer that belongs to descriptor `d`.
    pub fn slot(&self, d: u16) -> u64 {
        self.data_base + u64::from(d) * SLOT
    }

    /// Writes raw descriptors at table index `first` onwards and makes
    /// each chain head among them available.
    pub fn publish(&self, descs: &[RawDescriptor], first: u16) {
        self.vq.add_desc_chains(descs, first).unwrap();
    }

    /// Adds one well-formed chain of `(len, device_writable)` buffers, each
    /// in its descriptor's slot. Returns the head index.
    pub fn add_buffers(&self, bufs: &[(u32, bool)]) -> u16 {
        let head = self.add_buffers_pending(bufs);
        self.make_available(head);
        head
    }

    /// Writes the chain's descriptors but does not make it available yet,
    /// so the caller can fill the buffers first.
    pub fn add_buffers_pending(&self, bufs: &[(u32, bool)]) -> u16 {
        let n = u16::try_from(bufs.len()).unwrap();
        let first = self.next_desc.get();
        let idx = |i: u16| (first + i) % self.size;
        let descs: Vec<RawDescriptor> = (0..n)
            .map(|i| {
                let (len, write) = bufs[usize::from(i)];
                let mut flags = if write { F_WRITE } else { 0 };
                if i + 1 < n {
                    flags |= F_NEXT;
                }
                desc(self.slot(idx(i)), len, flags, idx(i + 1))
            })
            .collect();
        for (i, d) in descs.iter().enumerate() {
            self.vq
                .desc_table()
                .store(idx(u16::try_from(i).unwrap()), *d)
                .unwrap();
        }
        self.next_desc.set(idx(n));
        first
    }

    /// Appends `head` to the avail ring.
    pub fn make_available(&self, head: u16) {
        let avail = self.vq.avail_addr().0;
        let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
        let entry = avail + 4 + 2 * u64::from(idx % self.size);
        self.mem.write_obj(head, GuestAddress(entry)).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
            .unwrap();
    }

    pub fn avail_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.vq.avail_addr().0 + 2))
            .unwrap()
    }

    pub fn set_avail_idx(&self, v: u16) {
        self.mem
            .write_obj(v, GuestAddress(self.vq.avail_addr().0 + 2))
            .unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.used_addr.0 + 2))
            .unwrap()
    }

    /// Used ring entry `i` (ring position, not head): (id, len).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used_addr.0 + 4 + 8 * u64::from(i % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// Waits until the used index reaches `target`.
    pub fn wait_used(&self, target: u16) -> bool {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if self.used_idx() == target {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// Builds what the transport would hand a device at DRIVER_OK, keeping a
/// duplicate of each queue eventfd so a test can notify by hand.
pub fn activate_context(
    mem: &GuestMemoryMmap,
    queues: &[&TestQueue],
    acked_features: u64,
) -> (ActivateContext, Vec<EventFd>, Arc<VirtioInterrupt>) {
    let irq = Arc::new(VirtioInterrupt::new().unwrap());
    let evts: Vec<EventFd> = queues
        .iter()
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues: queues
            .iter()
            .map(|q| Queue::try_from(q.state()).unwrap())
            .collect(),
        queue_evts: evts.iter().map(|e| e.try_clone().unwrap()).collect(),
        interrupt: irq.clone(),
        acked_features,
    };
    (ctx, evts, irq)
}

/// The guest driver, talking to a device through its virtio-mmio registers.
pub struct Driver {
    pub transport: MmioTransport,
}

impl Driver {
    pub fn new(mem: &GuestMemoryMmap, device: Arc<Mutex<dyn VirtioDevice>>) -> Self {
        Self {
            transport: MmioTransport::new(mem.clone(), device).unwrap(),
        }
    }

    pub fn read(&mut self, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write(&mut self, offset: u32, v: u32) {
        self.transport.write(u64::from(offset), &v.to_le_bytes());
    }

    pub fn status(&mut self) -> u32 {
        self.read(reg::VIRTIO_MMIO_STATUS)
    }

    /// Adds a status bit the way Linux does: read, OR, write back.
    pub fn add_status(&mut self, bit: u32) {
        let s = self.status();
        self.write(reg::VIRTIO_MMIO_STATUS, s | bit);
    }

    pub fn device_features(&mut self) -> u64 {
        self.write(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let lo = self.read(reg::VIRTIO_MMIO_DEVICE_FEATURES);
        self.write(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let hi = self.read(reg::VIRTIO_MMIO_DEVICE_FEATURES);
        u64::from(hi) << 32 | u64::from(lo)
    }

    pub fn write_driver_features(&mut self, f: u64) {
        self.write(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write(
            reg::VIRTIO_MMIO_DRIVER_FEATURES,
            u32::try_from(f & 0xffff_ffff).unwrap(),
        );
        self.write(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write(
            reg::VIRTIO_MMIO_DRIVER_FEATURES,
            u32::try_from(f >> 32).unwrap(),
        );
    }

    /// Reset, ACKNOWLEDGE, DRIVER, accept `features`, FEATURES_OK. Returns
    /// whether the device kept FEATURES_OK.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.write(reg::VIRTIO_MMIO_STATUS, 0);
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.add_status(VIRTIO_CONFIG_S_DRIVER);
        self.write_driver_features(features);
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        self.status() & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// Programs queue `index` with `size` entries at `q`'s rings and
    /// writes QueueReady. Returns what QueueReady reads back.
    pub fn setup_queue_sized(&mut self, index: u32, q: &TestQueue, size: u32) -> bool {
        let s = q.state();
        let split = |v: u64| {
            (
                u32::try_from(v & 0xffff_ffff).unwrap(),
                u32::try_from(v >> 32).unwrap(),
            )
        };
        self.write(reg::VIRTIO_MMIO_QUEUE_SEL, index);
        self.write(reg::VIRTIO_MMIO_QUEUE_NUM, size);
        for (lo_reg, hi_reg, v) in [
            (
                reg::VIRTIO_MMIO_QUEUE_DESC_LOW,
                reg::VIRTIO_MMIO_QUEUE_DESC_HIGH,
                s.desc_table,
            ),
            (
                reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                s.avail_ring,
            ),
            (
                reg::VIRTIO_MMIO_QUEUE_USED_LOW,
                reg::VIRTIO_MMIO_QUEUE_USED_HIGH,
                s.used_ring,
            ),
        ] {
            let (lo, hi) = split(v);
            self.write(lo_reg, lo);
            self.write(hi_reg, hi);
        }
        self.write(reg::VIRTIO_MMIO_QUEUE_READY, 1);
        self.read(reg::VIRTIO_MMIO_QUEUE_READY) == 1
    }

    pub fn setup_queue(&mut self, index: u32, q: &TestQueue) -> bool {
        self.setup_queue_sized(index, q, u32::from(q.size))
    }

    /// Full bring-up: negotiate every offered feature, set up `queues` in
    /// order, DRIVER_OK.
    pub fn start(&mut self, queues: &[&TestQueue]) {
        let f = self.device_features();
        assert!(self.negotiate(f), "device refused its own features");
        for (i, q) in queues.iter().enumerate() {
            assert!(self.setup_queue(u32::try_from(i).unwrap(), q));
        }
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    }

    pub fn notify(&mut self, index: u32) {
        self.write(reg::VIRTIO_MMIO_QUEUE_NOTIFY, index);
    }
}

/// The guest's end of vsock: packets in and out of the rx/tx rings.
pub mod vsock_guest {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    use vitrine_microvm::devices::virtio::vsock::packet::{
        PacketHeader, HEADER_SIZE, HOST_CID, TYPE_STREAM,
    };

    use super::{TestQueue, WAIT};

    pub const GUEST_CID: u64 = 3;
    /// What the guest advertises as its receive buffer unless a test says.
    pub const GUEST_BUF_ALLOC: u32 = 1 << 20;

    pub fn header(op: u16, guest_port: u32, host_port: u32) -> PacketHeader {
        PacketHeader {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: guest_port,
            dst_port: host_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: GUEST_BUF_ALLOC,
            ..Default::default()
        }
    }

    /// Queues one packet on tx as [header | payload] (payload omitted when
    /// empty). `hdr.len` is set from the payload.
    pub fn send(tx: &TestQueue, hdr: &PacketHeader, payload: &[u8]) -> u16 {
        let mut hdr = *hdr;
        hdr.len = u32::try_from(payload.len()).unwrap();
        send_raw(tx, &hdr, payload)
    }

    /// Like `send` but keeps `hdr.len` as given, for lying headers.
    pub fn send_raw(tx: &TestQueue, hdr: &PacketHeader, payload: &[u8]) -> u16 {
        let mut bufs = vec![(u32::try_from(HEADER_SIZE).unwrap(), false)];
        if !payload.is_empty() {
            bufs.push((u32::try_from(payload.len()).unwrap(), false));
        }
        // Fill the slots before the chain becomes available.
        let head = tx.add_buffers_pending(&bufs);
        tx.write(tx.slot(head), &hdr.to_bytes());
        if !payload.is_empty() {
            tx.write(tx.slot((head + 1) % tx.size), payload);
        }
        tx.make_available(head);
        head
    }

    /// Reads rx packets in order and gives each buffer back to the device.
    pub struct RxReader {
        next: Cell<u16>,
    }

    impl Default for RxReader {
        fn default() -> Self {
            Self::new()
        }
    }

    impl RxReader {
        pub fn new() -> Self {
            Self { next: Cell::new(0) }
        }

        /// Posts `n` single-descriptor buffers of `cap` bytes.
        pub fn post(&self, rx: &TestQueue, n: u16, cap: u32) {
            for _ in 0..n {
                rx.add_buffers(&[(cap, true)]);
            }
        }

        /// The next packet, or None if none comes within `wait`.
        pub fn try_recv(&self, rx: &TestQueue, wait: Duration) -> Option<(PacketHeader, Vec<u8>)> {
            let start = Instant::now();
            let i = self.next.get();
            while rx.used_idx() == i {
                if start.elapsed() > wait {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            self.next.set(i.wrapping_add(1));
            let (id, len) = rx.used_elem(i);
            let head = u16::try_from(id).unwrap();
            let at = rx.slot(head);
            let raw = rx.read(at, HEADER_SIZE);
            let hdr = PacketHeader::from_bytes(&raw.try_into().unwrap());
            let payload_len = usize::try_from(len).unwrap().saturating_sub(HEADER_SIZE);
            let payload = rx.read(at + HEADER_SIZE as u64, payload_len);
            assert_eq!(
                usize::try_from(hdr.len).unwrap(),
                payload_len,
                "used length disagrees with header"
            );
            rx.make_available(head);
            Some((hdr, payload))
        }

        pub fn recv(&self, rx: &TestQueue) -> (PacketHeader, Vec<u8>) {
            self.try_recv(rx, WAIT)
                .expect("no rx packet from the device")
        }
    }
}
