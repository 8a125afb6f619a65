//! virtio-mmio transport: the register state machine, driven the way a
//! guest driver drives it, in front of a real rng device (its worker thread
//! included), and its snapshot state: saved, restored, serving again.

mod virtio_driver;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_driver::{guest_memory, Driver, TestQueue};
use vitrine_microvm::bus::BusDevice;
use vitrine_microvm::devices::virtio::features::{RING_EVENT_IDX, VERSION_1};
use vitrine_microvm::devices::virtio::mmio::{MmioConstructorArgs, MmioState, NOTIFY_REG_OFFSET};
use vitrine_microvm::devices::virtio::rng::{RngConstructorArgs, RngDevice};
use vitrine_microvm::devices::virtio::vsock::{VsockConstructorArgs, VsockDevice};
use vitrine_microvm::devices::virtio::{
    device_type, MmioTransport, QueuePosition, VirtioDevice, VirtioDeviceState,
};
use vitrine_microvm::snapshot::Persist;
use vm_memory::GuestMemoryMmap;

fn rng() -> Arc<Mutex<RngDevice>> {
    Arc::new(Mutex::new(RngDevice::new()))
}

#[test]
fn registers_identify_a_modern_rng() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());

    assert_eq!(d.read(reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(d.read(reg::VIRTIO_MMIO_VERSION), 2);
    assert_eq!(d.read(reg::VIRTIO_MMIO_DEVICE_ID), device_type::RNG);
    assert_ne!(d.device_features() & VERSION_1, 0);
}

#[test]
fn features_ok_is_refused_without_version_1() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());
    let offered = d.device_features();

    let kept = d.negotiate(offered & !VERSION_1);

    assert!(!kept);
    assert_eq!(
        d.status(),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
}

#[test]
fn features_ok_is_refused_with_unoffered_bits() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());
    let offered = d.device_features();

    assert!(!d.negotiate(offered | 1 << 63));
    assert!(d.negotiate(VERSION_1));
}

#[test]
fn status_steps_out_of_order_are_ignored() {
    let mem = guest_memory();
    let dev = rng();
    let mut d = Driver::new(&mem, dev.clone());

    // DRIVER_OK with nothing before it, then FEATURES_OK before DRIVER.
    d.write(reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(d.status(), 0);
    d.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d.add_status(VIRTIO_CONFIG_S_FEATURES_OK);

    assert_eq!(d.status(), VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert!(!dev.lock().unwrap().is_activated());
}

#[test]
fn driver_cannot_clear_status_bits_without_reset() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());
    d.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    d.add_status(VIRTIO_CONFIG_S_DRIVER);

    d.write(reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);

    assert_eq!(
        d.status(),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
}

#[test]
fn queue_size_not_power_of_two_never_becomes_ready() {
    let mem = guest_memory();
    let dev = rng();
    let mut d = Driver::new(&mem, dev.clone());
    let q = TestQueue::new(&mem, 0, 16);
    assert!(d.negotiate(VERSION_1));

    let ready = d.setup_queue_sized(0, &q, 12);
    d.add_status(VIRTIO_CONFIG_S_DRIVER_OK);

    assert!(!ready);
    assert_eq!(d.read(reg::VIRTIO_MMIO_QUEUE_READY), 0);
    assert_ne!(d.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert!(!dev.lock().unwrap().is_activated());
}

#[test]
fn queue_size_above_maximum_or_zero_never_becomes_ready() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());
    let q = TestQueue::new(&mem, 0, 16);
    assert!(d.negotiate(VERSION_1));
    let max = d.read(reg::VIRTIO_MMIO_QUEUE_NUM_MAX);

    assert!(!d.setup_queue_sized(0, &q, max * 2));
    assert!(!d.setup_queue_sized(0, &q, 0));
    assert!(!d.setup_queue_sized(0, &q, 0x1_0000));
}

