//! A guest that sends garbage frames ends its own task with an error
//! verdict, and the daemon keeps serving other tasks.
//!
//! Host half and guest half live in this one file: the test binary is
//! also the guest. `vitrined --insecure-local-guest THIS_BINARY` starts it
//! as `THIS_BINARY --socket PATH` (the Unix-socket transport the shim
//! speaks in its own tests), and it plays the guest: for a file named
//! `garbage*` it answers the task with a frame header followed by bytes
//! that decode to nothing; for any other file it renders one honest 8x8
//! frame. (`harness = false`: `main` picks the role.)
//!
//! Safe copies: for a file named `words*` the guest follows its page with
//! print data of more OCR words than the protocol allows (encoded by hand,
//! past the guest-side check), for `misfit*` with a word box outside its
//! page; both end their task with an error and write no file, and an honest
//! page becomes a one-page PDF.

mod dbus_support;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dbus_support::{
    example_policy, file_names, loud, manager_proxy, manager_signals, task_proxy, tool_or_skip,
    wait_finished, xdotool, PrivateBus, Xvfb,
};
use vitrine_shim::protocol::{
    Capability, Frame, FrameReader, FrameWriter, GuestMessage, HostMessage, IdentityApplied,
    OcrWord, PagePrint, PixelFormat, Ready, Rect, TaskKind, TaskStatus, MAX_WORDS_PER_PAGE,
    PROTOCOL_VERSION,
};
use zbus::zvariant::{Fd, OwnedObjectPath, Value};

const TEST: &str = "guest_sending_garbage_frames_fails_its_task_and_the_daemon_serves_the_next";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--socket") {
        return match args.get(2) {
            Some(path) => guest(path),
            None => ExitCode::from(2),
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(garbage_frames_fail_the_task_and_the_daemon_serves_the_next());
    println!("test {TEST} ... ok");
    rt.block_on(hostile_print_data_writes_no_safe_copy());
    println!("test {SAFE_COPY_TEST} ... ok");
    rt.block_on(the_viewers_button_saves_a_safe_copy_beside_the_file());
    println!("test {VIEWER_COPY_TEST} ... ok");
    ExitCode::SUCCESS
}

