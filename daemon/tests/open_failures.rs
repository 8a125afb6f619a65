//! A document whose renderer fails, through `vitrine open --png`, a private
//! bus, the real `vitrined` and a QEMU guest: the reason names its cause
//! once, and no empty page folder is left behind.
//!
//! Needs dbus, QEMU and the guest image; each missing piece prints a
//! SKIPPED line.

mod dbus_support;

use dbus_support::{example_policy, image_or_skip, loud, text, tool_or_skip, PrivateBus};

#[test]
fn a_truncated_image_fails_naming_its_cause_once_and_leaves_no_page_folder() {
    let test = "a_truncated_image_fails_naming_its_cause_once_and_leaves_no_page_folder";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // A JPEG cut right after its JFIF header.
    let cut = work.path().join("cut.jpg");
    std::fs::write(
        &cut,
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    )
    .unwrap();
    let pages = work.path().join("pages");
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

    // Act
    let out = bus.vitrine(&[
        "open".as_ref(),
        "--png".as_ref(),
        pages.as_os_str(),
        cut.as_os_str(),
    ]);

    // Assert
    let report = text(&out);
    loud(&format!("{test}:\n{report}"));
    assert_eq!(out.status.code(), Some(1), "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr
        .lines()
        .find(|l| l.contains("image decoding failed: "))
        .unwrap_or_else(|| panic!("no decoding failure: {report}"));
    assert_eq!(reason.matches("No more bytes").count(), 1, "{report}");
    assert!(!pages.exists(), "{report}");
}
