//! Restore latency and per-clone memory: this VMM against QEMU's
//! `-incoming` restore of the same test guest, beside a cold boot, at 64,
//! 256 and 1024 MiB. `cargo bench -p vitrine-microvm --bench snapshot`;
//! `VITRINE_BENCH_RUNS` sets runs per cell (default 20).
//!
//! Every latency is process spawn to the first byte the guest prints,
//! measured the same way for both VMMs. The `counter` guest's first act
//! after a restore is to print, so that is "restore to first guest
//! instruction" plus one port exit.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vitrine_microvm::devices::serial::SerialSink;
use vitrine_microvm::lifecycle::GuestExit;
use vitrine_microvm::test_guests::{self, counter};
use vitrine_microvm::vmm::{RestoreOptions, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

const SIZES_MIB: [u32; 3] = [64, 256, 1024];
const CLONES_FOR_RSS: usize = 10;

/// Spawns `cmd`, returns the time to its first stdout byte, kills it.
/// A VMM that prints nothing for 30 s is killed and fails the benchmark.
fn first_output(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    });
    let mut b = [0u8; 1];
    let n = out.read(&mut b).expect("read");
    let took = start.elapsed();
    let _ = tx.send(());
    let _ = watchdog.join();
    assert_eq!(n, 1, "{cmd:?} printed nothing within 30 s");
    reap(child);
    took
}

fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn qemu_base(mem_mib: u32) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off",
        "-accel",
        "kvm",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-m",
    ])
    .arg(mem_mib.to_string())
    .arg("-kernel")
    .arg(test_guests::path("counter"));
    c
}

/// Boots the counter guest in QEMU, lets it count, and migrates it to
/// `state` through the human monitor: QEMU's own snapshot of the guest.
fn qemu_snapshot(mem_mib: u32, dir: &Path) -> PathBuf {
    let sock = dir.join("hmp.sock");
    let state = dir.join("qemu.state");
    let mut child = qemu_base(mem_mib)
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu");
    let mut out = child.stdout.take().expect("stdout");
    let mut b = [0u8; 64];
    let _ = out.read(&mut b).expect("qemu guest output");
    // Drain the guest's output from now on: a full pipe stalls QEMU's
    // main loop, monitor included.
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        while matches!(out.read(&mut sink), Ok(n) if n > 0) {}
    });
    let mut hmp = UnixStream::connect(&sock).expect("connect to the QEMU monitor");
    // Live, not after `stop`: QEMU carries a paused run state into the
    // destination, which would then never print.
    let cmd = format!("migrate \"exec:cat > {}\"\n", state.display());
    hmp.write_all(cmd.as_bytes()).expect("hmp");
    let mut reader = BufReader::new(hmp.try_clone().expect("clone"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        hmp.write_all(b"info migrate\n").expect("hmp");
        let mut line = String::new();
        let mut done = false;
        hmp.set_read_timeout(Some(Duration::from_millis(200))).ok();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("Migration status: completed") {
                done = true;
                break;
            }
            assert!(!line.contains("failed"), "QEMU migration failed: {line}");
            line.clear();
        }
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "QEMU migration did not complete");
    }
    reap(child);
    state
}

fn our_snapshot(mem_mib: u32, dir: &Path) {
    let mut config = VmConfig::new(test_guests::path("counter"));
    config.mem_mib = mem_mib;
    let mut vm = Vm::new(config, SerialSink::Discard).expect("template");
    vm.memory()
        .write_slice(
            &counter::params(Some(5), 1_000_000),
            GuestAddress(counter::PARAMS),
        )
        .expect("params");
    vm.boot().expect("boot");
    assert_eq!(vm.run().expect("run"), GuestExit::Ready);
    vm.snapshot(dir).expect("snapshot");
}

fn ms(d: &[Duration]) -> (f64, f64) {
    let mut v: Vec<f64> = d.iter().map(|x| x.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) * 50 / 100], v[(v.len() - 1) * 90 / 100])
}

