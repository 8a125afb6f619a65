//! A link as a live browser tab, through a user's eyes and hands: a real
//! `vitrined` on a private bus with its viewer windows on Xvfb, `vitrine url`
//! of a page on a local TLS 1.3 server (its CA given to `--egress-ca`). The
//! window shows Chromium's page 1:1 (pixels read back from a screenshot of
//! the screen, at the places the page's CSS puts them), is titled with the
//! page's address, and a click made with xdotool on the page's link reaches
//! the page in the VM: the browser asks the server for the second page, the
//! window shows it and is titled with its address; keys typed into a field
//! there reach the page. Closing the window ends the task clean and the VM
//! goes away.
//!
//! Needs dbus, xvfb, xdotool, x11-apps (xwd), QEMU and the guest image;
//! each missing piece prints a SKIPPED line.

mod dbus_support;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dbus_support::tls_server::TlsServer;
use dbus_support::{image_or_skip, loud, text, tool_or_skip, xdotool, PrivateBus, Xvfb};
use vitrine_daemon::viewer::canvas::Layout;

/// The longest wait for anything the VM does: under QEMU TCG a cold
/// Chromium takes 20-30 s to its first frame, and a click's navigation
/// several seconds more.
const SLOW: Duration = Duration::from_secs(120);

/// The first page's link: a block at a fixed CSS place and size.
const LINK: (u32, u32, u32, u32) = (100, 200, 400, 120);
const LINK_GREEN: u32 = 0x0000_AA00;
/// A second block on the first page, to check the placement elsewhere.
const BLUE_BOX: (u32, u32, u32, u32) = (600, 420, 160, 90);
const BOX_BLUE: u32 = 0x0000_00CC;
const WHITE: u32 = 0x00FF_FFFF;
/// The second page is this colour over its whole top.
const SECOND_RED: u32 = 0x00CC_0044;

fn first_page() -> String {
    let (lx, ly, lw, lh) = LINK;
    let (bx, by, bw, bh) = BLUE_BOX;
    format!(
        "<!doctype html><html><head><title>Live test first</title></head>\
         <body style=\"margin:0;background:#ffffff\">\
         <h1 style=\"margin:16px;font:bold 32px sans-serif;color:#333333\">FIRST PAGE</h1>\
         <a id=next href=\"/second.html\" style=\"position:absolute;left:{lx}px;top:{ly}px;\
            display:block;width:{lw}px;height:{lh}px;background:#00aa00\"></a>\
         <div style=\"position:absolute;left:{bx}px;top:{by}px;width:{bw}px;height:{bh}px;\
            background:#0000cc\"></div></body></html>"
    )
}

fn second_page() -> String {
    "<!doctype html><html><head><title>Live test second</title></head>\
     <body style=\"margin:0;background:#ffffff\">\
     <div style=\"position:absolute;left:0;top:0;width:100%;height:600px;background:#cc0044\">\
     <h1 style=\"margin:0;padding:24px;font:bold 40px sans-serif;color:#ffffff\">SECOND PAGE</h1>\
     </div>\
     <form action=\"/submitted\" method=get>\
     <input id=q name=q autocomplete=off style=\"position:absolute;left:100px;top:650px;\
        width:300px;height:40px;font:24px sans-serif\"></form>\
     <script>document.getElementById('q').addEventListener('input',\
        e=>fetch('/typed?q='+encodeURIComponent(e.target.value)));</script>\
     </body></html>"
        .to_owned()
}

fn policy(dir: &Path, port: u16) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("10-web.toml"),
        format!(
            r#"
[profile.web-live]
memory_mib = 1024
vcpus = 1
time_limit = "400s"
display = {{ max_width = 1280, max_height = 1024, max_fps = 30 }}
egress = ["localhost:{port}"]

[[rule]]
name = "test-server"
action = "open-uri"
scheme = "https"
sandbox = "web-live"
"#
        ),
    )
    .unwrap();
}

/// A screenshot of the whole screen, as 0RGB pixels.
struct Shot {
    width: u32,
    height: u32,
    pixels: Vec<u32>,
}

