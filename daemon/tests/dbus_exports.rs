//! Files a sandboxed program leaves in its folder are offered for export;
//! the profile decides whether the user may approve them. Under the shipped
//! policy (`program`: exports denied) the offer is refused and nothing is
//! written; under a policy that asks, `ExportRequested` names the file and
//! its SHA-256, `busctl` approves it, and the file written matches the hash.
//! The task's signed receipt names the export's hash and verifies.
//!
//! Needs dbus, gcc + libc6-dev (a static test program), QEMU and the guest
//! image; each missing piece prints a SKIPPED line.

mod dbus_support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use dbus_support::{
    example_policy, file_names, image_or_skip, loud, manager_proxy, manager_signals,
    static_program, text, tool_or_skip, wait_finished, PrivateBus,
};
use vitrine_daemon::service::receipt::{sha256_hex, verify_file};
use zbus::export::futures_core::Stream;
use zbus::zvariant::{Fd, OwnedObjectPath, Value};

const CONTENT: &[u8] = b"exported by the program\n";

const EXPORTER_C: &str = r#"
#include <stdio.h>
int main(void) {
    FILE *f = fopen("result.txt", "w");
    if (f) { fputs("exported by the program\n", f); fclose(f); }
    printf("VITRINE-EXPORTER\n");
    return 0;
}
"#;

/// A policy whose programs may ask to export plain text, unflattened.
const ASKING_POLICY: &str = r#"
[profile.program]
memory_mib = 512
vcpus = 1
time_limit = "5m"
display = { max_width = 1280, max_height = 800, max_fps = 30 }

[profile.program.export]
mode = "ask"
types = ["text/plain"]
max_size = "1MiB"
flatten = false

[[rule]]
name = "programs-may-export-text"
action = "run-program"
sandbox = "program"
"#;

type ExportRow = (OwnedObjectPath, String, u64, String, String);

