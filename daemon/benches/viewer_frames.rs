//! Viewer frame path, measured: the wire's encode + decode of a full page,
//! and under Xvfb, the real `vitrine-viewer` from `send_frame` to the
//! viewer's report that the frame is on screen. Prints a table.
//!
//! `cargo bench -p vitrine-daemon --bench viewer_frames`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vitrine_daemon::viewer::{wire, ViewerLink};
use vitrine_shim::protocol::{Frame, PixelFormat, Rect};

/// An A4 page at 100 dpi, as the guest renders documents.
const W: u32 = 848;
const H: u32 = 1200;
const RUNS: usize = 30;

fn page(shade: u8) -> Frame {
    Frame {
        page: 0,
        width: W,
        height: H,
        rect: Rect {
            x: 0,
            y: 0,
            w: W,
            h: H,
        },
        format: PixelFormat::Rgba8,
        pixels: [shade, 255 - shade, 128, 255].repeat(usize::try_from(W * H).unwrap()),
    }
}

fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() - 1) * p / 100]
}

fn row(name: &str, v: &mut [Duration]) {
    let (p50, p90) = (percentile(v, 50), percentile(v, 90));
    println!(
        "{name:<40} {:>9.3} {:>9.3} {:>5}",
        p50.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        v.len()
    );
}

fn main() -> anyhow::Result<()> {
    println!(
        "{:<40} {:>9} {:>9} {:>5}",
        "viewer frame path (848x1200 RGBA)", "p50 ms", "p90 ms", "runs"
    );
    let frame = page(0);
    let (mut enc, mut dec) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let bytes = wire::encode_frame(&frame)?;
        enc.push(t.elapsed());
        let t = Instant::now();
        let (msg, used) = wire::decode(&bytes)?;
        dec.push(t.elapsed());
        assert!(used == bytes.len() && matches!(msg, wire::Message::Frame(_)));
    }
    row("wire encode_frame", &mut enc);
    row("wire decode", &mut dec);

    let Some(xvfb) = Xvfb::start() else {
        println!("SKIPPED window rows: no Xvfb (apt-get install xvfb)");
        return Ok(());
    };
    std::env::set_var("DISPLAY", &xvfb.display);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vitrine-viewer"));
    let frames: Vec<Frame> = (0..RUNS)
        .map(|i| page(u8::try_from(i * 8).unwrap_or(0)))
        .collect();

    let t = Instant::now();
    let mut link = ViewerLink::spawn(&bin, "bench.pdf")?;
    link.send_frame(&frames[0])?;
    wait(|| link.frames_presented() >= 1)?;
    let startup = t.elapsed();

    let (mut send, mut shown) = (Vec::new(), Vec::new());
    for (i, f) in frames.iter().enumerate().skip(1) {
        let want = u32::try_from(i + 1)?;
        let t = Instant::now();
        link.send_frame(f)?;
        send.push(t.elapsed());
        wait(|| link.frames_presented() >= want)?;
        shown.push(t.elapsed());
    }
    row("spawn + first frame on screen", &mut [startup]);
    row("send_frame (returns)", &mut send);
    row("send_frame -> on screen (Presented)", &mut shown);
    drop(link);
    Ok(())
}

fn wait(mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let t = Instant::now();
    while !f() {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(20),
            "viewer did not present in 20 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    /// Starts Xvfb on a display of its own. A random high number, and a
    /// screen size nobody else uses that is checked through a client: an
    /// X server of another test on the same number (in another mount
    /// namespace, visible only through its abstract socket) is noticed and
    /// another number tried.
    fn start() -> Option<Xvfb> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id();
        for attempt in 0..20u32 {
            let n = 1000 + (seed.wrapping_add(attempt.wrapping_mul(7919)) % 50_000);
            if Path::new(&format!("/tmp/.X{n}-lock")).exists() {
                continue;
            }
            let display = format!(":{n}");
            let Ok(child) = Command::new("Xvfb")
                .args([
                    &display,
                    "-noreset",
                    "-screen",
                    "0",
                    "1279x1023x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            else {
                continue;
            };
            let mut xvfb = Xvfb { child, display };
            if xvfb.answers_as_itself() {
                return Some(xvfb);
            }
            xvfb.stop();
        }
        None
    }

    /// Waits until the display answers with this server's screen size.
    fn answers_as_itself(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false; // exited: the number was taken
            }
            let out = Command::new("xdotool")
                .arg("getdisplaygeometry")
                .env("DISPLAY", &self.display)
                .stderr(Stdio::null())
                .output();
            if let Ok(out) = out {
                if out.status.success() {
                    return String::from_utf8_lossy(&out.stdout).trim() == "1279 1023";
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGTERM first, so the server removes its socket and lock file.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        self.stop();
    }
}
