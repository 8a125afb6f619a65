//! One task's life on its own thread: read the input from the passed
//! descriptor, ask the policy (and log the decision), start a VM, stream
//! frames to the viewer as they arrive, gate the exports, tear the VM down,
//! and sign the receipt. The D-Bus side talks to it only through channels:
//! [`WorkerCommand`]s in, [`TaskEvent`]s out, and [`TaskControl::cancel`],
//! which kills the VM from outside so that a blocked receive returns at once.

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vitrine_policy::{AuditLog, PolicyHandle, Preload, Profile, Request, Verdict};
use vitrine_shim::protocol::{Frame, GuestMessage, HostMessage, InputEvent};

use super::receipt::{hex, sha256_hex, ReceiptBody, ReceiptOutput, ReceiptSigner};
use super::safe_copy::{self, SafeCopyRequest};

mod exports;
use super::state_dirs::StateDirs;
use super::verdict;
use super::vm_seam::{RunningVm, VmStarter};
use super::warm_pool::WarmPool;
use crate::backend::{Accel, GuestChannel, GuestImage, VmConfig};
use crate::egress::EgressTunnel;
use crate::fresh_guest::DONE_MARGIN;
use crate::open_file::{self, Subject};
use crate::pages;
use crate::task::{
    self, run_task_observed, serve_live, TaskError, TaskInput, TaskObserver, TaskRun,
};
use crate::viewer::ViewerLink;

/// How long the VM may take to end after `Shutdown` before it is killed.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for the user's decision on an export, within the profile's
/// time limit.
const EXPORT_DECISION_WAIT: Duration = Duration::from_secs(10 * 60);
/// Longest wait for one approved export to come over.
const EXPORT_FETCH_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for a VM to boot to `Ready`, within the profile's limit.
const READY_WAIT: Duration = Duration::from_secs(180);
/// Longest a VM takes to apply its fresh identity (a reseed and a clock).
const IDENTITY_WAIT: Duration = Duration::from_secs(10);
/// How often a worker with an open window looks for it to close.
const VIEWER_POLL: Duration = Duration::from_millis(100);

/// What the task works on.
#[derive(Debug)]
pub enum Payload {
    /// A file, by descriptor.
    File {
        /// The passed descriptor.
        file: File,
        /// The caller's name for it.
        name: String,
    },
    /// A link.
    Uri(String),
    /// A program, by descriptor.
    Program {
        /// The passed descriptor.
        file: File,
        /// Arguments after argv\[0\].
        args: Vec<String>,
        /// Its name for the task and the window ("program" when unknown).
        name: String,
    },
}

impl Payload {
    /// `open-file`, `open-uri` or `run-program`.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::File { .. } => "open-file",
            Payload::Uri(_) => "open-uri",
            Payload::Program { .. } => "run-program",
        }
    }
}

/// Per-task options from the caller's `a{sv}`.
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    /// Write the pages as PNG files here.
    pub png_dir: Option<PathBuf>,
    /// Write approved exports here instead of the default folder.
    pub export_dir: Option<PathBuf>,
    /// Show a viewer window (where a display exists); default yes, but no
    /// for a safe copy.
    pub viewer: Option<bool>,
    /// Save a safe copy of the file (`SaveSafeCopy`).
    pub safe_copy: Option<SafeCopyRequest>,
}

impl TaskOptions {
    /// The task's kind for listings and receipts.
    pub fn kind_of(&self, payload: &Payload) -> &'static str {
        if self.safe_copy.is_some() {
            "safe-copy"
        } else {
            payload.kind()
        }
    }
}

