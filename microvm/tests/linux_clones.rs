//! KVM tier, kernel mode: a real Linux kernel snapshotted mid-boot on this
//! VMM and restored into two clones, each with its own disk and vsock
//! socket, each of which finishes the boot on its own live devices.
//!
//! The template boots the `nested-kvm` test kernel (see `linux_drivers`)
//! and is paused by its own console when [`SNAPSHOT_LINE`] is printed:
//! every virtio device has probed by then, and the root is not mounted
//! yet. Each clone then has to read its root from its own copy of the
//! disk, read the rng, take the vsock transport reset, and refuse a host
//! CONNECT to a closed port with an RST, the same checks as the cold boot
//! (`kernel_mode`), counted from where the rings stood at the restore.
//!
//! Needs `VITRINE_TEST_KERNEL` and mksquashfs; without either it says so
//! and skips.

mod kernel_mode;
mod tier;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kernel_mode::{Devices, DriveResult, RingMarks};
use vitrine_microvm::devices::serial::SerialSink;
use vitrine_microvm::lifecycle::GuestExit;
use vitrine_microvm::snapshot::identity::CloneIdentity;
use vitrine_microvm::snapshot::{MEMORY_FILE, STATE_FILE};
use vitrine_microvm::vmm::{DiskBacking, RestoreOptions, Vm};

const TEST: &str =
    "a_kernel_snapshotted_mid_boot_finishes_booting_in_two_clones_on_their_own_devices";
/// `rootdelay=` makes the kernel say so after every initcall has run (all
/// drivers probed) and right before it mounts the root: the snapshot
/// point. Each clone then sleeps that long and mounts. The delay is what
/// lets a clone read the rng: once the CRNG is ready, Linux's hwrng
/// thread reads the device and then sleeps half the uptime (drivers/char/
/// random.c, crng_reseed_interval()), so a clone restored at uptime U
/// reads it again within U/2. Boots to this point take 40 to 90 s here.
const ROOT_DELAY_S: u64 = 60;
const SNAPSHOT_LINE: &str = "Waiting 60 sec before mounting root device";

struct Clone {
    vm: Vm,
    devices: Devices,
    serial: Arc<Mutex<Vec<u8>>>,
    uds: std::path::PathBuf,
    disk: std::path::PathBuf,
}

fn restore_clone(snapshot: &Path, dir: &Path, root: &Path, n: u64) -> Clone {
    let disk = dir.join(format!("clone{n}.sqfs"));
    std::fs::copy(root, &disk).unwrap();
    let uds = dir.join(format!("clone{n}.sock"));
    let serial = Arc::new(Mutex::new(Vec::new()));
    let mut options = RestoreOptions::new(SerialSink::Capture(serial.clone()));
    options.vsock_cid = kernel_mode::GUEST_CID + 1 + n;
    options.vsock_uds = Some(uds.clone());
    options.disks.push(DiskBacking {
        file: std::fs::File::open(&disk).unwrap(),
        read_only: true,
    });
    let vm = Vm::restore(snapshot, options).unwrap();
    let devices = Devices::of(&vm);
    Clone {
        vm,
        devices,
        serial,
        uds,
        disk,
    }
}

/// This process's private (copy-on-write) mappings of `file`.
fn private_mappings_of(file: &Path) -> usize {
    let name = file.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(name.as_str()))
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.ends_with('p'))
        })
        .count()
}

/// Runs a clone to init on its own thread, the host driving its vsock
/// from the start (its driver is already up).
fn run_clone(mut clone: Clone) -> std::thread::JoinHandle<(Clone, DriveResult, Duration)> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let lifecycle = clone.vm.lifecycle().clone();
        let (serial, uds) = (clone.serial.clone(), clone.uds.clone());
        let driver = std::thread::spawn(move || {
            kernel_mode::drive_to_init(&serial, &lifecycle, &uds, |_| true)
        });
        let exit = clone.vm.run();
        let drive = driver.join().unwrap();
        let took = started.elapsed();
        let text = kernel_mode::text_of(&clone.serial);
        assert!(
            exit.is_ok(),
            "clone run ended with {exit:?}:\n{}",
            kernel_mode::tail(&text)
        );
        (clone, drive, took)
    })
}

