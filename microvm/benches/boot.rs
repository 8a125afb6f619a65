//! Boot latency of one test guest: this VMM against QEMU `-M microvm
//! -accel kvm`, run interleaved in one process so both see the same noise.
//!
//! Measures, from process spawn: the first byte of guest serial output on
//! the VMM's stdout; the guest's result (this VMM reports it on
//! `--status-fd` before teardown; QEMU's only report is its exit status, so
//! its result time is its exit); and process exit, which includes the
//! kernel destroying the VM. Also this VMM's resident memory without guest
//! RAM. `cargo bench -p vitrine-microvm --bench boot`;
//! `VITRINE_BENCH_RUNS` overrides the run count (default 30).

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vitrine_microvm::status::GuestReport;
use vitrine_microvm::test_guests;

const GUEST: &str = "hello";
const MEM_MIB: &str = "64";

/// The status fd number the VMM gets.
const STATUS_FD: i32 = 3;

struct Sample {
    first_output: Duration,
    /// When the caller knew the guest's result.
    result: Duration,
    exit: Duration,
    vmm_rss_kib: Option<u64>,
    /// vitrine-vmm's own time from main() to the end of the run, before
    /// the kernel tears the VM down at process exit.
    vmm_work_ms: Option<f64>,
}

/// How a VMM tells the guest's result.
#[derive(Clone, Copy)]
enum Report {
    /// A JSON line on the status fd, then exit status 0.
    StatusFd,
    /// Only its exit status, as QEMU's isa-debug-exit encodes it.
    DebugExitStatus,
}

fn time_one(cmd: &mut Command, status: Option<StatusPipe>) -> Result<Sample, String> {
    let status_kind = if status.is_some() {
        Report::StatusFd
    } else {
        Report::DebugExitStatus
    };
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
    let result = match status {
        Some(StatusPipe { reader: r, writer }) => {
            drop(writer);
            let mut line = String::new();
            BufReader::new(r)
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            let at = start.elapsed();
            match GuestReport::parse(&line).map_err(|e| e.to_string())? {
                GuestReport::DebugExit { code: 0 } => Some(at),
                other => return Err(format!("guest did not pass: {other:?}")),
            }
        }
        None => None,
    };
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let exit = start.elapsed();
    // QEMU's isa-debug-exit exits with (code << 1) | 1: 1 for code 0.
    let passed = match status_kind {
        Report::StatusFd => out.status.code() == Some(0),
        Report::DebugExitStatus => out.status.code() == Some(1),
    };
    if !passed {
        return Err(format!("{cmd:?} failed: {}", out.status));
    }
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
        result: result.unwrap_or(exit),
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

/// The socket pair our VMM reports its result on. The parent's copy of the
/// child's end must live until the child is spawned, then be closed.
struct StatusPipe {
    reader: UnixStream,
    writer: UnixStream,
}

/// Our VMM with a status pipe on fd 3.
fn ours(guest: &Path) -> (Command, StatusPipe) {
    let (reader, writer) = UnixStream::pair().expect("socketpair");
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitrine-vmm"));
    c.args(["run", "--mem-mib", MEM_MIB, "--stats", "--status-fd", "3"])
        .arg("--kernel")
        .arg(guest);
    let w = writer.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe and touches only the child's fd
    // table; `writer` stays open in the parent until the command is dropped.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(w, STATUS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    (c, StatusPipe { reader, writer })
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
        let (mut cmd, pipe) = ours(&guest);
        a.push(time_one(&mut cmd, Some(pipe)).expect("vitrine-vmm run"));
        if have_qemu {
            b.push(time_one(&mut qemu(&guest), None).expect("qemu run"));
        }
    }

    let ms_of = |s: &[Sample], f: fn(&Sample) -> Duration| {
        ms(s.iter().map(|x| f(x).as_secs_f64() * 1e3).collect())
    };
    println!(
        "guest: {GUEST}.elf (integer-only, PVH entry), {MEM_MIB} MiB RAM, {runs} runs each, interleaved"
    );
    println!(
        "{:<12} {:>16} {:>16} {:>12} {:>12} {:>12} {:>12}",
        "vmm",
        "first output p50",
        "first output p90",
        "result p50",
        "result p90",
        "exit p50",
        "exit p90"
    );
    let row = |name: &str, s: &[Sample]| {
        let (f50, f90) = ms_of(s, |x| x.first_output);
        let (r50, r90) = ms_of(s, |x| x.result);
        let (e50, e90) = ms_of(s, |x| x.exit);
        println!(
            "{name:<12} {f50:>13.2} ms {f90:>13.2} ms {r50:>9.2} ms {r90:>9.2} ms {e50:>9.2} ms {e90:>9.2} ms"
        );
        (f50, r50, e50)
    };
    let (of50, or50, oe50) = row("vitrine-vmm", &a);
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
             after the result, exit waits for the kernel to destroy the KVM VM"
        );
    }
    if !have_qemu {
        println!("QEMU row SKIPPED: qemu-system-x86_64 not found; no ratio");
        return;
    }
    let (qf50, qr50, qe50) = row("qemu", &b);
    println!(
        "qemu reports its result only by exiting (isa-debug-exit), so its result time is its exit"
    );
    println!(
        "ratio ours/QEMU (p50): first output {:.3}, result {:.3} (target <= 0.25), process exit {:.3}",
        of50 / qf50,
        or50 / qr50,
        oe50 / qe50
    );
}