/// From the worker to the D-Bus side.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// The task's state changed (`deciding`, `starting`, `running`,
    /// `exporting`, `finished`).
    State(&'static str),
    /// A fact about the task for `vitrine` to show (type, origin, decision...).
    Detail(&'static str, String),
    /// A step's time since the call, in microseconds.
    Timing(&'static str, u64),
    /// An export offer and where it stands (`pending`, `refused: …`,
    /// `approved: PATH`, `denied`, `failed: …`).
    Export {
        /// File name.
        name: String,
        /// Size.
        size: u64,
        /// SHA-256, hex.
        sha256: String,
        /// Where it stands.
        status: String,
    },
    /// The task ended with this verdict.
    Finished(String),
    /// The user asked the viewer for a safe copy of this task's file: start
    /// a `SaveSafeCopy` task for it (the file, as this task opened it).
    SafeCopyAsked(SafeCopyHandOff),
}

/// The file a viewer's "save safe copy" hands to a new task, taken once.
#[derive(Debug, Clone)]
pub struct SafeCopyHandOff {
    /// The descriptor this task was given, duplicated.
    pub file: Arc<Mutex<Option<File>>>,
    /// The caller's name for it.
    pub name: String,
}

/// From the D-Bus side to the worker.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Write this export.
    Approve {
        /// File name.
        name: String,
        /// Where it was written, or why not.
        reply: tokio::sync::oneshot::Sender<Result<PathBuf, String>>,
    },
    /// Do not write this export.
    Deny {
        /// File name.
        name: String,
        /// Done, or why not.
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// Stop (sent by [`TaskControl::cancel`]).
    Cancel,
}

/// The part of a task that the D-Bus side holds to stop it.
#[derive(Default)]
pub struct TaskControl {
    cancelled: AtomicBool,
    vm: Mutex<Option<Box<dyn RunningVm>>>,
}

impl std::fmt::Debug for TaskControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskControl")
            .field("cancelled", &self.cancelled())
            .finish_non_exhaustive()
    }
}

impl TaskControl {
    /// Marks the task cancelled and kills its VM, if one runs. Blocks only
    /// as long as killing a process takes.
    pub fn cancel(&self, commands: &Sender<WorkerCommand>) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Ok(mut vm) = self.vm.lock() {
            if let Some(vm) = vm.as_mut() {
                vm.kill();
            }
        }
        let _ = commands.send(WorkerCommand::Cancel);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Cancels from the worker's own thread (the window was closed): the
    /// VM dies, so the blocked receive returns.
    fn cancel_from_worker(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.kill_held();
    }

    fn hold(&self, vm: Box<dyn RunningVm>) {
        if let Ok(mut slot) = self.vm.lock() {
            *slot = Some(vm);
        }
        // A cancel that came while the VM started finds it here.
        if self.cancelled() {
            self.kill_held();
        }
    }

    fn kill_held(&self) {
        if let Ok(mut slot) = self.vm.lock() {
            if let Some(vm) = slot.as_mut() {
                vm.kill();
            }
        }
    }

    fn release(&self) -> Option<Box<dyn RunningVm>> {
        self.vm.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// The guest image a daemon runs, with its hash for receipts.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Kernel, initramfs, command line.
    pub image: GuestImage,
    /// SHA-256 (hex) of the kernel, the initramfs and the application disk
    /// (if any), in that order.
    pub sha256: String,
}

/// What every worker shares.
pub struct WorkerContext {
    /// The policy (hot-reloaded by the daemon).
    pub policy: Arc<PolicyHandle>,
    /// Where decisions are logged.
    pub audit: Option<AuditLog>,
    /// Starts VMs.
    pub backend: Arc<dyn VmStarter>,
    /// VMs booted ahead.
    pub pool: WarmPool,
    /// How the VM's vCPUs run.
    pub accel: Accel,
    /// The guest image, or why there is none.
    pub image: Result<ImageInfo, String>,
    /// Signs receipts.
    pub signer: ReceiptSigner,
    /// Records and default export folder.
    pub dirs: StateDirs,
    /// Folders whose files count as downloaded.
    pub downloads_dirs: Vec<PathBuf>,
    /// The viewer binary, where a display exists; `None`: no windows.
    pub viewer: Option<PathBuf>,
    /// DER certificates guests trust for links beside the web's roots.
    pub egress_roots: Vec<Vec<u8>>,
}

impl WorkerContext {
    /// Starts booting VMs of profile `name`'s shape ahead of any task (when
    /// the pool keeps any, the policy has the profile and there is an image).
    pub fn prewarm(&self, name: &str) {
        if self.pool.size() == 0 {
            return;
        }
        let Ok(image) = &self.image else { return };
        let policy = self.policy.current();
        let Some(profile) = policy.profile(name) else {
            log::info!("warm pool: the policy has no profile `{name}` to warm");
            return;
        };
        match task_vm_config(profile, image.image.clone(), self.accel) {
            Ok(config) => self.pool.refill(&config),
            Err(why) => log::warn!("warm pool: profile `{name}`: {why}"),
        }
    }
}

/// The VM a task of `profile` runs in.
pub fn task_vm_config(
    profile: &Profile,
    image: GuestImage,
    accel: Accel,
) -> Result<VmConfig, String> {
    let mut config = open_file::vm_config(profile, image, accel).map_err(|e| chain(&e))?;
    // Many TCG guests booting at once on few cores take a while, and so
    // slowly that the guest kernel's IO-APIC timer check can fail and
    // panic (seen with 10 at once on 2 cores): skip that check there.
    config.ready_timeout = profile.time_limit.min(READY_WAIT);
    let mut extra = Vec::new();
    if accel == Accel::Tcg {
        extra.push("no_timer_check".to_owned());
    }
    // The guest starts the application before `Ready`, so the template
    // snapshotted there holds it running. Being on the command line, it is
    // part of the warm pool's shape and the template key: a VM that preloads
    // never serves a task that does not, and the other way round.
    if profile.preload != Preload::None {
        extra.push(format!(
            "{}={}",
            vitrine_shim::init::PRELOAD_PARAM,
            profile.preload.as_str()
        ));
    }
    config.extra_cmdline = extra.join(" ");
    Ok(config)
}

impl std::fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext")
            .field("backend", &self.backend.name())
            .field("dirs", &self.dirs)
            .field("viewer", &self.viewer)
            .finish_non_exhaustive()
    }
}

