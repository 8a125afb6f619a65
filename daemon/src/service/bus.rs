//! The D-Bus face of `vitrined`: `org.vitrine.Sandbox1` at
//! `/org/vitrine/Sandbox1`, and one `org.vitrine.Sandbox1.Task` object per
//! task at `/org/vitrine/Sandbox1/task/N`.
//!
//! Handlers never block the runtime: a call takes the passed descriptor,
//! starts the task's worker thread and returns its object path at once. The
//! worker's events come back over a channel to one pump task, which keeps
//! the registry, sets the properties (emitting PropertiesChanged) and sends
//! the signals.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedFd, OwnedObjectPath, OwnedValue, Value};
use zbus::{fdo, interface, Connection};

use super::call_signature::SignatureChecked;
use super::guard_link::{self, Intercepted};
use super::safe_copy::{Ocr, SafeCopyRequest};
use super::worker::{
    self, Payload, SafeCopyHandOff, TaskControl, TaskEvent, TaskOptions, TaskRequest,
    WorkerCommand, WorkerContext,
};
use crate::guard::wire::DenyKind;

/// The well-known bus name.
pub const BUS_NAME: &str = "org.vitrine.Sandbox1";
/// The manager object's path.
pub const MANAGER_PATH: &str = "/org/vitrine/Sandbox1";
/// The manager's interface.
pub const MANAGER_INTERFACE: &str = "org.vitrine.Sandbox1";
/// A task object's interface.
pub const TASK_INTERFACE: &str = "org.vitrine.Sandbox1.Task";
/// The manager's methods and their argument signatures: a call with other
/// arguments is answered `org.freedesktop.DBus.Error.InvalidArgs`.
const MANAGER_SIGNATURES: &[(&str, &str)] = &[
    ("OpenFile", "hsa{sv}"),
    ("SaveSafeCopy", "hsa{sv}"),
    ("OpenUri", "sa{sv}"),
    ("RunProgram", "hasa{sv}"),
    ("ListTasks", ""),
    ("ListExports", ""),
    ("ApproveExport", "os"),
    ("DenyExport", "os"),
];
/// A task object's methods and their argument signatures.
const TASK_SIGNATURES: &[(&str, &str)] = &[("Cancel", "")];
/// Finished tasks kept listed before the oldest are dropped.
const MAX_FINISHED_KEPT: usize = 256;

/// The D-Bus service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Connecting, naming or serving failed.
    #[error("D-Bus")]
    Bus(#[from] zbus::Error),
}

/// The object path of task `id`.
pub fn task_path(id: u64) -> OwnedObjectPath {
    // Digits only: always a valid path.
    OwnedObjectPath::try_from(format!("{MANAGER_PATH}/task/{id}"))
        .unwrap_or_else(|_| OwnedObjectPath::from(ObjectPath::from_static_str_unchecked("/")))
}

/// One export as the registry holds it.
#[derive(Debug, Clone)]
struct ExportEntry {
    name: String,
    size: u64,
    sha256: String,
    status: String,
}

/// One task as the registry holds it.
#[derive(Debug)]
struct TaskEntry {
    kind: &'static str,
    name: String,
    state: String,
    verdict: String,
    details: BTreeMap<String, String>,
    timings: BTreeMap<String, u64>,
    exports: Vec<ExportEntry>,
    control: Arc<TaskControl>,
    commands: Sender<WorkerCommand>,
}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    tasks: BTreeMap<u64, TaskEntry>,
}

