//! KVM tier: virtio devices in snapshots. The `mmio_script` guest sets up a
//! device register by register, uses it, pauses at the ready port (step op
//! 5) for the snapshot, and goes on with its script in each restored clone;
//! the test lays out the driver's rings in guest memory and checks what the
//! restored devices did there. Host half and guest half of each exchange
//! are in the same test.

mod tier;

use std::fs::File;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vitrine_microvm::devices::serial::SerialSink;
use vitrine_microvm::devices::virtio::block::BlockDevice;
use vitrine_microvm::devices::virtio::rng::RngDevice;
use vitrine_microvm::devices::virtio::vsock::packet::{
    PacketHeader, HEADER_LEN, HOST_CID, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, TYPE_STREAM,
};
use vitrine_microvm::devices::virtio::vsock::VsockDevice;
use vitrine_microvm::devices::virtio::{QueuePosition, VirtioDeviceState};
use vitrine_microvm::lifecycle::GuestExit;
use vitrine_microvm::snapshot::file::{self, SnapshotFileError};
use vitrine_microvm::snapshot::{VmState, MEMORY_FILE, STATE_FILE};
use vitrine_microvm::test_guests::{self, mmio_script, mmio_script::Step};
use vitrine_microvm::vmm::{DiskBacking, RestoreOptions, Vm, VmConfig, VmError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Output = Arc<Mutex<Vec<u8>>>;

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
}

// virtio 1.2, 4.2.2: MMIO device register layout.
const MAGIC: u64 = 0x000;
const DEVICE_ID: u64 = 0x008;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

const ACKNOWLEDGE: u64 = 1;
const DRIVER: u64 = 2;
const DRIVER_OK: u64 = 4;
const FEATURES_OK: u64 = 8;
const INT_VRING: u64 = 1;
const INT_CONFIG: u64 = 2;
const VRING_DESC_F_WRITE: u16 = 2;
const QUEUE_SIZE: u16 = 16;

/// One script entry: a step the library encodes, or op 5, the ready port.
#[derive(Clone, Copy, Debug)]
enum Op {
    Step(Step),
    Ready,
}

/// The guest's table: 24-byte entries (u32 op, u32 width, u64 addr, u64
/// value) ended by an all-zero one.
fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::with_capacity((ops.len() + 1) * 24);
    for op in ops {
        match op {
            Op::Step(s) => out.extend_from_slice(&mmio_script::encode(&[*s])[..24]),
            Op::Ready => {
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&[0; 20]);
            }
        }
    }
    out.extend_from_slice(&[0; 24]);
    out
}

/// Builds a script and remembers where its stored results land.
struct Script {
    ops: Vec<Op>,
}

impl Script {
    fn new() -> Self {
        Self { ops: Vec::new() }
    }

    fn write(&mut self, addr: u64, value: u64) {
        self.ops.push(Op::Step(Step::Write {
            width: 4,
            addr,
            value,
        }));
    }

    /// A 16-bit write to guest RAM (a ring index).
    fn write16(&mut self, addr: u64, value: u64) {
        self.ops.push(Op::Step(Step::Write {
            width: 2,
            addr,
            value,
        }));
    }

    fn expect(&mut self, addr: u64, value: u64) {
        self.ops.push(Op::Step(Step::Expect {
            width: 4,
            addr,
            value,
        }));
    }

    /// Stores a read; returns the result's index.
    fn store(&mut self, width: u32, addr: u64) -> usize {
        self.ops.push(Op::Step(Step::Store { width, addr }));
        self.ops.len() - 1
    }

    /// Polls a ring's 16-bit used index in guest RAM.
    fn poll16(&mut self, addr: u64, value: u64) {
        self.ops.push(Op::Step(Step::PollUntil {
            width: 2,
            addr,
            value,
        }));
    }

    fn ready(&mut self) {
        self.ops.push(Op::Ready);
    }

