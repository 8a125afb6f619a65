//! Task VMs are copy-on-write clones of a template (QEMU backend, TCG,
//! jailed exactly as the daemon runs it): each clone maps the template's
//! sealed RAM memfd private, takes a fresh identity, and runs a real task;
//! many clones at once leave nothing behind and never change the template;
//! a corrupted template is found by its checksum and made again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vitrine_daemon::backend::kvm::KvmBackend;
use vitrine_daemon::backend::qemu::{QemuBackend, QemuVm};
use vitrine_daemon::backend::template::store::TemplateStore;
use vitrine_daemon::backend::template::TemplateCloner;
use vitrine_daemon::backend::{GuestImage, GuestVm, VmConfig};
use vitrine_daemon::fresh_guest::qemu_installed;
use vitrine_daemon::image_cache::{self, ImageCacheError};
use vitrine_daemon::service::worker::image_info;
use vitrine_daemon::task::{give_identity, run_task, TaskInput};
use vitrine_shim::protocol::{HostMessage, Limits, TaskStatus};

fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The guest image, with QEMU and `vitrine-vmm` (the jail) present, or
/// `None` after a loud SKIPPED line.
fn image_or_skip(test: &str) -> Option<PathBuf> {
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

fn config(dir: &Path) -> VmConfig {
    let mut config = VmConfig::new(GuestImage::from_dir(dir).unwrap());
    config.ready_timeout = Duration::from_secs(90);
    config.extra_cmdline = "no_timer_check".to_owned();
    config
}

fn cloner(image: &Path, cache: &Path) -> TemplateCloner {
    let info = image_info(GuestImage::from_dir(image).unwrap()).unwrap();
    TemplateCloner::new(QemuBackend::new(), TemplateStore::at(cache), info.sha256)
}

/// `(device, inode)` of the template memfd QEMU `pid` maps, and whether
/// that mapping is private.
fn template_mapping(pid: u32) -> Option<((String, u64), bool)> {
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
fn private_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn text_task(vm: &mut QemuVm, text: &str) -> (String, TaskStatus) {
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

#[test]
fn clones_share_the_sealed_template_ram_privately_and_differ_in_identity() {
    let test = "clones_share_the_sealed_template_ram_privately_and_differ_in_identity";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let cloner = cloner(&image, cache.path());
    let config = config(&image);

    let made = Instant::now();
    let template = cloner.template(&config).unwrap();
    let make_time = made.elapsed();
    let (mut a, origin_a) = cloner.clone_vm(&config).unwrap();
    let (mut b, origin_b) = cloner.clone_vm(&config).unwrap();
    let (pid_a, pid_b) = (a.qemu_pid().unwrap(), b.qemu_pid().unwrap());
    let (map_a, private_a) = template_mapping(pid_a).expect("clone a maps the template");
    let (map_b, private_b) = template_mapping(pid_b).expect("clone b maps the template");
    let (digest_a, status_a) = text_task(&mut a, "clone A\n");
    let (digest_b, status_b) = text_task(&mut b, "clone B\n");

    loud(&format!(
        "{test}: template made in {make_time:?} ({} KiB of state); clones up in {:?} and {:?}; \
         both map memfd inode {map_a:?}",
        template.state.len() / 1024,
        origin_a.clone_time,
        origin_b.clone_time
    ));
    assert_eq!(map_a, map_b, "both clones map the same template memfd");
    assert!(
        private_a && private_b,
        "the template RAM is mapped MAP_PRIVATE"
    );
    assert!(store::is_write_sealed(template.memory.as_ref()));
    assert_eq!(status_a, TaskStatus::Ok);
    assert_eq!(status_b, TaskStatus::Ok);
    assert_ne!(digest_a, digest_b, "two clones drew the same random bytes");
    assert_eq!(origin_a.template, origin_b.template);
}

use vitrine_daemon::backend::template::store;