#[test]
fn queue_with_rings_outside_memory_never_becomes_ready() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());
    let q = TestQueue::new(&mem, 0, 16);
    assert!(d.negotiate(VERSION_1));
    assert!(d.setup_queue(0, &q));
    d.write(reg::VIRTIO_MMIO_QUEUE_READY, 0);

    d.write(reg::VIRTIO_MMIO_QUEUE_USED_HIGH, 0x10);
    d.write(reg::VIRTIO_MMIO_QUEUE_READY, 1);

    assert_eq!(d.read(reg::VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn queue_layout_cannot_change_once_ready() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());
    let q = TestQueue::new(&mem, 0, 16);
    assert!(d.negotiate(VERSION_1));
    assert!(d.setup_queue(0, &q));

    d.write(reg::VIRTIO_MMIO_QUEUE_NUM, 3);

    assert_eq!(d.transport.save().unwrap().queues[0].size, 16);
}

#[test]
fn missing_queue_reports_zero_max_size() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());

    d.write(reg::VIRTIO_MMIO_QUEUE_SEL, 1);

    assert_eq!(d.read(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    d.write(reg::VIRTIO_MMIO_QUEUE_SEL, u32::MAX);
    assert_eq!(d.read(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
}

#[test]
fn notify_before_driver_ok_is_dropped() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());
    let q = TestQueue::new(&mem, 0, 16);
    assert!(d.negotiate(VERSION_1));
    assert!(d.setup_queue(0, &q));
    q.add_buffers(&[(64, true)]);

    d.notify(0);

    assert!(d.transport.queue_evts()[0].read().is_err(), "eventfd fired");
    assert_eq!(q.used_idx(), 0);
    // Once the driver is done with setup the same buffer is served.
    d.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    d.notify(0);
    assert!(q.wait_used(1));
    assert_eq!(q.used_elem(0), (0, 64));
}

#[test]
fn rng_request_through_transport_raises_the_interrupt() {
    let mem = guest_memory();
    let dev = rng();
    let mut d = Driver::new(&mem, dev.clone());
    let q = TestQueue::new(&mem, 0, 16);
    q.write(q.slot(0), &[0u8; 256]);

    d.start(&[&q]);
    q.add_buffers(&[(256, true)]);
    d.notify(0);

    assert!(q.wait_used(1));
    assert_eq!(q.used_elem(0), (0, 256));
    assert_ne!(q.read(q.slot(0), 256), vec![0u8; 256]);
    assert_eq!(d.transport.interrupt_evt().read().unwrap(), 1);
    assert_eq!(
        d.read(reg::VIRTIO_MMIO_INTERRUPT_STATUS),
        reg::VIRTIO_MMIO_INT_VRING
    );
    d.write(reg::VIRTIO_MMIO_INTERRUPT_ACK, reg::VIRTIO_MMIO_INT_VRING);
    assert_eq!(d.read(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert!(dev.lock().unwrap().is_activated());
}

#[test]
fn event_idx_driver_is_served_across_ring_wrap() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());
    let q = TestQueue::new(&mem, 0, 4);
    let f = d.device_features();
    assert_ne!(f & RING_EVENT_IDX, 0);
    d.start(&[&q]);

    for round in 1..=10u16 {
        q.add_buffers(&[(16, true)]);
        d.notify(0);
        assert!(q.wait_used(round), "round {round}");
    }
}

#[test]
fn one_notify_eventfd_per_queue_at_offset_0x50() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());
    let q = TestQueue::new(&mem, 0, 16);
    d.start(&[&q]);

    d.notify(7); // no such queue
    q.add_buffers(&[(8, true)]);
    d.notify(0);

    assert_eq!(NOTIFY_REG_OFFSET, u64::from(reg::VIRTIO_MMIO_QUEUE_NOTIFY));
    assert_eq!(d.transport.queue_evts().len(), 1);
    assert!(q.wait_used(1));
}

#[test]
fn reset_stops_the_worker_and_allows_a_second_bring_up() {
    let mem = guest_memory();
    let dev = rng();
    let mut d = Driver::new(&mem, dev.clone());
    let q = TestQueue::new(&mem, 0, 16);
    d.start(&[&q]);
    q.add_buffers(&[(8, true)]);
    d.notify(0);
    assert!(q.wait_used(1));

    d.write(reg::VIRTIO_MMIO_STATUS, 0);

    assert!(!dev.lock().unwrap().is_activated());
    assert_eq!(d.status(), 0);
    assert_eq!(d.read(reg::VIRTIO_MMIO_QUEUE_READY), 0);
    // A fresh ring after reset starts from index 0 again.
    let q2 = TestQueue::new(&mem, 1, 16);
    d.start(&[&q2]);
    q2.add_buffers(&[(8, true)]);
    d.notify(0);
    assert!(q2.wait_used(1));
}