type Shared = Arc<Mutex<Registry>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Registry> {
    // A panic while holding the lock leaves plain data; keep serving.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `org.vitrine.Sandbox1`.
#[derive(Debug)]
pub struct Manager {
    shared: Shared,
    ctx: Arc<WorkerContext>,
    events: worker::EventSink,
    connection: Connection,
}

/// `org.vitrine.Sandbox1.Task`.
#[derive(Debug)]
pub struct TaskObject {
    id: u64,
    shared: Shared,
}

fn options(map: &HashMap<String, OwnedValue>) -> fdo::Result<TaskOptions> {
    let mut out = TaskOptions::default();
    for (key, value) in map {
        let bad = || fdo::Error::InvalidArgs(format!("option {key:?} has the wrong type"));
        match (key.as_str(), &**value) {
            ("png-dir", Value::Str(s)) => out.png_dir = Some(absolute(key, s.as_str())?),
            ("export-dir", Value::Str(s)) => out.export_dir = Some(absolute(key, s.as_str())?),
            ("viewer", Value::Bool(b)) => out.viewer = Some(*b),
            ("png-dir" | "export-dir" | "viewer", _) => return Err(bad()),
            ("ocr" | "out-dir", _) => {
                return Err(fdo::Error::InvalidArgs(format!(
                    "option {key:?} is for SaveSafeCopy only"
                )))
            }
            _ => return Err(fdo::Error::InvalidArgs(format!("unknown option {key:?}"))),
        }
    }
    Ok(out)
}

/// `SaveSafeCopy`'s options: the common ones, plus `ocr` (a language
/// such as `eng`, `true` for `eng`, `false` for none; left out, the
/// profile's `export.ocr` decides) and `out-dir`.
fn safe_copy_options(map: &HashMap<String, OwnedValue>) -> fdo::Result<TaskOptions> {
    let mut copy = SafeCopyRequest::default();
    let mut rest = HashMap::new();
    for (key, value) in map {
        let bad = || fdo::Error::InvalidArgs(format!("option {key:?} has the wrong type"));
        match (key.as_str(), &**value) {
            ("ocr", Value::Bool(true)) => {
                copy.ocr = Ocr::Language(DEFAULT_OCR_LANGUAGE.to_owned());
            }
            ("ocr", Value::Bool(false)) => copy.ocr = Ocr::Off,
            ("ocr", Value::Str(s)) => {
                let lang = if s.is_empty() {
                    DEFAULT_OCR_LANGUAGE
                } else {
                    s.as_str()
                };
                let checked = vitrine_shim::protocol::SafeCopy {
                    ocr: Some(lang.to_owned()),
                };
                checked.validate().map_err(|_| {
                    fdo::Error::InvalidArgs(format!(
                        "OCR language {lang:?} is not a tesseract language list such as \
                         `eng` or `eng+deu`"
                    ))
                })?;
                copy.ocr = Ocr::Language(lang.to_owned());
            }
            ("out-dir", Value::Str(s)) => copy.out_dir = Some(absolute(key, s.as_str())?),
            ("ocr" | "out-dir", _) => return Err(bad()),
            _ => {
                rest.insert(key.clone(), value.try_clone().map_err(|_| bad())?);
            }
        }
    }
    let mut out = options(&rest)?;
    out.safe_copy = Some(copy);
    Ok(out)
}

/// The OCR language of `ocr = true`.
pub const DEFAULT_OCR_LANGUAGE: &str = "eng";

fn absolute(key: &str, path: &str) -> fdo::Result<PathBuf> {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(fdo::Error::InvalidArgs(format!(
            "option {key:?} must be an absolute path"
        )))
    }
}

impl Manager {
    /// Starts task `payload` on its own thread and publishes its object.
    async fn start(
        &self,
        payload: Payload,
        name: String,
        options: TaskOptions,
    ) -> fdo::Result<OwnedObjectPath> {
        let called = Instant::now();
        let control = Arc::new(TaskControl::default());
        let (commands, commands_rx) = std::sync::mpsc::channel();
        let id = {
            let mut reg = lock(&self.shared);
            let id = reg.next;
            reg.next += 1;
            reg.tasks.insert(
                id,
                TaskEntry {
                    kind: options.kind_of(&payload),
                    name,
                    state: "queued".into(),
                    verdict: String::new(),
                    details: BTreeMap::new(),
                    timings: BTreeMap::new(),
                    exports: Vec::new(),
                    control: control.clone(),
                    commands,
                },
            );
            id
        };
        let path = task_path(id);
        self.connection
            .object_server()
            .at(
                &path,
                SignatureChecked::new(
                    TaskObject {
                        id,
                        shared: self.shared.clone(),
                    },
                    TASK_SIGNATURES,
                ),
            )
            .await
            .map_err(|e| fdo::Error::Failed(format!("cannot publish the task object: {e}")))?;
        let request = TaskRequest {
            id,
            payload,
            options,
            called,
        };
        let ctx = self.ctx.clone();
        let events = self.events.clone();
        std::thread::Builder::new()
            .name(format!("task-{id}"))
            .spawn(move || worker::run(&ctx, request, control, commands_rx, events))
            .map_err(|e| fdo::Error::Failed(format!("cannot start the task thread: {e}")))?;
        self.prune().await;
        Ok(path)
    }