impl Shot {
    /// `xwd -root` of `display`, decoded (ZPixmap, 32 bits per pixel).
    fn take(display: &str) -> Shot {
        let out = Command::new("xwd")
            .args(["-root", "-silent", "-display", display])
            .output()
            .expect("xwd");
        assert!(out.status.success(), "xwd failed: {}", text(&out));
        let b = out.stdout;
        let word = |i: usize| u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        let (header_size, format, width, height) = (word(0), word(2), word(4), word(5));
        let (byte_order, bpp, bytes_per_line) = (word(7), word(11), word(12));
        let (red, green, blue, ncolors) = (word(14), word(15), word(16), word(19));
        assert!(format == 2 && bpp == 32, "xwd: format {format}, {bpp} bpp");
        let data = (header_size + ncolors * 12) as usize;
        let channel = |v: u32, mask: u32| (v & mask) >> mask.trailing_zeros() & 0xFF;
        let mut pixels = Vec::with_capacity((width * height) as usize);
        for y in 0..height {
            for x in 0..width {
                let at = data + (y * bytes_per_line + x * 4) as usize;
                let raw: [u8; 4] = b[at..at + 4].try_into().unwrap();
                let v = if byte_order == 0 {
                    u32::from_le_bytes(raw)
                } else {
                    u32::from_be_bytes(raw)
                };
                pixels.push(channel(v, red) << 16 | channel(v, green) << 8 | channel(v, blue));
            }
        }
        Shot {
            width,
            height,
            pixels,
        }
    }

    fn at(&self, x: u32, y: u32) -> u32 {
        assert!(x < self.width && y < self.height, "({x}, {y}) off screen");
        self.pixels[(y * self.width + x) as usize]
    }
}

/// Where the page's top-left pixel is on screen.
#[derive(Debug, Clone, Copy)]
struct Origin {
    x: u32,
    y: u32,
}

impl Origin {
    /// The screen pixel of page pixel (`x`, `y`).
    fn page(&self, shot: &Shot, x: u32, y: u32) -> u32 {
        shot.at(self.x + x, self.y + y)
    }
}

/// The window's place and size on the screen.
fn geometry(display: &str, window: &str) -> (u32, u32, u32, u32) {
    let out = xdotool(display, &["getwindowgeometry", "--shell", window])
        .expect("xdotool getwindowgeometry");
    let field = |k: &str| -> u32 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {out}"))
            .trim()
            .parse()
            .unwrap()
    };
    (field("X"), field("Y"), field("WIDTH"), field("HEIGHT"))
}

/// Polls `f` every 250 ms until it gives a value or `limit` passes.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn window_name(display: &str, window: &str) -> String {
    xdotool(display, &["getwindowname", window]).unwrap_or_default()
}