#[test]
fn bad_width_or_misaligned_register_access_is_harmless() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());

    let mut two = [0xffu8; 2];
    d.transport.read(0, &mut two);
    let mut four = [0xffu8; 4];
    d.transport.read(2, &mut four);
    d.transport.write(u64::from(reg::VIRTIO_MMIO_STATUS), &[1]);
    d.transport
        .write(u64::from(reg::VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);

    assert_eq!(two, [0, 0]);
    assert_eq!(four, [0; 4]);
    assert_eq!(d.status(), 0);
}

#[test]
fn shared_memory_regions_read_as_absent() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());

    d.write(reg::VIRTIO_MMIO_SHM_SEL, 0);

    assert_eq!(d.read(reg::VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
    assert_eq!(d.read(reg::VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
}

#[test]
fn config_space_past_the_end_reads_zero() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());

    let mut b = [0xffu8; 8];
    d.transport.read(0x100, &mut b);
    d.transport.read(u64::MAX - 8, &mut b);

    assert_eq!(b, [0; 8]);
}

#[test]
fn cmdline_entry_names_size_base_and_irq() {
    let mem = guest_memory();
    let d = Driver::new(&mem, rng());

    assert_eq!(
        d.transport.cmdline_entry(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}

#[test]
fn transport_state_round_trips_through_serde() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());
    let q = TestQueue::new(&mem, 0, 16);
    d.start(&[&q]);
    d.transport.notify_config_change();

    let state = d.transport.save().unwrap();
    let json = serde_json::to_string(&state).unwrap();

    assert_eq!(
        serde_json::from_str::<vitrine_microvm::devices::virtio::mmio::MmioState>(&json).unwrap(),
        state
    );
    assert_eq!(state.config_generation, 1);
    assert_eq!(state.queues[0].size, 16);
    assert!(state.queues[0].ready);
}

/// An rng transport whose driver has had `served` buffers filled.
fn rng_in_use<'m>(mem: &'m GuestMemoryMmap, served: u16) -> (Driver, TestQueue<'m>) {
    let mut d = Driver::new(mem, rng());
    let q = TestQueue::new(mem, 0, 16);
    d.start(&[&q]);
    for n in 1..=served {
        q.add_buffers(&[(32, true)]);
        d.notify(0);
        assert!(q.wait_used(n));
    }
    (d, q)
}

fn restore_rng(mem: &GuestMemoryMmap, state: &MmioState) -> MmioTransport {
    let device = RngDevice::restore(RngConstructorArgs, &Default::default()).unwrap();
    let args = MmioConstructorArgs {
        mem: mem.clone(),
        device: Arc::new(Mutex::new(device)),
    };
    MmioTransport::restore(args, state).unwrap()
}

#[test]
fn transport_state_round_trips_through_save_and_restore() {
    let mem = guest_memory();
    let (d, _q) = rng_in_use(&mem, 3);
    let state = d.transport.save().unwrap();

    let restored = restore_rng(&mem, &state);

    assert_eq!(restored.save().unwrap(), state);
    assert_eq!(
        state.active_queues,
        Some(vec![QueuePosition {
            next_avail: 3,
            next_used: 3
        }])
    );
    assert_eq!(state.interrupt_status, reg::VIRTIO_MMIO_INT_VRING);
    assert_eq!(
        restored.status(),
        VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK
    );
}

#[test]
fn a_restored_transport_serves_the_next_buffer_from_the_saved_position() {
    let mem = guest_memory();
    let (d, q) = rng_in_use(&mem, 3);
    let state = d.transport.save().unwrap();
    let mut restored = Driver {
        transport: restore_rng(&mem, &state),
    };

    let head = q.add_buffers(&[(32, true)]);
    restored.notify(0);

    assert!(q.wait_used(4), "used index {}", q.used_idx());
    assert_eq!(q.used_elem(3), (u32::from(head), 32));
}

#[test]
fn a_saved_device_serves_nothing_until_it_resumes() {
    let mem = guest_memory();
    let (mut d, q) = rng_in_use(&mem, 1);
    d.transport.save().unwrap();

    q.add_buffers(&[(32, true)]);
    d.notify(0);
    std::thread::sleep(Duration::from_millis(50));
    let while_paused = q.used_idx();
    d.transport.resume_device().unwrap();

    assert_eq!(while_paused, 1, "a paused worker left the ring alone");
    assert!(q.wait_used(2), "the notification waited for resume");
}

