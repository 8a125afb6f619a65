//! KVM tier, kernel mode: the real Linux virtio drivers against this VMM's
//! devices, on a host where Linux cannot reach user space under KVM.
//!
//! Boots the `nested-kvm` test kernel (the guest kernel's recipe plus one
//! patch that skips int3_selftest(); see shim/image/kernel/patches/) with a
//! read-only virtio-blk root (squashfs), virtio-rng and virtio-vsock, and
//! stops it when it is about to run init. Meanwhile the host connects to a
//! guest vsock port nobody listens on and must be refused (RST). Then the
//! kernel's own log and the devices' used rings are checked.
//!
//! Needs `VITRINE_TEST_KERNEL` (the variant's vmlinux; tests/run.sh builds
//! it) and mksquashfs; without either it says so and skips.

mod tier;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vitrine_microvm::arch::x86_64::cpuid::CpuidMask;
use vitrine_microvm::devices::serial::SerialSink;
use vitrine_microvm::devices::virtio::block::BlockDevice;
use vitrine_microvm::devices::virtio::rng::RngDevice;
use vitrine_microvm::devices::virtio::vsock::VsockDevice;
use vitrine_microvm::lifecycle::GuestExit;
use vitrine_microvm::vmm::{VirtioSlot, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

const TEST: &str = "linux_virtio_drivers_probe_and_use_the_devices_in_kernel_mode";
/// The kernel-mode boot takes about 90 s on the CI host.
const BOOT_LIMIT: Duration = Duration::from_secs(300);
const GUEST_CID: u64 = 3;
/// A guest port with no listener: the guest must answer RST.
const CLOSED_PORT: u32 = 4321;
/// Boots with a read-only root from the virtio disk. The nested-safe
/// features are hidden twice: by KVM_SET_CPUID2 (the VMM's mask) and by
/// `clearcpuid=`, because this host's nested KVM does not trap CPUID, so
/// the guest reads host CPUID and only the kernel's own list takes effect.
const CMDLINE: &str =
    "console=ttyS0 noxsave root=/dev/vda ro rootfstype=squashfs panic=-1 reboot=k";

/// `noxsave` covers XSAVE; clearcpuid= takes the rest.
fn mask_without_xsave(mask: &CpuidMask) -> String {
    mask.features()
        .map(|f| f.name)
        .filter(|n| *n != "xsave")
        .collect::<Vec<_>>()
        .join(",")
}

fn test_kernel() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("VITRINE_TEST_KERNEL")?);
    p.exists().then_some(p)
}

fn squashfs_root(dir: &Path) -> Result<PathBuf, String> {
    let tree = dir.join("root");
    std::fs::create_dir_all(tree.join("sbin")).map_err(|e| e.to_string())?;
    std::fs::write(tree.join("sbin/init"), b"#!/bin/sh\n").map_err(|e| e.to_string())?;
    std::fs::write(tree.join("hello.txt"), b"vitrine test root\n").map_err(|e| e.to_string())?;
    let img = dir.join("root.sqfs");
    let out = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&img)
        .args(["-noappend", "-comp", "gzip", "-quiet"])
        .output()
        .map_err(|e| format!("mksquashfs: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(img)
}

/// Reads `used.idx` of queue `q` of a device from guest memory, through the
/// addresses the driver programmed into the transport.
fn used_idx(vm: &Vm, slot: &VirtioSlot, q: usize) -> u16 {
    let state = slot.transport.lock().unwrap().save_state();
    let used = state.queues[q].used_ring;
    vm.memory().read_obj(GuestAddress(used + 2)).unwrap_or(0)
}

/// The `len` of every used element of queue `q`, read from guest memory.
fn used_lengths(vm: &Vm, slot: &VirtioSlot, q: usize) -> Vec<u32> {
    let state = slot.transport.lock().unwrap().save_state();
    let regs = &state.queues[q];
    let size = u64::from(regs.size.max(1));
    let idx = u64::from(used_idx(vm, slot, q));
    (0..idx.min(size))
        .map(|i| {
            vm.memory()
                .read_obj(GuestAddress(regs.used_ring + 4 + 8 * i + 4))
                .unwrap_or(u32::MAX)
        })
        .collect()
}

/// Connects to guest port `port` through the hybrid vsock socket and
/// returns what the host saw: Ok(true) for an OK, Ok(false) for a refusal.
fn connect_once(uds: &Path, port: u32) -> std::io::Result<bool> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Ok(false),
        Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).starts_with("OK")),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(e),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(false),
        Err(e) => Err(e),
    }
}