/// The task objects the daemon lists.
fn task_paths(bus: &PrivateBus) -> Vec<String> {
    let out = bus.busctl(
        &[
            "call",
            "--json=short",
            "org.vitrine.Sandbox1",
            "/org/vitrine/Sandbox1",
            "org.vitrine.Sandbox1",
            "ListTasks",
        ],
        None,
    );
    if !out.status.success() {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["data"][0]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| Some(r[0].as_str()?.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A property of the task object at `task`, as busctl's JSON gives it.
fn task_property(bus: &PrivateBus, task: &str, name: &str) -> serde_json::Value {
    let out = bus.busctl(
        &[
            "get-property",
            "--json=short",
            "org.vitrine.Sandbox1",
            task,
            "org.vitrine.Sandbox1.Task",
            name,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["data"].take()
}

/// What the test saw on the way, for a failure's message.
fn story(bus: &PrivateBus, task: &str, server: &TlsServer) -> String {
    let details: BTreeMap<String, String> = bus.task_details(task);
    format!(
        "task details: {details:#?}\nserver requests: {:?}\nprocesses under vitrined: {:?}",
        server.requests.lock().unwrap(),
        bus.daemon_children()
    )
}

/// Asks the window to close with WM_DELETE_WINDOW, as a window manager
/// does when the user clicks its close button.
fn close_like_a_window_manager(display: &str, window: &str) {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::{ClientMessageEvent, ConnectionExt, EventMask};
    let window: u32 = window.parse().unwrap();
    let (conn, _) = x11rb::connect(Some(display)).unwrap();
    let protocols = conn
        .intern_atom(false, b"WM_PROTOCOLS")
        .unwrap()
        .reply()
        .unwrap()
        .atom;
    let delete = conn
        .intern_atom(false, b"WM_DELETE_WINDOW")
        .unwrap()
        .reply()
        .unwrap()
        .atom;
    let event = ClientMessageEvent::new(32, window, protocols, [delete, 0, 0, 0, 0]);
    conn.send_event(false, window, EventMask::NO_EVENT, event)
        .unwrap();
    conn.flush().unwrap();
}

/// The CLI's output once it has exited (killed after `limit`).
fn cli_output(mut cli: Child, limit: Duration) -> (Option<i32>, String) {
    let status = poll(limit, || cli.try_wait().unwrap());
    let status = match status {
        Some(s) => s.code(),
        None => {
            let _ = cli.kill();
            let _ = cli.wait();
            None
        }
    };
    let mut out = String::new();
    if let Some(mut o) = cli.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let mut err = String::new();
    if let Some(mut e) = cli.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, format!("{out}--- stderr ---\n{err}"))
}

#[test]
fn a_click_in_the_live_tab_follows_the_link_and_the_window_shows_and_names_the_new_page() {
    let test =
        "a_click_in_the_live_tab_follows_the_link_and_the_window_shows_and_names_the_new_page";
    for (tool, package) in [
        ("dbus-daemon", "dbus"),
        ("busctl", "systemd"),
        ("Xvfb", "xvfb"),
        ("xdotool", "xdotool"),
        ("xwd", "x11-apps"),
    ] {
        if !tool_or_skip(test, tool, package) {
            return;
        }
    }
    let Some(image) = image_or_skip(test) else {
        return;
    };
    // Arrange: the server, a profile that may reach it, a daemon with
    // windows on a private X display.
    let server = TlsServer::start(HashMap::from([
        ("/".to_owned(), first_page()),
        ("/second.html".to_owned(), second_page()),
    ]));
    let work = tempfile::tempdir().unwrap();
    let policy_dir = work.path().join("policy");
    policy(&policy_dir, server.port);
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let x = Xvfb::start();
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            policy_dir.as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--egress-ca".as_ref(),
            ca.as_os_str(),
        ],
        &[
            ("DISPLAY", OsStr::new(&x.display)),
            (
                "VITRINE_VIEWER",
                env!("CARGO_BIN_EXE_vitrine-viewer").as_ref(),
            ),
        ],
    );
    let first_url = format!("https://localhost:{}/", server.port);
    let second_url = format!("https://localhost:{}/second.html", server.port);
    let started = Instant::now();

    // Act: the user opens the link; the CLI stays until the task ends.
    let mut cli = bus
        .command(env!("CARGO_BIN_EXE_vitrine"))
        .env("DISPLAY", &x.display)
        .args(["url", first_url.as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut viewer_at = None;
    let window = poll(SLOW, || {
        if viewer_at.is_none()
            && bus
                .daemon_children()
                .iter()
                .any(|(_, name)| name == "vitrine-viewer")
        {
            viewer_at = Some(started.elapsed());
        }
        if cli.try_wait().unwrap().is_some() {
            return Some(None); // the task ended without a window
        }
        let found = xdotool(
            &x.display,
            &[
                "search",
                "--onlyvisible",
                "--name",
                &format!("localhost:{}", server.port),
            ],
        )?;
        found.lines().next().map(|w| Some(w.to_owned()))
    });
    let Some(Some(window)) = window else {
        let (status, out) = cli_output(cli, Duration::from_secs(1));
        panic!("no viewer window within {SLOW:?}; the CLI: {status:?}\n{out}");
    };
    let window_at = started.elapsed();
    let named_at_once = window_name(&x.display, &window);
    let task = poll(Duration::from_secs(10), || {
        task_paths(&bus).into_iter().next()
    })
    .expect("the daemon lists the task");
    let location_when_found = bus.task_details(&task).get("location").cloned();
    let (wx, wy, ww, wh) = geometry(&x.display, &window);
    let content = Layout::new(ww, wh).content;
    let origin = Origin {
        x: wx + content.x,
        y: wy + content.y,
    };
    let (lx, ly, lw, lh) = LINK;
    let link_centre = (lx + lw / 2, ly + lh / 2);
    let shown = poll(SLOW, || {
        let shot = Shot::take(&x.display);
        (origin.page(&shot, link_centre.0, link_centre.1) == LINK_GREEN).then_some(shot)
    });
    let first_shown_at = started.elapsed();
    let first_title = window_name(&x.display, &window);
    let state = task_property(&bus, &task, "State");

    // Assert: the window shows the page 1:1 at the page area's corner: the
    // link block's edges and the blue box are where the CSS puts them, the
    // page around them is white; the title is the page's address.
    let Some(shot) = shown else {
        panic!(
            "the link's green is not on screen within {SLOW:?}; {}",
            story(&bus, &task, &server)
        );
    };
    loud(&format!(
        "{test}: viewer process seen after {viewer_at:?}; window {window} at ({wx}, {wy}) \
         {ww}x{wh} after {window_at:?}; page on screen after {first_shown_at:?}; \
         title {first_title:?}"
    ));
    let (bx, by, bw, bh) = BLUE_BOX;
    let expected = [
        ((lx, ly), LINK_GREEN, "the link's top-left pixel"),
        (
            (lx + lw - 1, ly + lh - 1),
            LINK_GREEN,
            "the link's bottom-right pixel",
        ),
        ((lx - 1, ly + lh / 2), WHITE, "left of the link"),
        ((lx + lw, ly + lh / 2), WHITE, "right of the link"),
        ((lx + lw / 2, ly - 1), WHITE, "above the link"),
        ((lx + lw / 2, ly + lh), WHITE, "below the link"),
        ((bx, by), BOX_BLUE, "the blue box's top-left pixel"),
        (
            (bx + bw - 1, by + bh - 1),
            BOX_BLUE,
            "the blue box's bottom-right pixel",
        ),
        ((bx + bw, by + bh), WHITE, "past the blue box"),
        ((5, 150), WHITE, "the page's margin"),
    ];
    for ((px, py), colour, what) in expected {
        assert_eq!(
            origin.page(&shot, px, py),
            colour,
            "{what}: page ({px}, {py}) is screen ({}, {})",
            origin.x + px,
            origin.y + py
        );
    }
    // The window is named after the link from the start: before the page
    // navigated (the guest's first `Location`), not only after.
    assert_eq!(named_at_once, format!("{first_url} (sandboxed)"));
    assert_eq!(
        location_when_found, None,
        "the window was found only once the page had navigated"
    );
    assert_eq!(
        first_title,
        format!("{first_url} (sandboxed)"),
        "the window's title"
    );
    assert!(!server.requested("GET /second.html HTTP/1.1"));
    assert_eq!(state, "live", "the task after its first frame");

    // Act: a click on the link's centre.
    let clicked = Instant::now();
    let (sx, sy) = (origin.x + link_centre.0, origin.y + link_centre.1);
    xdotool(
        &x.display,
        &[
            "mousemove",
            "--sync",
            &sx.to_string(),
            &sy.to_string(),
            "click",
            "1",
        ],
    )
    .expect("xdotool click");
    let fetched = poll(SLOW, || {
        server
            .requested("GET /second.html HTTP/1.1")
            .then(|| clicked.elapsed())
    });
    let repainted = poll(SLOW, || {
        let shot = Shot::take(&x.display);
        (origin.page(&shot, link_centre.0, link_centre.1) == SECOND_RED).then_some(shot)
    });
    let repainted_at = clicked.elapsed();
    let renamed = poll(Duration::from_secs(20), || {
        let name = window_name(&x.display, &window);
        (name == format!("{second_url} (sandboxed)")).then_some(name)
    });
    let details = bus.task_details(&task);

    // Assert: the browser in the VM followed the link; the window shows the
    // second page and is named after it; the task knows where it is.
    loud(&format!(
        "{test}: after the click: GET /second.html after {fetched:?}, repainted after \
         {repainted_at:?}, title {:?}; details location {:?} title {:?}",
        window_name(&x.display, &window),
        details.get("location"),
        details.get("title")
    ));
    assert!(
        fetched.is_some(),
        "the click did not reach the page: no GET /second.html; {}",
        story(&bus, &task, &server)
    );
    let Some(shot) = repainted else {
        panic!(
            "the second page is not on screen; {}",
            story(&bus, &task, &server)
        );
    };
    for (px, py) in [(0, 0), (lx, ly), (bx + bw - 1, by + bh - 1), (800, 590)] {
        assert_eq!(
            origin.page(&shot, px, py),
            SECOND_RED,
            "the second page at page ({px}, {py})"
        );
    }
    assert!(
        renamed.is_some(),
        "the window title is {:?}, not the second page's address",
        window_name(&x.display, &window)
    );
    assert_eq!(details.get("location"), Some(&second_url));

    // Act: a click into the second page's text field, and a word typed.
    xdotool(
        &x.display,
        &[
            "mousemove",
            "--sync",
            &(origin.x + 250).to_string(),
            &(origin.y + 670).to_string(),
            "click",
            "1",
        ],
    )
    .expect("xdotool click");
    // No window manager gives focus here; take it as a click would.
    xdotool(&x.display, &["windowfocus", "--sync", &window]).expect("xdotool windowfocus");
    let typed_at = Instant::now();
    xdotool(&x.display, &["type", "--delay", "150", "vitrine"]).expect("xdotool type");
    let typed = poll(SLOW, || {
        server
            .requested("GET /typed?q=vitrine HTTP/1.1")
            .then(|| typed_at.elapsed())
    });
    // Return in the field submits its form.
    xdotool(&x.display, &["key", "Return"]).expect("xdotool key");
    let submitted = poll(Duration::from_secs(10), || {
        server
            .requested("GET /submitted?q=vitrine HTTP/1.1")
            .then(|| typed_at.elapsed())
    });

    // Assert: each key reached the page's field (its script asked for the
    // field's whole text).
    loud(&format!(
        "{test}: typed into the field: seen by the page after {typed:?}; requests {:?}",
        server.requests.lock().unwrap()
    ));
    assert!(
        typed.is_some(),
        "the keys did not reach the page's field; {}",
        story(&bus, &task, &server)
    );
    assert!(
        submitted.is_some(),
        "Return in the field did not submit its form; {}",
        story(&bus, &task, &server)
    );
    let vms: Vec<(u32, String)> = bus
        .daemon_children()
        .into_iter()
        .filter(|(_, name)| name.starts_with("qemu"))
        .collect();
    assert_eq!(vms.len(), 1, "one VM serves the live tab: {vms:?}");

    // Act: the user closes the window.
    let closed = Instant::now();
    let mut sent = 0;
    // As in viewer_window.rs: a close request is rarely lost before it
    // reaches winit; a user would click again, and so does the test, but
    // only while the window is still there (the VM's teardown after it may
    // take seconds: that is not a lost close).
    poll(Duration::from_secs(30), || {
        if cli.try_wait().unwrap().is_some() {
            return Some(());
        }
        if closed.elapsed() >= Duration::from_secs(5) * sent {
            if sent == 0 {
                close_like_a_window_manager(&x.display, &window);
            } else if !window_name(&x.display, &window).is_empty() {
                loud(&format!(
                    "NOTE: the window is still open; WM_DELETE_WINDOW sent again (attempt {})",
                    sent + 1
                ));
                close_like_a_window_manager(&x.display, &window);
            }
            sent += 1;
        }
        None
    });
    let (status, out) = cli_output(cli, SLOW);
    let ended_after = closed.elapsed();

    // Assert: the task ended clean, and its VM is gone.
    loud(&format!(
        "{test}: the CLI ended {ended_after:?} after the close: {status:?}\n{out}"
    ));
    assert_eq!(status, Some(0), "{out}\n{}", story(&bus, &task, &server));
    assert!(out.contains("verdict   clean"), "{out}");
    let timings = task_property(&bus, &task, "Timings");
    let ms = |k: &str| timings[k].as_u64().unwrap_or_default() / 1000;
    loud(&format!(
        "{test}: task timings (us after the call): {timings}; the live tab ended at {} ms, \
         the VM was gone {} ms later",
        ms("done"),
        ms("vm-gone").saturating_sub(ms("done"))
    ));
    assert!(
        window_name(&x.display, &window).is_empty(),
        "the window is still there"
    );
    let details = bus.task_details(&task);
    assert_eq!(details.get("window").map(String::as_str), Some("closed"));
    let (pid, _) = vms[0];
    let gone = poll(Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert!(gone.is_some(), "QEMU pid {pid} outlived the task");
    assert!(
        bus.daemon_children().is_empty(),
        "{:?}",
        bus.daemon_children()
    );
}
