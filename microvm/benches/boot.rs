//! Boot latency of one test guest: this VMM against QEMU `-M microvm
//! -accel kvm`, run interleaved in one process so both see the same noise.
//!
//! Measures, from process spawn: the first byte of guest serial output on
//! the VMM's stdout, and process exit. Also this VMM's resident memory
//! without guest RAM. `cargo bench -p vitrine-microvm --bench boot`;
//! `VITRINE_BENCH_RUNS` overrides the run count (default 30).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vitrine_microvm::test_guests;

const GUEST: &str = "hello";
const MEM_MIB: &str = "64";

struct Sample {
    first_output: Duration,
    exit: Duration,
    vmm_rss_kib: Option<u64>,
    /// vitrine-vmm's own time from main() to the end of the run, before
    /// the kernel tears the VM down at process exit.
    vmm_work_ms: Option<f64>,
}

fn time_one(cmd: &mut Command) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut byte = [0u8; 1];
    let n = stdout.read(&mut byte).map_err(|e| e.to_string())?;
    let first_output = start.elapsed();
    if n == 0 {
        return Err(format!("{cmd:?} printed nothing"));
    }
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let exit = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let vmm_rss_kib = stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix("vmm_rss_kib="))
        .and_then(|v| v.parse().ok());
    let vmm_work_ms = stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix("wall_ms="))
        .and_then(|v| v.parse().ok());
    Ok(Sample {
        first_output,
        exit,
        vmm_rss_kib,
        vmm_work_ms,
    })
}

/// Nearest-rank percentile `pct` (0..=100) of sorted samples.
fn percentile(sorted: &[f64], pct: usize) -> f64 {
    sorted[(sorted.len() - 1) * pct / 100]
}

fn ms(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (percentile(&v, 50), percentile(&v, 90))
}

fn ours(guest: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitrine-vmm"));
    c.args(["run", "--mem-mib", MEM_MIB, "--stats", "--kernel"])
        .arg(guest);
    c
}

fn qemu(guest: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off",
        "-accel",
        "kvm",
        "-m",
        MEM_MIB,
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
    ])
    .arg(guest);
    c
}

fn main() {
    let runs: usize = std::env::var("VITRINE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .max(20);
    let guest = test_guests::path(GUEST);
    if let Err(e) = vitrine_microvm::kvm::Hypervisor::open() {
        println!("boot benchmark SKIPPED: KVM unusable: {e}");
        return;
    }
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());

    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(time_one(&mut ours(&guest)).expect("vitrine-vmm run"));
        if have_qemu {
            b.push(time_one(&mut qemu(&guest)).expect("qemu run"));
        }
    }

    let ms_of = |s: &[Sample], f: fn(&Sample) -> Duration| {
        ms(s.iter().map(|x| f(x).as_secs_f64() * 1e3).collect())
    };
    println!(
        "guest: {GUEST}.elf (integer-only, PVH entry), {MEM_MIB} MiB RAM, {runs} runs each, interleaved"
    );
    println!(
        "{:<12} {:>16} {:>16} {:>12} {:>12}",
        "vmm", "first output p50", "first output p90", "exit p50", "exit p90"
    );
    let row = |name: &str, s: &[Sample]| {
        let (f50, f90) = ms_of(s, |x| x.first_output);
        let (e50, e90) = ms_of(s, |x| x.exit);
        println!("{name:<12} {f50:>13.2} ms {f90:>13.2} ms {e50:>9.2} ms {e90:>9.2} ms");
        (f50, e50)
    };
    let (of50, oe50) = row("vitrine-vmm", &a);
    let mut rss: Vec<f64> = a
        .iter()
        .filter_map(|s| s.vmm_rss_kib)
        .map(|k| k as f64 / 1024.0)
        .collect();
    rss.sort_by(f64::total_cmp);
    if let (Some(lo), Some(hi)) = (rss.first(), rss.last()) {
        println!(
            "vitrine-vmm resident memory excluding guest RAM: p50 {:.2} MiB (min {lo:.2}, max {hi:.2}; target <= 5 MiB)",
            percentile(&rss, 50)
        );
    }
    let work: Vec<f64> = a.iter().filter_map(|s| s.vmm_work_ms).collect();
    if !work.is_empty() {
        let (w50, _) = ms(work);
        println!(
            "vitrine-vmm breakdown (p50): {w50:.2} ms in the VMM (create, boot, run, stop); \
             the rest of exit is process spawn and the kernel destroying the KVM VM"
        );
    }
    if !have_qemu {
        println!("QEMU row SKIPPED: qemu-system-x86_64 not found; no ratio");
        return;
    }
    let (qf50, qe50) = row("qemu", &b);
    println!(
        "ratio ours/QEMU: first output p50 {:.3}, exit p50 {:.3} (target <= 0.25)",
        of50 / qf50,
        oe50 / qe50
    );
}