/// One task for a worker.
#[derive(Debug)]
pub struct TaskRequest {
    /// Task number.
    pub id: u64,
    /// What to work on.
    pub payload: Payload,
    /// The caller's options.
    pub options: TaskOptions,
    /// When the D-Bus call arrived.
    pub called: Instant,
}

/// Sends events to the D-Bus side.
pub type EventSink = tokio::sync::mpsc::UnboundedSender<(u64, TaskEvent)>;

struct Worker<'a> {
    ctx: &'a WorkerContext,
    id: u64,
    called: Instant,
    events: EventSink,
    control: Arc<TaskControl>,
    commands: Receiver<WorkerCommand>,
    receipt: ReceiptBody,
    /// The input file's folder, where its safe copy goes by default.
    source_dir: Option<PathBuf>,
    /// The input file, kept for the viewer's "save safe copy".
    source: Option<(File, String)>,
}

impl Worker<'_> {
    fn emit(&self, event: TaskEvent) {
        let _ = self.events.send((self.id, event));
    }
    fn state(&self, s: &'static str) {
        self.emit(TaskEvent::State(s));
    }
    fn detail(&self, key: &'static str, value: impl Into<String>) {
        self.emit(TaskEvent::Detail(key, value.into()));
    }
    fn timing(&self, key: &'static str) {
        self.timing_at(key, Instant::now());
    }
    fn timing_at(&self, key: &'static str, at: Instant) {
        let since = at.saturating_duration_since(self.called);
        let us = u64::try_from(since.as_micros()).unwrap_or(u64::MAX);
        self.emit(TaskEvent::Timing(key, us));
    }
}

/// Runs task `request` to its end on the calling (blocking) thread.
pub fn run(
    ctx: &WorkerContext,
    request: TaskRequest,
    control: Arc<TaskControl>,
    commands: Receiver<WorkerCommand>,
    events: EventSink,
) {
    let mut worker = Worker {
        ctx,
        id: request.id,
        called: request.called,
        events,
        control,
        commands,
        receipt: ReceiptBody {
            format: 1,
            task: request.id,
            kind: request.options.kind_of(&request.payload).to_owned(),
            finished: String::new(),
            template_sha256: String::new(),
            backend: String::new(),
            policy_version: String::new(),
            decision: String::new(),
            input_sha256: String::new(),
            outputs: Vec::new(),
            verdict: String::new(),
        },
        source_dir: None,
        source: None,
    };
    let mut viewer = None;
    let verdict = worker.lifecycle(request.payload, &request.options, &mut viewer);
    worker.finish(verdict, viewer);
}

/// A sandboxed task's input, ready for the guest.
struct Prepared {
    input: TaskInput,
    name: String,
    profile: Profile,
}

