//! The guest image boots under QEMU (TCG), its shim says Ready over the
//! virtio-serial port, and the VM leaves nothing behind.

use std::time::Duration;

use vitrine_daemon::backend::qemu::QemuBackend;
use vitrine_daemon::backend::{Backend, GuestImage, GuestVm, VmConfig, VmExit};
use vitrine_daemon::fresh_guest::process_exists;
use vitrine_shim::protocol::HostMessage;
use vitrine_tests::guest_image;

#[test]
fn guest_boots_to_ready_and_powers_off_on_shutdown() -> anyhow::Result<()> {
    let Some(dir) = guest_image::require("guest_boots_to_ready_and_powers_off_on_shutdown") else {
        return Ok(());
    };
    let config = VmConfig::new(GuestImage::from_dir(&dir)?);

    let mut vm = QemuBackend::new().start(&config)?;
    eprintln!(
        "boot to Ready: {:?}, shim {:?}, capabilities {:?}",
        vm.boot_time(),
        vm.ready().shim_version,
        vm.ready().capabilities
    );
    let mut channel = vm.take_channel()?;
    channel.send(&HostMessage::Shutdown)?;
    let exit = vm.wait_or_kill(Duration::from_secs(20))?;

    // The image boots with reboot=t and QEMU runs with -no-reboot, so the
    // shim ends the VM by rebooting; RB_POWER_OFF only halts this ACPI-less
    // guest and leaves QEMU running.
    assert!(
        matches!(exit, VmExit::Exited(_)),
        "QEMU still ran 20 s after Shutdown (the shim must reboot(RB_AUTOBOOT) to end the VM): {exit:?}\n{}",
        vm.serial_log()
    );
    assert!(!vm.ready().shim_version.is_empty());
    Ok(())
}

#[test]
fn dropping_a_vm_kills_qemu_and_removes_its_directory() -> anyhow::Result<()> {
    let Some(dir) = guest_image::require("dropping_a_vm_kills_qemu_and_removes_its_directory")
    else {
        return Ok(());
    };
    let config = VmConfig::new(GuestImage::from_dir(&dir)?);
    let vm = QemuBackend::new().start(&config)?;
    let (pid, vm_dir) = (vm.pid(), vm.dir().to_owned());
    assert!(process_exists(pid));

    drop(vm);

    assert!(!process_exists(pid), "qemu pid {pid} still runs");
    assert!(!vm_dir.exists(), "{} left behind", vm_dir.display());
    Ok(())
}