    /// Starts a task on the file behind `fd`, refused past the input cap.
    async fn start_file(
        &self,
        fd: OwnedFd,
        name: String,
        options: TaskOptions,
    ) -> fdo::Result<OwnedObjectPath> {
        let file = File::from(std::os::fd::OwnedFd::from(fd));
        file_size_checked(&file)?;
        self.start(
            Payload::File {
                file,
                name: name.clone(),
            },
            name,
            options,
        )
        .await
    }

    /// Drops the oldest finished tasks past the limit.
    async fn prune(&self) {
        let gone: Vec<u64> = {
            let mut reg = lock(&self.shared);
            let finished: Vec<u64> = reg
                .tasks
                .iter()
                .filter(|(_, t)| t.state == "finished")
                .map(|(id, _)| *id)
                .collect();
            let excess = finished.len().saturating_sub(MAX_FINISHED_KEPT);
            let gone: Vec<u64> = finished.into_iter().take(excess).collect();
            for id in &gone {
                reg.tasks.remove(id);
            }
            gone
        };
        for id in gone {
            let _ = self
                .connection
                .object_server()
                .remove::<SignatureChecked<TaskObject>, _>(task_path(id))
                .await;
        }
    }

    fn entry_of(&self, task: &ObjectPath<'_>) -> fdo::Result<u64> {
        let id = task_id(task.as_str())
            .ok_or_else(|| fdo::Error::InvalidArgs(format!("{task} is not a task")))?;
        if lock(&self.shared).tasks.contains_key(&id) {
            Ok(id)
        } else {
            Err(fdo::Error::UnknownObject(format!("no task {task}")))
        }
    }

    fn pending_export(&self, id: u64, name: &str) -> fdo::Result<Sender<WorkerCommand>> {
        let reg = lock(&self.shared);
        let task = reg
            .tasks
            .get(&id)
            .ok_or_else(|| fdo::Error::UnknownObject(format!("no task {id}")))?;
        match task.exports.iter().find(|e| e.name == name) {
            Some(e) if e.status == "pending" => Ok(task.commands.clone()),
            Some(e) => Err(fdo::Error::Failed(format!(
                "export {name:?} is not pending: {}",
                e.status
            ))),
            None => Err(fdo::Error::Failed(format!("task has no export {name:?}"))),
        }
    }
}

#[interface(name = "org.vitrine.Sandbox1")]
impl Manager {
    /// Opens the file behind `fd` (read here, never by path) safely.
    async fn open_file(
        &self,
        fd: OwnedFd,
        name: String,
        options: HashMap<String, OwnedValue>,
    ) -> fdo::Result<OwnedObjectPath> {
        let options = options_checked(&options)?;
        self.start_file(fd, name, options).await
    }

    /// Renders the file behind `fd` in a VM and rebuilds it on the host as
    /// a PDF of its page pixels (with OCR text when asked): the task's
    /// `safe-copy` detail is the written file.
    async fn save_safe_copy(
        &self,
        fd: OwnedFd,
        name: String,
        options: HashMap<String, OwnedValue>,
    ) -> fdo::Result<OwnedObjectPath> {
        let options = safe_copy_options(&options)?;
        self.start_file(fd, name, options).await
    }

    /// Opens a link safely.
    async fn open_uri(
        &self,
        uri: String,
        options: HashMap<String, OwnedValue>,
    ) -> fdo::Result<OwnedObjectPath> {
        let options = options_checked(&options)?;
        within_cap("the link", uri.len(), vitrine_shim::protocol::MAX_URI_BYTES)?;
        self.start(Payload::Uri(uri.clone()), uri, options).await
    }

    /// Runs the program behind `fd` on a terminal in a VM.
    async fn run_program(
        &self,
        fd: OwnedFd,
        args: Vec<String>,
        options: HashMap<String, OwnedValue>,
    ) -> fdo::Result<OwnedObjectPath> {
        let options = options_checked(&options)?;
        program_args_checked(&args)?;
        let file = File::from(std::os::fd::OwnedFd::from(fd));
        file_size_checked(&file)?;
        let name = String::from("program");
        self.start(
            Payload::Program {
                file,
                args,
                name: name.clone(),
            },
            name,
            options,
        )
        .await
    }