#[test]
fn a_kernel_snapshotted_mid_boot_finishes_booting_in_two_clones_on_their_own_devices() {
    let dir = tempfile::tempdir().unwrap();
    let Some((kernel, root)) = kernel_mode::kernel_and_root_or_skip(TEST, dir.path()) else {
        return;
    };
    let root_bytes = std::fs::metadata(&root).unwrap().len();
    let snapshot = dir.path().join("snapshot");
    let test_started = Instant::now();

    // The template: boot until the console names the snapshot point.
    let template_serial = Arc::new(Mutex::new(Vec::new()));
    let (mut template, template_devices) = kernel_mode::booted_vm(
        &kernel,
        &root,
        &dir.path().join("template.sock"),
        &format!("rootdelay={ROOT_DELAY_S}"),
        SerialSink::Capture(template_serial.clone()),
    );
    template.pause_on_serial(SNAPSHOT_LINE);
    let exit = template.run_for(kernel_mode::BOOT_LIMIT);
    let template_text = kernel_mode::text_of(&template_serial);
    assert_eq!(
        exit.as_ref().ok(),
        Some(&GuestExit::Paused),
        "template run: {exit:?}:\n{}",
        kernel_mode::tail(&template_text)
    );
    assert!(
        template.serial_watch_fired(),
        "'{SNAPSHOT_LINE}' not printed within {:?}:\n{}",
        kernel_mode::BOOT_LIMIT,
        kernel_mode::tail(&template_text)
    );
    let booted_in = test_started.elapsed();
    assert!(
        template_text.contains("virtio_vsock") || template_text.contains("PF_VSOCK"),
        "vsock not up at the snapshot point:\n{}",
        kernel_mode::tail(&template_text)
    );
    assert!(
        !template_text.contains("VFS: Mounted"),
        "the root was mounted before the snapshot point"
    );
    let saving = Instant::now();
    let info = template.snapshot(&snapshot).unwrap();
    let saved_in = saving.elapsed();
    let template_generation = template.identity().unwrap().generation;
    // Where the rings stood in the template: everything past it is a
    // clone's own (the vsock reset event is written at the restore).
    let marks = RingMarks::read(&template, &template_devices);
    let uptime = Duration::from_nanos(
        vitrine_microvm::snapshot::file::read(&snapshot.join(STATE_FILE))
            .unwrap()
            .clock
            .clock,
    );
    drop(template);

    // Two clones, alive at once, each with its own disk copy and socket.
    let memory_file = snapshot.join(MEMORY_FILE);
    let memory_before = crc32fast::hash(&std::fs::read(&memory_file).unwrap());
    let restoring = Instant::now();
    let clones = [
        restore_clone(&snapshot, dir.path(), &root, 0),
        restore_clone(&snapshot, dir.path(), &root, 1),
    ];
    let restored_in = restoring.elapsed();
    let identities: Vec<CloneIdentity> = clones
        .iter()
        .map(|c| CloneIdentity::read(c.vm.memory()).expect("no identity page in a clone"))
        .collect();
    let private_maps = private_mappings_of(&memory_file);
    let runs: Vec<_> = clones.into_iter().map(run_clone).collect();
    let results: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();

    for (i, (clone, drive, _)) in results.iter().enumerate() {
        let own = kernel_mode::text_of(&clone.serial);
        assert!(
            own.contains("VFS: Mounted root") && own.contains("Run /"),
            "clone {i} did not mount its root and reach init itself:\n{}",
            kernel_mode::tail(&own)
        );
        assert!(
            kernel_mode::used_idx(&clone.vm, &clone.devices.rng, 0) > marks.rng,
            "clone {i}: the guest never read the rng after the restore; its hwrng \
             thread sleeps up to half the uptime at the snapshot ({:.0} s of {uptime:?}), \
             which must stay under rootdelay ({ROOT_DELAY_S} s)",
            uptime.as_secs_f64() / 2.0
        );
        // The clone's whole kernel log: the template's, then its own.
        let text = format!("{template_text}{own}");
        kernel_mode::assert_booted_with_devices(
            &text,
            &clone.vm,
            &clone.devices,
            root_bytes,
            marks,
            drive,
        );
        assert!(
            kernel_mode::used_idx(&clone.vm, &clone.devices.vsock, kernel_mode::VSOCK_EVENT)
                > marks.vsock_event,
            "clone {i}: no vsock transport reset event reached the guest"
        );
        assert_eq!(identities[i].generation, template_generation + 1);
        assert_eq!(
            CloneIdentity::read(clone.vm.memory()).as_ref(),
            Some(&identities[i]),
            "clone {i}: the kernel overwrote its identity page while it ran"
        );
        assert_eq!(
            identities[i].vsock_cid,
            kernel_mode::GUEST_CID + 1 + i as u64
        );
        assert!(clone.disk.exists());
    }
    assert!(
        private_maps >= 2,
        "the clones do not map the snapshot's memory MAP_PRIVATE ({private_maps} mappings)"
    );
    assert_eq!(
        crc32fast::hash(&std::fs::read(&memory_file).unwrap()),
        memory_before,
        "a clone wrote the snapshot's memory file"
    );
    assert_ne!(
        identities[0].seed, identities[1].seed,
        "two clones got the same identity seed"
    );
    let total = test_started.elapsed();
    kernel_mode::report(&format!(
        "kernel-mode clones on vitrine-vmm: template boot to '{SNAPSHOT_LINE}' {:.1} s \
         (guest uptime {uptime:.1?}); \
         snapshot {:.0} ms (state {} B, memory {} MiB sparse); two restores {:.0} ms; \
         clone 0 to 'Run /' {:.2} s, clone 1 {:.2} s; whole test {:.1} s; \
         clone 0 lines after the restore:\n  {}",
        booted_in.as_secs_f64(),
        saved_in.as_secs_f64() * 1e3,
        info.state_bytes,
        info.memory_bytes >> 20,
        restored_in.as_secs_f64() * 1e3,
        results[0].2.as_secs_f64(),
        results[1].2.as_secs_f64(),
        total.as_secs_f64(),
        kernel_mode::device_lines(&kernel_mode::text_of(&results[0].0.serial)),
    ));
}