/// The guest role.
fn guest(socket: &str) -> ExitCode {
    let Ok(stream) = UnixStream::connect(socket) else {
        return ExitCode::FAILURE;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = FrameWriter::<_, GuestMessage>::new(stream.try_clone().unwrap());
    let mut reader = FrameReader::<_, HostMessage>::new(stream.try_clone().unwrap());
    let ready = GuestMessage::Ready(Ready {
        shim_version: "hostile-test-guest".into(),
        capabilities: vec![Capability::Text],
    });
    if writer.send(&ready).is_err() {
        return ExitCode::FAILURE;
    }
    let Ok(Some(HostMessage::Identity(_))) = reader.recv() else {
        return ExitCode::FAILURE;
    };
    let applied = GuestMessage::IdentityApplied(IdentityApplied {
        random_digest: [0; 32],
        clock_unix_ns: 1,
    });
    if writer.send(&applied).is_err() {
        return ExitCode::FAILURE;
    }
    let Ok(Some(HostMessage::Task(task))) = reader.recv() else {
        return ExitCode::FAILURE;
    };
    let mut got = 0;
    while got < task.input_size() {
        match reader.recv() {
            Ok(Some(HostMessage::TaskData { data, .. })) => got += data.len() as u64,
            _ => return ExitCode::FAILURE,
        }
    }
    let named = |prefix: &str| matches!(&task.kind, TaskKind::OpenFile { name, .. } if name.starts_with(prefix));
    let hostile = named("garbage");
    let _ = writer.send(&GuestMessage::Accepted { task: task.id });
    let _ = writer.send(&GuestMessage::PageInfo {
        task: task.id,
        count: 1,
    });
    if hostile {
        // A well-formed length prefix, then bytes that are no message.
        let mut raw = stream.try_clone().unwrap();
        let _ = raw.write_all(&200u32.to_le_bytes());
        let _ = raw.write_all(&[0xff; 200]);
        let _ = raw.flush();
    } else {
        let _ = writer.send(&GuestMessage::Frame(Frame {
            page: 0,
            width: 8,
            height: 8,
            rect: Rect {
                x: 0,
                y: 0,
                w: 8,
                h: 8,
            },
            format: PixelFormat::Rgba8,
            pixels: [10, 200, 10, 255].repeat(64),
        }));
        if task.safe_copy.is_some() {
            let word = |x: u32| OcrWord {
                x,
                y: 1,
                w: 4,
                h: 3,
                text: "word".into(),
            };
            let mut print = PagePrint {
                task: task.id,
                page: 0,
                dpi: 72,
                words: vec![word(2)],
            };
            if named("words") {
                print.words = vec![word(0); MAX_WORDS_PER_PAGE + 1];
                let mut raw = stream.try_clone().unwrap();
                let body = postcard::to_allocvec(&GuestMessage::PagePrint(print)).unwrap();
                let len = u32::try_from(body.len() + 2).unwrap();
                let _ = raw.write_all(&len.to_le_bytes());
                let _ = raw.write_all(&PROTOCOL_VERSION.to_le_bytes());
                let _ = raw.write_all(&body);
                let _ = raw.flush();
            } else {
                if named("misfit") {
                    print.words = vec![word(6)];
                }
                let _ = writer.send(&GuestMessage::PagePrint(print));
            }
        }
        let _ = writer.send(&GuestMessage::Done {
            task: task.id,
            status: TaskStatus::Ok,
        });
    }
    // Serve until the host hangs up or says Shutdown.
    while let Ok(Some(msg)) = reader.recv() {
        if msg == HostMessage::Shutdown {
            break;
        }
    }
    ExitCode::SUCCESS
}

async fn garbage_frames_fail_the_task_and_the_daemon_serves_the_next() {
    if !tool_or_skip(TEST, "dbus-daemon", "dbus") {
        return;
    }
    // Arrange
    let me = std::env::current_exe().unwrap();
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--insecure-local-guest".as_ref(),
            me.as_os_str(),
            "--no-windows".as_ref(),
        ],
        &[],
    );
    let files = tempfile::tempdir().unwrap();
    let connection = bus.connect().await;
    let mut signals = manager_signals(&connection).await;
    let manager = manager_proxy(&connection).await;
    let open = |name: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, b"some plain text\n").unwrap();
        std::fs::File::open(path).unwrap()
    };

    // Act: a hostile task, then honest ones, one of them while the hostile
    // one is still being torn down.
    let garbage = open("garbage.txt");
    let hostile: OwnedObjectPath = manager
        .call(
            "OpenFile",
            &(
                Fd::from(&garbage),
                "garbage.txt",
                HashMap::<&str, Value<'_>>::new(),
            ),
        )
        .await
        .unwrap();
    let fine = open("fine.txt");
    let honest: OwnedObjectPath = manager
        .call(
            "OpenFile",
            &(
                Fd::from(&fine),
                "fine.txt",
                HashMap::<&str, Value<'_>>::new(),
            ),
        )
        .await
        .unwrap();
    let hostile_verdict =
        wait_finished(&connection, &mut signals, &hostile, Duration::from_secs(60)).await;
    let daemon = bus.daemon_pid();
    let later = open("later.txt");
    let started = Instant::now();
    let after: OwnedObjectPath = manager
        .call(
            "OpenFile",
            &(
                Fd::from(&later),
                "later.txt",
                HashMap::<&str, Value<'_>>::new(),
            ),
        )
        .await
        .unwrap();
    let honest_verdict = {
        // `honest` may have finished before the hostile one: ask its property.
        let task = task_proxy(&connection, honest.as_str()).await;
        let v: String = task.get_property("Verdict").await.unwrap();
        if v.is_empty() {
            wait_finished(&connection, &mut signals, &honest, Duration::from_secs(60)).await
        } else {
            v
        }
    };
    let after_verdict =
        wait_finished(&connection, &mut signals, &after, Duration::from_secs(60)).await;

    // Assert
    loud(&format!(
        "{TEST}: hostile -> {hostile_verdict:?}; honest -> {honest_verdict:?}; \
         next task served in {:?} -> {after_verdict:?}",
        started.elapsed()
    ));
    assert!(
        hostile_verdict.starts_with("error: "),
        "hostile guest's task: {hostile_verdict}"
    );
    assert!(
        hostile_verdict.contains("guest"),
        "the verdict names the guest: {hostile_verdict}"
    );
    assert_eq!(honest_verdict, "clean");
    assert_eq!(after_verdict, "clean");
    assert_eq!(bus.daemon_pid(), daemon, "the daemon restarted");
    assert!(daemon.is_some(), "no daemon");
    // Each guest is reaped after its task's verdict; a loaded 2-core host
    // has taken over 10 s for the last one.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bus.daemon_children().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        bus.daemon_children(),
        [],
        "guest processes outlived their tasks"
    );
}

const SAFE_COPY_TEST: &str = "hostile_print_data_ends_its_safe_copy_and_writes_no_file";