async fn run_exporter(
    bus: &PrivateBus,
    program: &Path,
    export_dir: &Path,
) -> (
    zbus::Connection,
    zbus::MessageStream,
    zbus::Proxy<'static>,
    OwnedObjectPath,
) {
    let connection = bus.connect().await;
    let signals = manager_signals(&connection).await;
    let manager = manager_proxy(&connection).await;
    let file = std::fs::File::open(program).unwrap();
    let mut options: HashMap<&str, Value<'_>> = HashMap::new();
    options.insert(
        "export-dir",
        Value::from(export_dir.to_str().unwrap().to_owned()),
    );
    let task: OwnedObjectPath = manager
        .call(
            "RunProgram",
            &(Fd::from(&file), Vec::<String>::new(), options),
        )
        .await
        .unwrap();
    (connection, signals, manager, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_refused_by_policy_is_listed_as_refused_and_never_written() {
    let test = "export_refused_by_policy_is_listed_as_refused_and_never_written";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(program) = static_program(test, "exporter", EXPORTER_C, work.path()) else {
        return;
    };
    // Arrange: the shipped policy, whose `program` profile exports nothing.
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--no-windows".as_ref(),
        ],
        &[],
    );
    let export_dir = work.path().join("exports");

    // Act
    let (connection, mut signals, manager, task) = run_exporter(&bus, &program, &export_dir).await;
    let verdict = wait_finished(&connection, &mut signals, &task, Duration::from_secs(120)).await;
    let exports: Vec<ExportRow> = manager.call("ListExports", &()).await.unwrap();
    let listed = bus.vitrine(&["exports".as_ref()]);

    // Assert
    loud(&format!("{test}: verdict {verdict:?}, exports {exports:?}"));
    assert_eq!(verdict, "clean");
    assert_eq!(exports.len(), 1, "{exports:?}");
    let (path, name, size, sha, status) = &exports[0];
    assert_eq!(path, &task);
    assert_eq!(name, "result.txt");
    assert_eq!(*size, CONTENT.len() as u64);
    assert_eq!(sha, &sha256_hex(CONTENT));
    assert_eq!(status, "refused: the profile allows no exports");
    assert!(!export_dir.exists(), "something was written");
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("refused: the profile allows no exports"),
        "{}",
        text(&listed)
    );
    let approve = manager
        .call::<_, _, String>("ApproveExport", &(task.as_ref(), "result.txt"))
        .await;
    assert!(
        approve.is_err(),
        "a refused export was approved: {approve:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_approved_over_dbus_is_written_with_its_hash_checked() {
    let test = "export_approved_over_dbus_is_written_with_its_hash_checked";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    if !tool_or_skip(test, "dbus-daemon", "dbus") || !tool_or_skip(test, "busctl", "systemd") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(program) = static_program(test, "exporter", EXPORTER_C, work.path()) else {
        return;
    };
    // Arrange: a policy that lets the user approve plain text.
    let bus = asking_daemon(&image, work.path());
    let export_dir = work.path().join("exports");

    // Act: wait for the request, then approve it with a real client.
    let (connection, mut signals, manager, task) = run_exporter(&bus, &program, &export_dir).await;
    let requested = export_requested(&mut signals).await;
    let approved = bus.busctl(
        &[
            "call",
            "org.vitrine.Sandbox1",
            "/org/vitrine/Sandbox1",
            "org.vitrine.Sandbox1",
            "ApproveExport",
            "os",
            task.as_str(),
            "result.txt",
        ],
        None,
    );
    let verdict = wait_finished(&connection, &mut signals, &task, Duration::from_secs(60)).await;

    // Assert
    loud(&format!(
        "{test}: requested {requested:?}; busctl: {}; verdict {verdict:?}",
        String::from_utf8_lossy(&approved.stdout).trim()
    ));
    assert_eq!(requested.0, task);
    assert_eq!(requested.1, "result.txt");
    assert_eq!(requested.2, CONTENT.len() as u64);
    assert_eq!(requested.3, sha256_hex(CONTENT));
    assert!(approved.status.success(), "{}", text(&approved));
    let written = export_dir.join("result.txt");
    assert_eq!(
        String::from_utf8_lossy(&approved.stdout).trim(),
        format!("s \"{}\"", written.display())
    );
    let bytes = std::fs::read(&written).unwrap();
    assert_eq!(sha256_hex(&bytes), requested.3);
    assert_eq!(bytes, CONTENT);
    assert_eq!(verdict, "clean, 1 export(s) written");
    // The receipt names the export's hash and verifies with the daemon's key.
    let key: String = manager.get_property("ReceiptPublicKey").await.unwrap();
    let number = task.as_str().rsplit('/').next().unwrap();
    let receipt_path = bus
        .home
        .join(".local/state/vitrine/tasks")
        .join(number)
        .join("receipt.json");
    let receipt = verify_file(&receipt_path, &key).unwrap();
    assert_eq!(receipt.body.verdict, verdict);
    assert_eq!(
        receipt.body.input_sha256,
        sha256_hex(&std::fs::read(&program).unwrap())
    );
    assert!(
        receipt
            .body
            .outputs
            .iter()
            .any(|o| o.what == "export:result.txt" && o.sha256 == sha256_hex(CONTENT)),
        "{:?}",
        receipt.body.outputs
    );
}

/// Waits for the next `ExportRequested` (panics on `TaskFinished` first).
async fn export_requested(
    signals: &mut zbus::MessageStream,
) -> (OwnedObjectPath, String, u64, String) {
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let msg = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *signals).poll_next(cx))
                .await
                .unwrap()
                .unwrap();
            let header = msg.header();
            match header.member().map(|m| m.as_str()) {
                Some("ExportRequested") => return msg.body().deserialize().unwrap(),
                Some("TaskFinished") => panic!("finished without a request: {msg:?}"),
                _ => {}
            }
        }
    })
    .await
    .expect("no ExportRequested")
}