#[test]
fn an_inactive_device_saves_no_queue_positions_and_restores_inactive() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, rng());
    let q = TestQueue::new(&mem, 0, 16);
    assert!(d.negotiate(VERSION_1));
    assert!(d.setup_queue(0, &q));
    let state = d.transport.save().unwrap();

    let restored = restore_rng(&mem, &state);

    assert_eq!(state.active_queues, None);
    assert!(!restored.is_activated());
    assert_eq!(restored.save().unwrap(), state);
}

#[test]
fn a_restored_vsock_sends_a_transport_reset_into_the_first_event_buffer() {
    let mem = guest_memory();
    let dir = tempfile::tempdir().unwrap();
    let template = VsockDevice::new(3, dir.path().join("t.sock")).unwrap();
    let mut d = Driver::new(&mem, Arc::new(Mutex::new(template)));
    let (rx, tx, ev) = (
        TestQueue::new(&mem, 0, 16),
        TestQueue::new(&mem, 1, 16),
        TestQueue::new(&mem, 2, 16),
    );
    d.start(&[&rx, &tx, &ev]);
    let state = d.transport.save().unwrap();
    let VirtioDeviceState::Vsock(vsock_state) = d.transport.device().lock().unwrap().device_state()
    else {
        panic!("not a vsock state");
    };
    let args = VsockConstructorArgs {
        guest_cid: 42,
        uds_path: dir.path().join("c.sock"),
    };
    let device = VsockDevice::restore(args, &vsock_state).unwrap();
    let mut clone = Driver {
        transport: MmioTransport::restore(
            MmioConstructorArgs {
                mem: mem.clone(),
                device: Arc::new(Mutex::new(device)),
            },
            &state,
        )
        .unwrap(),
    };
    std::thread::sleep(Duration::from_millis(20));
    let before_buffer = ev.used_idx();

    let head = ev.add_buffers(&[(8, true)]);
    clone.notify(2);

    assert_eq!(before_buffer, 0, "nothing to put the event in yet");
    assert!(ev.wait_used(1));
    assert_eq!(ev.used_elem(0), (u32::from(head), 4));
    assert_eq!(ev.read(ev.slot(head), 4), 0u32.to_le_bytes());
    assert_eq!(
        clone.read(reg::VIRTIO_MMIO_INTERRUPT_STATUS) & reg::VIRTIO_MMIO_INT_VRING,
        reg::VIRTIO_MMIO_INT_VRING
    );
    assert_eq!(clone.read(reg::VIRTIO_MMIO_CONFIG), 42);
}

#[test]
fn a_restored_vsock_the_driver_had_not_set_up_sends_no_transport_reset() {
    let mem = guest_memory();
    let dir = tempfile::tempdir().unwrap();
    let template = VsockDevice::new(3, dir.path().join("t.sock")).unwrap();
    let d = Driver::new(&mem, Arc::new(Mutex::new(template)));
    let state = d.transport.save().unwrap();
    let args = VsockConstructorArgs {
        guest_cid: 42,
        uds_path: dir.path().join("c.sock"),
    };
    let device = VsockDevice::restore(args, &Default::default()).unwrap();
    let transport = MmioTransport::restore(
        MmioConstructorArgs {
            mem: mem.clone(),
            device: Arc::new(Mutex::new(device)),
        },
        &state,
    )
    .unwrap();
    let mut clone = Driver { transport };
    let (rx, tx, ev) = (
        TestQueue::new(&mem, 0, 16),
        TestQueue::new(&mem, 1, 16),
        TestQueue::new(&mem, 2, 16),
    );

    // A driver that sets up the device afresh has no sockets to drop.
    clone.start(&[&rx, &tx, &ev]);
    ev.add_buffers(&[(8, true)]);
    clone.notify(2);
    std::thread::sleep(Duration::from_millis(50));

    assert_eq!(state.active_queues, None);
    assert_eq!(ev.used_idx(), 0, "no transport reset for a fresh driver");
    assert_eq!(clone.read(reg::VIRTIO_MMIO_CONFIG), 42);
}
