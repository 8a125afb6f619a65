//! Verdicts and exit statuses tell the truth, through `vitrined` on a
//! private bus (D-Bus activation), the shipped policy, and real guests under
//! the QEMU backend, checked word for word:
//! - `vitrine run` tells how its program ended, like `docker run`: static C
//!   programs exit 3, die of SIGSEGV and eat the guest's memory until its
//!   kernel kills them; `--png DIR` leaves the terminal's last frame;
//! - `vitrine open` of a text file longer than the task's pixel budget shows
//!   what fits and says where it stopped.
//!
//! Needs dbus, gcc + libc6-dev, QEMU and the guest image; each missing piece
//! prints a SKIPPED line.

mod dbus_support;

use std::ffi::OsStr;
use std::path::Path;

use dbus_support::{
    example_policy, image_or_skip, loud, static_program, text, tool_or_skip, PrivateBus,
};
use vitrine_daemon::pages::PageImage;

const EXIT_3_C: &str = r#"
#include <stdio.h>
int main(void) { printf("about to exit 3\n"); fflush(stdout); return 3; }
"#;

const SEGV_C: &str = r#"
#include <signal.h>
int main(void) { raise(SIGSEGV); return 0; }
"#;

/// Touches memory in 8 MiB steps: the guest (1 GiB under the `program`
/// profile, less its kernel and files) runs out before the program's 1 GiB
/// address-space limit. Exit 4 would mean malloc failed first.
const EAT_MEMORY_C: &str = r#"
#include <stdlib.h>
#include <string.h>
int main(void) {
    for (;;) {
        char *p = malloc(8 << 20);
        if (!p) return 4;
        memset(p, 1, 8 << 20);
    }
}
"#;

fn vitrine(bus: &PrivateBus, args: &[&OsStr]) -> (Option<i32>, String, String) {
    let out = bus.vitrine(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), stdout, text(&out))
}

fn run(bus: &PrivateBus, args: &[&OsStr]) -> (Option<i32>, String, String) {
    let mut all: Vec<&OsStr> = vec!["run".as_ref()];
    all.extend_from_slice(args);
    let out = bus.vitrine(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), stdout, text(&out))
}

fn verdict_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("verdict "))
        .unwrap_or_default()
}

#[test]
fn run_exits_with_the_programs_status_signal_or_out_of_memory() {
    let test = "run_exits_with_the_programs_status_signal_or_out_of_memory";
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let Some(image) = image_or_skip(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let programs = [
        ("exit3", EXIT_3_C),
        ("segv", SEGV_C),
        ("eat-memory", EAT_MEMORY_C),
    ]
    .map(|(name, src)| static_program(test, name, src, work.path()));
    let [Some(exit3), Some(segv), Some(eat)] = programs else {
        return;
    };
    // Arrange
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
    let frames = work.path().join("frames");

    // Act
    let exit3_run = run(
        &bus,
        &["--png".as_ref(), frames.as_os_str(), exit3.as_os_str()],
    );
    let segv_run = run(&bus, &[segv.as_os_str()]);
    let eat_run = run(&bus, &[eat.as_os_str()]);

    // Assert
    for (code, _, report) in [&exit3_run, &segv_run, &eat_run] {
        loud(&format!("{test}: exit {code:?}\n{report}"));
    }
    assert_eq!(verdict_line(&exit3_run.1), "verdict   exited: code 3");
    assert_eq!(exit3_run.0, Some(3), "{}", exit3_run.2);
    assert_eq!(
        verdict_line(&segv_run.1),
        "verdict   killed: signal 11 (SIGSEGV)"
    );
    assert_eq!(segv_run.0, Some(128 + 11), "{}", segv_run.2);
    assert_eq!(
        verdict_line(&eat_run.1),
        "verdict   out of memory: the guest's kernel killed the program (SIGKILL) when the \
         VM's memory ran out"
    );
    assert_eq!(eat_run.0, Some(125), "{}", eat_run.2);
    let frame = PageImage::read_png(&frames.join("page-1.png")).unwrap();
    assert!(frame.ink_fraction() > 0.0005, "the last frame is blank");
    assert!(
        exit3_run
            .1
            .contains("frames    the terminal's last frame (1 PNG file) in "),
        "{}",
        exit3_run.2
    );
    assert!(Path::new(&frames).is_dir());
}

#[test]
fn open_of_a_text_past_the_pixel_budget_shows_what_fits_and_says_so() {
    let test = "open_of_a_text_past_the_pixel_budget_shows_what_fits_and_says_so";
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let Some(image) = image_or_skip(test) else {
        return;
    };
    // Arrange: 100,000 lines; the `document` profile's pages are 900x1100,
    // and 135 of them fill the task's 512 MiB pixel budget.
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("big.txt");
    let text: String = (0..100_000)
        .map(|i| format!("{i:06} the quick brown fox jumps over the lazy dog, again\n"))
        .collect();
    std::fs::write(&file, text).unwrap();
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
    let (code, stdout, report) = vitrine(
        &bus,
        &[
            "open".as_ref(),
            "--png".as_ref(),
            pages.as_os_str(),
            file.as_os_str(),
        ],
    );

    // Assert
    loud(&format!("{test}: exit {code:?}\n{report}"));
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        verdict_line(&stdout),
        "verdict   clean, showing 135 of 1695 pages; the rest are past the task's pixel \
         budget of 512 MiB"
    );
    assert_eq!(std::fs::read_dir(&pages).unwrap().count(), 135);
    let last = PageImage::read_png(&pages.join("page-135.png")).unwrap();
    assert!(last.ink_fraction() > 0.002, "the last page is blank");
}
