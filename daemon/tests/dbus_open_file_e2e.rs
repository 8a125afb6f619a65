//! The whole "open safely" path on a private session bus and a virtual X
//! display: `gdbus` (a real D-Bus client) calls `OpenFile` with the PDF
//! fixture's descriptor, D-Bus activation starts `vitrined`, the PDF renders
//! in a fresh QEMU guest, the viewer window shows the page (checked in an
//! `xwd` screenshot of Xvfb), `TaskFinished` arrives, and nothing of the
//! document is written on the host.
//!
//! Needs dbus, xvfb, x11-apps (xwd), libglib2.0-bin (gdbus), QEMU and the
//! guest image; each missing piece prints a SKIPPED line.

mod dbus_support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use dbus_support::{
    example_policy, image_or_skip, loud, manager_signals, repo, text, tool_or_skip, wait_finished,
    PrivateBus, Xvfb,
};
use zbus::zvariant::OwnedObjectPath;

/// An RGB screenshot.
struct Shot {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Shot {
    /// `xwd -root` of `display`, decoded (ZPixmap, 24/32 bits per pixel).
    fn take(display: &str) -> Shot {
        let out = Command::new("xwd")
            .args(["-root", "-silent", "-display", display])
            .output()
            .expect("xwd");
        assert!(out.status.success(), "xwd failed: {}", text(&out));
        decode_xwd(&out.stdout)
    }

    fn count(&self, f: impl Fn([u8; 3]) -> bool) -> usize {
        self.rgb.iter().filter(|p| f(**p)).count()
    }

    /// Dark pixels on paper: between the first and last white pixel of
    /// each row (the black root window around the viewer does not count).
    fn text_on_paper(&self) -> usize {
        self.rgb
            .chunks(self.width)
            .map(|row| {
                let first = row.iter().position(|p| is_white(*p));
                let last = row.iter().rposition(|p| is_white(*p));
                match (first, last) {
                    (Some(a), Some(b)) => row[a..=b].iter().filter(|p| is_text(**p)).count(),
                    _ => 0,
                }
            })
            .sum()
    }
}

fn decode_xwd(data: &[u8]) -> Shot {
    let field = |i: usize| u32::from_be_bytes(data[i * 4..i * 4 + 4].try_into().unwrap());
    let header_size = field(0) as usize;
    assert_eq!(field(1), 7, "not an XWD version 7 file");
    assert_eq!(field(2), 2, "not a ZPixmap");
    let (width, height) = (field(4) as usize, field(5) as usize);
    let byte_order = field(7);
    let bits_per_pixel = field(11) as usize;
    let bytes_per_line = field(12) as usize;
    let masks = [field(14), field(15), field(16)];
    let ncolors = field(19) as usize;
    assert_eq!(bits_per_pixel, 32, "expected 32 bits per pixel");
    let start = header_size + ncolors * 12;
    let mut rgb = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            let at = start + y * bytes_per_line + x * 4;
            let raw: [u8; 4] = data[at..at + 4].try_into().unwrap();
            let px = if byte_order == 0 {
                u32::from_le_bytes(raw)
            } else {
                u32::from_be_bytes(raw)
            };
            rgb.push(masks.map(|m| {
                let v = (px & m) >> m.trailing_zeros();
                u8::try_from(v & 0xff).unwrap()
            }));
        }
    }
    Shot { width, height, rgb }
}

