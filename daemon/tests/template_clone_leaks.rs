//! Twenty clones of one template alive at once, then torn down, leave no
//! process, descriptor, mapping, VM or jail directory or cgroup behind, and
//! never change the template's files. In its own test binary, so that no
//! other test's VMs are counted.

mod qemu_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use qemu_support::*;
use vitrine_daemon::backend::qemu::QemuVm;
use vitrine_daemon::backend::GuestVm;
use vitrine_daemon::task::give_identity;

#[test]
fn twenty_clones_at_once_leave_nothing_behind_and_never_change_the_template() {
    let test = "twenty_clones_at_once_leave_nothing_behind_and_never_change_the_template";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let cloner = cloner(&image, cache.path());
    let config = config(&image);
    let template = cloner.template(&config).unwrap();
    let memory = template.dir.join("memory");
    let state = template.dir.join("state");
    let before_files = (file_fingerprint(&memory), file_fingerprint(&state));
    let before = leftovers();

    let started = Instant::now();
    let mut clones: Vec<QemuVm> = (0..20)
        .map(|i| {
            cloner
                .clone_vm(&config)
                .unwrap_or_else(|e| panic!("clone {i}: {e:?}"))
                .0
        })
        .collect();
    let all_up = started.elapsed();
    let alive = leftovers();
    let shared: BTreeSet<_> = clones
        .iter()
        .map(|vm| {
            template_mapping(vm.qemu_pid().unwrap())
                .expect("maps the template")
                .0
        })
        .collect();
    // Each one is alive and answers its identity.
    for vm in &mut clones {
        let mut channel = vm.take_channel().unwrap();
        give_identity(&mut channel, 1, Instant::now() + Duration::from_secs(60)).unwrap();
    }
    drop(clones);
    let after = leftovers();
    let after_files = (file_fingerprint(&memory), file_fingerprint(&state));

    loud(&format!(
        "{test}: 20 clones up in {all_up:?}; while alive: {} QEMUs, {} VM and jail dirs, {} cgroups",
        alive.qemus.len(),
        alive.vm_dirs.len(),
        alive.cgroups.len()
    ));
    assert_eq!(alive.qemus.len(), 20, "20 QEMUs were alive at once");
    assert_eq!(shared.len(), 1, "all 20 map one template memfd: {shared:?}");
    assert_eq!(after, before, "a clone left something behind");
    assert_eq!(after_files, before_files, "the template's files changed");
}
