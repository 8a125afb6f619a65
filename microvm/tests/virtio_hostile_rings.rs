//! What a hostile guest can do to the rings, against all three devices.
//!
//! Each test lays out the driver side in a real `GuestMemoryMmap`, runs the
//! device behind the virtio-mmio transport on its worker thread, and checks
//! the outcome on the used ring and in guest memory: either a spec error
//! (IOERR/UNSUPP status, RST, DEVICE_NEEDS_RESET) or a dropped request
//! (used length 0, nothing written). Every test ends by showing the device
//! still serves a good request (or stays stopped after NEEDS_RESET), and
//! every wait has a timeout, so a panic or a hang fails the test. The
//! no-spin tests drive the worker's event loop by hand and count events.

mod virtio_driver;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
use virtio_bindings::virtio_mmio as reg;
use virtio_driver::vsock_guest::{header, send, send_raw, RxReader, GUEST_CID};
use virtio_driver::{
    activate_context, desc, guest_memory, Driver, TestQueue, F_INDIRECT, F_NEXT, F_WRITE, MEM_SIZE,
    WAIT,
};
use vitrine_microvm::devices::virtio::block::BlockDevice;
use vitrine_microvm::devices::virtio::features::VERSION_1;
use vitrine_microvm::devices::virtio::rng::{RngDevice, RngHandler, MAX_BYTES_PER_REQUEST};
use vitrine_microvm::devices::virtio::vsock::packet::{
    PacketHeader, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, TYPE_STREAM,
};
use vitrine_microvm::devices::virtio::vsock::{VsockDevice, VsockHandler, VsockMuxer};
use vitrine_microvm::devices::virtio::worker::EventLoop;
use vitrine_microvm::devices::virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const FILL: u8 = 0xaa;
/// Descriptor indices hostile chains use; well-formed ones start at 0.
const H: u16 = 64;

// ---- harnesses -------------------------------------------------------------

fn rng_vm(mem: &GuestMemoryMmap, size: u16) -> (Driver, TestQueue<'_>) {
    let mut d = Driver::new(mem, Arc::new(Mutex::new(RngDevice::new())));
    let q = TestQueue::new(mem, 0, size);
    d.start(&[&q]);
    (d, q)
}

/// Rng still answers: a 16-byte request comes back full.
fn rng_still_serves(d: &mut Driver, q: &TestQueue) {
    let before = q.used_idx();
    let head = q.add_buffers(&[(16, true)]);
    d.notify(0);
    assert!(
        q.wait_used(before.wrapping_add(1)),
        "device stopped serving"
    );
    assert_eq!(q.used_elem(before), (u32::from(head), 16));
}

/// Publishes `descs` at index `H` and returns the used entry for it.
fn submit(
    d: &mut Driver,
    q: &TestQueue,
    descs: &[virtio_queue::desc::RawDescriptor],
) -> (u32, u32) {
    let before = q.used_idx();
    q.publish(descs, H);
    d.notify(0);
    assert!(q.wait_used(before.wrapping_add(1)), "no used entry: hang?");
    q.used_elem(before)
}

const SECTORS: u64 = 64;

/// A disk whose sector i is filled with byte i.
fn disk_file() -> File {
    let mut f = tempfile::tempfile().unwrap();
    for i in 0..SECTORS {
        f.write_all(&[u8::try_from(i).unwrap(); 512]).unwrap();
    }
    f
}

fn blk_vm(mem: &GuestMemoryMmap, read_only: bool) -> (Driver, TestQueue<'_>, File) {
    let file = disk_file();
    let dev = BlockDevice::new(file.try_clone().unwrap(), read_only).unwrap();
    let mut d = Driver::new(mem, Arc::new(Mutex::new(dev)));
    let q = TestQueue::new(mem, 0, 256);
    d.start(&[&q]);
    (d, q, file)
}

fn blk_header(q: &TestQueue, at: u64, request_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&request_type.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    q.write(at, &h);
}

/// A well-formed IN of one sector still works.
fn blk_still_serves(d: &mut Driver, q: &TestQueue) {
    let before = q.used_idx();
    let head = q.add_buffers_pending(&[(16, false), (512, true), (1, true)]);
    blk_header(q, q.slot(head), VIRTIO_BLK_T_IN, 3);
    q.make_available(head);
    d.notify(0);
    assert!(
        q.wait_used(before.wrapping_add(1)),
        "device stopped serving"
    );
    assert_eq!(q.used_elem(before), (u32::from(head), 513));
    assert_eq!(q.read(q.slot(head + 1), 512), vec![3u8; 512]);
    assert_eq!(q.read(q.slot(head + 2), 1), vec![0]);
}

