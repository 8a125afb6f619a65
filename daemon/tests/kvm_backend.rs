//! The `kvm` backend: the project's own `vitrine-vmm` started as a process.
//! A guest that ends before its shim is ready is reported with what the VMM
//! saw (these run on any KVM host, with the built-in test guests); the
//! guest image renders a PDF where `vitrine-vmm probe` says full Linux
//! guests run, and elsewhere the test prints the probe's reason.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vitrine_daemon::backend::kvm::{HostSupport, KvmBackend, KvmError};
use vitrine_daemon::backend::select::HostBackend;
use vitrine_daemon::backend::{Accel, Backend, GuestImage, GuestVm, VmConfig};
use vitrine_daemon::fresh_guest::process_exists;
use vitrine_daemon::image_cache;
use vitrine_daemon::task::{give_identity, run_task, TaskInput};
use vitrine_microvm::jail::launch::children_of;
use vitrine_microvm::test_guests;
use vitrine_shim::protocol::{HostMessage, Limits};

fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The VMM binary, or `None` after a loud SKIPPED line (it is built by
/// `cargo test --workspace`, not by `cargo test -p vitrine-daemon`).
fn backend_or_skip(test: &str) -> Option<KvmBackend> {
    let backend = KvmBackend::new();
    if backend.binary().is_file() {
        return Some(backend);
    }
    loud(&format!(
        "SKIPPED {test}: {} is not built (cargo build -p vitrine-microvm)",
        backend.binary().display()
    ));
    None
}

fn kvm_or_skip(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            loud(&format!("SKIPPED {test}: /dev/kvm unusable: {e}"));
            false
        }
    }
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
    config.ready_timeout = Duration::from_secs(30);
    config
}

#[test]
fn a_guest_that_faults_before_ready_is_reported_with_its_fault_at_once() {
    let test = "a_guest_that_faults_before_ready_is_reported_with_its_fault_at_once";
    let Some(backend) = backend_or_skip(test) else {
        return;
    };
    if !kvm_or_skip(test) {
        return;
    }
    let initrd = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();

    let err = backend
        .start(&test_guest_config("triple_fault", &initrd))
        .unwrap_err();

    let text = err.to_string();
    assert!(matches!(err, KvmError::EndedEarly { .. }), "{err:?}");
    assert!(
        text.contains("guest fault") && text.contains("triple-faulted"),
        "{text}"
    );
    assert!(
        text.contains("about to triple-fault"),
        "serial tail: {text}"
    );
    // Reported, not waited out: the ready timeout is 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_guest_that_exits_before_ready_is_reported_with_its_exit_code() {
    let test = "a_guest_that_exits_before_ready_is_reported_with_its_exit_code";
    let Some(backend) = backend_or_skip(test) else {
        return;
    };
    if !kvm_or_skip(test) {
        return;
    }
    let initrd = tempfile::NamedTempFile::new().unwrap();

    let err = backend
        .start(&test_guest_config("hello", &initrd))
        .unwrap_err();

    assert!(
        err.to_string().contains("the guest exited with code 0"),
        "{err}"
    );
}