async fn hostile_print_data_writes_no_safe_copy() {
    if !tool_or_skip(SAFE_COPY_TEST, "dbus-daemon", "dbus") {
        return;
    }
    // Arrange
    let me = std::env::current_exe().unwrap();
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--insecure-local-guest".as_ref(),
            me.as_os_str(),
            "--no-windows".as_ref(),
        ],
        &[],
    );
    let files = tempfile::tempdir().unwrap();
    let out = files.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let connection = bus.connect().await;
    let mut signals = manager_signals(&connection).await;
    let manager = manager_proxy(&connection).await;
    let mut verdicts = HashMap::new();

    // Act
    for name in ["words.txt", "misfit.txt", "honest.txt"] {
        let path = files.path().join(name);
        std::fs::write(&path, b"some plain text\n").unwrap();
        let file = std::fs::File::open(path).unwrap();
        let mut options = HashMap::<&str, Value<'_>>::new();
        options.insert("out-dir", Value::from(out.to_string_lossy().into_owned()));
        let task: OwnedObjectPath = manager
            .call("SaveSafeCopy", &(Fd::from(&file), name, options))
            .await
            .unwrap();
        let verdict =
            wait_finished(&connection, &mut signals, &task, Duration::from_secs(60)).await;
        loud(&format!("{SAFE_COPY_TEST}: {name} -> {verdict}"));
        verdicts.insert(name, verdict);
    }

    // Assert
    assert!(
        verdicts["words.txt"].starts_with("error: ")
            && verdicts["words.txt"].contains("OCR words on a page is 8193"),
        "{verdicts:?}"
    );
    assert!(
        verdicts["misfit.txt"].starts_with("error: ")
            && verdicts["misfit.txt"].contains("outside the 8x8 page"),
        "{verdicts:?}"
    );
    assert_eq!(verdicts["honest.txt"], "clean", "{verdicts:?}");
    let written = file_names(&out);
    assert_eq!(
        written,
        ["honest-safe.pdf"],
        "only the honest copy, no partial file"
    );
    let pdf = std::fs::read(out.join("honest-safe.pdf")).unwrap();
    assert!(pdf.starts_with(b"%PDF-"), "not a PDF");
}

const VIEWER_COPY_TEST: &str = "the_viewers_button_saves_a_safe_copy_beside_the_file";

async fn the_viewers_button_saves_a_safe_copy_beside_the_file() {
    use vitrine_daemon::viewer::canvas::{NAV_WIDTH, SAVE_WIDTH, STATUS_HEIGHT};
    let test = VIEWER_COPY_TEST;
    if !tool_or_skip(test, "dbus-daemon", "dbus")
        || !tool_or_skip(test, "Xvfb", "xvfb")
        || !tool_or_skip(test, "xdotool", "xdotool")
    {
        return;
    }
    // Arrange: a task shown in its viewer on a private X server.
    let me = std::env::current_exe().unwrap();
    let x = Xvfb::start();
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--insecure-local-guest".as_ref(),
            me.as_os_str(),
        ],
        &[
            ("DISPLAY", std::ffi::OsStr::new(&x.display)),
            (
                "VITRINE_VIEWER",
                env!("CARGO_BIN_EXE_vitrine-viewer").as_ref(),
            ),
        ],
    );
    let files = tempfile::tempdir().unwrap();
    let input = files.path().join("shown.txt");
    std::fs::write(&input, b"some plain text\n").unwrap();
    let connection = bus.connect().await;
    let mut signals = manager_signals(&connection).await;
    let manager = manager_proxy(&connection).await;
    let file = std::fs::File::open(&input).unwrap();
    let shown: OwnedObjectPath = manager
        .call(
            "OpenFile",
            &(
                Fd::from(&file),
                "shown.txt",
                HashMap::<&str, Value<'_>>::new(),
            ),
        )
        .await
        .unwrap();
    let verdict = wait_finished(&connection, &mut signals, &shown, Duration::from_secs(60)).await;
    assert_eq!(verdict, "clean");
    let deadline = Instant::now() + Duration::from_secs(30);
    let window = loop {
        if let Some(w) = xdotool(
            &x.display,
            &["search", "--onlyvisible", "--name", "shown.txt"],
        ) {
            if let Some(first) = w.lines().next() {
                break first.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "no viewer window appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let geometry = xdotool(&x.display, &["getwindowgeometry", "--shell", &window]).unwrap();
    let field = |name: &str| -> u32 {
        geometry
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {geometry}"))
    };
    let (wx, wy, ww, wh) = (field("X"), field("Y"), field("WIDTH"), field("HEIGHT"));

    // Act: click "save safe copy" in the status bar.
    let bx = wx + ww - 2 * NAV_WIDTH - SAVE_WIDTH / 2;
    let by = wy + wh - STATUS_HEIGHT / 2;
    xdotool(
        &x.display,
        &[
            "mousemove",
            "--sync",
            &bx.to_string(),
            &by.to_string(),
            "click",
            "1",
        ],
    )
    .expect("click the button");

    // Assert: a safe-copy task for the same file, and its copy beside it.
    let copy_task = loop {
        let details: HashMap<String, String> = task_proxy(&connection, shown.as_str())
            .await
            .get_property("Details")
            .await
            .unwrap();
        if let Some(path) = details.get("safe-copy-task") {
            break path.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no safe-copy task was started: {details:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let copy_path = OwnedObjectPath::try_from(copy_task.clone()).expect(&copy_task);
    let proxy = task_proxy(&connection, copy_path.as_str()).await;
    let kind: String = proxy.get_property("Kind").await.unwrap();
    let verdict = loop {
        let v: String = proxy.get_property("Verdict").await.unwrap();
        if !v.is_empty() {
            break v;
        }
        assert!(Instant::now() < deadline, "the safe copy did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loud(&format!("{test}: {copy_task} ({kind}) -> {verdict}"));
    assert_eq!(kind, "safe-copy");
    assert_eq!(verdict, "clean");
    let copy = files.path().join("shown-safe.pdf");
    assert!(
        std::fs::read(&copy).unwrap().starts_with(b"%PDF-"),
        "{} is not a PDF",
        copy.display()
    );
}