/// A daemon whose policy is [`ASKING_POLICY`], and the work folder.
fn asking_daemon(image: &Path, work: &Path) -> PrivateBus {
    let policy = work.join("policy.d");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(policy.join("10-asking.toml"), ASKING_POLICY).unwrap();
    PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            policy.as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--no-windows".as_ref(),
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_denied_with_the_cli_is_listed_as_denied_and_never_written() {
    let test = "export_denied_with_the_cli_is_listed_as_denied_and_never_written";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(program) = static_program(test, "exporter", EXPORTER_C, work.path()) else {
        return;
    };
    // Arrange
    let bus = asking_daemon(&image, work.path());
    let export_dir = work.path().join("exports");
    let (connection, mut signals, manager, task) = run_exporter(&bus, &program, &export_dir).await;
    let requested = export_requested(&mut signals).await;
    let number = task.as_str().rsplit('/').next().unwrap().to_owned();

    // Act: the user looks at the offer, then refuses it, with `vitrine`.
    let pending = bus.vitrine(&["exports".as_ref()]);
    let deny = bus.vitrine(&[
        "exports".as_ref(),
        "deny".as_ref(),
        number.as_ref(),
        "result.txt".as_ref(),
    ]);
    let verdict = wait_finished(&connection, &mut signals, &task, Duration::from_secs(60)).await;
    let exports: Vec<ExportRow> = manager.call("ListExports", &()).await.unwrap();

    // Assert
    let listed = String::from_utf8_lossy(&pending.stdout);
    assert!(
        listed.contains("result.txt")
            && listed.contains("pending")
            && listed.contains(&requested.3),
        "{}",
        text(&pending)
    );
    assert!(deny.status.success(), "{}", text(&deny));
    assert_eq!(verdict, "clean");
    assert_eq!(exports.len(), 1, "{exports:?}");
    assert_eq!(exports[0].4, "denied");
    assert!(!export_dir.exists(), "a denied export was written");
}

/// A policy whose programs' text exports leave flattened, without asking.
const FLATTENING_POLICY: &str = r#"
[profile.program]
memory_mib = 512
vcpus = 1
time_limit = "5m"
display = { max_width = 1280, max_height = 800, max_fps = 30 }

[profile.program.export]
mode = "allow"
types = ["text/plain", "application/pdf"]
max_size = "5MiB"
flatten = true

[[rule]]
name = "programs-export-flattened-text"
action = "run-program"
sandbox = "program"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flattened_export_is_rebuilt_from_pixels_and_its_bytes_never_come() {
    let test = "flattened_export_is_rebuilt_from_pixels_and_its_bytes_never_come";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    if !tool_or_skip(test, "dbus-daemon", "dbus")
        || !tool_or_skip(test, "qpdf", "qpdf")
        || !tool_or_skip(test, "pdftoppm", "poppler-utils")
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(program) = static_program(test, "exporter", EXPORTER_C, work.path()) else {
        return;
    };
    // Arrange: a policy that flattens every export.
    let policy = work.path().join("policy.d");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(policy.join("10-flattening.toml"), FLATTENING_POLICY).unwrap();
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            policy.as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--no-windows".as_ref(),
        ],
        &[],
    );
    let export_dir = work.path().join("exports");

    // Act
    let (connection, mut signals, manager, task) = run_exporter(&bus, &program, &export_dir).await;
    let verdict = wait_finished(&connection, &mut signals, &task, Duration::from_secs(300)).await;

    // Assert: a PDF of the text's pixels, never the text file itself.
    loud(&format!("{test}: verdict {verdict:?}"));
    assert_eq!(verdict, "clean, 1 export(s) written");
    let names = file_names(&export_dir);
    assert_eq!(names, ["result-safe.pdf"]);
    let pdf = export_dir.join("result-safe.pdf");
    let bytes = std::fs::read(&pdf).unwrap();
    assert!(
        !bytes
            .windows(CONTENT.len() - 1)
            .any(|w| w == &CONTENT[..CONTENT.len() - 1]),
        "the exported text's bytes are in the PDF"
    );
    let check = bus
        .command("qpdf")
        .arg("--check")
        .arg(&pdf)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let page = work.path().join("page");
    let render = bus
        .command("pdftoppm")
        .args(["-r", "150", "-png", "-singlefile"])
        .arg(&pdf)
        .arg(&page)
        .output()
        .unwrap();
    assert!(render.status.success(), "{}", text(&render));
    if let Some(words) = dbus_support::ocr_or_skip(test, &work.path().join("page.png")) {
        assert!(
            words.contains("EXPORTED BY THE PROGRAM"),
            "OCR read: {words}"
        );
    }
    let key: String = manager.get_property("ReceiptPublicKey").await.unwrap();
    let number = task.as_str().rsplit('/').next().unwrap();
    let receipt = verify_file(
        &bus.home
            .join(".local/state/vitrine/tasks")
            .join(number)
            .join("receipt.json"),
        &key,
    )
    .unwrap();
    assert!(
        receipt
            .body
            .outputs
            .iter()
            .any(|o| o.what == "export:result.txt (flattened)" && o.sha256 == sha256_hex(&bytes)),
        "{:?}",
        receipt.body.outputs
    );
}
