//! The agent: one session with the host. Says Ready, takes one task and its
//! input, renders it through the sandboxed renderers, streams frames, serves
//! input events and exports, and stops on Shutdown.

mod document;
mod memory;
mod web;

use memory::OomWatch;

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use crate::export::{Exports, CHUNK};
use crate::fetch::{fetch, FetchError, FetchLimits, Fetched, Trust, Tunnel, Url};
use crate::identity;
use crate::ocr::Tesseract;
use crate::protocol::{
    flatten_task_id, Capability, EgressReply, FrameReader, FrameWriter, FramingError, GuestMessage,
    HostMessage, Identity as VmIdentity, InputEvent, LogLevel, PixelBudget, Ready, Rect, SafeCopy,
    Task, TaskKind, TaskStatus, MAX_CHUNK_BYTES, MAX_TEXT_BYTES,
};
use crate::raster::Raster;
use crate::render::office::{Office, OfficeError};
use crate::render::pdf;
use crate::render::terminal::{key_bytes, Pty, Screen, DEFAULT_COLS, DEFAULT_ROWS};
use crate::sandbox::{
    describe, limited_command, ChildLimits, ChildStdio, Identity, RunOutcome, Supervised,
};
use crate::transport::Connection;
use document::Document;

/// Longest wait for a preloaded application (the host's template waits
/// up to 180 s for `Ready`).
const PRELOAD_WAIT: Duration = Duration::from_secs(150);
/// Version reported in `Ready`.
pub const SHIM_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Most program output processed before the task fails as a flood.
pub const OUTPUT_FLOOD_BYTES: u64 = 16 * 1024 * 1024;
/// Most program output read per second; the program blocks beyond it.
pub const OUTPUT_RATE_BYTES: u64 = 8 * 1024 * 1024;
/// Least time between two terminal frames.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(40);

