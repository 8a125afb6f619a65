//! KVM tier, kernel mode: the real Linux virtio drivers against this VMM's
//! devices, on a host where Linux cannot reach user space under KVM.
//!
//! Boots the `nested-kvm` test kernel (the guest kernel's recipe plus one
//! patch that skips int3_selftest(); see shim/image/kernel/patches/) with a
//! read-only virtio-blk root (squashfs), virtio-rng and virtio-vsock, and
//! stops it when it is about to run init. Meanwhile the host connects to a
//! guest vsock port nobody listens on and must be refused (RST). Then the
//! kernel's own log and the devices' used rings are checked
//! (`kernel_mode`, shared with `linux_clones`).
//!
//! Needs `VITRINE_TEST_KERNEL` (the variant's vmlinux; tests/run.sh builds
//! it) and mksquashfs; without either it says so and skips.

mod kernel_mode;
mod tier;

use std::sync::{Arc, Mutex};

use kernel_mode::{RingMarks, VSOCK_TX};
use vitrine_microvm::devices::serial::SerialSink;

const TEST: &str = "linux_virtio_drivers_probe_and_use_the_devices_in_kernel_mode";

#[test]
fn linux_virtio_drivers_probe_and_use_the_devices_in_kernel_mode() {
    let dir = tempfile::tempdir().unwrap();
    let Some((kernel, root)) = kernel_mode::kernel_and_root_or_skip(TEST, dir.path()) else {
        return;
    };
    let root_bytes = std::fs::metadata(&root).unwrap().len();
    let uds = dir.path().join("vsock.sock");
    let serial = Arc::new(Mutex::new(Vec::new()));
    let (mut vm, devices) = kernel_mode::booted_vm(
        &kernel,
        &root,
        &uds,
        "",
        SerialSink::Capture(serial.clone()),
    );
    let lifecycle = vm.lifecycle().clone();
    let runner = std::thread::spawn(move || {
        let exit = vm.run();
        (vm, exit)
    });

    let drive = kernel_mode::drive_to_init(&serial, &lifecycle, &uds, |text| {
        text.contains("NET: Registered PF_VSOCK")
    });
    let (vm, exit) = runner.join().unwrap();

    let text = kernel_mode::text_of(&serial);
    assert!(
        exit.is_ok(),
        "run ended with {exit:?}:\n{}",
        kernel_mode::tail(&text)
    );
    kernel_mode::assert_booted_with_devices(
        &text,
        &vm,
        &devices,
        root_bytes,
        RingMarks::default(),
        &drive,
    );
    kernel_mode::report(&format!(
        "kernel-mode boot to 'Run /' on vitrine-vmm: {:.1} s; used rings: blk {}, rng {}, vsock tx {}; kernel lines:\n  {}",
        drive.reached_init.unwrap_or_default().as_secs_f64(),
        kernel_mode::used_idx(&vm, &devices.blk, 0),
        kernel_mode::used_idx(&vm, &devices.rng, 0),
        kernel_mode::used_idx(&vm, &devices.vsock, VSOCK_TX),
        kernel_mode::device_lines(&text)
    ));
}