#[test]
fn linux_virtio_drivers_probe_and_use_the_devices_in_kernel_mode() {
    if !tier::kvm_or_skip(TEST) {
        return;
    }
    let Some(kernel) = test_kernel() else {
        tier::skip(
            TEST,
            "VITRINE_TEST_KERNEL is unset or missing; build it with \
             `shim/image/build.sh --kernel-only --variant nested-kvm` and point \
             VITRINE_TEST_KERNEL at the vmlinux in the directory it prints",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = match squashfs_root(dir.path()) {
        Ok(r) => r,
        Err(e) => {
            tier::skip(
                TEST,
                &format!("cannot build the squashfs root (apt install squashfs-tools): {e}"),
            );
            return;
        }
    };
    let root_bytes = std::fs::metadata(&root).unwrap().len();
    let uds = dir.path().join("vsock.sock");

    let mask = "nested-safe".parse::<CpuidMask>().unwrap();
    let mut config = VmConfig::new(&kernel);
    config.cmdline = format!("{CMDLINE} clearcpuid={}", mask_without_xsave(&mask));
    config.mem_mib = 256;
    config.cpuid_mask = mask;
    config.vsock_cid = GUEST_CID;
    let serial = Arc::new(Mutex::new(Vec::new()));
    let mut vm = Vm::new(config, SerialSink::Capture(serial.clone())).unwrap();
    let disk = std::fs::File::open(&root).unwrap();
    let blk = vm
        .add_virtio_device(Arc::new(Mutex::new(BlockDevice::new(disk, true).unwrap())))
        .unwrap();
    let rng = vm
        .add_virtio_device(Arc::new(Mutex::new(RngDevice::new())))
        .unwrap();
    let vsock = vm
        .add_virtio_device(Arc::new(Mutex::new(
            VsockDevice::new(GUEST_CID, &uds).unwrap(),
        )))
        .unwrap();
    vm.boot().unwrap();
    let lifecycle = vm.lifecycle().clone();
    let started = Instant::now();
    let runner = std::thread::spawn(move || {
        let exit = vm.run();
        (vm, exit)
    });

    // Drive the boot: refuse-test the vsock once the driver is up, stop the
    // guest when it is about to run init.
    let log = |s: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&s.lock().unwrap()).into_owned();
    let mut vsock_refused = None;
    let mut reached_init = None;
    while started.elapsed() < BOOT_LIMIT && !lifecycle.should_stop() {
        std::thread::sleep(Duration::from_millis(200));
        let text = log(&serial);
        if vsock_refused.is_none() && text.contains("NET: Registered PF_VSOCK") {
            if let Ok(ok) = connect_once(&uds, CLOSED_PORT) {
                vsock_refused = Some(!ok);
            }
        }
        if text.contains("Run /") || text.contains("Kernel panic") {
            reached_init = Some(started.elapsed());
            break;
        }
    }
    lifecycle.finish(Ok(GuestExit::Paused));
    let (vm, exit) = runner.join().unwrap();
    let text = log(&serial);
    let tail: String = text
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");

    let took = reached_init.unwrap_or_else(|| {
        panic!("no 'Run /' within {BOOT_LIMIT:?}; exit {exit:?}; serial tail:\n{tail}")
    });
    let sectors = root_bytes.div_ceil(512);
    assert!(
        text.contains(&format!("[vda] {sectors} 512-byte logical blocks")),
        "disk size not detected as {sectors} sectors:\n{tail}"
    );
    assert!(
        text.contains("VFS: Mounted root (squashfs filesystem) readonly on device 254:0"),
        "root not mounted read-only from vda:\n{tail}"
    );
    let bad: Vec<_> = text
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("virtio")
                && (l.contains("error") || l.contains("warn") || l.contains("fail"))
        })
        .collect();
    assert!(bad.is_empty(), "virtio error or warning lines: {bad:?}");
    assert!(!text.contains("Kernel panic"), "kernel panicked:\n{tail}");
    assert!(
        used_idx(&vm, &blk, 0) > 0,
        "virtio-blk used ring never advanced"
    );
    // virtio 1.2 2.7.8: used len is the bytes written into the chain: the
    // read data (whole sectors here) plus the one status byte.
    let lens = used_lengths(&vm, &blk, 0);
    assert!(
        lens.iter().all(|&l| l >= 1 && (l - 1) % 512 == 0),
        "virtio-blk used lengths are not data + status byte: {lens:?}"
    );
    assert!(
        used_idx(&vm, &rng, 0) > 0,
        "virtio-rng used ring never advanced (hwrng never read it)"
    );
    assert_eq!(
        vsock_refused,
        Some(true),
        "the host's CONNECT to a closed guest port was not refused"
    );
    assert!(
        used_idx(&vm, &vsock, 1) > 0,
        "vsock tx queue carried no packet (the RST)"
    );
    let evidence: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("[vda]")
                || l.contains("VFS: Mounted")
                || l.contains("Run /")
                || l.contains("vsock")
                || l.contains("virtio")
        })
        .collect();
    let _ = writeln_result(&format!(
        "kernel-mode boot to 'Run /' on vitrine-vmm: {:.1} s; used rings: blk {}, rng {}, vsock tx {}; kernel lines:\n  {}",
        took.as_secs_f64(),
        used_idx(&vm, &blk, 0),
        used_idx(&vm, &rng, 0),
        used_idx(&vm, &vsock, 1),
        evidence.join("\n  ")
    ));
}

fn writeln_result(line: &str) -> std::io::Result<()> {
    writeln!(std::io::stderr().lock(), "{line}")
}