/// Files under `root` (recursively) changed since `since`.
fn new_files(root: &Path, since: SystemTime) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                todo.push(e.path());
            } else if meta.is_file() && meta.modified().is_ok_and(|m| m >= since) {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdf_opened_over_dbus_shows_its_page_in_the_viewer_and_leaves_nothing_on_the_host() {
    let test = "pdf_opened_over_dbus_shows_its_page_in_the_viewer_and_leaves_nothing_on_the_host";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    for (tool, package) in [
        ("dbus-daemon", "dbus"),
        ("gdbus", "libglib2.0-bin"),
        ("Xvfb", "xvfb"),
        ("xwd", "x11-apps"),
    ] {
        if !tool_or_skip(test, tool, package) {
            return;
        }
    }
    // Arrange
    let started = SystemTime::now() - Duration::from_secs(1);
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
    let pdf = repo().join("shim/fixtures/three-pages.pdf");
    let pdf_bytes = std::fs::read(&pdf).unwrap();

    // Act: a real client passes the file as a descriptor (its stdin, `h 0`).
    let called = Instant::now();
    let out = bus
        .command("gdbus")
        .args([
            "call",
            "--session",
            "--dest",
            "org.vitrine.Sandbox1",
            "--object-path",
            "/org/vitrine/Sandbox1",
            "--method",
            "org.vitrine.Sandbox1.OpenFile",
            "@h 0",
            "three-pages.pdf",
            "@a{sv} {}",
        ])
        .stdin(std::fs::File::open(&pdf).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let reply = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = reply
        .split('\'')
        .nth(1)
        .unwrap_or_else(|| panic!("no object path in {reply:?}"))
        .to_owned();
    let task = OwnedObjectPath::try_from(path.clone()).unwrap();
    let verdict = wait_finished(&connection, &mut signals, &task, Duration::from_secs(120)).await;
    let finished_after = called.elapsed();
    // The window paints asynchronously: give it a moment, then look.
    let mut shot = Shot::take(&x.display);
    for _ in 0..20 {
        if shot.text_on_paper() > 500 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        shot = Shot::take(&x.display);
    }

    // Assert: the task, over a real client's eyes.
    assert_eq!(verdict, "clean");
    let state = bus.busctl(
        &[
            "get-property",
            "org.vitrine.Sandbox1",
            &path,
            "org.vitrine.Sandbox1.Task",
            "State",
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&state.stdout).trim(),
        "s \"finished\"",
        "{}",
        text(&state)
    );
    // The page is on screen: white paper, dark text, the fixture's blue box.
    let total = shot.width * shot.height;
    let white = shot.count(is_white);
    let dark = shot.text_on_paper();
    let blue = shot.count(|[r, g, b]| b > 180 && r < 100 && g < 110);
    loud(&format!(
        "{test}: finished after {finished_after:?}; screen {}x{}: white {white}, dark {dark}, blue {blue}",
        shot.width, shot.height
    ));
    assert!(
        white > total / 5,
        "too little paper on screen: {white} of {total}"
    );
    assert!(dark > 500, "no text on screen: {dark} dark pixels");
    assert!(
        blue > 5_000,
        "the fixture's blue box is not on screen: {blue}"
    );
    // Nothing of the document was written on the host: no file the daemon
    // could write (its HOME, XDG dirs and TMPDIR) holds the PDF's bytes or
    // a rendered page; only the receipt and the audit log appeared.
    let needle = &pdf_bytes[pdf_bytes.len() / 2..pdf_bytes.len() / 2 + 64];
    let written = new_files(bus.dir.path(), started);
    for file in &written {
        let bytes = std::fs::read(file).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} holds the document's bytes",
            file.display()
        );
        assert!(
            !bytes.starts_with(b"\x89PNG"),
            "{} is a rendered page",
            file.display()
        );
    }
    let names: Vec<String> = written
        .iter()
        .filter_map(|f| Some(f.file_name()?.to_str()?.to_owned()))
        .filter(|n| n != "bus.conf" && n != "org.vitrine.Sandbox1.service")
        .collect();
    loud(&format!("{test}: files written on the host: {names:?}"));
    assert!(names
        .iter()
        .all(
            |n| ["receipt.json", "audit.jsonl", "receipt-key.pk8"].contains(&n.as_str())
                || n.starts_with("bus")
                || n.starts_with("dbus-")
        ));
}

fn is_white(p: [u8; 3]) -> bool {
    p.iter().all(|c| *c > 245)
}

fn is_text([r, g, b]: [u8; 3]) -> bool {
    r < 60 && g < 60 && b < 60
}