    /// Every task: path, kind, name, state, verdict.
    async fn list_tasks(&self) -> Vec<(OwnedObjectPath, String, String, String, String)> {
        lock(&self.shared)
            .tasks
            .iter()
            .map(|(id, t)| {
                (
                    task_path(*id),
                    t.kind.to_owned(),
                    t.name.clone(),
                    t.state.clone(),
                    t.verdict.clone(),
                )
            })
            .collect()
    }

    /// Every export offer: task, name, size, sha256, status.
    async fn list_exports(&self) -> Vec<(OwnedObjectPath, String, u64, String, String)> {
        let reg = lock(&self.shared);
        reg.tasks
            .iter()
            .flat_map(|(id, t)| {
                t.exports.iter().map(move |e| {
                    (
                        task_path(*id),
                        e.name.clone(),
                        e.size,
                        e.sha256.clone(),
                        e.status.clone(),
                    )
                })
            })
            .collect()
    }

    /// Writes the pending export `name` of `task`; returns where.
    async fn approve_export(&self, task: ObjectPath<'_>, name: String) -> fdo::Result<String> {
        let id = self.entry_of(&task)?;
        let commands = self.pending_export(id, &name)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        commands
            .send(WorkerCommand::Approve { name, reply })
            .map_err(|_| fdo::Error::Failed("the task has ended".into()))?;
        match answer.await {
            Ok(Ok(path)) => Ok(path.to_string_lossy().into_owned()),
            Ok(Err(why)) => Err(fdo::Error::Failed(why)),
            Err(_) => Err(fdo::Error::Failed("the task ended before writing".into())),
        }
    }

    /// Refuses the pending export `name` of `task`.
    async fn deny_export(&self, task: ObjectPath<'_>, name: String) -> fdo::Result<()> {
        let id = self.entry_of(&task)?;
        let commands = self.pending_export(id, &name)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        commands
            .send(WorkerCommand::Deny { name, reply })
            .map_err(|_| fdo::Error::Failed("the task has ended".into()))?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(fdo::Error::Failed(why)),
            Err(_) => Err(fdo::Error::Failed("the task ended first".into())),
        }
    }

    /// The public key (hex) that verifies this daemon's receipts.
    #[zbus(property)]
    async fn receipt_public_key(&self) -> String {
        self.ctx.signer.public_key_hex()
    }

    /// A task ended.
    #[zbus(signal)]
    pub async fn task_finished(
        emitter: &SignalEmitter<'_>,
        task: ObjectPath<'_>,
        verdict: &str,
    ) -> zbus::Result<()>;

    /// A task offers a file that the policy lets the user approve.
    #[zbus(signal)]
    pub async fn export_requested(
        emitter: &SignalEmitter<'_>,
        task: ObjectPath<'_>,
        name: &str,
        size: u64,
        sha256: &str,
    ) -> zbus::Result<()>;
}

fn options_checked(map: &HashMap<String, OwnedValue>) -> fdo::Result<TaskOptions> {
    options(map)
}

/// Refuses, before any task or VM, input that the guest protocol could not
/// carry (its caps in `vitrine_shim::protocol`).
fn within_cap(what: &str, len: usize, cap: usize) -> fdo::Result<()> {
    if len > cap {
        return Err(fdo::Error::InvalidArgs(format!(
            "{what} is {len} bytes, more than the {cap} a task may carry; nothing was started"
        )));
    }
    Ok(())
}

fn program_args_checked(args: &[String]) -> fdo::Result<()> {
    use vitrine_shim::protocol::{MAX_ARGS, MAX_ARG_BYTES};
    if args.len() > MAX_ARGS {
        return Err(fdo::Error::InvalidArgs(format!(
            "{} arguments, more than the {MAX_ARGS} a program may get; nothing was started",
            args.len()
        )));
    }
    for (i, arg) in args.iter().enumerate() {
        within_cap(&format!("argument {}", i + 1), arg.len(), MAX_ARG_BYTES)?;
    }
    Ok(())
}

/// The passed file's size, refused past the protocol's input cap.
fn file_size_checked(file: &File) -> fdo::Result<()> {
    use vitrine_shim::protocol::MAX_TASK_INPUT;
    let size = file
        .metadata()
        .map_err(|e| fdo::Error::InvalidArgs(format!("cannot read the passed file: {e}")))?
        .len();
    if size > MAX_TASK_INPUT {
        return Err(fdo::Error::InvalidArgs(format!(
            "the file is {size} bytes, more than the {MAX_TASK_INPUT} a task may carry; \
             nothing was started"
        )));
    }
    Ok(())
}

