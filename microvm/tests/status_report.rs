//! `vitrine-vmm --status-fd`: the guest's result as one JSON line on an
//! inherited fd, for every way a run can end.

mod tier;

use std::process::{Command, Output};

use vitrine_microvm::status::GuestReport;

/// Runs vitrine-vmm with `args` and its fd 3 redirected to a file (by the
/// shell, so the test needs no fd juggling); returns the output and the
/// status file's text.
fn run_with_status(args: &[&str]) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"s="$1"; shift; exec "$@" --status-fd 3 3>"$s""#)
        .arg("sh")
        .arg(&status)
        .arg(env!("CARGO_BIN_EXE_vitrine-vmm"))
        .args(args)
        .output()
        .expect("run vitrine-vmm");
    let text = std::fs::read_to_string(&status).unwrap_or_default();
    (out, text)
}

fn report(text: &str) -> GuestReport {
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    GuestReport::parse(text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

#[test]
fn a_clean_run_reports_its_debug_exit_code() {
    if !tier::kvm_or_skip("a_clean_run_reports_its_debug_exit_code") {
        return;
    }
    let (out, text) = run_with_status(&["run", "--test-guest", "hello"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report(&text), GuestReport::DebugExit { code: 0 });
    assert!(text.contains("\"vmm_ms\":"), "{text}");
}

#[test]
fn a_triple_fault_is_reported_as_a_fault_with_its_rip() {
    if !tier::kvm_or_skip("a_triple_fault_is_reported_as_a_fault_with_its_rip") {
        return;
    }
    let (out, text) = run_with_status(&["run", "--test-guest", "triple_fault"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    match report(&text) {
        GuestReport::Fault { detail, timed_out } => {
            assert!(!timed_out);
            assert!(
                detail.contains("triple-faulted") && detail.contains("rip 0x"),
                "{detail}"
            );
        }
        other => panic!("expected a fault, got {other:?}"),
    }
}

#[test]
fn a_guest_stopped_by_the_limit_is_reported_as_timed_out() {
    if !tier::kvm_or_skip("a_guest_stopped_by_the_limit_is_reported_as_timed_out") {
        return;
    }
    let (out, text) = run_with_status(&["run", "--test-guest", "endless", "--time-limit", "0.2"]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(matches!(
        report(&text),
        GuestReport::Fault {
            timed_out: true,
            ..
        }
    ));
}

#[test]
fn a_vmm_that_cannot_start_reports_its_error() {
    let (out, text) = run_with_status(&["run", "--kernel", "/nonexistent/vmlinux"]);
    assert!(!out.status.success());
    match report(&text) {
        GuestReport::Error { detail } => {
            assert!(detail.contains("/nonexistent/vmlinux"), "{detail}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_status_fd_that_is_not_open_is_one_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine-vmm"))
        .args(["run", "--test-guest", "hello", "--status-fd", "9"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim(),
        "vitrine-vmm: error: --status-fd 9 is not an open file descriptor"
    );
    assert!(out.stdout.is_empty(), "the guest must not have run");
}

#[test]
fn the_report_can_go_to_stdout_when_serial_goes_to_a_log() {
    if !tier::kvm_or_skip("the_report_can_go_to_stdout_when_serial_goes_to_a_log") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine-vmm"))
        .args([
            "run",
            "--test-guest",
            "hello",
            "--status-fd",
            "1",
            "--serial-log",
        ])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(report(&text), GuestReport::DebugExit { code: 0 });
    assert!(std::fs::read_to_string(&log).unwrap().contains("Hello"));

    let out = Command::new(env!("CARGO_BIN_EXE_vitrine-vmm"))
        .args(["run", "--test-guest", "hello", "--status-fd", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("with --serial-log"));
}

#[test]
fn devices_on_the_command_line_are_checked_before_the_guest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("vsock.sock");
    std::fs::write(&taken, b"").unwrap();
    let missing = dir.path().join("no-such-disk.img");
    for (flag, path, what) in [
        ("--vsock-uds", &taken, "vsock socket"),
        ("--disk", &missing, "disk image"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vitrine-vmm"))
            .args(["run", "--test-guest", "hello", flag])
            .arg(path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(out.stdout.is_empty(), "the guest must not have run");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(what) && stderr.contains(&*path.to_string_lossy()),
            "{stderr}"
        );
    }
}
