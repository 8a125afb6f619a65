//! The library-level part of `dbus_first_frame`: the template the daemon
//! made (its build time and size on disk), spawn to running of clones of
//! it, one after another, and the memory of idle clones against an idle
//! booted VM. It uses the daemon's own VM shape for a `document` task
//! (512 MiB, one vCPU, TCG, `no_timer_check`), so it clones the very
//! template the D-Bus part used, from the same directory.
//!
//! Memory is read from `/proc/PID/smaps_rollup` of each QEMU process (not
//! its jail keeper) 3 s after it was Ready. A page of the template's memfd
//! that only one process maps counts as that process's `Private_Clean`,
//! although the memfd holds it once for every clone; so a clone is
//! measured alone and again beside a second clone. `Anonymous` is what a
//! process has of its own: its copies of guest pages it wrote, and QEMU's
//! heap (the TCG code buffer among it).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vitrine_daemon::backend::qemu::{QemuBackend, QemuVm};
use vitrine_daemon::backend::template::store::TemplateStore;
use vitrine_daemon::backend::template::TemplateCloner;
use vitrine_daemon::backend::{Backend, GuestImage, GuestVm, VmConfig};
use vitrine_daemon::service::worker::image_info;
use vitrine_daemon::task::give_identity;
use vitrine_shim::protocol::HostMessage;

use super::percentile;

/// How long a VM idles after Ready before its memory is read.
const IDLE: Duration = Duration::from_secs(3);
const MIB: f64 = 1024.0 * 1024.0;

/// The template directory the daemon left.
pub struct TemplateOnDisk {
    dir: PathBuf,
    id: String,
    build_ms: u64,
    du_kib: u64,
    memory_apparent: u64,
    memory_allocated: u64,
    state_bytes: u64,
}

/// The one template under `root`, as the store lists it, with `du -sk` and
/// its files' sizes.
pub fn template_on_disk(root: &Path) -> TemplateOnDisk {
    let entries = TemplateStore::at(root).list();
    assert_eq!(
        entries.len(),
        1,
        "one template under {}: {entries:?}",
        root.display()
    );
    let entry = &entries[0];
    let meta = entry.meta.as_ref().expect("template.json");
    let du = Command::new("du")
        .arg("-sk")
        .arg(&entry.dir)
        .output()
        .unwrap();
    let du_kib = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|k| k.parse().ok())
        .expect("du -sk prints KiB");
    let memory = std::fs::metadata(entry.dir.join("memory")).unwrap();
    let state = std::fs::metadata(entry.dir.join("state")).unwrap();
    TemplateOnDisk {
        dir: entry.dir.clone(),
        id: meta.key.id(),
        build_ms: meta.build_ms,
        du_kib,
        memory_apparent: memory.len(),
        memory_allocated: memory.blocks() * 512,
        state_bytes: state.len(),
    }
}

/// One clone, ms.
#[derive(Debug, Clone, Copy)]
struct CloneRun {
    /// QEMU spawned to the saved state loaded, the VM running and its
    /// channel open (the backend's `boot_time`).
    running: f64,
    /// `clone_vm` called to returned.
    call: f64,
    /// The identity exchange: the first answer from the running clone.
    identity: f64,
}

/// Memory of one process, KiB, from `smaps_rollup`.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss: u64,
    pss: u64,
    private: u64,
    anonymous: u64,
}

fn mem(vm: &QemuVm) -> Mem {
    let pid = vm.qemu_pid().expect("the QEMU process inside the jail");
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/smaps_rollup: {e}"));
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let m = Mem {
        rss: field("Rss:"),
        pss: field("Pss:"),
        private: field("Private_Clean:") + field("Private_Dirty:"),
        anonymous: field("Anonymous:"),
    };
    assert!(m.rss > 0, "pid {pid} shows no memory: {text}");
    m
}

/// What the library part measured.
pub struct Library {
    template: String,
    load_ms: f64,
    clones: Vec<CloneRun>,
    boot_ms: f64,
    booted: Mem,
    alone: Mem,
    pair: [Mem; 2],
}

