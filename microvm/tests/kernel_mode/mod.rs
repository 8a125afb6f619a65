//! The kernel-mode Linux guest both `linux_drivers` (a cold boot) and
//! `linux_clones` (clones restored mid-boot) run: the `nested-kvm` test
//! kernel with a read-only virtio-blk root (squashfs), virtio-rng and
//! virtio-vsock, driven until it is about to run init, and the checks that
//! its drivers used every device.

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
use vitrine_microvm::lifecycle::{GuestExit, Lifecycle};
use vitrine_microvm::vmm::{VirtioSlot, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

use crate::tier;

/// The kernel-mode boot takes about 90 s on the CI host.
pub const BOOT_LIMIT: Duration = Duration::from_secs(300);
pub const GUEST_CID: u64 = 3;
/// A guest port with no listener: the guest must answer RST.
pub const CLOSED_PORT: u32 = 4321;
/// Boots with a read-only root from the virtio disk. The nested-safe
/// features are hidden twice: by KVM_SET_CPUID2 (the VMM's mask) and by
/// `clearcpuid=`, because this host's nested KVM does not trap CPUID, so
/// the guest reads host CPUID and only the kernel's own list takes effect.
const CMDLINE: &str =
    "console=ttyS0 noxsave root=/dev/vda ro rootfstype=squashfs panic=-1 reboot=k";
/// Queue indexes: virtio-vsock's tx and event queues.
pub const VSOCK_TX: usize = 1;
pub const VSOCK_EVENT: usize = 2;

/// `noxsave` covers XSAVE; clearcpuid= takes the rest.
fn mask_without_xsave(mask: &CpuidMask) -> String {
    mask.features()
        .map(|f| f.name)
        .filter(|n| *n != "xsave")
        .collect::<Vec<_>>()
        .join(",")
}

/// The test kernel and a squashfs root in `dir`, or `None` after saying
/// why `test` cannot run here.
pub fn kernel_and_root_or_skip(test: &str, dir: &Path) -> Option<(PathBuf, PathBuf)> {
    if !tier::kvm_or_skip(test) {
        return None;
    }
    let kernel = std::env::var_os("VITRINE_TEST_KERNEL")
        .map(PathBuf::from)
        .filter(|p| p.exists());
    let Some(kernel) = kernel else {
        tier::skip(
            test,
            "VITRINE_TEST_KERNEL is unset or missing; build it with \
             `shim/image/build.sh --kernel-only --variant nested-kvm` and point \
             VITRINE_TEST_KERNEL at the vmlinux in the directory it prints",
        );
        return None;
    };
    match squashfs_root(dir) {
        Ok(root) => Some((kernel, root)),
        Err(e) => {
            tier::skip(
                test,
                &format!("cannot build the squashfs root (apt install squashfs-tools): {e}"),
            );
            None
        }
    }
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

/// The guest's devices, in the order they are attached (and restored).
pub struct Devices {
    pub blk: VirtioSlot,
    pub rng: VirtioSlot,
    pub vsock: VirtioSlot,
}

impl Devices {
    /// A restored VM's devices, by the attach order above.
    #[allow(dead_code)] // only linux_clones restores
    pub fn of(vm: &Vm) -> Self {
        let [blk, rng, vsock] = vm.virtio_devices() else {
            panic!(
                "expected blk, rng and vsock; the VM has {:?}",
                vm.virtio_devices()
            );
        };
        Self {
            blk: blk.clone(),
            rng: rng.clone(),
            vsock: vsock.clone(),
        }
    }
}

/// The kernel-mode VM, booted and ready to run, with `extra` on its
/// command line.
pub fn booted_vm(
    kernel: &Path,
    root: &Path,
    uds: &Path,
    extra: &str,
    serial: SerialSink,
) -> (Vm, Devices) {
    let mask = "nested-safe".parse::<CpuidMask>().unwrap();
    let mut config = VmConfig::new(kernel);
    config.cmdline = format!("{CMDLINE} clearcpuid={}", mask_without_xsave(&mask));
    if !extra.is_empty() {
        config.cmdline = format!("{} {extra}", config.cmdline);
    }
    config.mem_mib = 256;
    config.cpuid_mask = mask;
    config.vsock_cid = GUEST_CID;
    let mut vm = Vm::new(config, serial).unwrap();
    let disk = std::fs::File::open(root).unwrap();
    let blk = vm
        .add_virtio_device(Arc::new(Mutex::new(BlockDevice::new(disk, true).unwrap())))
        .unwrap();
    let rng = vm
        .add_virtio_device(Arc::new(Mutex::new(RngDevice::new())))
        .unwrap();
    let vsock = vm
        .add_virtio_device(Arc::new(Mutex::new(
            VsockDevice::new(GUEST_CID, uds).unwrap(),
        )))
        .unwrap();
    vm.boot().unwrap();
    (vm, Devices { blk, rng, vsock })
}

/// Reads `used.idx` of queue `q` of a device from guest memory, through the
/// addresses the driver programmed into the transport.
pub fn used_idx(vm: &Vm, slot: &VirtioSlot, q: usize) -> u16 {
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

/// Where each device's used ring stood when a run began (all zero for a
/// cold boot): the run's own work is what lies beyond it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingMarks {
    pub blk: u16,
    pub rng: u16,
    pub vsock_tx: u16,
    #[allow(dead_code)] // only a restored device sends events
    pub vsock_event: u16,
}

impl RingMarks {
    pub fn read(vm: &Vm, d: &Devices) -> Self {
        Self {
            blk: used_idx(vm, &d.blk, 0),
            rng: used_idx(vm, &d.rng, 0),
            vsock_tx: used_idx(vm, &d.vsock, VSOCK_TX),
            vsock_event: used_idx(vm, &d.vsock, VSOCK_EVENT),
        }
    }
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

pub fn text_of(serial: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&serial.lock().unwrap()).into_owned()
}

/// What the host saw while it drove a run to init.
#[derive(Debug)]
pub struct DriveResult {
    /// Whether the CONNECT to [`CLOSED_PORT`] was refused (`None`: never
    /// got an answer).
    pub vsock_refused: Option<bool>,
    /// When the kernel printed "Run /" (or panicked).
    pub reached_init: Option<Duration>,
}

/// Drives a running guest: once `vsock_up` holds for its serial text, the
/// host connects to a closed guest port (which must be refused); when the
/// kernel is about to run init, the guest is stopped.
pub fn drive_to_init(
    serial: &Arc<Mutex<Vec<u8>>>,
    lifecycle: &Lifecycle,
    uds: &Path,
    vsock_up: impl Fn(&str) -> bool,
) -> DriveResult {
    let started = Instant::now();
    let mut result = DriveResult {
        vsock_refused: None,
        reached_init: None,
    };
    while started.elapsed() < BOOT_LIMIT && !lifecycle.should_stop() {
        std::thread::sleep(Duration::from_millis(50));
        let text = text_of(serial);
        if result.vsock_refused.is_none() && vsock_up(&text) {
            if let Ok(ok) = connect_once(uds, CLOSED_PORT) {
                result.vsock_refused = Some(!ok);
            }
        }
        if text.contains("Run /") || text.contains("Kernel panic") {
            result.reached_init = Some(started.elapsed());
            break;
        }
    }
    lifecycle.finish(Ok(GuestExit::Paused));
    result
}

/// The last 40 lines of a serial log.
pub fn tail(text: &str) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Checks that a kernel whose whole log is `text` probed and used every
/// device: the disk's size detected, the root mounted read-only from it,
/// no virtio error, and beyond `marks` (where the rings stood when this
/// run began) disk reads with well-formed used lengths, rng reads, and
/// the RST for the refused CONNECT on the vsock tx queue.
pub fn assert_booted_with_devices(
    text: &str,
    vm: &Vm,
    d: &Devices,
    root_bytes: u64,
    marks: RingMarks,
    drive: &DriveResult,
) {
    let tail = tail(text);
    assert!(
        drive.reached_init.is_some(),
        "no 'Run /' within {BOOT_LIMIT:?}; serial tail:\n{tail}"
    );
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
    let now = RingMarks::read(vm, d);
    assert!(
        now.blk > marks.blk,
        "virtio-blk used ring did not advance past {}",
        marks.blk
    );
    // virtio 1.2 2.7.8: used len is the bytes written into the chain: the
    // read data (whole sectors here) plus the one status byte.
    let lens = used_lengths(vm, &d.blk, 0);
    assert!(
        lens.iter().all(|&l| l >= 1 && (l - 1) % 512 == 0),
        "virtio-blk used lengths are not data + status byte: {lens:?}"
    );
    assert!(
        now.rng > marks.rng,
        "virtio-rng used ring did not advance past {} (hwrng never read it)",
        marks.rng
    );
    assert_eq!(
        drive.vsock_refused,
        Some(true),
        "the host's CONNECT to a closed guest port was not refused"
    );
    assert!(
        now.vsock_tx > marks.vsock_tx,
        "vsock tx queue carried no packet (the RST) past {}",
        marks.vsock_tx
    );
}

/// The kernel's lines about the devices, for the test's report.
pub fn device_lines(text: &str) -> String {
    text.lines()
        .filter(|l| {
            l.contains("[vda]")
                || l.contains("VFS: Mounted")
                || l.contains("Run /")
                || l.contains("vsock")
                || l.contains("virtio")
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Prints a result line on the real stderr (shown for passing tests too).
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
