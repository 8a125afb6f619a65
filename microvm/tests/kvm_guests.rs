//! KVM tier: the integer-only test guests (guests/*.S) on this VMM.

mod tier;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vitrine_microvm::boot::BootProtocol;
use vitrine_microvm::bus::BusDevice;
use vitrine_microvm::devices::serial::SerialSink;
use vitrine_microvm::lifecycle::{GuestExit, GuestFault};
use vitrine_microvm::test_guests::{self, mmio_script, mmio_script::Step};
use vitrine_microvm::vmm::{Vm, VmConfig, VmError};
use vm_memory::{Bytes, GuestAddress};

type Output = Arc<Mutex<Vec<u8>>>;

fn vm_for(guest: &str, tweak: impl FnOnce(&mut VmConfig)) -> (Vm, Output) {
    let mut config = VmConfig::new(test_guests::path(guest));
    config.mem_mib = 16;
    config.time_limit = Some(Duration::from_secs(10));
    tweak(&mut config);
    let out = Output::default();
    let vm = Vm::new(config, SerialSink::Capture(out.clone())).expect("build VM");
    (vm, out)
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
}

#[test]
fn hello_guest_prints_on_serial_and_exits_cleanly_via_pvh() {
    if !tier::kvm_or_skip("hello_guest_prints_on_serial_and_exits_cleanly_via_pvh") {
        return;
    }
    let (mut vm, out) = vm_for("hello", |_| {});

    let loaded = vm.boot().unwrap();
    let exit = vm.run().unwrap();

    assert!(matches!(
        loaded.entry,
        vitrine_microvm::arch::x86_64::regs::EntryMode::Pvh { .. }
    ));
    assert_eq!(exit, GuestExit::DebugExit(0));
    assert_eq!(text(&out), "Hello from a Vitrine test guest\n");
}

#[test]
fn hello_guest_also_boots_through_the_64_bit_linux_entry() {
    if !tier::kvm_or_skip("hello_guest_also_boots_through_the_64_bit_linux_entry") {
        return;
    }
    let (mut vm, out) = vm_for("hello", |c| c.boot = BootProtocol::Linux);

    let loaded = vm.boot().unwrap();
    let exit = vm.run().unwrap();

    assert!(matches!(
        loaded.entry,
        vitrine_microvm::arch::x86_64::regs::EntryMode::Linux64 { .. }
    ));
    assert_eq!(exit, GuestExit::DebugExit(0));
    assert_eq!(text(&out), "Hello from a Vitrine test guest\n");
}

/// Registers of a fake device; reads return `0x5649_0000 | offset`.
#[derive(Default)]
struct RecordingDevice {
    writes: Vec<(u64, Vec<u8>)>,
    reads: Vec<(u64, usize)>,
}

impl BusDevice for RecordingDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        let v = 0x5649_0000u64 | offset;
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[test]
fn mmio_script_guest_reaches_a_device_region_with_every_width() {
    if !tier::kvm_or_skip("mmio_script_guest_reaches_a_device_region_with_every_width") {
        return;
    }
    const BASE: u64 = 0xd000_0000;
    let (mut vm, out) = vm_for("mmio_script", |_| {});
    let dev = Arc::new(Mutex::new(RecordingDevice::default()));
    vm.insert_mmio(dev.clone(), BASE, 0x1000).unwrap();
    let script = mmio_script::encode(&[
        Step::Write {
            width: 4,
            addr: BASE + 0x10,
            value: 0xdead_beef,
        },
        Step::Write {
            width: 1,
            addr: BASE + 0x20,
            value: 0x7f,
        },
        Step::Write {
            width: 2,
            addr: BASE + 0x22,
            value: 0xbeef,
        },
        Step::Write {
            width: 8,
            addr: BASE + 0x28,
            value: 0x0123_4567_89ab_cdef,
        },
        Step::Expect {
            width: 4,
            addr: BASE + 0x40,
            value: 0x5649_0040,
        },
        Step::Store {
            width: 2,
            addr: BASE + 0x44,
        },
    ]);
    vm.memory()
        .write_slice(&script, GuestAddress(mmio_script::TABLE))
        .unwrap();

    vm.boot().unwrap();
    let exit = vm.run().unwrap();

    assert_eq!(exit, GuestExit::DebugExit(0), "serial: {}", text(&out));
    let d = dev.lock().unwrap();
    assert_eq!(
        d.writes,
        vec![
            (0x10, 0xdead_beefu32.to_le_bytes().to_vec()),
            (0x20, vec![0x7f]),
            (0x22, 0xbeefu16.to_le_bytes().to_vec()),
            (0x28, 0x0123_4567_89ab_cdefu64.to_le_bytes().to_vec()),
        ]
    );
    assert_eq!(d.reads, vec![(0x40, 4), (0x44, 2)]);
    let stored: u64 = vm
        .memory()
        .read_obj(GuestAddress(mmio_script::RESULTS + 5 * 8))
        .unwrap();
    assert_eq!(stored, 0x0044, "a 2-byte read keeps the low half");
}