struct VsockVm<'m> {
    d: Driver,
    rx: TestQueue<'m>,
    tx: TestQueue<'m>,
    _ev: TestQueue<'m>,
    reader: RxReader,
    uds: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl<'m> VsockVm<'m> {
    fn start(mem: &'m GuestMemoryMmap, rx_buffers: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = VsockDevice::new(GUEST_CID, &uds).unwrap();
        let mut d = Driver::new(mem, Arc::new(Mutex::new(dev)));
        let rx = TestQueue::new(mem, 0, 128);
        let tx = TestQueue::new(mem, 1, 128);
        let ev = TestQueue::new(mem, 2, 16);
        d.start(&[&rx, &tx, &ev]);
        let reader = RxReader::new();
        reader.post(&rx, rx_buffers, 4096 + 44);
        d.notify(0);
        Self {
            d,
            rx,
            tx,
            _ev: ev,
            reader,
            uds,
            _dir: dir,
        }
    }

    fn send(&mut self, hdr: &PacketHeader, payload: &[u8]) {
        send(&self.tx, hdr, payload);
        self.d.notify(1);
    }

    /// Publishes raw tx descriptors at index `H` and waits for the device
    /// to return them; returns the used entry.
    fn submit_tx(&mut self, descs: &[virtio_queue::desc::RawDescriptor]) -> (u32, u32) {
        let before = self.tx.used_idx();
        self.tx.publish(descs, H);
        self.d.notify(1);
        assert!(
            self.tx.wait_used(before.wrapping_add(1)),
            "no used entry: hang?"
        );
        self.tx.used_elem(before)
    }

    fn recv(&mut self) -> Option<PacketHeader> {
        let p = self.reader.try_recv(&self.rx, Duration::from_millis(300));
        self.d.notify(0);
        p.map(|(h, _)| h)
    }

    /// The device still answers: a REQUEST to a port nobody serves gets RST.
    fn still_serves(&mut self) {
        self.send(&header(OP_REQUEST, 777, 9999), &[]);
        let h = self.recv().expect("device stopped serving");
        assert_eq!((h.op, h.dst_port), (OP_RST, 777));
    }

    fn establish(&mut self, port: u32) -> (UnixStream, u32) {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        let req = self.recv().expect("no REQUEST");
        self.send(&header(OP_RESPONSE, port, req.src_port), &[]);
        let mut ok = vec![0u8; format!("OK {}\n", req.src_port).len()];
        s.read_exact(&mut ok).unwrap();
        (s, req.src_port)
    }
}

