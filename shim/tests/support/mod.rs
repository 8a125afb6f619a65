//! Host half of the local-process tests: runs the real `vitrine-shim`
//! binary, connects over a Unix socket, and collects what comes back.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vitrine_shim::protocol::{
    Capability, ExportOffer, FrameReader, FrameWriter, GuestMessage, HostMessage, Identity,
    InputEvent, Limits, PagePrint, SafeCopy, Task, TaskKind, TaskStatus, MAX_CHUNK_BYTES,
};
use vitrine_shim::raster::{Raster, Rgb};

static NEXT_UID: AtomicU32 = AtomicU32::new(0);

/// A uid no one else on this host uses, so kill-by-uid stays inside the
/// test; the next two are left free for the shim's LibreOffice and browser.
pub fn unique_uid() -> u32 {
    400_000 + (std::process::id() % 10_000) * 64 + NEXT_UID.fetch_add(3, Ordering::Relaxed)
}

/// A running shim and our end of its socket.
/// The clock sent in every identity: 2001-09-09.
const FAKE_CLOCK_NS: u64 = 1_000_000_000_000_000_000;

pub struct Guest {
    pub child: Child,
    pub reader: FrameReader<UnixStream, GuestMessage>,
    pub writer: FrameWriter<UnixStream, HostMessage>,
    pub capabilities: Vec<Capability>,
    pub uid: u32,
    pub dir: tempfile::TempDir,
}

/// Everything a task sent until Done.
#[derive(Debug, Default)]
pub struct Outcome {
    pub page_count: Option<u32>,
    pub pages: BTreeMap<u32, Raster>,
    pub frames: usize,
    pub status: Option<TaskStatus>,
    pub logs: Vec<String>,
    pub exports: Vec<ExportOffer>,
    pub exit: Option<(Option<i32>, Option<i32>)>,
    pub first_frame: Option<Duration>,
    /// Safe copies' print data, each with whether its page's frame came first.
    pub prints: Vec<(PagePrint, bool)>,
}

impl Guest {
    /// A local shim past `Ready` and its identity.
    pub fn start() -> Guest {
        Self::start_with_env(&[])
    }