/// The session with the host broke.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Sending to or receiving from the host failed.
    #[error("host link")]
    Link(#[from] FramingError),
    /// The task's work directory could not be made.
    #[error("work directory")]
    WorkDir(#[source] std::io::Error),
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where per-task work directories go (tmpfs in the guest).
    pub work_root: PathBuf,
    /// Uid (and gid) of sandboxed children when the agent is root.
    pub sandbox_uid: u32,
    /// The agent is the guest's: started by the guest's init (PID 1), so
    /// it may reseed the kernel's CRNG and set its clock. A shim run as a
    /// local process (tests) never touches the kernel it runs on.
    pub in_guest: bool,
    /// What to start before `Ready` (`vitrine.preload=office|web`).
    pub preload: crate::init::Preload,
}

enum Event {
    Host(Result<Option<HostMessage>, FramingError>),
    PtyOutput(Vec<u8>),
    PtyClosed,
    /// A message from the browser's DevTools pipe (`None`: it closed).
    Cdp(Result<Option<crate::browser::cdp::Incoming>, crate::browser::cdp::CdpError>),
    /// A connection of the browser's proxy.
    Proxy(crate::browser::proxy::ProxyEvent),
}

/// Why a task stopped early.
enum Stop {
    /// It ends with this status (Failed or TimedOut).
    Task(TaskStatus),
    /// The host asked to stop or went away.
    Shutdown,
    /// The link broke.
    Link(AgentError),
}

impl From<AgentError> for Stop {
    fn from(e: AgentError) -> Self {
        Stop::Link(e)
    }
}

impl From<FramingError> for Stop {
    fn from(e: FramingError) -> Self {
        Stop::Link(AgentError::Link(e))
    }
}

fn failed(reason: impl std::fmt::Display) -> Stop {
    let mut text = reason.to_string();
    cut(&mut text, MAX_TEXT_BYTES - 4);
    Stop::Task(TaskStatus::Failed(text))
}

/// `s` cut to at most `max` bytes, on a character boundary (a plain
/// `truncate` inside a character panics).
fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Full error chain as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What is being shown after the first render, for input events.
enum View {
    None,
    Document(Document),
    Terminal(Box<Terminal>),
    /// A browser tab, live after `Done` when the task is.
    Web(Box<web::Tab>),
}

struct Terminal {
    screen: Screen,
    pty: Pty,
    keys: Option<SyncSender<Vec<u8>>>,
}

/// One session.
pub struct Agent {
    writer: FrameWriter<Box<dyn Write + Send>, GuestMessage>,
    events: Receiver<Event>,
    events_tx: SyncSender<Event>,
    config: AgentConfig,
    identity: Identity,
    /// The LibreOffice started before `Ready` (`vitrine.preload=office`);
    /// it lives as long as the VM.
    office: Option<Supervised>,
    /// The browser started before `Ready` (`vitrine.preload=web`).
    browser: Option<web::Preloaded>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Runs one session on `conn` until Shutdown or the host goes away.
pub fn serve(conn: Connection, config: AgentConfig) -> Result<(), AgentError> {
    let (events_tx, events) = mpsc::sync_channel(256);
    let host_tx = events_tx.clone();
    let reader = conn.reader;
    std::thread::spawn(move || {
        let mut reader = FrameReader::<_, HostMessage>::new(reader);
        loop {
            let msg = reader.recv();
            let end = !matches!(msg, Ok(Some(_)));
            if host_tx.send(Event::Host(msg)).is_err() || end {
                return;
            }
        }
    });
    let identity = Identity::for_sandbox(config.sandbox_uid);
    let mut agent = Agent {
        writer: FrameWriter::new(conn.writer),
        events,
        events_tx,
        config,
        identity,
        office: None,
        browser: None,
    };
    agent.run()
}

impl Agent {
    fn send(&mut self, msg: GuestMessage) -> Result<(), AgentError> {
        self.writer.send(&msg)?;
        Ok(())
    }

    fn log(&mut self, level: LogLevel, text: impl Into<String>) -> Result<(), AgentError> {
        let mut text = text.into();
        eprintln!("vitrine-shim: {text}");
        cut(&mut text, MAX_TEXT_BYTES);
        self.send(GuestMessage::Log { level, text })
    }

    fn next_host(&mut self) -> Result<Option<HostMessage>, AgentError> {
        loop {
            match self.events.recv() {
                Ok(Event::Host(msg)) => return Ok(msg?),
                Ok(_) => {}
                Err(_) => return Ok(None),
            }
        }
    }

    /// Like `next_host`, but gives up at `deadline`.
    fn next_host_until(&mut self, deadline: Instant) -> Result<Waited, AgentError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Host(msg)) => {
                    return Ok(match msg? {
                        Some(msg) => Waited::Message(msg),
                        None => Waited::Closed,
                    })
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return Ok(Waited::TimedOut),
                Err(RecvTimeoutError::Disconnected) => return Ok(Waited::Closed),
            }
        }
    }

    fn run(&mut self) -> Result<(), AgentError> {
        let mut capabilities = vec![
            Capability::Image,
            Capability::Text,
            Capability::Html,
            Capability::Terminal,
        ];
        if pdf::available() {
            capabilities.insert(0, Capability::Pdf);
        }
        if Tesseract::find(self.config.in_guest).is_some() {
            capabilities.push(Capability::Ocr);
        }
        self.preload();
        self.send(GuestMessage::Ready(Ready {
            shim_version: SHIM_VERSION.into(),
            capabilities,
        }))?;
        let mut identity_applied = false;
        let task = loop {
            match self.next_host()? {
                Some(HostMessage::Identity(identity)) => {
                    if !self.apply_identity(&identity)? {
                        return Ok(());
                    }
                    identity_applied = true;
                }
                Some(HostMessage::Task(task)) if identity_applied => break task,
                Some(HostMessage::Task(task)) => {
                    // A clone without its own seed would share the
                    // template's random stream with every other clone.
                    self.send(GuestMessage::Done {
                        task: task.id,
                        status: TaskStatus::Failed(
                            "refused: the task came before the VM's fresh identity".into(),
                        ),
                    })?;
                    return Ok(());
                }
                Some(HostMessage::Shutdown) | None => return Ok(()),
                Some(other) => {
                    self.log(LogLevel::Warn, format!("ignored before task: {other:?}"))?
                }
            }
        };
        let work = self.make_workdir(task.id)?;
        let result = self.run_task(&task, &work);
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    /// Who LibreOffice runs as: a uid of its own, beside the renderers'
    /// since its many threads count against their process limit.
    fn office_identity(&self) -> Identity {
        Identity::for_sandbox(self.config.sandbox_uid.saturating_add(1))
    }

    /// Starts what the kernel command line asks to have running before
    /// `Ready` (the template's snapshot). A failure is logged: conversions
    /// then start LibreOffice themselves.
    fn preload(&mut self) {
        match self.config.preload {
            crate::init::Preload::None => return,
            crate::init::Preload::Web => return self.preload_browser(),
            crate::init::Preload::Office => {}
        }
        let Some(office) = Office::find(self.config.in_guest, &self.config.work_root) else {
            eprintln!("vitrine-shim: preload: {}", OfficeError::Missing);
            return;
        };
        let dir = self.config.work_root.join("vitrine-office-preload");
        let identity = self.office_identity();
        if let Err(e) = identity.make_dir(&dir) {
            eprintln!("vitrine-shim: preload: {}: {e}", dir.display());
            return;
        }
        let started = Instant::now();
        match office.preload(identity, &dir, started + PRELOAD_WAIT) {
            Ok(server) => {
                eprintln!(
                    "vitrine-shim: preload: LibreOffice loaded and idle after {} ms",
                    started.elapsed().as_millis()
                );
                self.office = Some(server);
            }
            Err(e) => eprintln!("vitrine-shim: preload: LibreOffice: {}", chain(&e)),
        }
    }

    /// Applies the host's seed and clock and answers with the digest.
    /// `false`: it failed, and the session ends. Only the guest's agent
    /// (started by the guest's init) touches the kernel: a shim run as a
    /// local process (tests) must never reseed or set the clock of the
    /// machine it runs on.
    fn apply_identity(&mut self, identity: &VmIdentity) -> Result<bool, AgentError> {
        let applied = if self.config.in_guest {
            identity::apply(identity)
        } else {
            eprintln!(
                "vitrine-shim: a local process, not the guest's init: the identity's seed \
                 and clock are not applied to this kernel"
            );
            identity::digest_after_reseed()
        };
        match applied {
            Ok(applied) => {
                self.send(GuestMessage::IdentityApplied(applied))?;
                Ok(true)
            }
            Err(e) => {
                self.send(GuestMessage::Done {
                    task: identity.task,
                    status: TaskStatus::Failed(format!(
                        "cannot apply the VM's fresh identity: {}",
                        chain(&e)
                    )),
                })?;
                Ok(false)
            }
        }
    }

    fn make_workdir(&self, task: u64) -> Result<PathBuf, AgentError> {
        let dir = self
            .config
            .work_root
            .join(format!("vitrine-task-{task}-{}", std::process::id()));
        let mk = |p: &Path, mode: u32, sandbox_owned: bool| -> std::io::Result<()> {
            std::fs::create_dir_all(p)?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
            if let (true, Identity::Uid(uid)) = (sandbox_owned, self.identity) {
                std::os::unix::fs::chown(p, Some(uid), Some(uid))?;
            }
            Ok(())
        };
        mk(&dir, 0o711, false).map_err(AgentError::WorkDir)?;
        for (sub, owned) in [("out", true), ("export", true), ("store", false)] {
            mk(&dir.join(sub), 0o700, owned).map_err(AgentError::WorkDir)?;
        }
        Ok(dir)
    }

    fn run_task(&mut self, task: &Task, work: &Path) -> Result<(), AgentError> {
        self.send(GuestMessage::Accepted { task: task.id })?;
        let t_accept = Instant::now();
        let input = work.join("input");
        let mut budget = PixelBudget::new(task.limits.max_pixel_bytes);
        let mut exports = Exports::default();
        let (status, mut view) = match self.receive_input(task, &input) {
            Ok(()) => {
                let input_ms = t_accept.elapsed().as_millis();
                let deadline =
                    Instant::now() + Duration::from_millis(task.limits.time_limit_ms.into());
                let t_render = Instant::now();
                let mut view = View::None;
                let outcome = self.render_task(
                    task,
                    &input,
                    work,
                    deadline,
                    &mut budget,
                    &mut exports,
                    &mut view,
                );
                self.log(
                    LogLevel::Debug,
                    format!(
                        "timing input_ms={input_ms} task_ms={}",
                        t_render.elapsed().as_millis()
                    ),
                )?;
                match outcome {
                    Ok(()) => (TaskStatus::Ok, view),
                    Err(Stop::Task(status)) => (status, view),
                    Err(Stop::Shutdown) => return Ok(()),
                    Err(Stop::Link(e)) => return Err(e),
                }
            }
            Err(Stop::Task(status)) => (status, View::None),
            Err(Stop::Shutdown) => return Ok(()),
            Err(Stop::Link(e)) => return Err(e),
        };
        if let TaskStatus::Failed(reason) = &status {
            eprintln!("vitrine-shim: task failed: {reason}");
        }
        self.send(GuestMessage::Done {
            task: task.id,
            status,
        })?;
        self.serve_after_done(task, work, &mut view, &mut budget, &exports)
    }

    fn receive_input(&mut self, task: &Task, path: &Path) -> Result<(), Stop> {
        let size = task.input_size();
        let mut file = File::create(path).map_err(failed)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(failed)?;
        let mut got = 0u64;
        while got < size {
            match self.next_host()? {
                Some(HostMessage::TaskData { offset, data }) => {
                    if offset != got {
                        return Err(failed(format!(
                            "task data at offset {offset}, expected {got}"
                        )));
                    }
                    got += u64::try_from(data.len()).unwrap_or(u64::MAX);
                    if got > size {
                        return Err(failed("task data longer than announced"));
                    }
                    file.write_all(&data).map_err(failed)?;
                }
                Some(HostMessage::Shutdown) | None => return Err(Stop::Shutdown),
                Some(other) => {
                    self.log(LogLevel::Warn, format!("ignored during input: {other:?}"))?;
                }
            }
        }
        file.sync_all().map_err(failed)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn render_task(
        &mut self,
        task: &Task,
        input: &Path,
        work: &Path,
        deadline: Instant,
        budget: &mut PixelBudget,
        exports: &mut Exports,
        view: &mut View,
    ) -> Result<(), Stop> {
        match &task.kind {
            TaskKind::OpenUri {
                uri, extra_roots, ..
            } if crate::browser::Engine::find(self.config.in_guest, &self.config.work_root)
                .is_some() =>
            {
                let roots: Vec<Vec<u8>> = extra_roots.iter().map(|r| r.to_vec()).collect();
                let mut tab = self.open_in_browser(task, uri, &roots, deadline, budget)?;
                let Some(file) = tab.downloaded.take() else {
                    *view = View::Web(Box::new(tab));
                    return Ok(());
                };
                // The link is a file: it shows as one, and is offered.
                tab.kill();
                self.show_download(task, &file, work, deadline, budget, exports, view)
            }
            TaskKind::OpenUri {
                uri,
                now_unix_secs,
                extra_roots,
            } => {
                let roots = extra_roots.iter().map(|r| r.to_vec()).collect();
                let trust = Trust::new(*now_unix_secs, roots);
                let fetched = self.fetch_uri(uri, &trust, deadline)?;
                // The body replaces the (empty) input file, then renders as a file would.
                std::fs::write(input, &fetched.body).map_err(failed)?;
                let name = Url::parse(&fetched.final_uri)
                    .ok()
                    .and_then(|u| u.file_name())
                    .unwrap_or_else(|| "index.html".into());
                let doc = FileDoc {
                    input,
                    name: &name,
                    mime_hint: fetched.content_type.as_deref(),
                };
                self.render_file(task, &doc, work, deadline, budget, view)
            }
            TaskKind::OpenFile {
                name, mime_hint, ..
            } => {
                let doc = FileDoc {
                    input,
                    name,
                    mime_hint: mime_hint.as_deref(),
                };
                self.render_file(task, &doc, work, deadline, budget, view)
            }
            TaskKind::RunProgram { args, .. } => {
                let result = self.run_program(task, input, args, work, deadline, budget, view);
                let store = work.join("store");
                match exports.collect(&work.join("export"), &store) {
                    Ok(offers) => {
                        for offer in offers {
                            self.send(GuestMessage::ExportOffer(offer))?;
                        }
                    }
                    Err(e) => self.log(LogLevel::Warn, format!("exports: {}", chain(&e)))?,
                }
                result
            }
        }
    }

    /// Shows a file the browser downloaded for the task's link as a file
    /// is shown, and offers it for export under the profile's rules.
    #[allow(clippy::too_many_arguments)]
    fn show_download(
        &mut self,
        task: &Task,
        file: &Path,
        work: &Path,
        deadline: Instant,
        budget: &mut PixelBudget,
        exports: &mut Exports,
        view: &mut View,
    ) -> Result<(), Stop> {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download")
            .to_owned();
        let out = work.join("export");
        std::fs::copy(file, out.join(&name)).map_err(failed)?;
        std::fs::copy(file, work.join("input")).map_err(failed)?;
        match exports.collect(&out, &work.join("store")) {
            Ok(offers) => {
                for offer in offers {
                    self.send(GuestMessage::ExportOffer(offer))?;
                }
            }
            Err(e) => self.log(LogLevel::Warn, format!("exports: {}", chain(&e)))?,
        }
        let input = work.join("input");
        let doc = FileDoc {
            input: &input,
            name: &name,
            mime_hint: None,
        };
        self.render_file(task, &doc, work, deadline, budget, view)
    }

    /// Fetches `uri` through the host's egress tunnel before `deadline`.
    fn fetch_uri(&mut self, uri: &str, trust: &Trust, deadline: Instant) -> Result<Fetched, Stop> {
        self.log(LogLevel::Info, format!("fetching {uri}"))?;
        let mut tunnel = HostTunnel {
            agent: self,
            deadline,
            stop: None,
        };
        let result = fetch(&mut tunnel, uri, trust, &FetchLimits::until(deadline));
        if let Some(stop) = tunnel.stop.take() {
            return Err(stop);
        }
        let fetched = match result {
            Ok(fetched) => fetched,
            Err(FetchError::TimedOut) => return Err(Stop::Task(TaskStatus::TimedOut)),
            Err(e) => return Err(failed(e)),
        };
        self.log(
            LogLevel::Info,
            format!(
                "fetched {}: {} bytes, {}, {}",
                fetched.final_uri,
                fetched.body.len(),
                fetched.content_type.as_deref().unwrap_or("no content type"),
                fetched.tls.as_deref().unwrap_or("plain http"),
            ),
        )?;
        Ok(fetched)
    }

    fn send_raster(
        &mut self,
        page: u32,
        raster: &Raster,
        damage: Rect,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        for frame in raster.frames(page, damage) {
            budget.charge_frame(&frame).map_err(failed)?;
            self.writer.send(&GuestMessage::Frame(frame))?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn run_program(
        &mut self,
        task: &Task,
        program: &Path,
        args: &[String],
        work: &Path,
        deadline: Instant,
        budget: &mut PixelBudget,
        view: &mut View,
    ) -> Result<(), Stop> {
        let screen = Screen::new(DEFAULT_COLS, DEFAULT_ROWS).map_err(|e| failed(chain(&e)))?;
        let mut pty =
            Pty::open(screen.grid().cols(), screen.grid().rows()).map_err(|e| failed(chain(&e)))?;
        self.send(GuestMessage::PageInfo {
            task: task.id,
            count: 1,
        })?;
        let full = screen.full_rect();
        self.send_raster(0, screen.raster(), full, budget)?;

        let export_dir = work.join("export");
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let limits = ChildLimits::program(Duration::from_millis(task.limits.time_limit_ms.into()));
        let slave = |pty: &Pty| pty.slave_stdio().map_err(failed);
        let mut cmd = limited_command(limits, self.identity, ChildStdio::Tty, program, &args)
            .map_err(failed)?;
        cmd.current_dir(&export_dir)
            .env("HOME", &export_dir)
            .env("TERM", "xterm")
            .stdin(slave(&pty)?)
            .stdout(slave(&pty)?)
            .stderr(slave(&pty)?);
        let mut oom = OomWatch::start();
        let mut child = oom.spawn(cmd, self.identity, deadline).map_err(failed)?;
        // Only the program may hold the slave, or the master never sees EOF.
        pty.close_slave();

        // Reader: pty output to the event loop, at a bounded rate.
        let mut master_r = pty.master_file().map_err(failed)?;
        let tx = self.events_tx.clone();
        std::thread::spawn(move || pump_output(&mut master_r, &tx));
        // Writer: keys to the program without blocking the loop.
        let (keys_tx, keys_rx) = mpsc::sync_channel::<Vec<u8>>(64);
        let mut master_w = pty.master_file().map_err(failed)?;
        std::thread::spawn(move || {
            for bytes in keys_rx {
                if master_w.write_all(&bytes).is_err() {
                    return;
                }
            }
        });
        let mut term = Terminal {
            screen,
            pty,
            keys: Some(keys_tx),
        };
        let result = self.terminal_loop(&mut term, &mut child, &mut oom, budget);
        child.kill();
        // Final picture, whatever the outcome.
        let damage = term.screen.paint();
        for rect in damage {
            let raster = term.screen.raster().clone();
            self.send_raster(0, &raster, rect, budget)?;
        }
        term.keys = None;
        *view = View::Terminal(Box::new(term));
        result
    }

    fn terminal_loop(
        &mut self,
        term: &mut Terminal,
        child: &mut Supervised,
        oom: &mut OomWatch,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        let mut processed = 0u64;
        let mut last_frame = Instant::now();
        let mut exited: Option<(Instant, std::process::ExitStatus)> = None;
        let mut pty_closed = false;
        loop {
            match self.events.recv_timeout(Duration::from_millis(10)) {
                Ok(Event::PtyOutput(bytes)) => {
                    processed += u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                    term.screen.feed(&bytes);
                    if processed > OUTPUT_FLOOD_BYTES {
                        child.kill();
                        return Err(failed(format!(
                            "output flood: the program wrote more than {OUTPUT_FLOOD_BYTES} bytes"
                        )));
                    }
                }
                Ok(Event::PtyClosed) => pty_closed = true,
                Ok(Event::Cdp(_) | Event::Proxy(_)) => {}
                Ok(Event::Host(msg)) => match msg? {
                    Some(HostMessage::Input(event)) => self.terminal_input(term, &event, budget)?,
                    Some(HostMessage::Shutdown) | None => return Err(Stop::Shutdown),
                    Some(other) => {
                        self.log(LogLevel::Warn, format!("ignored while running: {other:?}"))?;
                    }
                },
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(Stop::Shutdown),
            }
            if last_frame.elapsed() >= FRAME_INTERVAL {
                last_frame = Instant::now();
                self.flush_screen(term, budget)?;
            }
            if exited.is_none() {
                match child.poll().map_err(failed)? {
                    Some(RunOutcome::TimedOut) => return Err(Stop::Task(TaskStatus::TimedOut)),
                    Some(RunOutcome::Exited(status)) => exited = Some((Instant::now(), status)),
                    None => {}
                }
            }
            if let Some((at, status)) = exited {
                // Drain what the program wrote before it ended; background
                // children that keep the pty open get 300 ms.
                if pty_closed || at.elapsed() > Duration::from_millis(300) {
                    self.send(GuestMessage::ProgramExited {
                        code: status.code(),
                        signal: std::os::unix::process::ExitStatusExt::signal(&status),
                    })?;
                    self.log(
                        LogLevel::Info,
                        format!("program ended: {}", describe(status)),
                    )?;
                    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
                    if signal == Some(9) && oom.struck() {
                        // The host's verdict reads this exact line.
                        self.log(LogLevel::Info, "program-exit: out-of-memory")?;
                    }
                    return Ok(());
                }
            }
        }
    }

    fn flush_screen(&mut self, term: &mut Terminal, budget: &mut PixelBudget) -> Result<(), Stop> {
        let damage = term.screen.paint();
        if damage.is_empty() {
            return Ok(());
        }
        let raster = term.screen.raster().clone();
        for rect in damage {
            self.send_raster(0, &raster, rect, budget)?;
        }
        Ok(())
    }

    fn terminal_input(
        &mut self,
        term: &mut Terminal,
        event: &InputEvent,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        let bytes = match event {
            InputEvent::Key(key) => key_bytes(key),
            InputEvent::Text(text) => text.as_bytes().to_vec(),
            InputEvent::Scroll { dy, .. } => {
                let key: &[u8] = if *dy < 0 { b"\x1b[A" } else { b"\x1b[B" };
                key.repeat(usize::try_from(dy.unsigned_abs().min(50)).unwrap_or(0))
            }
            InputEvent::Resize { width, height } => {
                let (cols, rows) = term.screen.grid_size_for(*width, *height);
                term.screen
                    .resize(cols, rows)
                    .map_err(|e| failed(chain(&e)))?;
                let grid = term.screen.grid();
                let _ = term.pty.resize(grid.cols(), grid.rows());
                let full = term.screen.full_rect();
                let raster = term.screen.raster().clone();
                return self.send_raster(0, &raster, full, budget);
            }
            // A terminal has no pointer.
            InputEvent::Button { .. } | InputEvent::Motion { .. } => return Ok(()),
            InputEvent::PageChange { .. } => {
                let full = term.screen.full_rect();
                let raster = term.screen.raster().clone();
                return self.send_raster(0, &raster, full, budget);
            }
        };
        if let Some(keys) = &term.keys {
            // A full queue means the program does not read: drop the keys.
            let _ = keys.try_send(bytes);
        }
        Ok(())
    }

    fn serve_after_done(
        &mut self,
        task: &Task,
        work: &Path,
        view: &mut View,
        budget: &mut PixelBudget,
        exports: &Exports,
    ) -> Result<(), AgentError> {
        if let View::Web(tab) = view {
            if !task.live {
                tab.kill();
                return self.wait_shutdown();
            }
            return match self.serve_live_tab(tab, budget) {
                Ok(()) | Err(Stop::Shutdown) => Ok(()),
                Err(Stop::Link(e)) => Err(e),
                Err(Stop::Task(status)) => {
                    self.log(LogLevel::Warn, format!("the live page ended: {status:?}"))?;
                    self.wait_shutdown()
                }
            };
        }
        loop {
            let msg = match self.next_host() {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            };
            let result = match msg {
                HostMessage::Shutdown => return Ok(()),
                HostMessage::FetchExport { id } => self.stream_export(exports, id),
                HostMessage::FlattenExport { id, safe_copy } => {
                    self.flatten_export(task, work, exports, id, safe_copy)
                }
                HostMessage::Input(event) => self.input_after_done(task, view, &event, budget),
                other => self
                    .log(LogLevel::Warn, format!("ignored after done: {other:?}"))
                    .map_err(Stop::Link),
            };
            match result {
                Ok(()) => {}
                Err(Stop::Link(e)) => return Err(e),
                Err(Stop::Shutdown) => return Ok(()),
                Err(Stop::Task(status)) => {
                    let text = match status {
                        TaskStatus::Failed(reason) => format!("input failed: {reason}"),
                        other => format!("input failed: {other:?}"),
                    };
                    self.log(LogLevel::Warn, text)?;
                }
            }
        }
    }

    /// Waits for `Shutdown` (or the host's end), answering nothing more.
    fn wait_shutdown(&mut self) -> Result<(), AgentError> {
        loop {
            match self.next_host()? {
                Some(HostMessage::Shutdown) | None => return Ok(()),
                Some(HostMessage::Stream(_)) => {}
                Some(other) => {
                    self.log(LogLevel::Warn, format!("ignored after done: {other:?}"))?
                }
            }
        }
    }

    fn input_after_done(
        &mut self,
        task: &Task,
        view: &mut View,
        event: &InputEvent,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        match (view, event) {
            (View::Document(doc), InputEvent::PageChange { page }) => {
                self.resend_page(doc, task, *page, budget)
            }
            (View::Document(doc), InputEvent::Resize { width, height }) => {
                self.resize_document(doc, task, *width, *height, budget)
            }
            (View::Terminal(term), event) => self.terminal_input(term, event, budget),
            _ => Ok(()),
        }
    }

    /// Renders export `id` as a safe-copy task of its own id, so that only
    /// its pages' pixels (and OCR words) leave, never its bytes.
    fn flatten_export(
        &mut self,
        task: &Task,
        work: &Path,
        exports: &Exports,
        id: u32,
        safe_copy: SafeCopy,
    ) -> Result<(), Stop> {
        let flat_id = flatten_task_id(id);
        let (offer, snapshot) = match exports.offer(id) {
            Ok(x) => x,
            Err(e) => {
                let status = TaskStatus::Failed(chain(&e));
                return Ok(self.send(GuestMessage::Done {
                    task: flat_id,
                    status,
                })?);
            }
        };
        let flat = Task {
            id: flat_id,
            kind: TaskKind::OpenFile {
                name: offer.name.clone(),
                mime_hint: Some(offer.mime.clone()),
                size: offer.size,
            },
            limits: task.limits,
            safe_copy: Some(safe_copy),
            live: false,
        };
        let dir = work.join(format!("flatten-{id}"));
        let input = dir.join("input");
        let name = offer.name.clone();
        let mime = offer.mime.clone();
        // A readable copy for the renderer's uid; the snapshot stays as hashed.
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::copy(snapshot, &input))
            .and_then(|_| std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)))
            .map_err(failed)?;
        let deadline = Instant::now() + Duration::from_millis(task.limits.time_limit_ms.into());
        let mut budget = PixelBudget::new(task.limits.max_pixel_bytes);
        let mut view = View::None;
        let doc = FileDoc {
            input: &input,
            name: &name,
            mime_hint: Some(&mime),
        };
        let status = match self.render_file(&flat, &doc, &dir, deadline, &mut budget, &mut view) {
            Ok(()) => TaskStatus::Ok,
            Err(Stop::Task(status)) => status,
            Err(other) => return Err(other),
        };
        let _ = std::fs::remove_dir_all(&dir);
        Ok(self.send(GuestMessage::Done {
            task: flat_id,
            status,
        })?)
    }

    fn stream_export(&mut self, exports: &Exports, id: u32) -> Result<(), Stop> {
        let (mut file, size) = match exports.open(id) {
            Ok(x) => x,
            Err(e) => return Ok(self.log(LogLevel::Warn, chain(&e))?),
        };
        let mut offset = 0u64;
        let mut buf = vec![0u8; CHUNK];
        while offset < size {
            let n = file.read(&mut buf).map_err(failed)?;
            if n == 0 {
                break;
            }
            self.writer.send(&GuestMessage::ExportChunk {
                id,
                offset,
                data: buf[..n].to_vec(),
            })?;
            offset += u64::try_from(n).unwrap_or(u64::MAX);
        }
        self.writer.send(&GuestMessage::ExportEnd { id })?;
        Ok(())
    }
}

