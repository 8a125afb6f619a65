//! A denied syscall kills the VMM and is reported with its number, name and
//! thread: the real binary, jailed by the launcher, arms its filters as a
//! run does and then makes a call no list allows (`socket(AF_INET)`) on
//! each thread type.

mod jail_support;

use jail_support::{cannot_jail, plan, skip};
use vitrine_microvm::jail::launch::{Ending, Jailed};
use vitrine_microvm::seccomp::report::{Denial, EXIT_SECCOMP_DENIED};

fn denied_on(thread: &str) -> (Ending, String) {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(
        dir.path(),
        &format!("seccomp-{thread}"),
        &["self-test", "seccomp", "--thread", thread],
    );
    let finished = Jailed::spawn(&plan).unwrap().wait().unwrap();
    (finished.ending, finished.stderr)
}

fn socket_denied(thread: &str) -> Ending {
    Ending::SeccompDenied(Denial {
        nr: libc::SYS_socket,
        name: "socket".into(),
        thread: thread.into(),
    })
}

#[test]
fn main_thread_is_killed_for_a_denied_syscall_with_a_report() {
    if let Some(why) = cannot_jail() {
        return skip(
            "main_thread_is_killed_for_a_denied_syscall_with_a_report",
            &why,
        );
    }

    let (ending, stderr) = denied_on("vmm");

    assert_eq!(ending, socket_denied("vmm"), "{stderr}");
    assert!(
        stderr.contains("vitrine-vmm: seccomp: denied syscall 41 (socket) on thread vmm"),
        "{stderr}"
    );
}

#[test]
fn vcpu_thread_is_killed_for_a_denied_syscall_with_a_report() {
    if let Some(why) = cannot_jail() {
        return skip(
            "vcpu_thread_is_killed_for_a_denied_syscall_with_a_report",
            &why,
        );
    }

    let (ending, stderr) = denied_on("vcpu");

    assert_eq!(ending, socket_denied("vcpu0"), "{stderr}");
}

#[test]
fn device_worker_is_killed_for_a_denied_syscall_with_a_report() {
    if let Some(why) = cannot_jail() {
        return skip(
            "device_worker_is_killed_for_a_denied_syscall_with_a_report",
            &why,
        );
    }

    let (ending, stderr) = denied_on("worker");

    assert_eq!(ending, socket_denied("virtio-vsock"), "{stderr}");
}

#[test]
fn unjailed_self_test_is_killed_the_same_way() {
    // Arrange: no jail, no root needed: seccomp works for any user.
    let out = std::process::Command::new(jail_support::VMM)
        .args(["self-test", "seccomp", "--thread", "vcpu"])
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_SECCOMP_DENIED), "{stderr}");
    assert_eq!(
        Denial::find(&stderr),
        Some(Denial {
            nr: 41,
            name: "socket".into(),
            thread: "vcpu0".into()
        })
    );
}