fn host_sees_eof(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

fn needs_reset(d: &mut Driver) -> bool {
    d.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
}

// ---- descriptor loops -------------------------------------------------------

#[test]
fn rng_descriptor_loop_is_dropped() {
    let mem = guest_memory();
    let (mut d, q) = rng_vm(&mem, 256);
    let buf = q.slot(H);
    q.write(buf, &[FILL; 32]);

    let two = submit(
        &mut d,
        &q,
        &[
            desc(buf, 16, F_WRITE | F_NEXT, H + 1),
            desc(buf + 16, 16, F_WRITE | F_NEXT, H),
        ],
    );
    let own = submit(&mut d, &q, &[desc(buf, 16, F_WRITE | F_NEXT, H)]);

    assert_eq!(two, (u32::from(H), 0));
    assert_eq!(own, (u32::from(H), 0));
    assert_eq!(q.read(buf, 32), vec![FILL; 32]);
    rng_still_serves(&mut d, &q);
}

#[test]
fn blk_descriptor_loop_is_dropped_without_status() {
    let mem = guest_memory();
    let (mut d, q, _f) = blk_vm(&mem, true);
    let base = q.slot(H);
    blk_header(&q, base, VIRTIO_BLK_T_IN, 0);
    q.write(base + 0x1000, &[FILL; 513]);

    let used = submit(
        &mut d,
        &q,
        &[
            desc(base, 16, F_NEXT, H + 1),
            desc(base + 0x1000, 512, F_WRITE | F_NEXT, H + 2),
            desc(base + 0x1200, 1, F_WRITE | F_NEXT, H),
        ],
    );

    assert_eq!(used, (u32::from(H), 0));
    assert_eq!(q.read(base + 0x1000, 513), vec![FILL; 513]);
    blk_still_serves(&mut d, &q);
}

#[test]
fn vsock_tx_descriptor_loop_is_dropped() {
    let mem = guest_memory();
    let mut vm = VsockVm::start(&mem, 8);
    let at = vm.tx.slot(H);
    vm.tx.write(at, &header(OP_REQUEST, 1, 2).to_bytes());

    let used = vm.submit_tx(&[desc(at, 44, F_NEXT, H + 1), desc(at, 44, F_NEXT, H)]);

    assert_eq!(used, (u32::from(H), 0));
    assert!(vm.recv().is_none(), "a looping chain was acted on");
    vm.still_serves();
}

// ---- addresses outside guest memory -----------------------------------------

#[test]
fn rng_buffer_outside_memory_is_dropped() {
    let mem = guest_memory();
    let (mut d, q) = rng_vm(&mem, 256);
    let end = u64::try_from(MEM_SIZE).unwrap();

    let straddle = submit(&mut d, &q, &[desc(end - 8, 64, F_WRITE, 0)]);
    let wrap = submit(&mut d, &q, &[desc(u64::MAX - 15, 32, F_WRITE, 0)]);
    let beyond = submit(&mut d, &q, &[desc(1 << 40, 16, F_WRITE, 0)]);

    for used in [straddle, wrap, beyond] {
        assert_eq!(used, (u32::from(H), 0));
    }
    rng_still_serves(&mut d, &q);
}

#[test]
fn blk_data_buffer_outside_memory_is_dropped() {
    let mem = guest_memory();
    let (mut d, q, _f) = blk_vm(&mem, true);
    let base = q.slot(H);
    blk_header(&q, base, VIRTIO_BLK_T_IN, 0);
    q.write(base + 0x1000, &[FILL]);
    let end = u64::try_from(MEM_SIZE).unwrap();

    let used = submit(
        &mut d,
        &q,
        &[
            desc(base, 16, F_NEXT, H + 1),
            desc(end - 256, 512, F_WRITE | F_NEXT, H + 2),
            desc(base + 0x1000, 1, F_WRITE, 0),
        ],
    );

    assert_eq!(used, (u32::from(H), 0));
    assert_eq!(q.read(base + 0x1000, 1), vec![FILL]);
    blk_still_serves(&mut d, &q);
}

#[test]
fn vsock_tx_header_outside_memory_is_dropped() {
    let mem = guest_memory();
    let mut vm = VsockVm::start(&mem, 8);
    let end = u64::try_from(MEM_SIZE).unwrap();

    let used = vm.submit_tx(&[desc(end - 20, 44, 0, 0)]);

    assert_eq!(used, (u32::from(H), 0));
    vm.still_serves();
}

#[test]
fn vsock_rx_buffer_outside_memory_is_skipped_and_packet_kept() {
    let mem = guest_memory();
    let mut vm = VsockVm::start(&mem, 0);
    let end = u64::try_from(MEM_SIZE).unwrap();
    vm.rx.publish(&[desc(end - 20, 4140, F_WRITE, 0)], H);
    vm.d.notify(0);

    vm.send(&header(OP_REQUEST, 777, 9999), &[]);
    assert!(vm.rx.wait_used(1));
    let bad = vm.rx.used_elem(0);
    vm.reader.post(&vm.rx, 1, 4140);
    vm.d.notify(0);
    assert!(vm.rx.wait_used(2));
    let good = vm.rx.used_elem(1);

    assert_eq!(bad, (u32::from(H), 0));
    assert_eq!(good.1, 44, "the RST went into the next good buffer");
    let raw = vm.rx.read(vm.rx.slot(u16::try_from(good.0).unwrap()), 44);
    assert_eq!(
        PacketHeader::from_bytes(&raw.try_into().unwrap()).op,
        OP_RST
    );
}

// ---- wrong read/write direction ---------------------------------------------

#[test]
fn rng_device_readable_buffer_is_dropped_untouched() {
    let mem = guest_memory();
    let (mut d, q) = rng_vm(&mem, 256);
    let buf = q.slot(H);
    q.write(buf, &[FILL; 64]);

    let used = submit(&mut d, &q, &[desc(buf, 64, 0, 0)]);

    assert_eq!(used, (u32::from(H), 0));
    assert_eq!(q.read(buf, 64), vec![FILL; 64]);
    rng_still_serves(&mut d, &q);
}

#[test]
fn blk_read_into_device_readable_buffer_is_ioerr() {
    let mem = guest_memory();
    let (mut d, q, _f) = blk_vm(&mem, true);
    let base = q.slot(H);
    blk_header(&q, base, VIRTIO_BLK_T_IN, 0);
    q.write(base + 0x1000, &[FILL; 512]);

    let used = submit(
        &mut d,
        &q,
        &[
            desc(base, 16, F_NEXT, H + 1),
            desc(base + 0x1000, 512, F_NEXT, H + 2),
            desc(base + 0x2000, 1, F_WRITE, 0),
        ],
    );

    assert_eq!(used, (u32::from(H), 1));
    assert_eq!(
        q.read(base + 0x2000, 1),
        vec![u8::try_from(VIRTIO_BLK_S_IOERR).unwrap()]
    );
    assert_eq!(q.read(base + 0x1000, 512), vec![FILL; 512]);
    blk_still_serves(&mut d, &q);
}

#[test]
fn blk_status_in_device_readable_buffer_is_dropped() {
    let mem = guest_memory();
    let (mut d, q, _f) = blk_vm(&mem, true);
    let base = q.slot(H);
    blk_header(&q, base, VIRTIO_BLK_T_IN, 0);

    let used = submit(
        &mut d,
        &q,
        &[desc(base, 16, F_NEXT, H + 1), desc(base + 0x2000, 1, 0, 0)],
    );

    assert_eq!(used, (u32::from(H), 0));
    blk_still_serves(&mut d, &q);
}

#[test]
fn blk_readable_after_writable_is_dropped() {
    let mem = guest_memory();
    let (mut d, q, _f) = blk_vm(&mem, true);
    let base = q.slot(H);
    blk_header(&q, base, VIRTIO_BLK_T_IN, 0);
    q.write(base + 0x1000, &[FILL; 512]);

    let used = submit(
        &mut d,
        &q,
        &[
            desc(base, 16, F_NEXT, H + 1),
            desc(base + 0x1000, 512, F_WRITE | F_NEXT, H + 2),
            desc(base + 0x2000, 1, 0, 0),
        ],
    );

    assert_eq!(used, (u32::from(H), 0));
    assert_eq!(q.read(base + 0x1000, 512), vec![FILL; 512]);
    blk_still_serves(&mut d, &q);
}

#[test]
fn vsock_tx_with_device_writable_buffer_is_dropped() {
    let mem = guest_memory();
    let mut vm = VsockVm::start(&mem, 8);
    let at = vm.tx.slot(H);
    vm.tx.write(at, &header(OP_REQUEST, 777, 9999).to_bytes());

    let writable_header = vm.submit_tx(&[desc(at, 44, F_WRITE, 0)]);
    let trailing_writable =
        vm.submit_tx(&[desc(at, 44, F_NEXT, H + 1), desc(at + 64, 16, F_WRITE, 0)]);

    assert_eq!(writable_header, (u32::from(H), 0));
    assert_eq!(trailing_writable, (u32::from(H), 0));
    assert!(vm.recv().is_none(), "a wrong-direction chain was acted on");
    vm.still_serves();
}

#[test]
fn vsock_rx_buffer_that_is_device_readable_is_skipped() {
    let mem = guest_memory();
    let mut vm = VsockVm::start(&mem, 0);
    let at = vm.rx.slot(H);
    vm.rx.write(at, &[FILL; 64]);
    vm.rx.publish(&[desc(at, 4140, 0, 0)], H);
    vm.d.notify(0);

    vm.send(&header(OP_REQUEST, 777, 9999), &[]);
    assert!(vm.rx.wait_used(1));

    assert_eq!(vm.rx.used_elem(0), (u32::from(H), 0));
    assert_eq!(vm.rx.read(at, 64), vec![FILL; 64]);
    vm.reader.post(&vm.rx, 1, 4140);
    vm.d.notify(0);
    assert!(
        vm.rx.wait_used(2),
        "the packet was lost with the bad buffer"
    );
}

// ---- lengths past 4 GiB or past the buffer ----------------------------------

/// 65 descriptors of 64 MiB each: every one inside guest memory, together
/// past 4 GiB.
fn over_4gib_chain(flags: u16) -> Vec<virtio_queue::desc::RawDescriptor> {
    let len = u32::try_from(MEM_SIZE).unwrap();
    (0..65u16)
        .map(|i| desc(0, len, flags | F_NEXT, H + i + 1))
        .chain(std::iter::once(desc(0, 1, flags, 0)))
        .collect()
}

#[test]
fn rng_chain_longer_than_4gib_is_dropped() {
    let mem = guest_memory();
    let (mut d, q) = rng_vm(&mem, 256);

    let used = submit(&mut d, &q, &over_4gib_chain(F_WRITE));

    assert_eq!(used, (u32::from(H), 0));
    rng_still_serves(&mut d, &q);
}

#[test]
fn rng_request_larger_than_cap_is_answered_short() {
    let mem = guest_memory();
    let (mut d, q) = rng_vm(&mem, 256);

    let used = submit(&mut d, &q, &[desc(0x100_0000, 1 << 20, F_WRITE, 0)]);

    assert_eq!(used, (u32::from(H), MAX_BYTES_PER_REQUEST));
}

#[test]
fn blk_chain_longer_than_4gib_is_dropped() {
    let mem = guest_memory();
    let (mut d, q, _f) = blk_vm(&mem, true);
    let base = q.slot(200);
    blk_header(&q, base, VIRTIO_BLK_T_IN, 0);
    let mut descs = vec![desc(base, 16, F_NEXT, H + 1)];
    descs.extend(over_4gib_chain(F_WRITE).into_iter().map(|d| {
        let d = virtio_queue::desc::split::Descriptor::from(d);
        desc(d.addr().0, d.len(), d.flags(), d.next() + 1)
    }));

    let used = submit(&mut d, &q, &descs);

    assert_eq!(used, (u32::from(H), 0));
    blk_still_serves(&mut d, &q);
}

#[test]
fn blk_ranges_past_the_disk_are_ioerr() {
    let mem = guest_memory();
    let (mut d, q, _f) = blk_vm(&mem, true);
    let ioerr = u8::try_from(VIRTIO_BLK_S_IOERR).unwrap();

    for (sector, len) in [
        (SECTORS, 512u32),   // first sector past the end
        (SECTORS - 1, 1024), // straddles the end
        (u64::MAX, 512),     // sector * 512 overflows
        (u64::MAX / 512, 512),
        (0, 100),              // not whole sectors
        (0, (16 << 20) + 512), // over the per-request cap
    ] {
        let base = q.slot(H);
        blk_header(&q, base, VIRTIO_BLK_T_IN, sector);
        let used = submit(
            &mut d,
            &q,
            &[
                desc(base, 16, F_NEXT, H + 1),
                desc(0x200_0000, len, F_WRITE | F_NEXT, H + 2),
                desc(base + 0x2000, 1, F_WRITE, 0),
            ],
        );
        assert_eq!(used, (u32::from(H), 1), "sector {sector} len {len}");
        assert_eq!(q.read(base + 0x2000, 1), vec![ioerr]);
    }
    blk_still_serves(&mut d, &q);
}

#[test]
fn vsock_header_claiming_more_than_the_chain_holds_gets_rst() {
    let mem = guest_memory();
    let mut vm = VsockVm::start(&mem, 8);
    let (mut s, local) = vm.establish(52);

    let mut h = header(OP_RW, 52, local);
    h.len = 100;
    send_raw(&vm.tx, &h, b"only ten b");
    vm.d.notify(1);
    let rst = vm.recv().expect("no RST");

    assert_eq!(rst.op, OP_RST);
    assert!(host_sees_eof(&mut s));
    vm.still_serves();
}

#[test]
fn vsock_payload_over_64kib_gets_rst() {
    let mem = guest_memory();
    let mut vm = VsockVm::start(&mem, 8);
    let (mut s, local) = vm.establish(52);

    vm.send(&header(OP_RW, 52, local), &vec![0u8; 64 * 1024 + 1]);
    let rst = vm.recv().expect("no RST");

    assert_eq!(rst.op, OP_RST);
    assert!(host_sees_eof(&mut s));
}

#[test]
fn vsock_spoofed_source_cid_is_dropped_silently() {
    let mem = guest_memory();
    let mut vm = VsockVm::start(&mem, 8);

    let mut h = header(OP_REQUEST, 777, 9999);
    h.src_cid = 42;
    vm.send(&h, &[]);

    assert!(vm.recv().is_none());
    vm.still_serves();
}

#[test]
fn vsock_unsupported_socket_type_gets_rst() {
    let mem = guest_memory();
    let mut vm = VsockVm::start(&mem, 8);

    let mut h = header(OP_REQUEST, 777, 9999);
    h.type_ = TYPE_STREAM + 1;
    vm.send(&h, &[]);

    assert_eq!(vm.recv().map(|h| h.op), Some(OP_RST));
}

// ---- zero-length and indirect chains ----------------------------------------

#[test]
fn rng_zero_length_buffer_gets_zero_bytes() {
    let mem = guest_memory();
    let (mut d, q) = rng_vm(&mem, 256);

    let used = submit(&mut d, &q, &[desc(q.slot(H), 0, F_WRITE, 0)]);

    assert_eq!(used, (u32::from(H), 0));
    rng_still_serves(&mut d, &q);
}

#[test]
fn rng_serves_a_valid_indirect_table() {
    let mem = guest_memory();
    let (mut d, q) = rng_vm(&mem, 256);
    let table = q.slot(H);
    let buf = q.slot(H + 1);
    q.write(buf, &[FILL; 64]);
    mem.write_obj(desc(buf, 32, F_WRITE | F_NEXT, 1), GuestAddress(table))
        .unwrap();
    mem.write_obj(desc(buf + 32, 32, F_WRITE, 0), GuestAddress(table + 16))
        .unwrap();

    let used = submit(&mut d, &q, &[desc(table, 32, F_INDIRECT, 0)]);

    assert_eq!(used, (u32::from(H), 64));
    assert_ne!(q.read(buf, 64), vec![FILL; 64]);
}

#[test]
fn rng_broken_indirect_tables_are_dropped() {
    let mem = guest_memory();
    let (mut d, q) = rng_vm(&mem, 256);
    let table = q.slot(H);
    let buf = q.slot(H + 1);
    let end = u64::try_from(MEM_SIZE).unwrap();
    // Entry 0 points at another indirect table, entry 1 loops to itself.
    mem.write_obj(desc(table, 16, F_INDIRECT, 0), GuestAddress(table))
        .unwrap();
    mem.write_obj(desc(buf, 16, F_WRITE | F_NEXT, 1), GuestAddress(table + 16))
        .unwrap();

    for (name, head) in [
        ("empty table", desc(table, 0, F_INDIRECT, 0)),
        (
            "length not a multiple of 16",
            desc(table, 24, F_INDIRECT, 0),
        ),
        ("nested indirect", desc(table, 16, F_INDIRECT, 0)),
        ("looping table", desc(table + 16, 16, F_INDIRECT, 0)),
        ("table outside memory", desc(end - 8, 32, F_INDIRECT, 0)),
        (
            "table length past 2^16 entries",
            desc(0, 0xffff_fff0, F_INDIRECT, 0),
        ),
    ] {
        let used = submit(&mut d, &q, &[head]);
        assert_eq!(used, (u32::from(H), 0), "{name}");
    }
    rng_still_serves(&mut d, &q);
}

#[test]
fn blk_reads_through_an_indirect_table() {
    let mem = guest_memory();
    let (mut d, q, _f) = blk_vm(&mem, true);
    let table = q.slot(H);
    let base = q.slot(H + 1);
    blk_header(&q, base, VIRTIO_BLK_T_IN, 5);
    mem.write_obj(desc(base, 16, F_NEXT, 1), GuestAddress(table))
        .unwrap();
    mem.write_obj(
        desc(base + 0x1000, 1024, F_WRITE | F_NEXT, 2),
        GuestAddress(table + 16),
    )
    .unwrap();
    mem.write_obj(desc(base + 0x2000, 1, F_WRITE, 0), GuestAddress(table + 32))
        .unwrap();

    let used = submit(&mut d, &q, &[desc(table, 48, F_INDIRECT, 0)]);

    assert_eq!(used, (u32::from(H), 1025));
    let mut want = vec![5u8; 512];
    want.extend([6u8; 512]);
    assert_eq!(q.read(base + 0x1000, 1024), want);
    assert_eq!(
        q.read(base + 0x2000, 1),
        vec![u8::try_from(VIRTIO_BLK_S_OK).unwrap()]
    );
}

#[test]
fn blk_zero_length_header_is_ioerr() {
    let mem = guest_memory();
    let (mut d, q, _f) = blk_vm(&mem, true);
    let base = q.slot(H);

    let used = submit(
        &mut d,
        &q,
        &[
            desc(base, 0, F_NEXT, H + 1),
            desc(base + 0x2000, 1, F_WRITE, 0),
        ],
    );

    assert_eq!(used, (u32::from(H), 1));
    assert_eq!(
        q.read(base + 0x2000, 1),
        vec![u8::try_from(VIRTIO_BLK_S_IOERR).unwrap()]
    );
}

#[test]
fn blk_empty_chain_is_dropped() {
    let mem = guest_memory();
    let (mut d, q, _f) = blk_vm(&mem, true);

    let used = submit(&mut d, &q, &[desc(q.slot(H), 0, F_WRITE, 0)]);

    assert_eq!(used, (u32::from(H), 0));
    blk_still_serves(&mut d, &q);
}

#[test]
fn vsock_zero_length_tx_chain_is_dropped() {
    let mem = guest_memory();
    let mut vm = VsockVm::start(&mem, 8);

    let used = vm.submit_tx(&[desc(vm.tx.slot(H), 0, 0, 0)]);

    assert_eq!(used, (u32::from(H), 0));
    vm.still_serves();
}

#[test]
fn vsock_tx_packet_in_an_indirect_table_is_served() {
    let mem = guest_memory();
    let mut vm = VsockVm::start(&mem, 8);
    let table = vm.tx.slot(H);
    let at = vm.tx.slot(H + 1);
    vm.tx.write(at, &header(OP_REQUEST, 777, 9999).to_bytes());
    mem.write_obj(desc(at, 44, 0, 0), GuestAddress(table))
        .unwrap();

    vm.submit_tx(&[desc(table, 16, F_INDIRECT, 0)]);

    assert_eq!(vm.recv().map(|h| (h.op, h.dst_port)), Some((OP_RST, 777)));
}

// ---- a used ring that is full; head indices past the queue -----------------

#[test]
fn rng_full_ring_is_served_and_wraps() {
    let mem = guest_memory();
    let (mut d, q) = rng_vm(&mem, 16);

    for _ in 0..16 {
        q.add_buffers(&[(8, true)]);
    }
    d.notify(0);
    assert!(q.wait_used(16));
    for _ in 0..16 {
        q.add_buffers(&[(8, true)]);
    }
    d.notify(0);

    assert!(q.wait_used(32));
    assert!(!needs_reset(&mut d));
}

#[test]
fn avail_index_more_than_a_ring_ahead_needs_reset_on_every_device() {
    let mem = guest_memory();
    let (mut rd, rq) = rng_vm(&mem, 16);
    let mem_b = guest_memory();
    let (mut bd, bq, _f) = blk_vm(&mem_b, true);
    let mem_v = guest_memory();
    let mut vm = VsockVm::start(&mem_v, 8);

    rq.set_avail_idx(17);
    rd.notify(0);
    bq.set_avail_idx(257);
    bd.notify(0);
    vm.tx.set_avail_idx(129);
    vm.d.notify(1);

    for (name, d, q) in [
        ("rng", &mut rd, &rq),
        ("blk", &mut bd, &bq),
        ("vsock", &mut vm.d, &vm.tx),
    ] {
        let start = std::time::Instant::now();
        while !needs_reset(d) && start.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(needs_reset(d), "{name}: no DEVICE_NEEDS_RESET");
        assert_eq!(q.used_idx(), 0, "{name}: entries were consumed");
        assert_ne!(
            d.read(reg::VIRTIO_MMIO_INTERRUPT_STATUS) & reg::VIRTIO_MMIO_INT_CONFIG,
            0
        );
    }
}

#[test]
fn broken_queue_stays_stopped_until_reset() {
    let mem = guest_memory();
    let (mut d, q) = rng_vm(&mem, 16);
    q.set_avail_idx(17);
    d.notify(0);
    let start = std::time::Instant::now();
    while !needs_reset(&mut d) && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(1));
    }

    q.set_avail_idx(0);
    q.add_buffers(&[(8, true)]);
    d.notify(0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(q.used_idx(), 0);

    d.write(reg::VIRTIO_MMIO_STATUS, 0);
    assert!(!needs_reset(&mut d));
    let fresh = TestQueue::new(&mem, 1, 16);
    d.start(&[&fresh]);
    rng_still_serves(&mut d, &fresh);
}