/// A document file to render and what is known of its type.
struct FileDoc<'a> {
    input: &'a Path,
    name: &'a str,
    mime_hint: Option<&'a str>,
}

/// What waiting for the host gave.
enum Waited {
    Message(HostMessage),
    /// The host went away.
    Closed,
    TimedOut,
}

/// The host's egress tunnel, spoken as `Egress*` messages on the host link.
/// A stop (Shutdown, a broken link) is kept in `stop` for the agent, and the
/// fetch sees `Interrupted`.
struct HostTunnel<'a> {
    agent: &'a mut Agent,
    deadline: Instant,
    stop: Option<Stop>,
}

impl HostTunnel<'_> {
    fn interrupt(&mut self, stop: Stop) -> FetchError {
        self.stop = Some(stop);
        FetchError::Interrupted
    }

    fn send(&mut self, msg: GuestMessage) -> Result<(), FetchError> {
        if self.stop.is_some() {
            return Err(FetchError::Interrupted);
        }
        self.agent
            .send(msg)
            .map_err(|e| self.interrupt(Stop::Link(e)))
    }

    /// Waits for the host's `Egress` answer.
    fn reply(&mut self) -> Result<EgressReply, FetchError> {
        loop {
            let msg = match self.agent.next_host_until(self.deadline) {
                Ok(Waited::Message(msg)) => msg,
                Ok(Waited::TimedOut) => return Err(FetchError::TimedOut),
                Ok(Waited::Closed) => return Err(self.interrupt(Stop::Shutdown)),
                Err(e) => return Err(self.interrupt(Stop::Link(e))),
            };
            let ignored = match msg {
                HostMessage::Egress(reply) => return Ok(reply),
                HostMessage::Shutdown => return Err(self.interrupt(Stop::Shutdown)),
                HostMessage::Input(event) => format!("input while fetching dropped: {event:?}"),
                other => format!("ignored while fetching: {other:?}"),
            };
            if let Err(e) = self.agent.log(LogLevel::Warn, ignored) {
                return Err(self.interrupt(Stop::Link(e)));
            }
        }
    }
}

