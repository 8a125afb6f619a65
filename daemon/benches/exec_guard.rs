//! What `vitrine-guard` costs each exec: 1,000 execs of a static `true`
//! (busybox) from a tmpfs mount: unwatched, with the real guard marking
//! that filesystem for exec permission events only (`interpreters = []`),
//! and for exec and open permission events (the default), in alternating
//! rounds of 100 each. An allowed exec costs two events with the open mark:
//! the kernel sends FAN_OPEN_EXEC_PERM, then FAN_OPEN_PERM. Root only.
//!
//! `cargo bench -p vitrine-daemon --bench exec_guard`

#[path = "../tests/guard_support/mod.rs"]
mod guard_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guard_support::{busybox_as, root_or_skip, RunningGuard, Tmpfs};

const NAME: &str = "exec_guard";
const EXECS: usize = 1000;
/// Rounds; each runs EXECS / ROUNDS execs per configuration.
const ROUNDS: usize = 10;
const WARMUP: usize = 10;
/// The target: what the guard may add to one exec, at p50.
const TARGET_OVERHEAD_US: f64 = 50.0;

fn main() {
    if !root_or_skip(NAME) {
        return;
    }
    let Some(fs) = Tmpfs::mount(NAME) else { return };
    let Some(prog) = busybox_as(NAME, &fs.mnt, "true") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let both = fs.config(dir.path(), "");
    let exec_only = dir.path().join("exec-only.toml");
    std::fs::write(
        &exec_only,
        format!("watch = [\"{}\"]\ninterpreters = []\n", fs.mnt.display()),
    )
    .unwrap();
    let guard = Path::new(env!("CARGO_BIN_EXE_vitrine-guard"));
    let socket = dir.path().join("guard.sock");

    // Rounds that alternate the three, so that load from elsewhere on the
    // machine falls on all alike.
    let (mut without, mut with_exec, mut with_both) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        without.extend(execs(&prog));
        for (config, times) in [(&exec_only, &mut with_exec), (&both, &mut with_both)] {
            let Some(running) = RunningGuard::start(NAME, guard, config, &socket) else {
                return;
            };
            times.extend(execs(&prog));
            drop(running);
        }
    }
    drop(fs);

    let base = percentiles(without);
    let rows = [
        ("without the guard", base),
        ("guard, exec mark only", percentiles(with_exec)),
        ("guard, exec+open (default)", percentiles(with_both)),
    ];
    println!("{EXECS} execs of a static true from a tmpfs mount, per exec in µs");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>13} {:>7}",
        "", "p50", "p90", "p99", "overhead p50", "ratio"
    );
    for (name, p) in rows {
        println!(
            "{name:<28} {:>9.1} {:>9.1} {:>9.1} {:>13.1} {:>7.3}",
            p[0],
            p[1],
            p[2],
            p[0] - base[0],
            p[0] / base[0]
        );
    }
    let overhead = rows[2].1[0] - base[0];
    println!(
        "default guard: overhead p50 {overhead:.1} µs per exec (target ≤ {TARGET_OVERHEAD_US} µs): {}",
        if overhead <= TARGET_OVERHEAD_US { "met" } else { "MISSED" }
    );
}

/// The time of each of a round's execs (spawn to exit), after a warm-up.
fn execs(prog: &Path) -> Vec<Duration> {
    let once = || {
        let started = Instant::now();
        let status = Command::new(prog)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{} failed: {status}", prog.display());
        started.elapsed()
    };
    (0..WARMUP).for_each(|_| {
        once();
    });
    (0..EXECS / ROUNDS).map(|_| once()).collect()
}

/// p50, p90, p99 in µs.
fn percentiles(mut times: Vec<Duration>) -> [f64; 3] {
    times.sort();
    let at = |percent: usize| times[(times.len() - 1) * percent / 100].as_secs_f64() * 1e6;
    [at(50), at(90), at(99)]
}