#[interface(name = "org.vitrine.Sandbox1.Task")]
impl TaskObject {
    /// Stops the task: its VM is killed, its window closed.
    async fn cancel(&self) -> fdo::Result<()> {
        let (control, commands) = {
            let reg = lock(&self.shared);
            let t = reg
                .tasks
                .get(&self.id)
                .ok_or_else(|| fdo::Error::UnknownObject("task is gone".into()))?;
            (t.control.clone(), t.commands.clone())
        };
        // Killing a process can take a moment: off the runtime.
        tokio::task::spawn_blocking(move || control.cancel(&commands))
            .await
            .map_err(|e| fdo::Error::Failed(format!("cancel: {e}")))
    }

    /// `queued`, `deciding`, `starting`, `running`, `exporting`, `finished`.
    #[zbus(property)]
    async fn state(&self) -> String {
        self.field(|t| t.state.clone())
    }

    /// Empty until the task finishes; then `clean`, `denied: …`, `host: …`,
    /// `failed: …`, `timed-out`, `cancelled` or `error: …`.
    #[zbus(property)]
    async fn verdict(&self) -> String {
        self.field(|t| t.verdict.clone())
    }

    /// `open-file`, `open-uri` or `run-program`.
    #[zbus(property)]
    async fn kind(&self) -> String {
        self.field(|t| t.kind.to_owned())
    }

    /// Facts for display: type, origin, decision, profile, pages, receipt...
    #[zbus(property)]
    async fn details(&self) -> HashMap<String, String> {
        self.field(|t| t.details.clone().into_iter().collect())
    }

    /// Microseconds from the call to each step.
    #[zbus(property)]
    async fn timings(&self) -> HashMap<String, u64> {
        self.field(|t| t.timings.clone().into_iter().collect())
    }
}

impl TaskObject {
    fn field<T: Default>(&self, f: impl FnOnce(&TaskEntry) -> T) -> T {
        lock(&self.shared)
            .tasks
            .get(&self.id)
            .map(f)
            .unwrap_or_default()
    }
}

/// Serves the manager on `connection` and pumps worker events until the
/// connection ends.
/// Serves until `stop` completes or the bus goes away, then cancels every
/// task still running, so that their VMs end before the daemon does.
///
/// With `guard`, the programs that `vitrine-guard` denies this user (see
/// [`super::guard_link`]) run as `RunProgram` tasks too.
pub async fn serve(
    connection: Connection,
    ctx: Arc<WorkerContext>,
    first_id: u64,
    guard: Option<PathBuf>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), BusError> {
    let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared: Shared = Arc::new(Mutex::new(Registry {
        next: first_id,
        tasks: BTreeMap::new(),
    }));
    if let Some(socket) = guard {
        let launcher = Manager {
            shared: shared.clone(),
            ctx: ctx.clone(),
            events: events.clone(),
            connection: connection.clone(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(guard_link::follow(socket, tx));
        tokio::spawn(run_intercepted(launcher, rx));
    }
    let launcher = Manager {
        shared: shared.clone(),
        ctx: ctx.clone(),
        events: events.clone(),
        connection: connection.clone(),
    };
    let manager = Manager {
        shared: shared.clone(),
        ctx,
        events,
        connection: connection.clone(),
    };
    connection
        .object_server()
        .at(
            MANAGER_PATH,
            SignatureChecked::new(manager, MANAGER_SIGNATURES),
        )
        .await?;
    connection.request_name(BUS_NAME).await?;
    let manager_emitter = SignalEmitter::new(&connection, MANAGER_PATH)?;
    let bus = fdo::DBusProxy::new(&connection).await?;
    let mut ping = tokio::time::interval(BUS_PING);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            event = events_rx.recv() => {
                let Some((id, event)) = event else { break };
                if let TaskEvent::SafeCopyAsked(hand_off) = event {
                    start_asked_safe_copy(&launcher, id, hand_off).await;
                    continue;
                }
                if let Err(e) = apply(&connection, &shared, &manager_emitter, id, event).await {
                    log::warn!("task {id}: cannot publish an event: {e}");
                }
            }
            _ = ping.tick() => {
                // The bus went away (the session ended): so does the daemon.
                if bus.get_id().await.is_err() {
                    eprintln!("vitrined: the bus went away; exiting");
                    break;
                }
            }
            () = &mut stop => break,
        }
    }
    // Callers learn at once that the daemon is going (its name has no
    // owner), not only once its VMs are killed and their files removed.
    let _ = connection.release_name(BUS_NAME).await;
    let cancelled = tokio::task::spawn_blocking(move || cancel_running(&shared))
        .await
        .unwrap_or(0);
    if cancelled > 0 {
        eprintln!("vitrined: cancelled {cancelled} running task(s); their VMs are gone");
    }
    Ok(())
}