    /// The driver's side of device initialisation (3.1.1) up to DRIVER_OK,
    /// with VIRTIO_F_VERSION_1 only and one ring per queue.
    fn init_device(&mut self, base: u64, device_id: u64, rings: &[Ring]) {
        self.expect(base + MAGIC, 0x7472_6976);
        self.expect(base + DEVICE_ID, device_id);
        self.write(base + STATUS, 0);
        self.write(base + STATUS, ACKNOWLEDGE);
        self.write(base + STATUS, ACKNOWLEDGE | DRIVER);
        self.write(base + DRIVER_FEATURES_SEL, 1);
        self.write(base + DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1 (bit 32)
        self.write(base + DRIVER_FEATURES_SEL, 0);
        self.write(base + DRIVER_FEATURES, 0);
        self.write(base + STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.expect(base + STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        for (i, r) in (0u64..).zip(rings) {
            self.write(base + QUEUE_SEL, i);
            self.write(base + QUEUE_NUM, u64::from(QUEUE_SIZE));
            self.write(base + QUEUE_DESC_LOW, r.desc);
            self.write(base + QUEUE_DESC_HIGH, 0);
            self.write(base + QUEUE_DRIVER_LOW, r.avail);
            self.write(base + QUEUE_DRIVER_HIGH, 0);
            self.write(base + QUEUE_DEVICE_LOW, r.used);
            self.write(base + QUEUE_DEVICE_HIGH, 0);
            self.write(base + QUEUE_READY, 1);
        }
        self.write(
            base + STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
    }

    fn load(&self, vm: &Vm) {
        vm.memory()
            .write_slice(&encode(&self.ops), GuestAddress(mmio_script::TABLE))
            .unwrap();
    }
}

fn result(mem: &GuestMemoryMmap, index: usize) -> u64 {
    mem.read_obj(GuestAddress(mmio_script::RESULTS + 8 * index as u64))
        .unwrap()
}

/// A split virtqueue's three rings in guest RAM (size [`QUEUE_SIZE`]).
#[derive(Clone, Copy, Debug)]
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
}

impl Ring {
    const fn at(base: u64) -> Self {
        Self {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
        }
    }

    fn set_desc(&self, mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16) {
        self.set_desc_next(mem, i, addr, len, flags, 0);
    }

    fn set_desc_next(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc + 16 * u64::from(i);
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Puts `head` in avail ring entry `slot`, without publishing it.
    fn offer(&self, mem: &GuestMemoryMmap, slot: u16, head: u16) {
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * u64::from(slot)))
            .unwrap();
    }

    fn avail_idx_addr(&self) -> u64 {
        self.avail + 2
    }

    fn used_idx_addr(&self) -> u64 {
        self.used + 2
    }

    fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail_idx_addr()))
            .unwrap();
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used_idx_addr())).unwrap()
    }

    /// Used ring entry `i`: (descriptor head, bytes written).
    fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn packet_at(mem: &GuestMemoryMmap, addr: u64) -> PacketHeader {
    let bytes: [u8; HEADER_LEN as usize] = read(mem, addr, HEADER_LEN as usize).try_into().unwrap();
    PacketHeader::from_bytes(&bytes)
}

fn template_vm(out: &Output) -> Vm {
    let mut config = VmConfig::new(test_guests::path("mmio_script"));
    config.mem_mib = 64;
    config.time_limit = Some(Duration::from_secs(20));
    Vm::new(config, SerialSink::Capture(out.clone())).unwrap()
}

fn restore_options(out: &Output) -> RestoreOptions {
    let mut options = RestoreOptions::new(SerialSink::Capture(out.clone()));
    options.time_limit = Some(Duration::from_secs(20));
    options
}

/// Clears the pending bit of `gsi` in KVM's PIC, so a test can see whether
/// the device raises it again.
fn clear_pic_irr(vm: &Vm, gsi: u32) {
    let mut chips = vm.kvm().irqchips().unwrap();
    let (chip, bit) = if gsi < 8 { (0, gsi) } else { (1, gsi - 8) };
    // SAFETY: chips 0 and 1 are PIC_MASTER and PIC_SLAVE, so KVM filled
    // their `pic` member; kvm_pic_state is plain bytes, valid for any
    // contents.
    let mut pic = unsafe { chips[chip].chip.pic };
    pic.irr &= !(1u8 << bit);
    chips[chip].chip.pic = pic;
    vm.kvm().set_irqchips(&chips).unwrap();
}

fn pic_line_pending(vm: &Vm, gsi: u32) -> bool {
    let (master, slave) = vm.kvm().pic_irr().unwrap();
    if gsi < 8 {
        master & (1 << gsi) != 0
    } else {
        slave & (1 << (gsi - 8)) != 0
    }
}

const RNG_RING: Ring = Ring::at(0x40_0000);
const RNG_BUF: [u64; 2] = [0x40_3000, 0x40_4000];
const RNG_LEN: u32 = 64;