/// The daemon's VM for a `document` task under TCG.
fn task_shape(image: &Path) -> VmConfig {
    let mut config = VmConfig::new(GuestImage::from_dir(image).unwrap());
    config.ready_timeout = Duration::from_secs(90);
    config.extra_cmdline = "no_timer_check".to_owned();
    config
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Clones `count` VMs one after another (each gets its identity and is
/// torn down before the next), then measures idle memory.
pub fn measure(image: &Path, root: &Path, count: usize) -> Library {
    let config = task_shape(image);
    let sha = image_info(GuestImage::from_dir(image).unwrap())
        .unwrap()
        .sha256;
    let cloner = TemplateCloner::new(QemuBackend::new(), TemplateStore::at(root), sha);
    let template = cloner.key(&config).id();
    assert!(
        cloner.store().dir_of(&cloner.key(&config)).is_dir(),
        "the daemon's template {template} is not under {}: another VM shape?",
        root.display()
    );
    let loading = Instant::now();
    cloner.template(&config).expect("the template loads");
    let load_ms = ms(loading.elapsed());
    let mut clones = Vec::new();
    for n in 1..=count {
        let called = Instant::now();
        let (mut vm, origin) = cloner.clone_vm(&config).expect("a clone");
        let call = ms(called.elapsed());
        let mut channel = vm.take_channel().unwrap();
        let asked = Instant::now();
        give_identity(&mut channel, n as u64, asked + Duration::from_secs(30))
            .expect("the clone takes its identity");
        let run = CloneRun {
            running: ms(origin.clone_time),
            call,
            identity: ms(asked.elapsed()),
        };
        eprintln!("dbus_first_frame: clone {n}: {run:?}");
        clones.push(run);
        let _ = channel.send(&HostMessage::Shutdown);
        drop(vm);
    }
    let booted_vm = Backend::start(&QemuBackend::new(), &config).expect("a booted VM");
    let boot_ms = ms(GuestVm::boot_time(&booted_vm));
    let (a, _) = cloner.clone_vm(&config).expect("clone a");
    std::thread::sleep(IDLE);
    let alone = mem(&a);
    let (b, _) = cloner.clone_vm(&config).expect("clone b");
    std::thread::sleep(IDLE);
    let pair = [mem(&a), mem(&b)];
    let booted = mem(&booted_vm);
    eprintln!("dbus_first_frame: memory: booted {booted:?}, clone alone {alone:?}, pair {pair:?}");
    Library {
        template,
        load_ms,
        clones,
        boot_ms,
        booted,
        alone,
        pair,
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Prints the template, clone and memory tables.
/// `cold_boot_ms`: p50 spawn to Ready of the cold set-up's boots.
pub fn print(t: &TemplateOnDisk, l: &Library, template_task_ms: f64, cold_boot_ms: f64) {
    println!();
    println!(
        "Template {} (512 MiB, 1 vCPU, TCG), made once before measuring, in {}",
        t.id,
        t.dir.display()
    );
    println!();
    println!("| template | |");
    println!("|---|---|");
    println!(
        "| made: boot to Ready + save (`build_ms`) | {} ms |",
        t.build_ms
    );
    println!("| the first clone task, which made it: call -> `TaskFinished` | {template_task_ms:.0} ms |");
    println!("| on disk (`du -sk`) | {} |", mib(t.du_kib));
    println!(
        "| `memory`: apparent / allocated | {:.1} / {:.1} MiB |",
        t.memory_apparent as f64 / MIB,
        t.memory_allocated as f64 / MIB
    );
    println!(
        "| `state` (devices, CPU) | {:.0} KiB |",
        t.state_bytes as f64 / 1024.0
    );
    println!(
        "| loaded for cloning (read, SHA-256, sealed memfd) | {:.0} ms |",
        l.load_ms
    );
    assert_eq!(t.id, l.template, "the library cloned another template");

    let col = |f: fn(&CloneRun) -> f64| {
        let v: Vec<f64> = l.clones.iter().map(f).collect();
        (percentile(&v, 50), percentile(&v, 90))
    };
    let running = col(|c| c.running);
    println!();
    println!(
        "{} clones of it, one after another (`TemplateCloner::clone_vm`), ms",
        l.clones.len()
    );
    println!();
    println!("| 512 MiB VM | p50 | p90 |");
    println!("|---|---|---|");
    let rows: [(&str, (f64, f64)); 4] = [
        (
            "clone: spawn -> running (state loaded, channel open) (target <= 250 p50)",
            running,
        ),
        ("clone: `clone_vm` called -> returned", col(|c| c.call)),
        (
            "clone: identity exchange (first answer)",
            col(|c| c.identity),
        ),
        (
            "clone: spawn -> identity answered",
            col(|c| c.running + c.identity),
        ),
    ];
    for (name, (p50, p90)) in rows {
        println!("| {name} | {p50:.1} | {p90:.1} |");
    }
    println!(
        "| booted VM: spawn -> Ready (the one booted for the memory below) | {:.1} | - |",
        l.boot_ms
    );
    println!();
    println!(
        "clone spawn -> running p50 / cold boot spawn -> Ready p50 (D-Bus cold set-up) = {:.1} / {:.0} ms = {:.3}",
        running.0,
        cold_boot_ms,
        running.0 / cold_boot_ms
    );

    println!();
    println!(
        "Idle VMs, {} s after Ready, `/proc/PID/smaps_rollup` of QEMU",
        IDLE.as_secs()
    );
    println!();
    println!("| idle 512 MiB VM | Rss | Pss | private (Private_Clean + Private_Dirty) | Anonymous | private / booted |");
    println!("|---|---|---|---|---|---|");
    let rows: [(&str, Mem); 4] = [
        ("booted VM", l.booted),
        ("clone, alone", l.alone),
        ("clone a, beside clone b", l.pair[0]),
        ("clone b", l.pair[1]),
    ];
    for (name, m) in rows {
        println!(
            "| {name} | {} | {} | {} | {} | {:.2} |",
            mib(m.rss),
            mib(m.pss),
            mib(m.private),
            mib(m.anonymous),
            m.private as f64 / l.booted.private as f64
        );
    }
    let beside = l.pair[0].private.max(l.pair[1].private);
    println!();
    println!(
        "private memory, idle clone beside another / idle booted VM = {} / {} = **{:.2}** (target <= 0.25); a clone alone: {:.2}",
        mib(beside),
        mib(l.booted.private),
        beside as f64 / l.booted.private as f64,
        l.alone.private as f64 / l.booted.private as f64
    );
}