/// Cancels every task that has not finished (killing its VM); returns how
/// many there were. Blocks while the VMs are killed.
fn cancel_running(shared: &Shared) -> usize {
    let running: Vec<_> = lock(shared)
        .tasks
        .values()
        .filter(|t| t.state != "finished")
        .map(|t| (t.control.clone(), t.commands.clone()))
        .collect();
    for (control, commands) in &running {
        control.cancel(commands);
    }
    running.len()
}

/// How often the daemon checks that its bus is still there.
const BUS_PING: std::time::Duration = std::time::Duration::from_secs(2);

async fn apply(
    connection: &Connection,
    shared: &Shared,
    manager: &SignalEmitter<'_>,
    id: u64,
    event: TaskEvent,
) -> zbus::Result<()> {
    let path = task_path(id);
    let iface = connection
        .object_server()
        .interface::<_, SignatureChecked<TaskObject>>(&path)
        .await?;
    let emitter = iface.signal_emitter();
    match event {
        TaskEvent::State(s) => {
            set(shared, id, |t| t.state = s.to_owned());
            iface.get().await.inner().state_changed(emitter).await?;
        }
        TaskEvent::Detail(key, value) => {
            set(shared, id, |t| {
                t.details.insert(key.to_owned(), value);
            });
            iface.get().await.inner().details_changed(emitter).await?;
        }
        TaskEvent::Timing(key, us) => {
            set(shared, id, |t| {
                t.timings.insert(key.to_owned(), us);
            });
            iface.get().await.inner().timings_changed(emitter).await?;
        }
        TaskEvent::Export {
            name,
            size,
            sha256,
            status,
        } => {
            let pending = status == "pending";
            set(shared, id, |t| {
                match t.exports.iter_mut().find(|e| e.name == name) {
                    Some(e) => e.status = status,
                    None => t.exports.push(ExportEntry {
                        name: name.clone(),
                        size,
                        sha256: sha256.clone(),
                        status,
                    }),
                }
            });
            if pending {
                Manager::export_requested(manager, path.as_ref(), &name, size, &sha256).await?;
            }
        }
        TaskEvent::SafeCopyAsked(_) => {}
        TaskEvent::Finished(verdict) => {
            let copy = lock(shared).tasks.get(&id).and_then(|t| {
                (t.kind == "safe-copy").then(|| {
                    let saved = t.details.get("safe-copy").cloned().unwrap_or_default();
                    (t.name.clone(), saved)
                })
            });
            if let Some((name, saved)) = copy {
                notify_safe_copy(connection, &name, &saved, &verdict);
            }
            set(shared, id, |t| {
                t.verdict = verdict.clone();
                t.state = "finished".to_owned();
            });
            iface.get().await.inner().verdict_changed(emitter).await?;
            iface.get().await.inner().state_changed(emitter).await?;
            Manager::task_finished(manager, path.as_ref(), &verdict).await?;
        }
    }
    Ok(())
}

fn set(shared: &Shared, id: u64, f: impl FnOnce(&mut TaskEntry)) {
    if let Some(t) = lock(shared).tasks.get_mut(&id) {
        f(t);
    }
}