#[test]
fn head_index_past_the_queue_is_dropped_without_used_entry() {
    let mem = guest_memory();
    let (mut d, q) = rng_vm(&mem, 16);

    q.make_available(300);
    d.notify(0);
    rng_still_serves(&mut d, &q);

    // The bogus head produced nothing; the good request is entry 0.
    assert_eq!(q.used_idx(), 1);
}

// ---- queue size that is not a power of two; notify before DRIVER_OK --------

#[test]
fn queue_size_not_power_of_two_leaves_every_device_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let devices: Vec<Arc<Mutex<dyn VirtioDevice>>> = vec![
        Arc::new(Mutex::new(RngDevice::new())),
        Arc::new(Mutex::new(BlockDevice::new(disk_file(), true).unwrap())),
        Arc::new(Mutex::new(
            VsockDevice::new(3, dir.path().join("v.sock")).unwrap(),
        )),
    ];
    for dev in devices {
        let mem = guest_memory();
        let mut d = Driver::new(&mem, dev.clone());
        let q = TestQueue::new(&mem, 0, 16);
        assert!(d.negotiate(VERSION_1));

        let ready = d.setup_queue_sized(0, &q, 100);
        d.add_status(VIRTIO_CONFIG_S_DRIVER_OK);

        assert!(!ready);
        assert!(needs_reset(&mut d));
        assert!(!dev.lock().unwrap().is_activated());
    }
}

