//! KVM tier: a virtio device driven by a real vCPU. The `mmio_script`
//! guest performs the driver's side of virtio-mmio initialisation register
//! by register (reset, features, FEATURES_OK, queue setup, DRIVER_OK),
//! notifies the queue through the ioeventfd, polls the used ring, and
//! reads the interrupt status; the test lays out the driver's rings in
//! guest memory and checks what the device did.

mod tier;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vitrine_microvm::devices::serial::SerialSink;
use vitrine_microvm::devices::virtio::rng::RngDevice;
use vitrine_microvm::lifecycle::GuestExit;
use vitrine_microvm::test_guests::{self, mmio_script, mmio_script::Step};
use vitrine_microvm::vmm::{Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

const DESC: u64 = 0x40_0000;
const AVAIL: u64 = 0x40_1000;
const USED: u64 = 0x40_2000;
const BUFFER: u64 = 0x40_3000;
const BUFFER_LEN: u32 = 64;
const QUEUE_SIZE: u64 = 16;
const VRING_DESC_F_WRITE: u16 = 2;

// virtio 1.2, 4.2.2: MMIO device register layout.
const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
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

const ACKNOWLEDGE: u64 = 1;
const DRIVER: u64 = 2;
const DRIVER_OK: u64 = 4;
const FEATURES_OK: u64 = 8;

fn driver_init_script(base: u64) -> Vec<Step> {
    let w = |off, value| Step::Write {
        width: 4,
        addr: base + off,
        value,
    };
    let expect = |off, value| Step::Expect {
        width: 4,
        addr: base + off,
        value,
    };
    vec![
        expect(MAGIC, 0x7472_6976),
        expect(VERSION, 2),
        expect(DEVICE_ID, 4),
        w(STATUS, 0),
        w(STATUS, ACKNOWLEDGE),
        w(STATUS, ACKNOWLEDGE | DRIVER),
        w(DEVICE_FEATURES_SEL, 1),
        Step::Store {
            width: 4,
            addr: base + DEVICE_FEATURES,
        },
        w(DRIVER_FEATURES_SEL, 1),
        w(DRIVER_FEATURES, 1), // VIRTIO_F_VERSION_1 (bit 32)
        w(DRIVER_FEATURES_SEL, 0),
        w(DRIVER_FEATURES, 0),
        w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK),
        expect(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK),
        w(QUEUE_SEL, 0),
        Step::Store {
            width: 4,
            addr: base + QUEUE_NUM_MAX,
        },
        w(QUEUE_NUM, QUEUE_SIZE),
        w(QUEUE_DESC_LOW, DESC),
        w(QUEUE_DESC_HIGH, 0),
        w(QUEUE_DRIVER_LOW, AVAIL),
        w(QUEUE_DRIVER_HIGH, 0),
        w(QUEUE_DEVICE_LOW, USED),
        w(QUEUE_DEVICE_HIGH, 0),
        w(QUEUE_READY, 1),
        w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        w(QUEUE_NOTIFY, 0),
        // used->idx, in guest RAM, until the device has returned the buffer.
        Step::PollUntil {
            width: 2,
            addr: USED + 2,
            value: 1,
        },
        Step::Store {
            width: 4,
            addr: base + INTERRUPT_STATUS,
        },
        w(INTERRUPT_ACK, 1),
        expect(INTERRUPT_STATUS, 0),
    ]
}

#[test]
fn rng_device_fills_a_buffer_for_a_real_vcpu_and_raises_its_interrupt() {
    if !tier::kvm_or_skip("rng_device_fills_a_buffer_for_a_real_vcpu_and_raises_its_interrupt") {
        return;
    }
    let mut config = VmConfig::new(test_guests::path("mmio_script"));
    config.mem_mib = 64;
    config.time_limit = Some(Duration::from_secs(20));
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut vm = Vm::new(config, SerialSink::Capture(out.clone())).unwrap();
    let slot = vm
        .add_virtio_device(Arc::new(Mutex::new(RngDevice::new())))
        .unwrap();
    let mem = vm.memory().clone();
    // Driver side of the split ring: one device-writable 64-byte buffer.
    mem.write_obj(BUFFER, GuestAddress(DESC)).unwrap();
    mem.write_obj(BUFFER_LEN, GuestAddress(DESC + 8)).unwrap();
    mem.write_obj(VRING_DESC_F_WRITE, GuestAddress(DESC + 12))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap(); // flags
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap(); // idx
    mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap(); // ring[0]
    let steps = driver_init_script(slot.base);
    mem.write_slice(
        &mmio_script::encode(&steps),
        GuestAddress(mmio_script::TABLE),
    )
    .unwrap();

    vm.boot().unwrap();
    let exit = vm.run().unwrap();

    let serial = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    assert_eq!(
        exit,
        GuestExit::DebugExit(0),
        "guest script failed: {serial}"
    );
    let result = |step: usize| -> u64 {
        mem.read_obj(GuestAddress(mmio_script::RESULTS + 8 * step as u64))
            .unwrap()
    };
    assert_eq!(result(7) & 1, 1, "device offers VIRTIO_F_VERSION_1");
    assert!(
        result(15) >= QUEUE_SIZE,
        "queue max {} >= {QUEUE_SIZE}",
        result(15)
    );
    let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    let used_id: u32 = mem.read_obj(GuestAddress(USED + 4)).unwrap();
    let used_len: u32 = mem.read_obj(GuestAddress(USED + 8)).unwrap();
    assert_eq!((used_idx, used_id, used_len), (1, 0, BUFFER_LEN));
    let mut random = [0u8; BUFFER_LEN as usize];
    mem.read_slice(&mut random, GuestAddress(BUFFER)).unwrap();
    assert!(
        random.iter().any(|b| *b != 0),
        "buffer filled from getrandom"
    );
    assert_eq!(
        result(27) & 1,
        1,
        "InterruptStatus showed a used-buffer notification"
    );
    // The worker signals the irqfd right after publishing the used ring,
    // and KVM injects from its own context, so the line may rise a moment
    // after the guest saw InterruptStatus: poll briefly.
    let pending = || {
        let (master_irr, slave_irr) = vm.kvm().pic_irr().unwrap();
        let line = if slot.irq < 8 {
            master_irr & (1 << slot.irq)
        } else {
            slave_irr & (1 << (slot.irq - 8))
        };
        (line, master_irr, slave_irr)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let (mut line_pending, mut master_irr, mut slave_irr) = pending();
    while line_pending == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
        (line_pending, master_irr, slave_irr) = pending();
    }
    assert_ne!(
        line_pending, 0,
        "the irqfd raised GSI {} in KVM's PIC (IRR master {master_irr:#04x}, slave {slave_irr:#04x})",
        slot.irq
    );
}
