//! KVM tier: fifty clones of one template restored side by side all run,
//! all go away, and leave no file descriptors, mappings or files behind.
//! In its own test binary, so no other test's fds or mappings interfere.

mod tier;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vitrine_microvm::devices::serial::SerialSink;
use vitrine_microvm::lifecycle::GuestExit;
use vitrine_microvm::test_guests::{self, counter};
use vitrine_microvm::vmm::{RestoreOptions, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

const CLONES: usize = 50;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Mappings of snapshot memory or guest RAM still in this process.
fn guest_mappings(dir: &Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let d = dir.to_string_lossy().into_owned();
    maps.lines()
        .filter(|l| l.contains(&d) || l.contains("vitrine-guest-ram"))
        .count()
}

#[test]
fn fifty_clones_run_side_by_side_and_leave_nothing_behind() {
    if !tier::kvm_or_skip("fifty_clones_run_side_by_side_and_leave_nothing_behind") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let mut config = VmConfig::new(test_guests::path("counter"));
        config.mem_mib = 64;
        let mut template = Vm::new(config, SerialSink::Discard).unwrap();
        template
            .memory()
            .write_slice(&counter::params(Some(2), 30), GuestAddress(counter::PARAMS))
            .unwrap();
        template.boot().unwrap();
        assert_eq!(template.run().unwrap(), GuestExit::Ready);
        template.snapshot(dir.path()).unwrap();
    }
    let files_before: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let fds_before = open_fds();
    let maps_before = guest_mappings(dir.path());

    let clones: Vec<_> = (0..CLONES)
        .map(|i| {
            let out = Arc::new(Mutex::new(Vec::new()));
            let mut options = RestoreOptions::new(SerialSink::Capture(out.clone()));
            options.vsock_cid = 100 + i as u64;
            options.time_limit = Some(Duration::from_secs(60));
            (Vm::restore(dir.path(), options).unwrap(), out)
        })
        .collect();
    let alive_maps = guest_mappings(dir.path());
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = clones
            .into_iter()
            .map(|(mut vm, out)| {
                s.spawn(move || {
                    let exit = vm.run();
                    let count: u64 = vm
                        .memory()
                        .read_obj(GuestAddress(counter::COUNTER))
                        .unwrap();
                    (
                        exit.map_err(|e| e.to_string()),
                        count,
                        out.lock().unwrap().clone(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    assert_eq!(results.len(), CLONES);
    for (i, (exit, count, out)) in results.iter().enumerate() {
        assert_eq!(exit, &Ok(GuestExit::DebugExit(0)), "clone {i}");
        assert_eq!(*count, 30, "clone {i}");
        let text = String::from_utf8_lossy(out);
        assert!(
            text.contains(&format!("cid={:016x}", 100 + i as u64)),
            "clone {i}: {text}"
        );
    }
    assert!(
        alive_maps >= maps_before + CLONES,
        "each clone mapped the snapshot"
    );
    assert_eq!(open_fds(), fds_before, "file descriptors leaked");
    assert_eq!(guest_mappings(dir.path()), maps_before, "mappings leaked");
    let files_after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files_after, files_before, "files left behind");
}