/// Runs each program the exec guard denied as a `RunProgram` task in a VM
/// (its terminal viewer opens as for `vitrine run`), and tells the user
/// with a desktop notification.
async fn run_intercepted(launcher: Manager, mut rx: tokio::sync::mpsc::Receiver<Intercepted>) {
    while let Some(Intercepted { file, denied }) = rx.recv().await {
        let mut args = denied.args.clone().unwrap_or_default();
        if let Err(e) = program_args_checked(&args) {
            eprintln!("vitrined: {}: its arguments are dropped: {e}", denied.path);
            args.clear();
        }
        if let Err(e) = file_size_checked(&file) {
            eprintln!(
                "vitrined: the exec guard denied {}; not run: {e}",
                denied.path
            );
            continue;
        }
        let name = std::path::Path::new(&denied.path)
            .file_name()
            .map_or_else(|| denied.path.clone(), |n| n.to_string_lossy().into_owned());
        let path = match launcher
            .start(
                Payload::Program {
                    file,
                    args,
                    name: name.clone(),
                },
                name.clone(),
                TaskOptions::default(),
            )
            .await
        {
            Ok(path) => path,
            Err(e) => {
                eprintln!(
                    "vitrined: the exec guard denied {}; not run: {e}",
                    denied.path
                );
                continue;
            }
        };
        if let Some(id) = task_id(path.as_str()) {
            let how = match &denied.how {
                DenyKind::Exec => "exec".to_owned(),
                DenyKind::Interpreter { interpreter } => format!("open by {interpreter}"),
            };
            let _ = launcher.events.send((
                id,
                TaskEvent::Detail(
                    "intercepted",
                    format!(
                        "vitrine-guard refused {how} of {} on the host (pid {}, uid {}): {}",
                        denied.path, denied.pid, denied.uid, denied.reason
                    ),
                ),
            ));
        }
        let body = guard_link::notice(&denied, path.as_str());
        let connection = launcher.connection.clone();
        tokio::spawn(async move {
            let summary = format!("Sandboxed: {name}");
            if let Err(e) = notify(&connection, &summary, &body).await {
                eprintln!("vitrined: no desktop notification for {summary}: {e}");
            }
        });
    }
}

/// Starts the `SaveSafeCopy` task a viewer asked for, in the default OCR
/// language, and notes it on the asking task.
async fn start_asked_safe_copy(launcher: &Manager, asking: u64, hand_off: SafeCopyHandOff) {
    let file = hand_off.file.lock().ok().and_then(|mut f| f.take());
    let Some(file) = file else { return };
    let options = TaskOptions {
        safe_copy: Some(SafeCopyRequest::default()),
        ..TaskOptions::default()
    };
    let payload = Payload::File {
        file,
        name: hand_off.name.clone(),
    };
    let note = match launcher.start(payload, hand_off.name, options).await {
        Ok(path) => path.to_string(),
        Err(e) => format!("not started: {e}"),
    };
    let _ = launcher
        .events
        .send((asking, TaskEvent::Detail("safe-copy-task", note)));
}

/// Tells the user where a safe copy went (file managers start
/// `vitrine convert` with no terminal to print to).
fn notify_safe_copy(connection: &Connection, name: &str, saved: &str, verdict: &str) {
    let name = std::path::Path::new(name)
        .file_name()
        .map_or_else(|| name.to_owned(), |n| n.to_string_lossy().into_owned());
    let (summary, body) = if saved.is_empty() {
        (format!("No safe copy of {name}"), verdict.to_owned())
    } else {
        (format!("Safe copy of {name} saved"), saved.to_owned())
    };
    let connection = connection.clone();
    tokio::spawn(async move {
        if let Err(e) = notify(&connection, &summary, &body).await {
            log::info!("no desktop notification for {summary}: {e}");
        }
    });
}

/// The id in a task's object path (the inverse of [`task_path`]).
fn task_id(path: &str) -> Option<u64> {
    path.strip_prefix(&format!("{MANAGER_PATH}/task/"))?
        .parse()
        .ok()
}

/// How long a desktop notification may take to be accepted.
const NOTIFY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `org.freedesktop.Notifications.Notify` on the daemon's bus.
async fn notify(connection: &Connection, summary: &str, body: &str) -> Result<u32, String> {
    let proxy = zbus::proxy::Builder::<zbus::Proxy<'_>>::new(connection)
        .destination("org.freedesktop.Notifications")
        .and_then(|b| b.path("/org/freedesktop/Notifications"))
        .and_then(|b| b.interface("org.freedesktop.Notifications"))
        .map_err(|e| e.to_string())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let hints: HashMap<&str, Value<'_>> = HashMap::from([("urgency", Value::U8(1))]);
    let body = (
        "Vitrine",
        0u32,
        "security-high",
        summary,
        body,
        Vec::<&str>::new(),
        hints,
        -1i32,
    );
    let call = proxy.call::<_, _, u32>("Notify", &body);
    match tokio::time::timeout(NOTIFY_WAIT, call).await {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {NOTIFY_WAIT:?}")),
    }
}
