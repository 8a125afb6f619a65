//! Kernel-mode boot of the nested-kvm test kernel to "Run /init": this VMM
//! against QEMU `-M microvm -accel kvm`, same kernel, command line and
//! read-only squashfs root on virtio-blk, one run each (each takes over a
//! minute on the CI host). Needs VITRINE_TEST_KERNEL (tests/run.sh builds
//! it) and mksquashfs. `cargo bench -p vitrine-microvm --bench kernel_boot`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vitrine_microvm::arch::x86_64::cpuid::CpuidMask;
use vitrine_microvm::devices::serial::SerialSink;
use vitrine_microvm::devices::virtio::block::BlockDevice;
use vitrine_microvm::devices::virtio::rng::RngDevice;
use vitrine_microvm::lifecycle::GuestExit;
use vitrine_microvm::vmm::{Vm, VmConfig};

const LIMIT: Duration = Duration::from_secs(400);
const MARK: &str = "Run /";

fn cmdline(mask: &CpuidMask) -> String {
    let cleared: Vec<_> = mask
        .features()
        .map(|f| f.name)
        .filter(|n| *n != "xsave")
        .collect();
    format!(
        "console=ttyS0 noxsave root=/dev/vda ro rootfstype=squashfs panic=-1 reboot=k clearcpuid={}",
        cleared.join(",")
    )
}

fn squashfs(dir: &Path) -> PathBuf {
    let tree = dir.join("root");
    std::fs::create_dir_all(tree.join("sbin")).expect("mkdir");
    std::fs::write(tree.join("sbin/init"), b"#!/bin/sh\n").expect("write");
    let img = dir.join("root.sqfs");
    let ok = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&img)
        .args(["-noappend", "-comp", "gzip", "-quiet"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mksquashfs failed (apt install squashfs-tools)");
    img
}

fn ours(kernel: &Path, root: &Path, mask: CpuidMask) -> Option<Duration> {
    let started = Instant::now();
    let mut config = VmConfig::new(kernel);
    config.cmdline = cmdline(&mask);
    config.mem_mib = 256;
    config.cpuid_mask = mask;
    let serial = Arc::new(Mutex::new(Vec::new()));
    let mut vm = Vm::new(config, SerialSink::Capture(serial.clone())).expect("VM");
    let disk = std::fs::File::open(root).expect("disk");
    vm.add_virtio_device(Arc::new(Mutex::new(
        BlockDevice::new(disk, true).expect("blk"),
    )))
    .expect("blk");
    vm.add_virtio_device(Arc::new(Mutex::new(RngDevice::new())))
        .expect("rng");
    vm.boot().expect("boot");
    let lifecycle = vm.lifecycle().clone();
    let runner = std::thread::spawn(move || vm.run());
    let mut reached = None;
    while started.elapsed() < LIMIT && !lifecycle.should_stop() {
        std::thread::sleep(Duration::from_millis(50));
        if String::from_utf8_lossy(&serial.lock().unwrap()).contains(MARK) {
            reached = Some(started.elapsed());
            break;
        }
    }
    lifecycle.finish(Ok(GuestExit::Paused));
    let _ = runner.join();
    reached
}

fn qemu(kernel: &Path, root: &Path, mask: &CpuidMask) -> Option<Duration> {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off",
            "-accel",
            "kvm",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
            "-device",
            "virtio-rng-device",
            "-device",
            "virtio-blk-device,drive=root",
            "-drive",
        ])
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            root.display()
        ))
        .arg("-kernel")
        .arg(kernel)
        .arg("-append")
        .arg(cmdline(mask))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut out = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(MARK) {
                let _ = tx.send(());
                break;
            }
        }
    });
    let reached = rx.recv_timeout(LIMIT).ok().map(|()| started.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    reached
}

fn main() {
    let Some(kernel) = std::env::var_os("VITRINE_TEST_KERNEL").map(PathBuf::from) else {
        println!(
            "kernel_boot benchmark SKIPPED: VITRINE_TEST_KERNEL is unset (tests/run.sh builds it)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = squashfs(dir.path());
    let mask: CpuidMask = "nested-safe".parse().expect("mask");
    println!("nested-kvm test kernel, 256 MiB, virtio-blk squashfs root + virtio-rng, to '{MARK}'");
    let show = |d: Option<Duration>| {
        d.map_or("did not get there".to_string(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        })
    };
    let a = ours(&kernel, &root, mask.clone());
    println!("{:<34} {}", "vitrine-vmm (KVM)", show(a));
    let b = qemu(&kernel, &root, &mask);
    println!("{:<34} {}", "QEMU -M microvm -accel kvm", show(b));
    if let (Some(a), Some(b)) = (a, b) {
        println!("ratio ours/QEMU: {:.3}", a.as_secs_f64() / b.as_secs_f64());
    }
}