#[test]
fn mmio_script_guest_reports_a_mismatch_with_a_nonzero_exit() {
    if !tier::kvm_or_skip("mmio_script_guest_reports_a_mismatch_with_a_nonzero_exit") {
        return;
    }
    const BASE: u64 = 0xd000_0000;
    let (mut vm, out) = vm_for("mmio_script", |_| {});
    vm.insert_mmio(
        Arc::new(Mutex::new(RecordingDevice::default())),
        BASE,
        0x1000,
    )
    .unwrap();
    let script = mmio_script::encode(&[Step::Expect {
        width: 4,
        addr: BASE,
        value: 1,
    }]);
    vm.memory()
        .write_slice(&script, GuestAddress(mmio_script::TABLE))
        .unwrap();

    vm.boot().unwrap();
    let exit = vm.run().unwrap();

    assert_eq!(exit, GuestExit::DebugExit(2));
    assert!(
        text(&out).contains("read 0000000056490000 expected 0000000000000001"),
        "{}",
        text(&out)
    );
}

#[test]
fn unclaimed_mmio_reads_as_all_ones() {
    if !tier::kvm_or_skip("unclaimed_mmio_reads_as_all_ones") {
        return;
    }
    let (mut vm, out) = vm_for("mmio_script", |_| {});
    let script = mmio_script::encode(&[Step::Expect {
        width: 4,
        addr: 0xd000_0000,
        value: 0xffff_ffff,
    }]);
    vm.memory()
        .write_slice(&script, GuestAddress(mmio_script::TABLE))
        .unwrap();

    vm.boot().unwrap();

    assert_eq!(vm.run().unwrap(), GuestExit::DebugExit(0), "{}", text(&out));
}

#[test]
fn triple_fault_ends_the_run_with_a_clear_error() {
    if !tier::kvm_or_skip("triple_fault_ends_the_run_with_a_clear_error") {
        return;
    }
    let (mut vm, out) = vm_for("triple_fault", |_| {});

    vm.boot().unwrap();
    let err = vm.run().unwrap_err();

    assert!(
        matches!(err, VmError::Guest(GuestFault::TripleFault { vcpu: 0, rip }) if rip > 0x10_0000),
        "{err:?}"
    );
    assert!(err.to_string().contains("triple-faulted"));
    assert_eq!(text(&out), "about to triple-fault\n");
}

#[test]
fn endless_loop_is_stopped_by_the_time_limit() {
    if !tier::kvm_or_skip("endless_loop_is_stopped_by_the_time_limit") {
        return;
    }
    let limit = Duration::from_millis(300);
    let (mut vm, out) = vm_for("endless", |c| c.time_limit = Some(limit));
    vm.boot().unwrap();
    let started = Instant::now();

    let err = vm.run().unwrap_err();

    let took = started.elapsed();
    assert!(
        matches!(err, VmError::Guest(GuestFault::TimedOut(l)) if l == limit),
        "{err:?}"
    );
    assert!(took >= limit, "stopped early: {took:?}");
    assert!(took < limit + Duration::from_secs(5), "stop took {took:?}");
    assert_eq!(text(&out), "spinning forever\n");
}

#[test]
fn halt_without_irqchip_ends_the_run_cleanly() {
    if !tier::kvm_or_skip("halt_without_irqchip_ends_the_run_cleanly") {
        return;
    }
    let (mut vm, out) = vm_for("halt", |c| c.irqchip = false);

    vm.boot().unwrap();

    assert_eq!(vm.run().unwrap(), GuestExit::Halted);
    assert_eq!(text(&out), "halting\n");
}

#[test]
fn several_vcpus_start_and_stop_together() {
    if !tier::kvm_or_skip("several_vcpus_start_and_stop_together") {
        return;
    }
    let (mut vm, out) = vm_for("hello", |c| c.vcpus = 4);

    vm.boot().unwrap();

    assert_eq!(vm.run().unwrap(), GuestExit::DebugExit(0));
    assert_eq!(text(&out), "Hello from a Vitrine test guest\n");
}

#[test]
fn a_vm_runs_only_once() {
    if !tier::kvm_or_skip("a_vm_runs_only_once") {
        return;
    }
    let (mut vm, _) = vm_for("hello", |_| {});
    vm.boot().unwrap();
    vm.run().unwrap();

    assert!(matches!(vm.run(), Err(VmError::AlreadyRan)));
}

#[test]
fn probe_finds_integer_guests_and_explains_every_no() {
    if !tier::kvm_or_skip("probe_finds_integer_guests_and_explains_every_no") {
        return;
    }

    let report = vitrine_microvm::probe::run();

    assert!(report.integer_guests, "{report:?}");
    for c in report.checks.iter().filter(|c| !c.ok) {
        assert!(
            c.detail.contains("vCPU") || c.detail.contains("guest"),
            "{c:?}"
        );
    }
    assert_eq!(
        report.full_linux_guests,
        report.full_linux_reason().is_none()
    );
    eprintln!(
        "probe on this host: full Linux guests: {:?}",
        report.full_linux_reason()
    );
}
