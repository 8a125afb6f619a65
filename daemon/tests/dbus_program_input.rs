//! A sandboxed program that waits at a prompt gets what the user types into
//! its viewer window. The program (static C, run through `RunProgram` under
//! the shipped policy) prints a prompt, reads a line and exits 0 only if the
//! line is the word typed; xdotool types it into the viewer on Xvfb while
//! the guest is silent. The task's `program-exit` detail must say code 0.
//!
//! Needs dbus, Xvfb, xdotool, gcc + libc6-dev, QEMU and the guest image;
//! each missing piece prints a SKIPPED line.

mod dbus_support;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use dbus_support::{
    example_policy, image_or_skip, loud, manager_proxy, manager_signals, static_program,
    task_proxy, tool_or_skip, wait_finished, xdotool, PrivateBus, Xvfb,
};
use zbus::zvariant::{Fd, OwnedObjectPath, Value};

const PROMPT_C: &str = r#"
#include <stdio.h>
#include <string.h>
int main(void) {
    char line[64];
    printf("Type the word: ");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 2;
    printf("got %s", line);
    return strncmp(line, "vitrine\n", 8) == 0 ? 0 : 3;
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_at_a_prompt_gets_the_line_typed_into_its_window() {
    let test = "a_program_at_a_prompt_gets_the_line_typed_into_its_window";
    if !tool_or_skip(test, "dbus-daemon", "dbus")
        || !tool_or_skip(test, "Xvfb", "xvfb")
        || !tool_or_skip(test, "xdotool", "xdotool")
    {
        return;
    }
    let Some(image) = image_or_skip(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let Some(program) = static_program(test, "prompt", PROMPT_C, work.path()) else {
        return;
    };
    // Arrange
    let x = Xvfb::start();
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
        ],
        &[
            ("DISPLAY", OsStr::new(&x.display)),
            (
                "VITRINE_VIEWER",
                env!("CARGO_BIN_EXE_vitrine-viewer").as_ref(),
            ),
        ],
    );
    let connection = bus.connect().await;
    let mut signals = manager_signals(&connection).await;
    let manager = manager_proxy(&connection).await;
    let file = std::fs::File::open(&program).unwrap();
    let task: OwnedObjectPath = manager
        .call(
            "RunProgram",
            &(
                Fd::from(&file),
                Vec::<String>::new(),
                HashMap::<&str, Value<'_>>::new(),
            ),
        )
        .await
        .unwrap();
    let proxy = task_proxy(&connection, task.as_str()).await;

    // Act: once the window is up and the program has sat at its prompt for
    // a while (its guest silent), type the word and Enter.
    let deadline = Instant::now() + Duration::from_secs(120);
    let window = loop {
        if let Some(w) = xdotool(
            &x.display,
            &["search", "--onlyvisible", "--name", "sandboxed"],
        ) {
            if let Some(first) = w.lines().next() {
                break first.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "no viewer window appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let state_is = |want: &'static str| {
        let proxy = proxy.clone();
        async move { proxy.get_property::<String>("State").await.ok().as_deref() == Some(want) }
    };
    while !state_is("running").await {
        assert!(Instant::now() < deadline, "the task never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    xdotool(&x.display, &["windowfocus", "--sync", &window]).expect("focus the viewer");
    xdotool(&x.display, &["type", "--delay", "30", "vitrine"]).expect("type");
    xdotool(&x.display, &["key", "Return"]).expect("Enter");
    let typed = Instant::now();
    let exit = loop {
        let details: HashMap<String, String> = proxy.get_property("Details").await.unwrap();
        if let Some(exit) = details.get("program-exit") {
            break exit.clone();
        }
        if Instant::now() >= deadline {
            let verdict: String = proxy.get_property("Verdict").await.unwrap_or_default();
            let state: String = proxy.get_property("State").await.unwrap_or_default();
            panic!(
                "the program never ended: the line did not reach it (state {state}, verdict \
                 {verdict:?}, details {details:?})"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ended_after = typed.elapsed();
    let _: () = proxy.call("Cancel", &()).await.unwrap();
    let verdict = wait_finished(&connection, &mut signals, &task, Duration::from_secs(60)).await;

    // Assert
    loud(&format!(
        "{test}: program-exit {exit:?} {ended_after:?} after Enter; verdict {verdict:?}"
    ));
    assert_eq!(exit, "code Some(0), signal None");
}
