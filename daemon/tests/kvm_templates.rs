//! Templates on the `kvm` backend: `vitrine-vmm snapshot` makes a template,
//! each clone is a jailed `vitrine-vmm restore` of it. The parts a built-in
//! integer test guest can show run on any KVM host: the template VM is
//! snapshotted jailed and reported when it misses its point, and a jailed
//! restore runs from a cached, read-only template directory without
//! changing it. Clones of the real guest image run where `vitrine-vmm
//! probe` says full Linux guests do; elsewhere the test prints the probe's
//! reason.

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vitrine_daemon::backend::kvm::{HostSupport, KvmBackend, KvmError};
use vitrine_daemon::backend::template::kvm::KvmTemplates;
use vitrine_daemon::backend::template::store::{TemplateMeta, TemplateStore, FORMAT};
use vitrine_daemon::backend::{Accel, GuestImage, GuestVm, VmConfig};
use vitrine_daemon::fresh_guest::process_exists;
use vitrine_daemon::image_cache;
use vitrine_daemon::service::worker::image_info;
use vitrine_daemon::task::give_identity;
use vitrine_microvm::jail::launch::children_of;
use vitrine_microvm::test_guests;
use vitrine_shim::protocol::{HostMessage, Ready};

fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The VMM binary and a usable /dev/kvm, or `None` after a loud SKIPPED line.
fn backend_or_skip(test: &str) -> Option<KvmBackend> {
    let backend = KvmBackend::new();
    if !backend.binary().is_file() {
        loud(&format!(
            "SKIPPED {test}: {} is not built (cargo build -p vitrine-microvm)",
            backend.binary().display()
        ));
        return None;
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        loud(&format!("SKIPPED {test}: /dev/kvm unusable: {e}"));
        return None;
    }
    Some(backend)
}

/// A built-in test guest as the "image"; its initrd is any small file.
fn test_guest_config(guest: &str, initrd: &tempfile::NamedTempFile) -> VmConfig {
    let mut config = VmConfig::new(GuestImage {
        kernel: test_guests::path(guest),
        initrd: initrd.path().to_owned(),
        cmdline: "console=ttyS0".to_owned(),
        app_disk: None,
    });
    config.memory_mib = 64;
    config.accel = Accel::Kvm;
    config.ready_timeout = Duration::from_secs(20);
    config
}

fn meta_for(templates: &KvmTemplates, config: &VmConfig) -> TemplateMeta {
    TemplateMeta {
        format: FORMAT,
        key: templates.key(config),
        memory_bytes: 0,
        memory_sha256: String::new(),
        state_sha256: String::new(),
        ready: Ready {
            shim_version: "none: an integer test guest".to_owned(),
            capabilities: Vec::new(),
        },
        created_unix: 0,
        build_ms: 0,
    }
}

#[test]
fn a_template_vm_that_never_reaches_the_template_point_is_reported_with_its_console() {
    let test = "a_template_vm_that_never_reaches_the_template_point_is_reported_with_its_console";
    let Some(backend) = backend_or_skip(test) else {
        return;
    };
    let initrd = tempfile::NamedTempFile::new().unwrap();
    let out = tempfile::tempdir().unwrap();

    // `hello` prints one line and exits: it never starts a shim.
    let err = backend
        .snapshot(&test_guest_config("hello", &initrd), out.path())
        .unwrap_err();

    let text = err.to_string();
    assert!(matches!(err, KvmError::Snapshot { .. }), "{err:?}");
    assert!(
        text.contains("before it reached its snapshot point"),
        "{text}"
    );
    assert!(
        text.contains("Hello from a Vitrine test guest"),
        "serial: {text}"
    );
    assert!(
        std::fs::read_dir(out.path()).unwrap().next().is_none(),
        "a missed point leaves no snapshot files"
    );
}

#[test]
fn a_jailed_clone_runs_from_the_cached_template_and_leaves_it_unchanged() {
    let test = "a_jailed_clone_runs_from_the_cached_template_and_leaves_it_unchanged";
    let Some(backend) = backend_or_skip(test) else {
        return;
    };
    let initrd = tempfile::NamedTempFile::new().unwrap();
    let config = test_guest_config("hello", &initrd);
    let cache = tempfile::tempdir().unwrap();
    let templates = KvmTemplates::new(backend.clone(), TemplateStore::at(cache.path()), "00");
    let store = templates.store();
    // Made as a template is (jailed, rng and vsock, written into a build
    // directory of the cache), but taken mid-line, so that the clone
    // finishes the line and exits.
    let build = store.begin().unwrap();
    backend
        .snapshot_on(&config, build.path(), "Hello from")
        .unwrap();
    let dir = store
        .commit_snapshot(build, meta_for(&templates, &config))
        .unwrap();
    let before = store.load_snapshot(&templates.key(&config)).unwrap();

    let started = Instant::now();
    let err = backend.restore(&config, &dir).unwrap_err();
    loud(&format!(
        "{test}: jailed restore to the clone's exit took {:?}",
        started.elapsed()
    ));

    // It ran: restored jailed, it finished the line the template paused in.
    let text = err.to_string();
    assert!(text.contains("the guest exited with code 0"), "{text}");
    assert!(text.contains("a Vitrine test guest"), "serial: {text}");
    let after = store
        .load_snapshot(&templates.key(&config))
        .expect("the template's files still match their hashes")
        .unwrap();
    let before = before.unwrap();
    assert_eq!(after.meta.memory_sha256, before.meta.memory_sha256);
    assert_eq!(after.meta.state_sha256, before.meta.state_sha256);
}

