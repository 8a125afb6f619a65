//! `vitrine open` through `vitrined` on a private session bus (started by
//! D-Bus activation), with the shipped example policy: a PDF is rendered in
//! a fresh guest under the real QEMU backend (TCG) and comes back as PNG
//! pages; a disk image is refused with its rule named; a system document is
//! left to the host; a missing policy fails closed.
//!
//! The guest test needs the image that `shim/image/build.sh` builds; without
//! it, it prints a SKIPPED line and passes.

mod dbus_support;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

use dbus_support::{example_policy, image_or_skip, loud, repo, text, PrivateBus};
use vitrine_daemon::pages::PageImage;

/// `vitrine open ARGS` against a fresh bus whose daemon runs with
/// `--policy-dir POLICY [--image-dir IMAGE] --no-windows`.
fn vitrine(policy: &Path, image: Option<&Path>, args: &[&OsStr]) -> Output {
    let mut daemon: Vec<&OsStr> = vec!["--policy-dir".as_ref(), policy.as_os_str()];
    if let Some(image) = image {
        daemon.extend(["--image-dir".as_ref(), image.as_os_str()]);
    }
    daemon.push("--no-windows".as_ref());
    let bus = PrivateBus::start(&daemon, &[]);
    let mut all: Vec<&OsStr> = vec!["open".as_ref()];
    all.extend_from_slice(args);
    bus.vitrine(&all)
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn pdf_fixture_comes_back_as_three_png_pages_from_a_fresh_guest() {
    let test = "pdf_fixture_comes_back_as_three_png_pages_from_a_fresh_guest";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    let out_dir = tempfile::tempdir().unwrap();
    let pages = out_dir.path().join("pages");
    let pdf = repo().join("shim/fixtures/three-pages.pdf");

    let out = vitrine(
        &example_policy(),
        Some(&image),
        &["--png".as_ref(), pages.as_os_str(), pdf.as_os_str()],
    );

    let report = text(&out);
    loud(&format!("{test}:\n{report}"));
    assert!(out.status.success(), "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("decision  sandbox(document), by rule `pdf` (50-documents.toml:"),
        "{report}"
    );
    assert!(stdout.contains("timings   boot to Ready"), "{report}");
    assert_eq!(
        file_names(&pages),
        ["page-1.png", "page-2.png", "page-3.png"]
    );
    let mut inks = Vec::new();
    for n in 1..=3 {
        let page = PageImage::read_png(&pages.join(format!("page-{n}.png"))).unwrap();
        // The document profile allows 1920x1200 and the guest renders the
        // long side of a page to at most 1200: A4 portrait is 848x1200.
        assert_eq!(page.height, 1200, "page {n}: {page:?}");
        assert!((847..=849).contains(&page.width), "page {n}: {page:?}");
        assert_eq!(page.dominant_color(), [255, 255, 255, 255], "page {n}");
        assert!(page.ink_fraction() > 0.01, "page {n} is blank");
        inks.push(page.ink_fraction());
    }
    // Each page's box is wider than the one before: three different pages.
    assert!(inks[0] < inks[1] && inks[1] < inks[2], "{inks:?}");
}

#[test]
fn disk_image_is_refused_with_its_rule_named_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let by_name = dir.path().join("backup.iso");
    std::fs::write(&by_name, b"just text in a file named like a disk image\n").unwrap();
    let mut iso = vec![0u8; 0x8800];
    iso[0x8001..0x8006].copy_from_slice(b"CD001");
    let by_content = dir.path().join("holiday-photos.bin");
    std::fs::write(&by_content, &iso).unwrap();
    let pages = dir.path().join("pages");

    for (file, rule) in [
        (&by_name, "disk-images-by-name"),
        (&by_content, "disk-images-by-content"),
    ] {
        let out = vitrine(
            &example_policy(),
            None,
            &["--png".as_ref(), pages.as_os_str(), file.as_os_str()],
        );

        let report = text(&out);
        assert_eq!(out.status.code(), Some(1), "{report}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("refused"), "{report}");
        assert!(
            stderr.contains(&format!("rule `{rule}` (50-documents.toml:")),
            "{report}"
        );
        assert!(!pages.exists(), "{report}");
    }
}

#[test]
fn system_document_is_left_to_the_host_without_pages() {
    let test = "system_document_is_left_to_the_host_without_pages";
    let doc = Path::new("/usr/share/common-licenses/Apache-2.0");
    if !doc.is_file() {
        loud(&format!(
            "SKIPPED {test}: {} is missing (Debian's base-files ships it)",
            doc.display()
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("pages");

    let out = vitrine(
        &example_policy(),
        None,
        &["--png".as_ref(), pages.as_os_str(), doc.as_os_str()],
    );

    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("decision  host, by rule `system-docs`"),
        "{report}"
    );
    assert!(
        stdout.contains("would open normally on the host"),
        "{report}"
    );
    assert!(
        stdout.contains(&format!(
            "pages     none: nothing was sandboxed, so no pages were written to {}",
            pages.display()
        )),
        "{report}"
    );
    assert!(!pages.exists(), "{report}");
}

#[test]
fn a_refused_task_leaves_no_empty_page_folder_behind() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.iso");
    std::fs::write(&file, b"text\n").unwrap();
    let bus = PrivateBus::start(
        &["--policy-dir".as_ref(), example_policy().as_os_str()],
        &[],
    );
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();

    // No --png and no display: vitrine makes a folder for the pages itself.
    let out = bus
        .command(env!("CARGO_BIN_EXE_vitrine"))
        .env("TMPDIR", &tmp)
        .arg("open")
        .arg(&file)
        .output()
        .unwrap();

    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{report}"
    );
    assert_eq!(file_names(&tmp), Vec::<String>::new(), "{report}");
}

#[test]
fn missing_policy_fails_closed_to_the_strict_sandbox_loudly() {
    let dir = tempfile::tempdir().unwrap();
    // Denied by name under the example policy; failing closed sandboxes it.
    let file = dir.path().join("backup.iso");
    std::fs::write(&file, b"text\n").unwrap();
    let missing = dir.path().join("no-policy.d");
    let no_image = dir.path().join("no-image");

    // Stop before a VM starts: the decision is what is checked.
    let out = vitrine(&missing, Some(&no_image), &[file.as_os_str()]);

    let report = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FAILING CLOSED"), "{report}");
    assert!(
        stdout.contains("decision  sandbox(strict), by FAIL-CLOSED"),
        "{report}"
    );
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(stderr.contains("holds no vmlinux"), "{report}");
}

#[test]
fn directory_is_refused_before_the_policy_is_asked() {
    let dir = tempfile::tempdir().unwrap();

    let out = vitrine(&example_policy(), None, &[dir.path().as_os_str()]);

    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a regular file"),
        "{report}"
    );
    assert!(out.stdout.is_empty(), "{report}");
}

#[test]
fn hostile_file_name_cannot_drive_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // An escape sequence (clear screen, set title) and a fake second line.
    let file = dir
        .path()
        .join("x\u{1b}[2J\u{1b}]0;owned\u{7}\ndecision  host.iso");
    std::fs::write(&file, b"text\n").unwrap();

    let out = vitrine(&example_policy(), None, &[file.as_os_str()]);

    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
    assert!(!all.contains(&0x1b), "{report}");
    assert!(!all.contains(&0x07), "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.lines().any(|l| l.starts_with("decision  host")),
        "{report}"
    );
    assert!(
        stdout.contains("decision  deny, by rule `disk-images-by-name`"),
        "{report}"
    );
}

#[test]
fn a_detached_open_keeps_the_page_folder_it_made_for_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"text\n").unwrap();
    let bus = PrivateBus::start(
        &["--policy-dir".as_ref(), example_policy().as_os_str()],
        &[],
    );
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();

    let out = bus
        .command(env!("CARGO_BIN_EXE_vitrine"))
        .env("TMPDIR", &tmp)
        .args(["open", "--detach"])
        .arg(&file)
        .output()
        .unwrap();

    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let made = file_names(&tmp);
    assert_eq!(made.len(), 1, "{report}");
    assert!(made[0].starts_with("vitrine-pages-"), "{made:?}");
    assert!(
        stdout.contains(&format!(
            "pages     will be written to {}",
            tmp.join(&made[0]).display()
        )),
        "{report}"
    );
    assert!(stdout.contains(" started, detached"), "{report}");
}