impl Tunnel for HostTunnel<'_> {
    fn open(&mut self, host: &str, port: u16) -> Result<(), FetchError> {
        self.send(GuestMessage::EgressOpen {
            host: host.to_owned(),
            port,
        })?;
        let (host, port) = (host.to_owned(), port);
        match self.reply()? {
            EgressReply::Connected => Ok(()),
            EgressReply::Refused(reason) => Err(FetchError::Refused { host, port, reason }),
            EgressReply::Failed(reason) => Err(FetchError::Connect { host, port, reason }),
            EgressReply::Data(_) => Err(FetchError::Link(
                "the host answered an open with data".into(),
            )),
        }
    }

    fn send(&mut self, data: &[u8]) -> Result<(), FetchError> {
        for piece in data.chunks(MAX_CHUNK_BYTES) {
            HostTunnel::send(
                self,
                GuestMessage::EgressSend {
                    data: piece.to_vec(),
                },
            )?;
        }
        Ok(())
    }

    fn recv(&mut self, max: u32) -> Result<Vec<u8>, FetchError> {
        let cap = u32::try_from(MAX_CHUNK_BYTES).unwrap_or(u32::MAX);
        let max = max.clamp(1, cap);
        HostTunnel::send(self, GuestMessage::EgressRecv { max })?;
        match self.reply()? {
            EgressReply::Data(data) if u32::try_from(data.len()).is_ok_and(|n| n <= max) => {
                Ok(data)
            }
            EgressReply::Data(data) => Err(FetchError::Link(format!(
                "the host sent {} bytes for a read of at most {max}",
                data.len()
            ))),
            EgressReply::Failed(reason) => Err(FetchError::Link(reason)),
            EgressReply::Refused(reason) => Err(FetchError::Link(format!("refused: {reason}"))),
            EgressReply::Connected => Err(FetchError::Link(
                "the host answered a read with Connected".into(),
            )),
        }
    }

    fn close(&mut self) {
        // After a stop the link is gone or going; nothing to close.
        if self.stop.is_none() {
            let _ = HostTunnel::send(self, GuestMessage::EgressClose);
        }
    }
}

/// Reads the pty master until EOF/EIO, at most `OUTPUT_RATE_BYTES` per second.
fn pump_output(master: &mut File, tx: &SyncSender<Event>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut window = Instant::now();
    let mut in_window = 0u64;
    loop {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                in_window += u64::try_from(n).unwrap_or(u64::MAX);
                if tx.send(Event::PtyOutput(buf[..n].to_vec())).is_err() {
                    return;
                }
                if in_window >= OUTPUT_RATE_BYTES {
                    let rest = Duration::from_secs(1).saturating_sub(window.elapsed());
                    std::thread::sleep(rest);
                }
                if window.elapsed() >= Duration::from_secs(1) {
                    window = Instant::now();
                    in_window = 0;
                }
            }
        }
    }
    let _ = tx.send(Event::PtyClosed);
}
