//! Input that breaks a guest protocol cap is refused at the D-Bus call,
//! through a private bus and the real `vitrined`: no task is started, so no
//! VM (warm or fresh) is used up for it.
//!
//! Needs dbus; without it, a SKIPPED line.

mod dbus_support;

use std::collections::HashMap;

use dbus_support::{example_policy, manager_proxy, tool_or_skip, PrivateBus};
use zbus::zvariant::{Fd, OwnedObjectPath, Value};

type TaskRow = (OwnedObjectPath, String, String, String, String);

fn invalid_args(err: zbus::Error) -> String {
    match err {
        zbus::Error::MethodError(name, text, _) => {
            assert_eq!(
                name.as_str(),
                "org.freedesktop.DBus.Error.InvalidArgs",
                "{text:?}"
            );
            text.unwrap_or_default()
        }
        other => panic!("not a D-Bus error reply: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_past_a_protocol_cap_is_refused_before_any_task_starts() {
    let test = "input_past_a_protocol_cap_is_refused_before_any_task_starts";
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let bus = PrivateBus::start(
        &["--policy-dir".as_ref(), example_policy().as_os_str()],
        &[],
    );
    let connection = bus.connect().await;
    let manager = manager_proxy(&connection).await;
    let long_link = format!("https://example.org/{}", "a".repeat(100_000));
    let program = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(program.path(), b"\x7fELF").unwrap();
    let file = std::fs::File::open(program.path()).unwrap();
    let many: Vec<String> = (0..65).map(|i| i.to_string()).collect();
    let huge_arg = vec!["x".repeat(5000)];

    // Act
    let link = manager
        .call::<_, _, OwnedObjectPath>(
            "OpenUri",
            &(long_link.as_str(), HashMap::<&str, Value<'_>>::new()),
        )
        .await;
    let args = manager
        .call::<_, _, OwnedObjectPath>(
            "RunProgram",
            &(Fd::from(&file), many, HashMap::<&str, Value<'_>>::new()),
        )
        .await;
    let arg = manager
        .call::<_, _, OwnedObjectPath>(
            "RunProgram",
            &(Fd::from(&file), huge_arg, HashMap::<&str, Value<'_>>::new()),
        )
        .await;
    let tasks: Vec<TaskRow> = manager.call("ListTasks", &()).await.unwrap();

    // Assert
    assert_eq!(
        invalid_args(link.unwrap_err()),
        "the link is 100020 bytes, more than the 8192 a task may carry; nothing was started"
    );
    assert_eq!(
        invalid_args(args.unwrap_err()),
        "65 arguments, more than the 64 a program may get; nothing was started"
    );
    assert_eq!(
        invalid_args(arg.unwrap_err()),
        "argument 1 is 5000 bytes, more than the 4096 a task may carry; nothing was started"
    );
    assert!(tasks.is_empty(), "{tasks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_the_wrong_argument_types_gets_invalid_args() {
    let test = "a_call_with_the_wrong_argument_types_gets_invalid_args";
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let bus = PrivateBus::start(
        &["--policy-dir".as_ref(), example_policy().as_os_str()],
        &[],
    );
    let connection = bus.connect().await;
    let manager = manager_proxy(&connection).await;

    // Act
    let one = manager
        .call::<_, _, OwnedObjectPath>("OpenUri", &("https://example.org/",))
        .await;
    let three = manager
        .call::<_, _, OwnedObjectPath>("OpenFile", &("a", "b", 3u32))
        .await;
    let tasks: Vec<TaskRow> = manager.call("ListTasks", &()).await.unwrap();
    // A task object (this one fails at once: the daemon has no image).
    let task: OwnedObjectPath = manager
        .call(
            "OpenUri",
            &("https://example.org/", HashMap::<&str, Value<'_>>::new()),
        )
        .await
        .unwrap();
    let cancel = dbus_support::task_proxy(&connection, task.as_str())
        .await
        .call::<_, _, ()>("Cancel", &("now",))
        .await;

    // Assert
    assert_eq!(
        invalid_args(cancel.unwrap_err()),
        "Cancel takes arguments of signature \"\", not \"s\""
    );
    assert_eq!(
        invalid_args(one.unwrap_err()),
        "OpenUri takes arguments of signature \"sa{sv}\", not \"s\""
    );
    assert_eq!(
        invalid_args(three.unwrap_err()),
        "OpenFile takes arguments of signature \"hsa{sv}\", not \"ssu\""
    );
    assert!(tasks.is_empty(), "{tasks:?}");
}