    /// `start` with more environment for the shim.
    pub fn start_with_env(env: &[(&str, &Path)]) -> Guest {
        let mut guest = Self::start_without_identity_with_env(env);
        guest
            .writer
            .send(&HostMessage::Identity(Identity {
                seed: [0x42; 32],
                // 2001: a shim that set the clock it runs on would show.
                clock_unix_ns: FAKE_CLOCK_NS,
                task: 1,
            }))
            .unwrap();
        match guest.reader.recv().expect("recv IdentityApplied") {
            Some(GuestMessage::IdentityApplied(applied)) => {
                // A local shim is not the guest's agent: this machine's
                // clock must not have moved to the identity's.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                assert!(
                    now.as_secs() > 1_700_000_000,
                    "the local shim set the host clock"
                );
                assert!(applied.clock_unix_ns > 1_700_000_000_000_000_000);
            }
            other => panic!("expected IdentityApplied, got {other:?}"),
        }
        guest
    }

    /// A local shim that said `Ready` and was given nothing yet.
    pub fn start_without_identity() -> Guest {
        Self::start_without_identity_with_env(&[])
    }

    fn start_without_identity_with_env(env: &[(&str, &Path)]) -> Guest {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("shim.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let uid = unique_uid();
        let child = Command::new(env!("CARGO_BIN_EXE_vitrine-shim"))
            .arg("--socket")
            .arg(&sock)
            .env("VITRINE_SHIM_UID", uid.to_string())
            .env("VITRINE_SHIM_WORKDIR", dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn vitrine-shim");
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("shim did not connect: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        // A hung shim fails the test instead of hanging CI.
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut reader = FrameReader::new(stream.try_clone().unwrap());
        let writer = FrameWriter::new(stream);
        let capabilities = match reader.recv().expect("recv Ready") {
            Some(GuestMessage::Ready(ready)) => ready.capabilities,
            other => panic!("expected Ready, got {other:?}"),
        };
        Guest {
            child,
            reader,
            writer,
            capabilities,
            uid,
            dir,
        }
    }

    pub fn submit(&mut self, kind: TaskKind, data: &[u8], limits: Limits) {
        self.submit_task(kind, data, limits, None)
    }

    pub fn submit_task(
        &mut self,
        kind: TaskKind,
        data: &[u8],
        limits: Limits,
        safe_copy: Option<SafeCopy>,
    ) {
        self.writer
            .send(&HostMessage::Task(Task {
                id: 1,
                kind,
                limits,
                safe_copy,
                live: false,
            }))
            .unwrap();
        match self.reader.recv().unwrap() {
            Some(GuestMessage::Accepted { task: 1 }) => {}
            other => panic!("expected Accepted, got {other:?}"),
        }
        let mut offset = 0u64;
        for chunk in data.chunks(MAX_CHUNK_BYTES) {
            self.writer
                .send(&HostMessage::TaskData {
                    offset,
                    data: chunk.to_vec(),
                })
                .unwrap();
            offset += chunk.len() as u64;
        }
    }

    pub fn open_file(&mut self, name: &str, data: &[u8], limits: Limits) -> Outcome {
        let kind = TaskKind::OpenFile {
            name: name.into(),
            mime_hint: None,
            size: data.len() as u64,
        };
        let t0 = Instant::now();
        self.submit(kind, data, limits);
        self.collect_until_done(t0)
    }

    /// `open_file` as a safe copy.
    pub fn safe_copy(
        &mut self,
        name: &str,
        data: &[u8],
        limits: Limits,
        copy: SafeCopy,
    ) -> Outcome {
        let kind = TaskKind::OpenFile {
            name: name.into(),
            mime_hint: None,
            size: data.len() as u64,
        };
        let t0 = Instant::now();
        self.submit_task(kind, data, limits, Some(copy));
        self.collect_until_done(t0)
    }

    pub fn run_program(&mut self, exe: &[u8], limits: Limits) -> Outcome {
        let kind = TaskKind::RunProgram {
            size: exe.len() as u64,
            args: vec![],
        };
        let t0 = Instant::now();
        self.submit(kind, exe, limits);
        self.collect_until_done(t0)
    }

    pub fn send(&mut self, msg: HostMessage) {
        self.writer.send(&msg).unwrap();
    }

    /// Applies one guest message to `out`; returns true at Done.
    pub fn apply(&mut self, out: &mut Outcome, msg: GuestMessage, t0: Instant) -> bool {
        match msg {
            GuestMessage::PageInfo { count, .. } => out.page_count = Some(count),
            GuestMessage::Frame(f) => {
                out.first_frame.get_or_insert(t0.elapsed());
                out.frames += 1;
                let page = out
                    .pages
                    .entry(f.page)
                    .or_insert_with(|| Raster::new(f.width, f.height, Rgb(255, 0, 255)).unwrap());
                if (page.width(), page.height()) != (f.width, f.height) {
                    *page = Raster::new(f.width, f.height, Rgb(255, 0, 255)).unwrap();
                }
                let mut rgba = page.rgba().to_vec();
                let stride = f.width as usize * 4;
                for row in 0..f.rect.h as usize {
                    let dst = (f.rect.y as usize + row) * stride + f.rect.x as usize * 4;
                    let src = row * f.rect.w as usize * 4;
                    rgba[dst..dst + f.rect.w as usize * 4]
                        .copy_from_slice(&f.pixels[src..src + f.rect.w as usize * 4]);
                }
                *page = Raster::from_rgba(f.width, f.height, rgba).unwrap();
            }
            GuestMessage::Log { text, .. } => out.logs.push(text),
            GuestMessage::PagePrint(print) => {
                let after_frame = out.pages.contains_key(&print.page);
                out.prints.push((print, after_frame));
            }
            GuestMessage::ExportOffer(o) => out.exports.push(o),
            GuestMessage::ProgramExited { code, signal } => out.exit = Some((code, signal)),
            GuestMessage::Done { status, .. } => {
                out.status = Some(status);
                return true;
            }
            other => panic!("unexpected {other:?}"),
        }
        false
    }

    pub fn collect_until_done(&mut self, t0: Instant) -> Outcome {
        let mut out = Outcome::default();
        loop {
            let msg = self
                .reader
                .recv()
                .expect("recv")
                .expect("shim closed before Done");
            if self.apply(&mut out, msg, t0) {
                return out;
            }
        }
    }

    /// Sends Shutdown and checks the shim exits on its own.
    pub fn shutdown(mut self) {
        let _ = self.writer.send(&HostMessage::Shutdown);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "shim exited with {status}");
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("shim did not exit after Shutdown");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn page_change(&mut self, page: u32) {
        self.send(HostMessage::Input(InputEvent::PageChange { page }));
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Limits for tests: short time, modest pages.
pub fn limits(time_limit_ms: u32) -> Limits {
    Limits {
        time_limit_ms,
        ..Limits::default()
    }
}

/// Processes (from /proc) owned by `uid`.
pub fn processes_of_uid(uid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
                })
                .is_some_and(|u| u == uid.to_string())
        })
        .count()
}

/// Compiles a C program statically; None (with a SKIP line) when no static
/// C toolchain is installed.
pub fn compile_static_c(test: &str, source: &str, dir: &Path) -> Option<Vec<u8>> {
    let src = dir.join(format!("{test}.c"));
    let exe: PathBuf = dir.join(test);
    std::fs::write(&src, source).unwrap();
    let status = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&exe)
        .arg(&src)
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Some(std::fs::read(&exe).unwrap()),
        _ => {
            skip(
                test,
                "`cc -static` failed or is missing (install gcc and libc6-dev)",
            );
            None
        }
    }
}

/// True when poppler is installed; prints a SKIP line when not.
pub fn have_poppler(test: &str) -> bool {
    let ok = ["/usr/bin/pdftoppm", "/usr/bin/pdfinfo"]
        .iter()
        .all(|p| Path::new(p).is_file());
    if !ok {
        skip(test, "pdftoppm/pdfinfo missing (install poppler-utils)");
    }
    ok
}

/// Pixels that are clearly blue (the PDF fixture's box).
pub fn blue_pixels(r: &Raster) -> usize {
    r.rgba()
        .chunks_exact(4)
        .filter(|p| p[2] > 150 && p[0] < 100 && p[1] < 120)
        .count()
}

/// Prints a skip line straight to fd 2: the test harness hides `eprintln!`
/// of passing tests, and a skip must never be silent.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}