/// `(device, inode)` of every file that `pid` or its descendants map.
fn mapped_inodes(pid: u32) -> HashSet<(String, u64)> {
    let mut out = HashSet::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        todo.extend(children_of(p));
        let maps = std::fs::read_to_string(format!("/proc/{p}/maps")).unwrap_or_default();
        for line in maps.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let (Some(dev), Some(Ok(inode))) = (f.get(3), f.get(4).map(|i| i.parse::<u64>())) {
                if inode != 0 {
                    out.insert(((*dev).to_owned(), inode));
                }
            }
        }
    }
    out
}

#[test]
fn clones_of_the_guest_image_share_one_template_and_differ_in_identity() {
    let test = "clones_of_the_guest_image_share_one_template_and_differ_in_identity";
    let Some(backend) = backend_or_skip(test) else {
        return;
    };
    match backend.probe() {
        Ok(HostSupport::FullGuests) => {}
        Ok(HostSupport::No(why)) => {
            loud(&format!(
                "SKIPPED {test}: vitrine-vmm probe says this host's KVM cannot run full Linux guests: {why}"
            ));
            return;
        }
        Err(e) => panic!("{test}: probe failed: {e}"),
    }
    let image_dir = match image_cache::locate(None) {
        Ok(dir) => dir,
        Err(e) => {
            loud(&format!("SKIPPED {test}: {e}"));
            return;
        }
    };
    let image = GuestImage::from_dir(&image_dir).unwrap();
    let info = image_info(image.clone()).unwrap();
    let mut config = VmConfig::new(image);
    config.accel = Accel::Kvm;
    config.ready_timeout = Duration::from_secs(60);
    let cache = tempfile::tempdir().unwrap();
    let templates = KvmTemplates::new(backend, TemplateStore::at(cache.path()), info.sha256);

    let mut a = templates.clone_vm(&config).unwrap();
    let mut b = templates.clone_vm(&config).unwrap();
    loud(&format!(
        "{test}: restore to Ready {:?} and {:?}",
        a.boot_time(),
        b.boot_time()
    ));

    let dir = templates.store().dir_of(&templates.key(&config));
    let mem = std::fs::metadata(dir.join("mem")).unwrap();
    let mem_hash = templates
        .store()
        .load_snapshot(&templates.key(&config))
        .unwrap()
        .unwrap()
        .meta
        .memory_sha256;
    use std::os::unix::fs::MetadataExt;
    for vm in [&a, &b] {
        let inodes: HashSet<u64> = mapped_inodes(vm.pid()).iter().map(|(_, i)| *i).collect();
        assert!(
            inodes.contains(&mem.ino()),
            "clone {} does not map the template's mem (inode {})",
            vm.pid(),
            mem.ino()
        );
        assert!(vm.origin().starts_with("cloned from template"));
    }
    let deadline = || Instant::now() + Duration::from_secs(10);
    let mut ca = a.take_channel().unwrap();
    let mut cb = b.take_channel().unwrap();
    let ia = give_identity(&mut ca, 1, deadline()).unwrap();
    let ib = give_identity(&mut cb, 2, deadline()).unwrap();
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let now_ns = i128::try_from(now_ns).unwrap();
    for (name, applied) in [("a", &ia), ("b", &ib)] {
        let skew = (i128::from(applied.clock_unix_ns) - now_ns).abs();
        assert!(
            skew < 2_000_000_000,
            "clone {name}'s clock is {skew} ns off"
        );
    }
    assert_ne!(
        ia.random_digest, ib.random_digest,
        "two clones drew the same random bytes"
    );
    let (pa, pb) = (a.pid(), b.pid());
    for (vm, mut channel) in [(&mut a, ca), (&mut b, cb)] {
        let _ = channel.send(&HostMessage::Shutdown);
        vm.wait_or_kill(Duration::from_secs(5)).unwrap();
    }
    drop((a, b));
    let after = templates
        .store()
        .load_snapshot(&templates.key(&config))
        .unwrap()
        .unwrap();
    assert_eq!(
        after.meta.memory_sha256, mem_hash,
        "a clone wrote the template"
    );
    assert!(!process_exists(pa) && !process_exists(pb));
}