/// A template whose guest activated a virtio-rng, had one buffer filled,
/// and paused. Its script then offers a second buffer, notifies, waits for
/// it, and stores InterruptStatus (returned index).
fn rng_template(dir: &Path) -> (Vm, usize) {
    let out = Output::default();
    let mut vm = template_vm(&out);
    let slot = vm
        .add_virtio_device(Arc::new(Mutex::new(RngDevice::new())))
        .unwrap();
    let mem = vm.memory().clone();
    for (i, buf) in (0u16..).zip(RNG_BUF) {
        RNG_RING.set_desc(&mem, i, buf, RNG_LEN, VRING_DESC_F_WRITE);
        RNG_RING.offer(&mem, i, i);
    }
    RNG_RING.set_avail_idx(&mem, 1);
    let base = slot.base;
    let mut s = Script::new();
    s.init_device(base, 4, &[RNG_RING]);
    s.write(base + QUEUE_NOTIFY, 0);
    s.poll16(RNG_RING.used_idx_addr(), 1);
    s.write(base + INTERRUPT_ACK, INT_VRING);
    s.expect(base + INTERRUPT_STATUS, 0);
    s.ready();
    // The clone's part: a second buffer, from where the first one left off.
    s.write16(RNG_RING.avail_idx_addr(), 2);
    s.write(base + QUEUE_NOTIFY, 0);
    s.poll16(RNG_RING.used_idx_addr(), 2);
    let irq_status = s.store(4, base + INTERRUPT_STATUS);
    s.write(base + INTERRUPT_ACK, INT_VRING);
    s.load(&vm);

    vm.boot().unwrap();
    let exit = vm.run().unwrap();
    assert_eq!(exit, GuestExit::Ready, "template script: {}", text(&out));
    vm.snapshot(dir).unwrap();
    (vm, irq_status)
}

#[test]
fn restored_rng_serves_the_next_buffer_from_the_saved_ring_position() {
    if !tier::kvm_or_skip("restored_rng_serves_the_next_buffer_from_the_saved_ring_position") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (template, irq_status) = rng_template(dir.path());
    let template_mem = template.memory().clone();
    let out = Output::default();
    let mut clone = Vm::restore(dir.path(), restore_options(&out)).unwrap();
    let gsi = clone.virtio_devices()[0].irq;
    clear_pic_irr(&clone, gsi);

    let exit = clone.run().unwrap();

    assert_eq!(
        exit,
        GuestExit::DebugExit(0),
        "clone script: {}",
        text(&out)
    );
    let mem = clone.memory();
    assert_eq!(RNG_RING.used_idx(&template_mem), 1, "template served one");
    assert_eq!(RNG_RING.used_idx(mem), 2, "the clone served the next one");
    assert_eq!(RNG_RING.used_elem(mem, 0), (0, RNG_LEN));
    assert_eq!(RNG_RING.used_elem(mem, 1), (1, RNG_LEN));
    assert_eq!(
        read(mem, RNG_BUF[0], RNG_LEN as usize),
        read(&template_mem, RNG_BUF[0], RNG_LEN as usize),
        "the buffer served before the snapshot was not served again"
    );
    assert!(
        read(mem, RNG_BUF[1], RNG_LEN as usize)
            .iter()
            .any(|b| *b != 0),
        "the new buffer was filled"
    );
    assert_eq!(result(mem, irq_status) & INT_VRING, INT_VRING);
    assert!(
        pic_line_pending(&clone, gsi),
        "the restored irqfd raised GSI {gsi}"
    );
}

#[test]
fn a_restored_vm_saves_the_device_state_it_was_restored_from() {
    if !tier::kvm_or_skip("a_restored_vm_saves_the_device_state_it_was_restored_from") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _template = rng_template(dir.path());
    let first = file::read(&dir.path().join(STATE_FILE)).unwrap();
    let mut clone = Vm::restore(dir.path(), restore_options(&Output::default())).unwrap();
    let again_dir = tempfile::tempdir().unwrap();

    clone.snapshot(again_dir.path()).unwrap();

    let again = file::read(&again_dir.path().join(STATE_FILE)).unwrap();
    assert_eq!(first.virtio.len(), 1);
    assert_eq!(again.virtio, first.virtio);
    assert_eq!(
        first.virtio[0].transport.active_queues,
        Some(vec![QueuePosition {
            next_avail: 1,
            next_used: 1
        }])
    );
    assert!(matches!(first.virtio[0].device, VirtioDeviceState::Rng(_)));
}