impl Worker<'_> {
    fn lifecycle(
        &mut self,
        payload: Payload,
        options: &TaskOptions,
        viewer: &mut Option<ViewerLink>,
    ) -> String {
        self.state("deciding");
        let mut prepared = match self.decide(payload) {
            Ok(p) => p,
            Err(verdict) => return verdict,
        };
        if let Some(copy) = &options.safe_copy {
            if let Err(e) = for_safe_copy(&mut prepared, copy) {
                return format!("error: {}", chain(&e));
            }
        }
        if let Err(e) = prepared.input.check() {
            return format!("error: {}", chain(&e));
        }
        if let vitrine_shim::protocol::TaskKind::OpenFile { size: 0, .. } = &prepared.input.kind {
            // No VM for nothing: a blank page would look like a clean file.
            return format!(
                "error: {} is empty (0 bytes): there is nothing to show",
                prepared.name
            );
        }
        if self.control.cancelled() {
            return "cancelled".to_owned();
        }
        let image = match &self.ctx.image {
            Ok(image) => image.clone(),
            Err(why) => return format!("error: no guest image: {why}"),
        };
        self.receipt.template_sha256 = image.sha256.clone();
        self.receipt.backend = self.ctx.backend.name();
        self.sandbox(prepared, image, options, viewer)
    }

    /// Reads the input and asks the policy. `Err` is the final verdict.
    fn decide(&mut self, payload: Payload) -> Result<Prepared, String> {
        let mut link = None;
        let (request, input) = match payload {
            Payload::Uri(uri) => {
                self.receipt.input_sha256 = sha256_hex(uri.as_bytes());
                self.detail("name", uri.clone());
                let request = Request::open_uri(&uri)
                    .map_err(|e| format!("error: not a link the policy can judge: {e}"))?;
                link = Some(uri);
                (request, None)
            }
            Payload::File { file, name } => {
                self.source = file.try_clone().ok().map(|f| (f, name.clone()));
                let subject = Subject::from_file(file, &name, &self.ctx.downloads_dirs)
                    .map_err(|e| format!("error: {}", chain(&e)))?;
                let request = subject
                    .request()
                    .map_err(|e| format!("error: {}", chain(&e)))?;
                self.describe(&subject);
                (request, Some(subject))
            }
            Payload::Program { file, args, name } => {
                let subject = Subject::from_file(file, &name, &self.ctx.downloads_dirs)
                    .map_err(|e| format!("error: {}", chain(&e)))?;
                let request = subject
                    .program_request()
                    .map_err(|e| format!("error: {}", chain(&e)))?;
                self.describe(&subject);
                let profile = self.judge(&request)?;
                let limits = open_file::task_limits(&profile);
                let mut input = TaskInput::program(subject.data, limits);
                if let vitrine_shim::protocol::TaskKind::RunProgram { args: a, .. } =
                    &mut input.kind
                {
                    *a = args;
                }
                return Ok(Prepared {
                    input,
                    name,
                    profile,
                });
            }
        };
        let profile = self.judge(&request)?;
        match input {
            None => {
                let Some(uri) = link else {
                    return Err("error: a link task without its link".into());
                };
                self.detail("egress", format!("allowed: {}", profile.egress));
                let limits = open_file::task_limits(&profile);
                Ok(Prepared {
                    input: TaskInput::uri(&uri, self.ctx.egress_roots.clone(), limits),
                    // The window is named after the link from the start, not
                    // only once the page has navigated (20-30 s under TCG).
                    name: uri,
                    profile,
                })
            }
            Some(subject) => {
                let limits = open_file::task_limits(&profile);
                Ok(Prepared {
                    input: TaskInput::file(&subject.guest_name, subject.mime, subject.data, limits),
                    name: subject.guest_name,
                    profile,
                })
            }
        }
    }

    fn describe(&mut self, subject: &Subject) {
        self.receipt.input_sha256 = sha256_hex(&subject.data);
        self.source_dir = subject.path.parent().map(std::path::Path::to_path_buf);
        self.detail("name", subject.given.to_string_lossy());
        self.detail("path", subject.path.to_string_lossy());
        self.detail("size", subject.data.len().to_string());
        self.detail("type", subject.mime);
        self.detail("origin", subject.origin_text());
    }

    /// The policy's decision, logged; the profile if it sandboxes.
    fn judge(&mut self, request: &Request) -> Result<Profile, String> {
        let policy = self.ctx.policy.current();
        let decision = policy.evaluate(request);
        if let Some(audit) = &self.ctx.audit {
            audit.record(request, &decision);
        }
        self.timing("policy");
        self.receipt.policy_version = decision.version.hex();
        self.receipt.decision = format!("{}, by {}", decision.verdict, decision.matched);
        self.detail("policy", policy.version().short());
        self.detail(
            "policy-status",
            match policy.fail_closed_reason() {
                Some(reason) => format!("FAILING CLOSED: {reason:?}"),
                None => "ok".to_owned(),
            },
        );
        self.detail("decision", self.receipt.decision.clone());
        match &decision.verdict {
            Verdict::Deny => Err(format!("denied: by {}", decision.matched)),
            Verdict::Host => Err(format!(
                "host: trusted by {}; it opens normally on the host, outside any VM \
                 (vitrined does not open it itself)",
                decision.matched
            )),
            Verdict::Sandbox(profile) => {
                let limits = open_file::task_limits(profile);
                self.detail(
                    "profile",
                    format!(
                        "{}: {} MiB, {} vCPU, time limit {}, pages up to {}x{}",
                        profile.name,
                        profile.memory_mib,
                        profile.vcpus,
                        vitrine_policy::profile::format_duration(profile.time_limit),
                        limits.max_width,
                        limits.max_height
                    ),
                );
                Ok((**profile).clone())
            }
        }
    }

    fn sandbox(
        &mut self,
        prepared: Prepared,
        image: ImageInfo,
        options: &TaskOptions,
        viewer: &mut Option<ViewerLink>,
    ) -> String {
        let Prepared {
            mut input,
            name,
            profile,
        } = prepared;
        self.state("starting");
        let config = match task_vm_config(&profile, image.image, self.ctx.accel) {
            Ok(c) => c,
            Err(e) => return format!("error: {e}"),
        };
        let started = Instant::now();
        let (vm, channel) = match self.ctx.pool.take(&config) {
            Some(warm) => {
                self.detail(
                    "vm",
                    format!(
                        "warm: {} ahead in {} ms, never used, waited {} ms",
                        warm.vm.origin(),
                        warm.vm.boot_time().as_millis(),
                        warm.idle.as_millis()
                    ),
                );
                (warm.vm, Ok(warm.channel))
            }
            None => {
                let mut vm = match self.ctx.backend.start(&config) {
                    Ok(vm) => vm,
                    Err(e) => return format!("error: the VM did not start: {}", chain(&e)),
                };
                self.detail(
                    "vm",
                    format!(
                        "{} for this task in {} ms",
                        vm.origin(),
                        vm.boot_time().as_millis()
                    ),
                );
                let channel = vm.take_channel();
                (vm, channel)
            }
        };
        self.timing("vm-ready");
        self.detail("boot-ms", vm.boot_time().as_millis().to_string());
        self.control.hold(vm);
        let mut channel = match channel {
            Ok(c) => c,
            Err(e) => {
                self.teardown(None);
                return format!("error: {}", chain(&e));
            }
        };
        if self.control.cancelled() {
            self.teardown(None);
            return "cancelled".to_owned();
        }
        let identity_deadline = Instant::now() + IDENTITY_WAIT;
        match task::give_identity(&mut channel, self.id, identity_deadline) {
            Ok(applied) => {
                let host_ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let skew_ms = (i128::from(applied.clock_unix_ns)
                    - i128::try_from(host_ns).unwrap_or(0))
                    / 1_000_000;
                self.detail(
                    "identity",
                    format!(
                        "fresh seed applied; first random bytes hash {}; guest clock {skew_ms:+} ms from the host's",
                        hex(&applied.random_digest)
                    ),
                );
                self.timing("identity");
            }
            Err(e) => {
                self.teardown(Some(channel));
                return format!(
                    "error: the VM did not take its fresh identity: {}",
                    chain(&e)
                );
            }
        }
        self.state("running");
        let want_viewer =
            options.viewer.unwrap_or(options.safe_copy.is_none()) && options.png_dir.is_none();
        if let (true, Some(bin)) = (want_viewer, &self.ctx.viewer) {
            match ViewerLink::spawn(bin, &name) {
                Ok(mut link) => {
                    let _ = link.send_status("rendering…");
                    *viewer = Some(link);
                }
                Err(e) => log::warn!("task {}: no viewer window: {}", self.id, chain(&e)),
            }
        }
        let limit = Duration::from_millis(input.limits.time_limit_ms.into()) + DONE_MARGIN;
        let deadline = (Instant::now() + limit).min(started + profile.time_limit);
        // A link in a window stays a live tab after its first frame.
        input.live = viewer.is_some()
            && matches!(input.kind, vitrine_shim::protocol::TaskKind::OpenUri { .. });
        let mut observer = Streamer {
            egress: EgressTunnel::new(&profile.name, profile.egress.clone()),
            worker: self,
            viewer: viewer.as_mut(),
            pixels: ring::digest::Context::new(&ring::digest::SHA256),
            pixel_bytes: 0,
            first_frame: false,
            shown_noted: false,
            live: false,
            closed: false,
        };
        let mut result = run_task_observed(&mut channel, 1, &input, deadline, &mut observer);
        if let (Ok(run), true) = (&result, input.live) {
            if matches!(run.status, Some(vitrine_shim::protocol::TaskStatus::Ok)) {
                observer.worker.state("live");
                observer.live = true;
                if let Err(e) = serve_live(&mut channel, &input, deadline, &mut observer) {
                    result = Err(e);
                }
            }
        }
        // The next task of this shape finds a VM ready: booted now, on the
        // pool's own thread, once this one no longer needs the CPU to render.
        self.ctx.pool.refill(&config);
        observer.await_first_shown(FIRST_SHOWN_WAIT);
        let (pixels, pixel_bytes) = (observer.pixels.finish(), observer.pixel_bytes);
        self.receipt.outputs.push(ReceiptOutput {
            what: "pixels".into(),
            sha256: hex(pixels.as_ref()),
            bytes: pixel_bytes,
        });
        if self.control.cancelled() {
            self.teardown(Some(channel));
            return "cancelled".to_owned();
        }
        let verdict = match result {
            Err(e) => {
                self.teardown(Some(channel));
                return error_verdict(&e, &profile);
            }
            Ok(run) => self.after_done(&mut channel, &run, &profile, options, deadline, &input),
        };
        self.teardown(Some(channel));
        verdict
    }

    /// The task reached `Done`: exports, then pages on disk if asked.
    fn after_done(
        &mut self,
        channel: &mut GuestChannel,
        run: &TaskRun,
        profile: &Profile,
        options: &TaskOptions,
        deadline: Instant,
        input: &TaskInput,
    ) -> String {
        self.timing("done");
        if let Some(count) = run.page_count {
            self.detail("pages", count.to_string());
        }
        if let Some(first) = run.times.first_frame {
            self.detail("first-frame-ms", first.as_millis().to_string());
        }
        if let Some(t) = run.transfer_in() {
            self.detail("transfer-ms", t.as_millis().to_string());
        }
        let mut verdict = match &run.status {
            Some(vitrine_shim::protocol::TaskStatus::TimedOut) => time_limit_verdict(profile),
            _ => verdict::of_run(run, &input.limits),
        };
        if let Some((code, signal)) = run.program_exit {
            self.detail("program-exit", format!("code {code:?}, signal {signal:?}"));
        }
        if let Some(cut) = run.pages_cut {
            self.detail("pages-cut", verdict::cut_words(cut, &input.limits));
        }
        if let Some(office) = run.office {
            self.detail("office", verdict::office_words(office));
        }
        if !run.exports.is_empty() {
            let written = self.exports(
                channel,
                &run.exports,
                profile,
                options,
                (deadline, input.limits),
            );
            if written > 0 && verdict == "clean" {
                verdict = format!("clean, {written} export(s) written");
            }
        }
        if let Some(copy) = &options.safe_copy {
            if verdict.starts_with("clean") {
                if let Err(why) = self.save_safe_copy(run, copy, profile, &input.kind) {
                    verdict = format!("error: safe copy: {why}");
                }
            } else {
                self.detail("safe-copy", "not written: the task did not end clean");
            }
        }
        // A task that drew nothing leaves no (empty) folder behind.
        if let (Some(_), true) = (&options.png_dir, run.pages.is_empty()) {
            self.detail("png-pages", "0");
        } else if let Some(dir) = &options.png_dir {
            let made = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir);
            if let Err(e) = made {
                return format!("error: creating {}: {e}", dir.display());
            }
            match pages::write_pages(&run.pages, dir) {
                Ok(files) => {
                    self.detail("png-dir", dir.to_string_lossy());
                    self.detail("png-pages", files.len().to_string());
                }
                Err(e) => return format!("error: writing pages: {}", chain(&e)),
            }
        }
        verdict
    }

    /// Ends the VM: `Shutdown`, a short wait, then kill; nothing is kept.
    fn teardown(&self, channel: Option<GuestChannel>) {
        if let Some(mut channel) = channel {
            if !self.control.cancelled() {
                let _ = channel.send(&HostMessage::Shutdown);
            }
        }
        if let Some(mut vm) = self.control.release() {
            let wait = if self.control.cancelled() {
                Duration::ZERO
            } else {
                SHUTDOWN_WAIT
            };
            if let Err(e) = vm.wait_or_kill(wait) {
                log::warn!("task {}: {}", self.id, chain(&e));
            }
        }
        self.timing("vm-gone");
    }

    /// Signs the receipt, reports the verdict, then keeps the window open
    /// until the user closes it or the task is cancelled.
    fn finish(mut self, verdict: String, mut viewer: Option<ViewerLink>) {
        self.receipt.verdict = verdict.clone();
        self.receipt.finished = vitrine_policy::audit::rfc3339_now();
        match self.ctx.dirs.task_record(self.id) {
            Ok(dir) => match self.ctx.signer.write(&dir, self.receipt.clone()) {
                Ok(path) => self.detail("receipt", path.to_string_lossy()),
                Err(e) => log::warn!("task {}: receipt: {}", self.id, chain(&e)),
            },
            Err(e) => log::warn!("task {}: record: {}", self.id, chain(&e)),
        }
        if let Some(link) = viewer.as_mut() {
            let _ = link.send_status(&format!("finished: {verdict}"));
            // Before the verdict, so a caller that reads it sees the window.
            self.detail("window", "open");
        }
        // Sets the verdict and the `finished` state together.
        self.emit(TaskEvent::Finished(verdict));
        let Some(mut link) = viewer else { return };
        loop {
            if link.closed() || self.control.cancelled() {
                break;
            }
            if link.take_safe_copy_request() {
                self.hand_off_safe_copy(&mut link);
            }
            match self.commands.recv_timeout(VIEWER_POLL) {
                Ok(WorkerCommand::Cancel) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(WorkerCommand::Approve { reply, .. }) => {
                    let _ = reply.send(Err("the task has finished".into()));
                }
                Ok(WorkerCommand::Deny { reply, .. }) => {
                    let _ = reply.send(Err("the task has finished".into()));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        drop(link);
        self.detail("window", "closed");
    }
}

/// How long a finished task waits for the viewer's acknowledgement of its
/// first frame (a paint takes milliseconds).
const FIRST_SHOWN_WAIT: Duration = Duration::from_secs(1);

impl Streamer<'_, '_> {
    /// After the run: gives the viewer up to `limit` to acknowledge the
    /// first frame, if one was sent and not yet acknowledged.
    fn await_first_shown(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.first_frame && !self.shown_noted && self.viewer.is_some() {
            self.note_first_shown();
            if self.shown_noted || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Records when the viewer first reported a frame on screen (its paint
    /// acknowledgement), once.
    fn note_first_shown(&mut self) {
        if self.shown_noted {
            return;
        }
        if let Some(at) = self.viewer.as_deref().and_then(ViewerLink::first_presented) {
            self.worker.timing_at("first-frame-shown", at);
            self.shown_noted = true;
        }
    }
}

/// Streams each checked frame to the viewer as it arrives, hashes the pixel
/// stream for the receipt, and carries the viewer's input back.
struct Streamer<'w, 'c> {
    worker: &'w Worker<'c>,
    viewer: Option<&'w mut ViewerLink>,
    pixels: ring::digest::Context,
    pixel_bytes: u64,
    first_frame: bool,
    /// "first-frame-shown" was recorded.
    shown_noted: bool,
    /// Past `Done` of a live page: a closed window ends it, not cancels it.
    live: bool,
    /// The user closed the window of a live page.
    closed: bool,
    /// The guest's only network.
    egress: EgressTunnel,
}

impl TaskObserver for Streamer<'_, '_> {
    fn frame(&mut self, frame: &Frame) {
        self.pixels.update(&frame.pixels);
        self.pixel_bytes += u64::try_from(frame.pixels.len()).unwrap_or(u64::MAX);
        if !self.first_frame {
            self.worker.timing("first-frame");
        }
        if let Some(link) = self.viewer.as_deref_mut() {
            if let Err(e) = link.send_frame(frame) {
                log::warn!("task {}: viewer: {}", self.worker.id, chain(&e));
                self.viewer = None;
            } else if !self.first_frame {
                self.worker.timing("first-frame-sent");
            }
            self.note_first_shown();
        }
        self.first_frame = true;
    }

    fn page_count(&mut self, count: u32) {
        self.worker.detail("pages", count.to_string());
    }

    fn location(&mut self, url: &str, title: &str) {
        self.worker.detail("location", url);
        if !title.is_empty() {
            self.worker.detail("title", title);
        }
        if let Some(link) = self.viewer.as_deref_mut() {
            let _ = link.send_title(url);
        }
    }

    fn live_over(&mut self) -> bool {
        self.closed || self.viewer.is_none() || self.worker.control.cancelled()
    }

    fn input(&mut self) -> Vec<InputEvent> {
        let Some(link) = self.viewer.as_deref_mut() else {
            return Vec::new();
        };
        if link.closed() {
            if self.live {
                // The user is done with the page: the task ends as it was.
                self.closed = true;
            } else {
                // The user closed the window: the task is not wanted any more.
                self.worker.control.cancel_from_worker();
            }
            return Vec::new();
        }
        link.poll_input()
    }

    fn egress(&mut self, msg: &GuestMessage, deadline: Instant) -> Option<HostMessage> {
        let control = &self.worker.control;
        let before = self.egress.records().len();
        let reply = self.egress.handle(msg, deadline, &|| control.cancelled());
        if self.egress.records().len() != before {
            let list: Vec<String> = self
                .egress
                .records()
                .iter()
                .map(|r| format!("{} {}", r.target, r.outcome))
                .collect();
            self.worker.detail("connections", list.join("; "));
        }
        reply
    }
}

/// Turns a file task into a safe-copy task: print-size pages, and OCR when
/// asked, under a profile whose export rules let a PDF out.
fn for_safe_copy(
    prepared: &mut Prepared,
    copy: &SafeCopyRequest,
) -> Result<(), safe_copy::SafeCopyError> {
    if !matches!(
        prepared.input.kind,
        vitrine_shim::protocol::TaskKind::OpenFile { .. }
    ) {
        return Err(safe_copy::SafeCopyError::NotAFile);
    }
    safe_copy::allowed(&prepared.profile.name, &prepared.profile.export)?;
    prepared.input.safe_copy = Some(safe_copy::protocol(copy, &prepared.profile.export));
    prepared.input.limits = safe_copy::print_limits(prepared.input.limits);
    Ok(())
}

/// The verdict of a task that ended before `Done`.
fn error_verdict(e: &TaskError, profile: &Profile) -> String {
    match e {
        TaskError::TimeLimit { .. } => time_limit_verdict(profile),
        other => format!("error: {}", chain(other)),
    }
}

/// The verdict of a task stopped by its profile's time limit.
fn time_limit_verdict(profile: &Profile) -> String {
    format!(
        "timed-out: time limit of {} reached",
        vitrine_policy::profile::format_duration(profile.time_limit)
    )
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Hashes the image's kernel and initramfs (once, at daemon start).
pub fn image_info(image: GuestImage) -> Result<ImageInfo, String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // The application disk is part of what the guest runs.
    for path in [&image.kernel, &image.initrd]
        .into_iter()
        .chain(image.app_disk.as_ref())
    {
        let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
    }
    Ok(ImageInfo {
        image,
        sha256: hex(ctx.finish().as_ref()),
    })
}

#[cfg(test)]
mod tests;