#[test]
fn a_missing_kernel_is_a_vmm_error_naming_it() {
    let test = "a_missing_kernel_is_a_vmm_error_naming_it";
    let Some(backend) = backend_or_skip(test) else {
        return;
    };
    let initrd = tempfile::NamedTempFile::new().unwrap();
    let mut config = test_guest_config("hello", &initrd);
    config.image.kernel = PathBuf::from("/nonexistent/vmlinux");

    let err = backend.start(&config).unwrap_err();

    // Caught before the jail is built: only existing files are bound in.
    assert!(matches!(err, KvmError::ImageFile(..)), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
}

/// Field `key` of /proc/<pid>/status.
fn status_field(pid: u32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

#[test]
fn the_vmm_of_a_running_guest_is_jailed() {
    let test = "the_vmm_of_a_running_guest_is_jailed";
    let Some(backend) = backend_or_skip(test) else {
        return;
    };
    if !kvm_or_skip(test) {
        return;
    }
    let initrd = tempfile::NamedTempFile::new().unwrap();
    let mut config = test_guest_config("endless", &initrd);
    config.ready_timeout = Duration::from_secs(4);
    let starter = std::thread::spawn(move || backend.start(&config).map(|_| ()));

    // The keeper is our child; the VMM, pid 1 of its namespace, is its child.
    let deadline = Instant::now() + Duration::from_secs(3);
    let vmm = loop {
        let found = children_of(std::process::id())
            .into_iter()
            .filter(|k| {
                std::fs::read(format!("/proc/{k}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("endless"))
            })
            .flat_map(children_of)
            .find(|v| status_field(*v, "Seccomp").as_deref() == Some("2"));
        if let Some(pid) = found {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no jailed VMM with a seccomp filter appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    let walls = (
        status_field(vmm, "NoNewPrivs"),
        status_field(vmm, "CapEff"),
        ns(&vmm.to_string(), "net") != ns("self", "net"),
        ns(&vmm.to_string(), "pid") != ns("self", "pid"),
        ns(&vmm.to_string(), "mnt") != ns("self", "mnt"),
    );
    let err = starter.join().unwrap().unwrap_err();

    assert_eq!(
        walls,
        (
            Some("1".to_owned()),
            Some("0000000000000000".to_owned()),
            true,
            true,
            true
        )
    );
    assert!(matches!(err, KvmError::ReadyTimeout { .. }), "{err:?}");
    // Dropping the VM killed the keeper, and the VMM died with it.
    let gone = Instant::now() + Duration::from_secs(2);
    while process_exists(vmm) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!process_exists(vmm), "the jailed VMM {vmm} outlived its VM");
}

#[test]
fn the_guest_image_renders_a_pdf_under_the_projects_vmm() {
    let test = "the_guest_image_renders_a_pdf_under_the_projects_vmm";
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
    let dir = match image_cache::locate(None) {
        Ok(dir) => dir,
        Err(e) => {
            loud(&format!("SKIPPED {test}: {e}"));
            return;
        }
    };
    let mut config = VmConfig::new(GuestImage::from_dir(&dir).unwrap());
    config.ready_timeout = Duration::from_secs(30);
    let pdf = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shim/fixtures/three-pages.pdf"),
    )
    .unwrap();
    let input = TaskInput::file("three-pages.pdf", "application/pdf", pdf, Limits::default());

    let mut vm = backend.start(&config).unwrap();
    let mut channel = vm.take_channel().unwrap();
    give_identity(&mut channel, 1, Instant::now() + Duration::from_secs(10)).unwrap();
    let run = run_task(
        &mut channel,
        1,
        &input,
        Instant::now() + Duration::from_secs(60),
    )
    .unwrap();
    let _ = channel.send(&HostMessage::Shutdown);
    vm.wait_or_kill(Duration::from_secs(5)).unwrap();
    let pid = vm.pid();
    drop(vm);

    assert_eq!(run.pages.len(), 3, "pages: {:?}", run.pages.keys());
    assert!(!process_exists(pid), "vitrine-vmm {pid} outlived its VM");
}

#[test]
fn the_chosen_backend_follows_what_the_probe_says() {
    let test = "the_chosen_backend_follows_what_the_probe_says";
    let Some(backend) = backend_or_skip(test) else {
        return;
    };
    let probe = backend.probe().unwrap();

    let chosen = HostBackend::choose();

    match (&probe, &chosen) {
        (HostSupport::FullGuests, HostBackend::Kvm(_)) => {}
        (HostSupport::No(why), HostBackend::Qemu { why_not_kvm, .. }) => {
            assert_eq!(why, why_not_kvm);
            assert_eq!(chosen.accel(), Accel::Tcg);
            assert!(chosen.describe().starts_with("qemu-tcg"));
        }
        _ => panic!("probe said {probe:?}, chose {}", chosen.describe()),
    }
}