/// KiB of private memory of a process (smaps_rollup), `self` or a pid.
fn private_kib_of(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    s.lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn private_kib() -> u64 {
    private_kib_of("self")
}

/// Private memory of a whole `vitrine-vmm restore` process, read while its
/// guest is running: the cost of one clone as the daemon runs it.
fn clone_process_private_kib(vmm: &str, dir: &Path) -> u64 {
    let mut child = Command::new(vmm)
        .args(["restore", "--snapshot"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut b = [0u8; 64];
    let _ = out.read(&mut b).expect("first output");
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        while matches!(out.read(&mut sink), Ok(n) if n > 0) {}
    });
    std::thread::sleep(Duration::from_millis(100));
    let kib = private_kib_of(&child.id().to_string());
    reap(child);
    kib
}

/// Private memory per restored clone after its guest ran, and the guest
/// pages each touched, from this process's own accounting.
fn clone_memory(dir: &Path) -> (f64, f64) {
    let before = private_kib();
    let mut clones = Vec::new();
    let mut touched_kib = 0u64;
    for i in 0..CLONES_FOR_RSS {
        let mut o = RestoreOptions::new(SerialSink::Discard);
        o.vsock_cid = 10 + i as u64;
        o.time_limit = Some(Duration::from_millis(30));
        let mut vm = Vm::restore(dir, o).expect("restore");
        // The counter never ends at this limit: it runs, then is stopped.
        let _ = vm.run();
        let set = vitrine_microvm::snapshot::memory::working_set(vm.memory()).expect("working set");
        touched_kib += set.iter().map(|r| r.pages * 4).sum::<u64>();
        clones.push(vm);
    }
    let after = private_kib();
    let n = CLONES_FOR_RSS as f64;
    (
        (after.saturating_sub(before)) as f64 / n,
        touched_kib as f64 / n,
    )
}

fn main() {
    let runs: usize = std::env::var("VITRINE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(5);
    if let Err(e) = vitrine_microvm::kvm::Hypervisor::open() {
        println!("snapshot benchmark SKIPPED: KVM unusable: {e}");
        return;
    }
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let vmm = env!("CARGO_BIN_EXE_vitrine-vmm");
    println!("counter guest, {runs} runs per cell, process spawn to first guest output");
    println!(
        "{:>8} {:>22} {:>22} {:>22} {:>16} {:>16}",
        "RAM",
        "ours restore p50/p90",
        "QEMU restore p50/p90",
        "ours cold boot p50/p90",
        "private/clone",
        "touched/clone"
    );
    let mut summary = Vec::new();
    for mib in SIZES_MIB {
        let dir = tempfile::tempdir().expect("tempdir");
        our_snapshot(mib, dir.path());
        let qemu_state = have_qemu.then(|| qemu_snapshot(mib, dir.path()));
        let (mut ours, mut qemu, mut cold) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            ours.push(first_output(
                Command::new(vmm)
                    .args(["restore", "--snapshot"])
                    .arg(dir.path()),
            ));
            cold.push(first_output(Command::new(vmm).args([
                "run",
                "--test-guest",
                "counter",
                "--mem-mib",
                &mib.to_string(),
            ])));
            if let Some(state) = &qemu_state {
                qemu.push(first_output(
                    qemu_base(mib)
                        .arg("-incoming")
                        .arg(format!("exec:cat {}", state.display())),
                ));
            }
        }
        // Clones stay alive until all are timed: dropping one makes the
        // kernel tear its VM down (about 15 ms here), which would land in
        // the next restore's time.
        let mut alive = Vec::with_capacity(runs);
        let in_vmm: Vec<Duration> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let vm = Vm::restore(dir.path(), RestoreOptions::new(SerialSink::Discard))
                    .expect("restore");
                let took = t.elapsed();
                alive.push(vm);
                took
            })
            .collect();
        drop(alive);
        let (r50, r90) = ms(&in_vmm);
        let (clone_private, clone_touched) = clone_memory(dir.path());
        let process_private = clone_process_private_kib(vmm, dir.path());
        let (o50, o90) = ms(&ours);
        let (c50, c90) = ms(&cold);
        let q = (!qemu.is_empty()).then(|| ms(&qemu));
        let qcell = q.map_or("SKIPPED (no QEMU)".to_string(), |(a, b)| {
            format!("{a:.2} / {b:.2} ms")
        });
        println!(
            "{:>5} MiB {:>22} {:>22} {:>22} {:>12.0} KiB {:>12.0} KiB",
            mib,
            format!("{o50:.2} / {o90:.2} ms"),
            qcell,
            format!("{c50:.2} / {c90:.2} ms"),
            clone_private,
            clone_touched
        );
        println!("{:>8} ours Vm::restore alone (in process, before the first vCPU entry): {r50:.2} / {r90:.2} ms", "");
        println!(
            "{:>8} one running `vitrine-vmm restore` process: {process_private} KiB private in all",
            ""
        );
        summary.push((mib, o50, c50, q.map(|x| x.0), clone_private - clone_touched));
    }
    for (mib, _, _, _, over) in &summary {
        println!(
            "{mib} MiB: private memory per clone above its touched pages: {over:.0} KiB (target <= 2048)"
        );
    }
    let cells: Vec<String> = summary
        .iter()
        .map(|(mib, o50, c50, q50, _)| {
            let vs_qemu = q50.map_or("n/a".to_string(), |q| format!("{:.3}", o50 / q));
            format!(
                "{mib} MiB restore/cold {:.3}, ours/QEMU {vs_qemu}",
                o50 / c50
            )
        })
        .collect();
    println!("ratios (p50): {}", cells.join("; "));
}
