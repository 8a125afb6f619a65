//! A task that runs into its profile's time limit says so in those words,
//! through `vitrine run`, a private bus, the real `vitrined` and a QEMU
//! guest: a program that never ends, under a profile with a 20 s limit.
//!
//! Needs dbus, gcc + libc6-dev, QEMU and the guest image; each missing piece
//! prints a SKIPPED line.

mod dbus_support;

use std::time::Instant;

use dbus_support::PrivateBus;
use dbus_support::{example_policy, image_or_skip, loud, static_program, text, tool_or_skip};

const FOREVER_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    for (unsigned long i = 0;; i++) { printf("still running %lu\n", i); fflush(stdout); usleep(100000); }
}
"#;

#[test]
fn a_program_past_its_time_limit_ends_saying_which_limit_was_reached() {
    let test = "a_program_past_its_time_limit_ends_saying_which_limit_was_reached";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(program) = static_program(test, "forever", FOREVER_C, work.path()) else {
        return;
    };
    // The example policy, with the program profile cut to 20 s.
    let policy = work.path().join("policy.d");
    std::fs::create_dir(&policy).unwrap();
    for entry in std::fs::read_dir(example_policy()).unwrap() {
        let path = entry.unwrap().path();
        let mut body = std::fs::read_to_string(&path).unwrap();
        if path.file_name().unwrap() == "10-profiles.toml" {
            let program_profile = body.find("[profile.program]").unwrap();
            let limit = program_profile + body[program_profile..].find("time_limit").unwrap();
            let end = limit + body[limit..].find('\n').unwrap();
            body.replace_range(limit..end, "time_limit = \"20s\"");
        }
        std::fs::write(policy.join(path.file_name().unwrap()), body).unwrap();
    }
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

    // Act
    let started = Instant::now();
    let out = bus.vitrine(&["run".as_ref(), program.as_os_str()]);
    let took = started.elapsed();

    // Assert
    let report = text(&out);
    loud(&format!("{test}: {took:?}\n{report}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("profile   program: 1024 MiB, 2 vCPU, time limit 20s"),
        "{report}"
    );
    assert!(
        stdout.contains("verdict   timed-out: time limit of 20s reached\n"),
        "{report}"
    );
    // The steps it never reached are left out, not shown blank.
    assert!(stdout.contains("timings   boot to Ready "), "{report}");
    assert!(!stdout.contains("  ms"), "{report}");
    assert!(!out.status.success(), "{report}");
}