#[test]
fn a_snapshot_taken_again_keeps_serving_after_the_next_run() {
    if !tier::kvm_or_skip("a_snapshot_taken_again_keeps_serving_after_the_next_run") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _template = rng_template(dir.path());
    let out = Output::default();
    let mut clone = Vm::restore(dir.path(), restore_options(&out)).unwrap();
    let again_dir = tempfile::tempdir().unwrap();
    clone.snapshot(again_dir.path()).unwrap();

    // The snapshot parked the device; the run starts it again.
    let exit = clone.run().unwrap();

    assert_eq!(
        exit,
        GuestExit::DebugExit(0),
        "clone script: {}",
        text(&out)
    );
    assert_eq!(RNG_RING.used_idx(clone.memory()), 2);
}

const RX: Ring = Ring::at(0x40_0000);
const TX: Ring = Ring::at(0x41_0000);
const EV: Ring = Ring::at(0x42_0000);
const RX_BUF: [u64; 3] = [0x50_0000, 0x50_1000, 0x50_2000];
const RX_LEN: u32 = 256;
const TX_BUF: [u64; 3] = [0x51_0000, 0x51_1000, 0x51_2000];
const EV_BUF: u64 = 0x52_0000;
const TEMPLATE_CID: u64 = 3;
const GUEST_PORT: u32 = 1234;
/// The clone's new connection after the reset comes from here.
const NEW_GUEST_PORT: u32 = 1235;
const HOST_PORT: u32 = 52;

fn guest_packet(cid: u64, op: u16, len: u32) -> PacketHeader {
    PacketHeader {
        src_cid: cid,
        dst_cid: HOST_CID,
        src_port: GUEST_PORT,
        dst_port: HOST_PORT,
        len,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Default::default()
    }
}

/// What the vsock template's script stored.
struct VsockResults {
    generation_before: usize,
    irq_status: usize,
    cid: usize,
    generation_after: usize,
}

/// A template whose guest connected to host port 52 over vsock (the host
/// side accepted) and paused with the connection open. Each clone's
/// script then waits for the transport reset event, reads the config
/// space, sends data on the old connection (tx descriptor 1, which the
/// test fills in per clone) and waits for the answer, then opens a new
/// connection (tx descriptor 2, filled in per clone) and waits for the
/// answer to that.
fn vsock_template(
    dir: &Path,
    uds: &Path,
) -> (
    Vm,
    UnixListener,
    std::os::unix::net::UnixStream,
    VsockResults,
) {
    let out = Output::default();
    let mut vm = template_vm(&out);
    let device = VsockDevice::new(TEMPLATE_CID, uds).unwrap();
    let slot = vm.add_virtio_device(Arc::new(Mutex::new(device))).unwrap();
    let port_path = format!("{}_{HOST_PORT}", uds.display());
    let host = UnixListener::bind(&port_path).unwrap();
    let mem = vm.memory().clone();
    for (i, buf) in (0u16..).zip(RX_BUF) {
        RX.set_desc(&mem, i, buf, RX_LEN, VRING_DESC_F_WRITE);
        RX.offer(&mem, i, i);
    }
    RX.set_avail_idx(&mem, 3);
    let request = guest_packet(TEMPLATE_CID, OP_REQUEST, 0);
    mem.write_slice(&request.to_bytes(), GuestAddress(TX_BUF[0]))
        .unwrap();
    TX.set_desc(&mem, 0, TX_BUF[0], HEADER_LEN, 0);
    TX.set_desc(&mem, 1, TX_BUF[1], HEADER_LEN + 2, 0);
    TX.set_desc(&mem, 2, TX_BUF[2], HEADER_LEN, 0);
    TX.offer(&mem, 0, 0);
    TX.offer(&mem, 1, 1);
    TX.offer(&mem, 2, 2);
    TX.set_avail_idx(&mem, 1);
    EV.set_desc(&mem, 0, EV_BUF, 8, VRING_DESC_F_WRITE);
    EV.offer(&mem, 0, 0);
    EV.set_avail_idx(&mem, 1);
    mem.write_obj(u64::MAX, GuestAddress(EV_BUF)).unwrap();

    let base = slot.base;
    let mut s = Script::new();
    s.init_device(base, 19, &[RX, TX, EV]);
    s.write(base + QUEUE_NOTIFY, 1);
    s.poll16(TX.used_idx_addr(), 1);
    s.poll16(RX.used_idx_addr(), 1);
    s.write(base + INTERRUPT_ACK, INT_VRING | INT_CONFIG);
    let generation_before = s.store(4, base + CONFIG_GENERATION);
    s.ready();
    // The clone's part.
    s.poll16(EV.used_idx_addr(), 1);
    let irq_status = s.store(4, base + INTERRUPT_STATUS);
    let cid = s.store(8, base + CONFIG);
    let generation_after = s.store(4, base + CONFIG_GENERATION);
    s.write16(TX.avail_idx_addr(), 2);
    s.write(base + QUEUE_NOTIFY, 1);
    s.poll16(TX.used_idx_addr(), 2);
    s.poll16(RX.used_idx_addr(), 2);
    s.write16(TX.avail_idx_addr(), 3);
    s.write(base + QUEUE_NOTIFY, 1);
    s.poll16(RX.used_idx_addr(), 3);
    s.load(&vm);

    vm.boot().unwrap();
    let exit = vm.run().unwrap();
    assert_eq!(exit, GuestExit::Ready, "template script: {}", text(&out));
    let (stream, _) = host.accept().unwrap();
    assert_eq!(
        packet_at(&mem, RX_BUF[0]).op,
        OP_RESPONSE,
        "template connected"
    );
    vm.snapshot(dir).unwrap();
    let results = VsockResults {
        generation_before,
        irq_status,
        cid,
        generation_after,
    };
    (vm, host, stream, results)
}

