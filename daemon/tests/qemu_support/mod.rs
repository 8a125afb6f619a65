//! What the QEMU backend tests share: the guest image (or a loud skip), a
//! cloner over a private cache, and reading a QEMU's mappings from /proc.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use std::time::{Duration, Instant};

use vitrine_daemon::backend::kvm::KvmBackend;
use vitrine_daemon::backend::qemu::{QemuBackend, QemuVm};
use vitrine_daemon::backend::template::store::TemplateStore;
use vitrine_daemon::backend::template::TemplateCloner;
use vitrine_daemon::backend::{GuestImage, GuestVm, VmConfig};
use vitrine_daemon::fresh_guest::qemu_installed;
use vitrine_daemon::image_cache::{self, ImageCacheError};
use vitrine_daemon::service::worker::image_info;
use vitrine_daemon::task::{give_identity, run_task, TaskInput, TaskRun};
use vitrine_shim::protocol::{HostMessage, Limits, SafeCopy, TaskStatus};

pub fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The guest image, with QEMU and `vitrine-vmm` (the jail) present, or
/// `None` after a loud SKIPPED line.
pub fn image_or_skip(test: &str) -> Option<PathBuf> {
    if !qemu_installed() {
        loud(&format!(
            "SKIPPED {test}: qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
        ));
        return None;
    }
    let vmm = KvmBackend::new().binary().to_owned();
    if !vmm.is_file() {
        loud(&format!(
            "SKIPPED {test}: {} is not built (cargo build -p vitrine-microvm); it jails QEMU",
            vmm.display()
        ));
        return None;
    }
    match image_cache::locate(None) {
        Ok(dir) => Some(dir),
        Err(e @ ImageCacheError::NotBuilt(_)) => {
            loud(&format!("SKIPPED {test}: {e}"));
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

pub fn config(dir: &Path) -> VmConfig {
    let mut config = VmConfig::new(GuestImage::from_dir(dir).unwrap());
    config.ready_timeout = Duration::from_secs(90);
    config.extra_cmdline = "no_timer_check".to_owned();
    config
}

pub fn cloner(image: &Path, cache: &Path) -> TemplateCloner {
    let info = image_info(GuestImage::from_dir(image).unwrap()).unwrap();
    TemplateCloner::new(QemuBackend::new(), TemplateStore::at(cache), info.sha256)
}

/// `(device, inode)` of the template memfd QEMU `pid` maps, and whether
/// that mapping is private.
pub fn template_mapping(pid: u32) -> Option<((String, u64), bool)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let name = f.get(5..)?.join(" ");
        name.starts_with("/memfd:vitrine-template ").then(|| {
            (
                (f[3].to_owned(), f[4].parse().unwrap_or(0)),
                f[1].ends_with('p'),
            )
        })
    })
}

/// Private (not shared) resident memory of `pid` in KiB.
pub fn private_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

pub fn text_task(vm: &mut QemuVm, text: &str) -> (String, TaskStatus) {
    let mut channel = vm.take_channel().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let applied = give_identity(&mut channel, 1, deadline).unwrap();
    let input = TaskInput::file(
        "notes.txt",
        "text/plain",
        text.as_bytes().to_vec(),
        Limits::default(),
    );
    let run = run_task(&mut channel, 1, &input, deadline).unwrap();
    let _ = channel.send(&HostMessage::Shutdown);
    let digest: String = applied
        .random_digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (digest, run.status.expect("the task ended with a status"))
}

/// A safe copy of the text file `text` with English OCR, in `vm`.
pub fn ocr_task(vm: &mut QemuVm, text: &str) -> TaskRun {
    let mut channel = vm.take_channel().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    give_identity(&mut channel, 1, deadline).unwrap();
    let mut input = TaskInput::file(
        "notes.txt",
        "text/plain",
        text.as_bytes().to_vec(),
        Limits {
            time_limit_ms: 120_000,
            ..Limits::default()
        },
    );
    input.safe_copy = Some(SafeCopy {
        ocr: Some("eng".into()),
    });
    let run = run_task(&mut channel, 1, &input, deadline).unwrap();
    let _ = channel.send(&HostMessage::Shutdown);
    run
}

/// Everything a VM can leave on the host: processes (QEMU and its jail
/// keeper), memfd mappings and files under the jail and VM directories, and
/// the jail cgroups.
#[derive(Debug, PartialEq, Eq)]
pub struct Leftovers {
    pub qemus: BTreeSet<u32>,
    pub own_fds: usize,
    pub own_memfd_maps: usize,
    pub vm_dirs: BTreeSet<String>,
    pub cgroups: BTreeSet<String>,
}

pub fn leftovers() -> Leftovers {
    let qemus = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim().starts_with("qemu-system"))
        })
        .filter(|pid| {
            // Only QEMUs of this test process (their keeper is our child).
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid: u32 = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let grand = std::fs::read_to_string(format!("/proc/{ppid}/stat")).unwrap_or_default();
            grand
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok())
                == Some(std::process::id())
        })
        .collect();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    // VM and jail directories live in this process's runtime folder.
    let folder = vitrine_daemon::backend::runtime_dir::own_folder().unwrap();
    let vm_dirs = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let me = format!("vitrine-qemu-{}-", std::process::id());
    let mut cgroups = BTreeSet::new();
    find_cgroups(Path::new("/sys/fs/cgroup"), &me, 8, &mut cgroups);
    Leftovers {
        qemus,
        own_fds: std::fs::read_dir("/proc/self/fd").unwrap().count(),
        own_memfd_maps: maps
            .lines()
            .filter(|l| l.contains("/memfd:vitrine"))
            .count(),
        vm_dirs,
        cgroups,
    }
}

/// Cgroup directories whose name starts with `prefix`, down to `depth`.
fn find_cgroups(dir: &Path, prefix: &str, depth: u32, found: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        if !kind.is_dir() {
            continue;
        }
        if e.file_name().to_string_lossy().starts_with(prefix) {
            found.insert(e.path().display().to_string());
        } else if depth > 0 {
            find_cgroups(&e.path(), prefix, depth - 1, found);
        }
    }
}

pub fn file_fingerprint(path: &Path) -> (String, SystemTime) {
    let bytes = std::fs::read(path).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    (hex, std::fs::metadata(path).unwrap().modified().unwrap())
}