#[test]
fn notify_before_driver_ok_is_ignored_by_blk_and_vsock() {
    let mem = guest_memory();
    let file = disk_file();
    let mut d = Driver::new(
        &mem,
        Arc::new(Mutex::new(BlockDevice::new(file, true).unwrap())),
    );
    let q = TestQueue::new(&mem, 0, 16);
    assert!(d.negotiate(VERSION_1));
    assert!(d.setup_queue(0, &q));
    let head = q.add_buffers_pending(&[(16, false), (512, true), (1, true)]);
    blk_header(&q, q.slot(head), VIRTIO_BLK_T_IN, 1);
    q.make_available(head);

    d.notify(0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(q.used_idx(), 0);
    d.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    d.notify(0);
    assert!(q.wait_used(1));

    let dir = tempfile::tempdir().unwrap();
    let mem_v = guest_memory();
    let vdev = VsockDevice::new(3, dir.path().join("v.sock")).unwrap();
    let mut vd = Driver::new(&mem_v, Arc::new(Mutex::new(vdev)));
    let (rx, tx, ev) = (
        TestQueue::new(&mem_v, 0, 16),
        TestQueue::new(&mem_v, 1, 16),
        TestQueue::new(&mem_v, 2, 16),
    );
    assert!(vd.negotiate(VERSION_1));
    for (i, q) in [&rx, &tx, &ev].into_iter().enumerate() {
        assert!(vd.setup_queue(u32::try_from(i).unwrap(), q));
    }
    send(&tx, &header(OP_REQUEST, 777, 9999), &[]);
    vd.notify(1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(tx.used_idx(), 0);
}

// ---- block writes on a read-only disk ---------------------------------------

#[test]
fn blk_write_and_discard_on_read_only_disk_are_refused() {
    let mem = guest_memory();
    let (mut d, q, mut file) = blk_vm(&mem, true);
    let base = q.slot(H);
    q.write(base + 0x1000, &[0xee; 512]);

    blk_header(&q, base, VIRTIO_BLK_T_OUT, 0);
    let write = submit(
        &mut d,
        &q,
        &[
            desc(base, 16, F_NEXT, H + 1),
            desc(base + 0x1000, 512, F_NEXT, H + 2),
            desc(base + 0x2000, 1, F_WRITE, 0),
        ],
    );
    let write_status = q.read(base + 0x2000, 1)[0];
    blk_header(&q, base, VIRTIO_BLK_T_DISCARD, 0);
    let discard = submit(
        &mut d,
        &q,
        &[
            desc(base, 16, F_NEXT, H + 1),
            desc(base + 0x1000, 16, F_NEXT, H + 2),
            desc(base + 0x2000, 1, F_WRITE, 0),
        ],
    );
    let discard_status = q.read(base + 0x2000, 1)[0];

    assert_eq!(write, (u32::from(H), 1));
    assert_eq!(write_status, u8::try_from(VIRTIO_BLK_S_IOERR).unwrap());
    assert_eq!(discard, (u32::from(H), 1));
    assert_eq!(discard_status, u8::try_from(VIRTIO_BLK_S_UNSUPP).unwrap());
    let mut first = [0u8; 512];
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_exact(&mut first).unwrap();
    assert_eq!(first, [0u8; 512], "read-only disk was modified");
}

// ---- the worker never spins -------------------------------------------------

/// Runs the loop until it has been idle for a while; returns the events it
/// handled while supposedly idle.
fn idle_events<H: vitrine_microvm::devices::virtio::worker::EventHandler>(
    ev: &mut EventLoop<H>,
) -> u64 {
    for _ in 0..5 {
        ev.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    let before = ev.events_handled();
    for _ in 0..20 {
        ev.run_once(Some(Duration::from_millis(5))).unwrap();
    }
    ev.events_handled() - before
}

#[test]
fn rng_worker_is_idle_after_a_runaway_avail_index() {
    let mem = guest_memory();
    let q = TestQueue::new(&mem, 0, 16);
    let (ctx, evts, irq) = activate_context(&mem, &[&q], VERSION_1);
    let mut ev = EventLoop::new(RngHandler::new(ctx).unwrap()).unwrap();

    q.set_avail_idx(u16::MAX);
    evts[0].write(1).unwrap();

    assert_eq!(idle_events(&mut ev), 0);
    assert!(irq.needs_reset());
    assert!(ev.handler().queue().is_broken());
}

#[test]
fn vsock_worker_is_idle_while_guest_withholds_buffers_and_credit() {
    let mem = guest_memory();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (rx, tx, evq) = (
        TestQueue::new(&mem, 0, 64),
        TestQueue::new(&mem, 1, 64),
        TestQueue::new(&mem, 2, 16),
    );
    let (ctx, evts, _irq) = activate_context(&mem, &[&rx, &tx, &evq], VERSION_1);
    let muxer = VsockMuxer::new(GUEST_CID, uds.clone(), listener);
    let mut ev = EventLoop::new(VsockHandler::new(ctx, muxer).unwrap()).unwrap();

    // A host connects while the guest has posted no rx buffers at all.
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    assert_eq!(idle_events(&mut ev), 0, "spins with a REQUEST pending");

    // The guest finally takes the REQUEST and accepts with no credit.
    let reader = RxReader::new();
    reader.post(&rx, 4, 4140);
    evts[0].write(1).unwrap();
    idle_events(&mut ev);
    let (req, _) = reader.try_recv(&rx, Duration::ZERO).expect("no REQUEST");
    let mut resp = header(OP_RESPONSE, 52, req.src_port);
    resp.buf_alloc = 0;
    send(&tx, &resp, &[]);
    evts[1].write(1).unwrap();
    idle_events(&mut ev);
    host.write_all(b"data the guest has no room for").unwrap();

    assert_eq!(idle_events(&mut ev), 0, "spins on a readable host socket");
    assert_eq!(ev.handler().muxer().connection_count(), 1);
    // Credit arrives: the data flows.
    let mut upd = header(
        vitrine_microvm::devices::virtio::vsock::packet::OP_CREDIT_UPDATE,
        52,
        req.src_port,
    );
    upd.buf_alloc = 4096;
    send(&tx, &upd, &[]);
    evts[1].write(1).unwrap();
    idle_events(&mut ev);
    let (h, p) = reader
        .try_recv(&rx, Duration::ZERO)
        .expect("no data after credit");
    assert_eq!(
        (h.op, p.as_slice()),
        (OP_RW, &b"data the guest has no room for"[..])
    );
}

#[test]
fn vsock_host_hangup_and_guest_silence_release_everything() {
    let mem = guest_memory();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (rx, tx, evq) = (
        TestQueue::new(&mem, 0, 64),
        TestQueue::new(&mem, 1, 64),
        TestQueue::new(&mem, 2, 16),
    );
    let (ctx, evts, _irq) = activate_context(&mem, &[&rx, &tx, &evq], VERSION_1);
    let muxer = VsockMuxer::new(GUEST_CID, uds.clone(), listener);
    let mut ev = EventLoop::new(VsockHandler::new(ctx, muxer).unwrap()).unwrap();
    let reader = RxReader::new();
    reader.post(&rx, 8, 4140);
    evts[0].write(1).unwrap();

    // One connection whose host hangs up; one half-open handshake.
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    idle_events(&mut ev);
    let (req, _) = reader.try_recv(&rx, Duration::ZERO).expect("no REQUEST");
    send(&tx, &header(OP_RESPONSE, 52, req.src_port), &[]);
    evts[1].write(1).unwrap();
    idle_events(&mut ev);
    let _silent = UnixStream::connect(&uds).unwrap();
    idle_events(&mut ev);
    assert_eq!(ev.handler().muxer().handshake_count(), 1);
    drop(host);
    idle_events(&mut ev);

    // The guest never sends its RST. After the timeouts, nothing is left.
    let start = std::time::Instant::now();
    while (ev.handler().muxer().connection_count() > 0
        || ev.handler().muxer().handshake_count() > 0)
        && start.elapsed() < WAIT
    {
        ev.run_once(Some(Duration::from_millis(50))).unwrap();
    }

    assert_eq!(ev.handler().muxer().connection_count(), 0);
    assert_eq!(ev.handler().muxer().handshake_count(), 0);
}