#[test]
fn vsock_clones_get_their_own_cid_a_reset_no_old_connection_and_working_new_ones() {
    if !tier::kvm_or_skip(
        "vsock_clones_get_their_own_cid_a_reset_no_old_connection_and_working_new_ones",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let (template, _host, mut template_stream, at) =
        vsock_template(dir.path(), &sockets.path().join("t.sock"));
    let template_mem = template.memory().clone();
    let cids = [10u64, 11];

    let mut clones = Vec::new();
    for cid in cids {
        let out = Output::default();
        let mut options = restore_options(&out);
        options.vsock_cid = cid;
        options.vsock_uds = Some(sockets.path().join(format!("c{cid}.sock")));
        let mut clone = Vm::restore(dir.path(), options).unwrap();
        // The guest tries the connection it had, as a driver that missed
        // the reset would: data on it, from its new CID.
        let mut data = guest_packet(cid, OP_RW, 2).to_bytes().to_vec();
        data.extend_from_slice(b"hi");
        clone
            .memory()
            .write_slice(&data, GuestAddress(TX_BUF[1]))
            .unwrap();
        // Then a new connection, which the clone's own socket must take.
        let mut request = guest_packet(cid, OP_REQUEST, 0);
        request.src_port = NEW_GUEST_PORT;
        clone
            .memory()
            .write_slice(&request.to_bytes(), GuestAddress(TX_BUF[2]))
            .unwrap();
        let port_path = sockets.path().join(format!("c{cid}.sock_{HOST_PORT}"));
        let listener = UnixListener::bind(&port_path).unwrap();
        let exit = clone.run().unwrap();
        assert_eq!(exit, GuestExit::DebugExit(0), "clone {cid}: {}", text(&out));
        listener.set_nonblocking(true).unwrap();
        assert!(
            listener.accept().is_ok(),
            "clone {cid}'s new connection reached its own socket"
        );
        clones.push(clone);
    }

    for (clone, cid) in clones.iter().zip(cids) {
        let mem = clone.memory();
        assert_eq!(
            result(mem, at.cid),
            cid,
            "config space shows the clone's CID"
        );
        assert_eq!(EV.used_elem(mem, 0), (0, 4), "one 4-byte event");
        let event: u32 = mem.read_obj(GuestAddress(EV_BUF)).unwrap();
        assert_eq!(event, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
        let irq = result(mem, at.irq_status);
        assert_eq!(
            irq & INT_VRING,
            INT_VRING,
            "used-buffer interrupt for the event"
        );
        assert_eq!(irq & INT_CONFIG, INT_CONFIG, "config change announced");
        assert_eq!(
            result(mem, at.generation_after),
            result(mem, at.generation_before) + 1
        );
        let answer = packet_at(mem, RX_BUF[1]);
        assert_eq!(answer.op, OP_RST, "the old connection is not resumed");
        assert_eq!(
            (answer.src_cid, answer.dst_cid),
            (HOST_CID, cid),
            "answered as the clone"
        );
        assert_eq!((answer.src_port, answer.dst_port), (HOST_PORT, GUEST_PORT));
        let new = packet_at(mem, RX_BUF[2]);
        assert_eq!(
            new.op, OP_RESPONSE,
            "a new connection after the reset works"
        );
        assert_eq!(
            (new.dst_cid, new.dst_port),
            (cid, NEW_GUEST_PORT),
            "accepted for the clone"
        );
    }
    assert_eq!(result(&template_mem, at.generation_before), 0);
    assert_ne!(
        result(clones[0].memory(), at.cid),
        result(clones[1].memory(), at.cid)
    );
    template_stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 8];
    let got = template_stream.read(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no clone's data reached the template's host connection: {got:?}"
    );
}

#[test]
fn restoring_a_vsock_snapshot_without_a_socket_path_is_refused() {
    if !tier::kvm_or_skip("restoring_a_vsock_snapshot_without_a_socket_path_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let _template = vsock_template(dir.path(), &sockets.path().join("t.sock"));

    let err = Vm::restore(dir.path(), restore_options(&Output::default())).unwrap_err();

    assert!(matches!(err, VmError::RestoreArgMissing { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "the snapshot has a virtio-vsock device; the restore options must give the clone's vsock socket path"
    );
}

const DISK_SECTORS: u64 = 64;

fn disk_file(dir: &Path, name: &str, sectors: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    let f = File::create(&path).unwrap();
    f.set_len(sectors * 512).unwrap();
    path
}

/// A template with an rng, a read-only block device and, given a socket
/// path, a vsock device, none of them set up by the guest, which pauses at
/// once; its clones run to the end of the script.
fn block_template(dir: &Path, disk: &Path, vsock_uds: Option<&Path>) -> Vm {
    let out = Output::default();
    let mut vm = template_vm(&out);
    vm.add_virtio_device(Arc::new(Mutex::new(RngDevice::new())))
        .unwrap();
    let block = BlockDevice::new(File::open(disk).unwrap(), true).unwrap();
    vm.add_virtio_device(Arc::new(Mutex::new(block))).unwrap();
    if let Some(uds) = vsock_uds {
        let vsock = VsockDevice::new(TEMPLATE_CID, uds).unwrap();
        vm.add_virtio_device(Arc::new(Mutex::new(vsock))).unwrap();
    }
    let mut s = Script::new();
    s.ready();
    s.load(&vm);
    vm.boot().unwrap();
    assert_eq!(vm.run().unwrap(), GuestExit::Ready, "{}", text(&out));
    vm.snapshot(dir).unwrap();
    vm
}

#[test]
fn a_block_device_comes_back_only_over_a_disk_of_its_size() {
    if !tier::kvm_or_skip("a_block_device_comes_back_only_over_a_disk_of_its_size") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disks = tempfile::tempdir().unwrap();
    let disk = disk_file(disks.path(), "disk.img", DISK_SECTORS);
    let small = disk_file(disks.path(), "small.img", DISK_SECTORS / 2);
    let _template = block_template(dir.path(), &disk, None);
    let with_disk = |path: Option<&Path>| {
        let mut options = restore_options(&Output::default());
        if let Some(p) = path {
            options.disks.push(DiskBacking {
                file: File::open(p).unwrap(),
                read_only: true,
            });
        }
        Vm::restore(dir.path(), options)
    };

    let without = with_disk(None).unwrap_err();
    let wrong_size = with_disk(Some(&small)).unwrap_err();
    let mut clone = with_disk(Some(&disk)).unwrap();

    assert_eq!(
        without.to_string(),
        "the restore options give 0 disks; the snapshot has 1 block devices"
    );
    assert!(
        format!("{:?}", wrong_size).contains("CapacityMismatch"),
        "{wrong_size:?}"
    );
    assert_eq!(clone.run().unwrap(), GuestExit::DebugExit(0));
    let devices = clone.virtio_devices();
    assert_eq!(devices.len(), 2);
    let block = devices[1].transport.lock().unwrap();
    let mut capacity = [0u8; 8];
    block.device().lock().unwrap().read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS);
}

#[test]
fn vitrine_vmm_restore_gives_a_clone_its_disk_and_vsock_socket() {
    if !tier::kvm_or_skip("vitrine_vmm_restore_gives_a_clone_its_disk_and_vsock_socket") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let disk = disk_file(files.path(), "disk.img", DISK_SECTORS);
    let _template = block_template(dir.path(), &disk, Some(&files.path().join("t.sock")));
    let clone_uds = files.path().join("clone.sock");
    let restore = |extra: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vitrine-vmm"))
            .arg("restore")
            .arg("--snapshot")
            .arg(dir.path())
            .args(["--time-limit", "20"])
            .args(extra)
            .output()
            .unwrap()
    };
    let disk_arg = [std::ffi::OsStr::new("--disk"), disk.as_os_str()];

    let no_disk = restore(&[]);
    let no_socket = restore(&disk_arg);
    let mut all = disk_arg.to_vec();
    all.extend([
        std::ffi::OsStr::new("--vsock-uds"),
        clone_uds.as_os_str(),
        std::ffi::OsStr::new("--cid"),
        std::ffi::OsStr::new("9"),
    ]);
    let full = restore(&all);

    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!no_disk.status.success());
    assert!(
        stderr(&no_disk).contains("the restore options give 0 disks"),
        "{}",
        stderr(&no_disk)
    );
    assert!(!no_socket.status.success());
    assert!(
        stderr(&no_socket).contains("the clone's vsock socket path"),
        "{}",
        stderr(&no_socket)
    );
    assert!(full.status.success(), "{}", stderr(&full));
    assert!(
        String::from_utf8_lossy(&full.stdout).contains("mmio script: all steps done"),
        "{}",
        String::from_utf8_lossy(&full.stdout)
    );
    assert!(!clone_uds.exists(), "the clone removed its socket at exit");
}

const BLK_RING: Ring = Ring::at(0x40_0000);
const VRING_DESC_F_NEXT: u16 = 1;
const VIRTIO_BLK_T_IN: u32 = 0;

/// Lays out a read of `sector` as descriptors 3n, 3n+1, 3n+2 (header,
/// 512-byte data buffer, status byte) at `buf` and offers it in avail
/// entry `n`. Returns the data buffer's address.
fn block_read(mem: &GuestMemoryMmap, n: u16, sector: u64, buf: u64) -> u64 {
    let head = 3 * n;
    mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(buf)).unwrap();
    mem.write_obj(0u32, GuestAddress(buf + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(buf + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(buf + 0x400)).unwrap();
    BLK_RING.set_desc_next(mem, head, buf, 16, VRING_DESC_F_NEXT, head + 1);
    let flags = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE;
    BLK_RING.set_desc_next(mem, head + 1, buf + 0x200, 512, flags, head + 2);
    BLK_RING.set_desc(mem, head + 2, buf + 0x400, 1, VRING_DESC_F_WRITE);
    BLK_RING.offer(mem, n, head);
    buf + 0x200
}

fn disk_with_sectors(dir: &Path, name: &str, fill: [u8; 2]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut bytes = vec![fill[0]; 512];
    bytes.extend_from_slice(&[fill[1]; 512]);
    bytes.resize(usize::try_from(DISK_SECTORS * 512).unwrap(), 0);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn restored_block_device_serves_the_next_read_from_the_disk_it_was_given() {
    if !tier::kvm_or_skip("restored_block_device_serves_the_next_read_from_the_disk_it_was_given") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let template_disk = disk_with_sectors(files.path(), "template.img", [b'A', b'B']);
    let clone_disk = disk_with_sectors(files.path(), "clone.img", [b'A', b'C']);
    let out = Output::default();
    let mut template = template_vm(&out);
    let block = BlockDevice::new(File::open(&template_disk).unwrap(), true).unwrap();
    let slot = template
        .add_virtio_device(Arc::new(Mutex::new(block)))
        .unwrap();
    let mem = template.memory().clone();
    let first = block_read(&mem, 0, 0, 0x50_0000);
    let second = block_read(&mem, 1, 1, 0x51_0000);
    BLK_RING.set_avail_idx(&mem, 1);
    let base = slot.base;
    let mut s = Script::new();
    s.init_device(base, 2, &[BLK_RING]);
    s.write(base + QUEUE_NOTIFY, 0);
    s.poll16(BLK_RING.used_idx_addr(), 1);
    s.write(base + INTERRUPT_ACK, INT_VRING);
    s.ready();
    s.write16(BLK_RING.avail_idx_addr(), 2);
    s.write(base + QUEUE_NOTIFY, 0);
    s.poll16(BLK_RING.used_idx_addr(), 2);
    let irq_status = s.store(4, base + INTERRUPT_STATUS);
    s.load(&template);
    template.boot().unwrap();
    assert_eq!(template.run().unwrap(), GuestExit::Ready, "{}", text(&out));
    template.snapshot(dir.path()).unwrap();
    let clone_out = Output::default();
    let mut options = restore_options(&clone_out);
    options.disks.push(DiskBacking {
        file: File::open(&clone_disk).unwrap(),
        read_only: true,
    });
    let mut clone = Vm::restore(dir.path(), options).unwrap();

    let exit = clone.run().unwrap();

    assert_eq!(exit, GuestExit::DebugExit(0), "{}", text(&clone_out));
    let cmem = clone.memory();
    assert_eq!(read(&mem, first, 512), vec![b'A'; 512], "template read");
    assert_eq!(
        read(cmem, second, 512),
        vec![b'C'; 512],
        "the clone read its own disk"
    );
    let status: u8 = cmem.read_obj(GuestAddress(0x51_0400)).unwrap();
    assert_eq!(status, 0, "VIRTIO_BLK_S_OK");
    assert_eq!(BLK_RING.used_elem(cmem, 1), (3, 513));
    assert_eq!(result(cmem, irq_status) & INT_VRING, INT_VRING);
}

/// Copies a snapshot, with its state changed by `edit` and written with a
/// valid header and checksum.
fn edited_snapshot(from: &Path, edit: impl FnOnce(&mut VmState)) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::hard_link(from.join(MEMORY_FILE), to.path().join(MEMORY_FILE)).unwrap();
    let mut state = file::read(&from.join(STATE_FILE)).unwrap();
    edit(&mut state);
    file::write(&to.path().join(STATE_FILE), &state).unwrap();
    to
}

#[test]
fn device_sections_that_do_not_fit_the_device_are_refused() {
    if !tier::kvm_or_skip("device_sections_that_do_not_fit_the_device_are_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _template = rng_template(dir.path());
    let restore_err = |edit: &dyn Fn(&mut VmState)| -> String {
        let edited = edited_snapshot(dir.path(), edit);
        let err = Vm::restore(edited.path(), restore_options(&Output::default())).unwrap_err();
        vitrine_microvm::probe::error_chain(&err)
    };

    let extra_queue = restore_err(&|s| {
        let q = s.virtio[0].transport.queues[0];
        s.virtio[0].transport.queues.push(q);
    });
    let outside = restore_err(&|s| s.virtio[0].mmio_base = 0x1000);
    let shared_gsi = restore_err(&|s| {
        let mut second = s.virtio[0].clone();
        second.mmio_base += 0x1000;
        s.virtio.push(second);
    });
    let skipped_step =
        restore_err(&|s| s.virtio[0].transport.status = u32::try_from(DRIVER_OK).unwrap());
    let unoffered = restore_err(&|s| s.virtio[0].transport.acked_features |= 1 << 60);
    let active_unready = restore_err(&|s| s.virtio[0].transport.queues[0].ready = false);
    let ring_outside = restore_err(&|s| s.virtio[0].transport.queues[0].used_ring = 1 << 40);

    assert!(
        extra_queue.contains("saved transport has 2 queues; the device has 1"),
        "{extra_queue}"
    );
    assert!(outside.contains("at 0x1000 on GSI 5"), "{outside}");
    assert!(shared_gsi.contains("on GSI 5"), "{shared_gsi}");
    assert!(
        skipped_step.contains("saved device status 0x4"),
        "{skipped_step}"
    );
    assert!(unoffered.contains("saved acked features"), "{unoffered}");
    assert!(
        active_unready.contains("queue 0 is not ready"),
        "{active_unready}"
    );
    assert!(
        ring_outside.contains("saved queue 0 is ready but its layout"),
        "{ring_outside}"
    );
}

#[test]
fn every_single_byte_corruption_of_a_state_file_with_devices_is_refused() {
    if !tier::kvm_or_skip("every_single_byte_corruption_of_a_state_file_with_devices_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let _template = vsock_template(dir.path(), &sockets.path().join("t.sock"));
    let good = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
    assert_eq!(file::decode(&good).unwrap().virtio.len(), 1);

    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x41;
        assert!(file::decode(&b).is_err(), "flip at byte {i} accepted");
    }
}

#[test]
fn a_version_1_state_file_is_refused_as_an_unknown_version() {
    if !tier::kvm_or_skip("a_version_1_state_file_is_refused_as_an_unknown_version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _template = rng_template(dir.path());
    let state = dir.path().join(STATE_FILE);
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
    std::fs::write(&state, &bytes).unwrap();

    let err = Vm::restore(dir.path(), restore_options(&Output::default())).unwrap_err();

    assert!(
        matches!(
            err,
            VmError::SnapshotFile(SnapshotFileError::UnknownVersion { found: 1 })
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "snapshot format version 1 is not supported (this build reads 2)"
    );
}
