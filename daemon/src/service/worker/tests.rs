//! Unit tests of the worker: verdicts and the VM a task gets.

use super::*;
use std::path::PathBuf;

#[test]
fn a_task_stopped_by_its_time_limit_says_which_limit() {
    let mut profile = Profile::strict();
    profile.time_limit = Duration::from_secs(20);
    let err = TaskError::TimeLimit {
        after: Duration::from_secs(20),
        seen: "Accepted".into(),
    };

    let verdict = error_verdict(&err, &profile);

    assert_eq!(verdict, "timed-out: time limit of 20s reached");
}

fn image() -> GuestImage {
    GuestImage {
        kernel: PathBuf::from("/k"),
        initrd: PathBuf::from("/i"),
        cmdline: "console=hvc0".into(),
        app_disk: Some(PathBuf::from("/apps.squashfs")),
    }
}

#[test]
fn an_office_profile_vm_asks_the_guest_to_preload_libreoffice() {
    let mut office = Profile::strict();
    office.memory_mib = 1024;
    office.preload = Preload::Office;

    let tcg = task_vm_config(&office, image(), Accel::Tcg).unwrap();
    let kvm = task_vm_config(&office, image(), Accel::Kvm).unwrap();

    assert_eq!(tcg.extra_cmdline, "no_timer_check vitrine.preload=office");
    assert_eq!(kvm.extra_cmdline, "vitrine.preload=office");
    assert_eq!(tcg.memory_mib, 1024);
}

#[test]
fn a_profile_without_preload_gets_no_preload_parameter() {
    let plain = Profile::strict();

    let tcg = task_vm_config(&plain, image(), Accel::Tcg).unwrap();
    let kvm = task_vm_config(&plain, image(), Accel::Kvm).unwrap();

    assert_eq!(tcg.extra_cmdline, "no_timer_check");
    assert_eq!(kvm.extra_cmdline, "");
}

#[test]
fn a_web_profile_vm_asks_the_guest_to_preload_the_browser() {
    let mut web = Profile::strict();
    web.preload = Preload::Web;

    let tcg = task_vm_config(&web, image(), Accel::Tcg).unwrap();

    assert_eq!(tcg.extra_cmdline, "no_timer_check vitrine.preload=web");
}
