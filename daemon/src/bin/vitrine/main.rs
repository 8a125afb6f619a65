//! `vitrine`: open files, links and programs safely, through `vitrined` on
//! the session bus (started by D-Bus activation when it is not running).
//! The policy decides deny, host or sandbox(profile); a sandboxed task runs
//! in a fresh VM and only pixels come back: a window where a display
//! exists, PNG pages otherwise.

mod convert;
mod templates;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use vitrine_daemon::service::bus::{BUS_NAME, MANAGER_INTERFACE, MANAGER_PATH, TASK_INTERFACE};
use vitrine_policy::diagnostics::printable;
use zbus::export::futures_core::Stream;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::Connection;

const OPEN_ABOUT: &str = "Open FILE safely.

vitrined sniffs its type from its content, detects its origin (quarantine
mark, Downloads folder) and asks the policy:
  deny              refuse; exit 1
  host              trusted: it would open normally on the host; nothing is
                    opened; exit 0
  sandbox(PROFILE)  render it in a fresh VM with the profile's limits; only
                    pixels come back: a window where a display exists, else
                    PNG pages (page-1.png, ...); the VM is then destroyed";

const AFTER_HELP: &str = "vitrine talks to vitrined over the session bus (org.vitrine.Sandbox1);
D-Bus activation starts it when it is not running. The file is passed as
an open descriptor, never as a path.

Killing vitrine (SIGINT, SIGTERM, SIGHUP) cancels its task; with --detach the
task outlives it. If vitrined stops or the bus connection drops while vitrine
waits, it says so and exits 1 at once.

Exit status: 0 clean or a host decision; 1 denied, failed or cancelled; 2 usage error;
128+N when this command was killed by signal N (the task was cancelled).
`vitrine run` exits like `docker run`, with its program's end: the program's
own exit status; 128+N when signal N killed it; 125 when the guest ran out
of memory and its kernel killed it; 124 when the time limit ran out; 1 when
the program did not run to its end (denied, failed, cancelled).";

const CONVERT_AFTER_HELP: &str = "Nothing of a file's content reaches the host except its pages'
pixels and, with --ocr, the words found in them; the copy never overwrites
a file (NAME-safe (2).pdf, ...) and is written whole or not at all.

Exit status: 0 when every file was converted; 1 when any failed (each is
listed with its reason); 2 usage error; 128+N when killed by signal N.";

const RUN_AFTER_HELP: &str =
    "Exit status, like `docker run`: the program's own exit status; 128+N when
signal N killed it; 125 when the guest ran out of memory and its kernel
killed it; 124 when the time limit ran out; 1 when the program did not run
to its end (denied, failed, cancelled); 2 usage error.";

/// How often `--wait` looks whether the window is still open.
const WINDOW_POLL: Duration = Duration::from_millis(250);
/// Longest wait for a task to finish.
const TASK_WAIT: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Parser)]
#[command(
    name = "vitrine",
    version,
    about = "Open risky files, links and programs inside a throwaway VM; only pixels come back",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open FILE safely, as the policy decides.
    #[command(long_about = OPEN_ABOUT)]
    Open {
        /// Write the pages as PNG files into OUTDIR (created if needed)
        /// instead of showing a window.
        #[arg(long = "png", value_name = "OUTDIR")]
        png: Option<PathBuf>,
        /// Stay until the viewer window is closed (for a private bus that
        /// ends with this command, as `dbus-run-session -- vitrine open`).
        #[arg(long)]
        wait: bool,
        /// Start the task and return at once: it outlives this command
        /// (see `vitrine ps`, `vitrine cancel`).
        #[arg(long, conflicts_with = "wait")]
        detach: bool,
        /// The file to open.
        file: PathBuf,
    },
    /// Open a link safely.
    Url {
        /// Write the pages as PNG files into OUTDIR (created if needed)
        /// instead of showing a window.
        #[arg(long = "png", value_name = "OUTDIR")]
        png: Option<PathBuf>,
        /// Stay until the viewer window is closed.
        #[arg(long)]
        wait: bool,
        /// Start the task and return at once: it outlives this command.
        #[arg(long, conflicts_with = "wait")]
        detach: bool,
        /// The link.
        url: String,
    },
    /// Run an untrusted PROGRAM on a terminal inside a VM; exit with its
    /// status (see below).
    #[command(after_help = RUN_AFTER_HELP)]
    Run {
        /// Write approved exports here (default ~/Downloads/Vitrine).
        #[arg(long, value_name = "DIR")]
        export_dir: Option<PathBuf>,
        /// Start the task and return at once: it outlives this command.
        #[arg(long)]
        detach: bool,
        /// Write the terminal's last frame as a PNG file into DIR (created if
        /// needed) instead of showing a window; without a display, a new
        /// folder is made for it.
        #[arg(long = "png", value_name = "DIR")]
        png: Option<PathBuf>,
        /// The program.
        program: PathBuf,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Save safe copies of FILEs: each is rendered in its own VM and
    /// rebuilt on the host as a PDF of its page pixels (NAME-safe.pdf beside
    /// it, or in --out), with a searchable text layer with --ocr.
    #[command(after_help = CONVERT_AFTER_HELP)]
    Convert {
        /// Add an invisible OCR text layer, in LANG (tesseract's names, such
        /// as eng or eng+deu; default eng). Without --ocr or --no-ocr the
        /// profile's `export.ocr` decides.
        #[arg(long, value_name = "LANG", num_args = 0..=1, default_missing_value = "eng",
              require_equals = true)]
        ocr: Option<String>,
        /// No text layer, whatever the profile says.
        #[arg(long, conflicts_with = "ocr")]
        no_ocr: bool,
        /// Write the copies into DIR (created if needed) instead of beside
        /// each file.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List tasks.
    Ps,
    /// Cancel a task (its number or object path).
    Cancel {
        /// Task.
        task: String,
    },
    /// List files offered for export, or approve / deny one.
    Exports {
        #[command(subcommand)]
        action: Option<ExportAction>,
    },
    /// The VM templates task VMs are cloned from: list, prune, rebuild.
    Templates {
        #[command(subcommand)]
        action: Option<templates::TemplateAction>,
    },
}

#[derive(Debug, Subcommand)]
enum ExportAction {
    /// Write an offered file (after checking its hash).
    Approve {
        /// Task number or path.
        task: String,
        /// File name as offered.
        name: String,
    },
    /// Refuse an offered file.
    Deny {
        /// Task number or path.
        task: String,
        /// File name as offered.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Templates need no bus, and making one blocks while a VM boots.
    if let Cmd::Templates { action } = cli.cmd {
        return match templates::run(action) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("vitrine: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vitrine: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.cmd)) {
        Ok(code) => code,
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("vitrine: {e}");
            e.downcast_ref::<Interrupted>()
                .map_or(ExitCode::FAILURE, Interrupted::exit_code)
        }
        Err(e) => {
            // Errors can quote the guest and hostile file names: keep their
            // control characters out of the terminal.
            eprintln!("vitrine: error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// The local file a `file://` URI (or a plain path) names; `None` for any
/// other scheme.
fn local_path(url: &str) -> Result<Option<PathBuf>> {
    let Some(rest) = url.strip_prefix("file://") else {
        return Ok((!has_scheme(url)).then(|| PathBuf::from(url)));
    };
    let path = match rest.strip_prefix("localhost") {
        Some(p) => p,
        None if rest.starts_with('/') => rest,
        None => bail!("{}: only local file:// URIs can be opened", one_line(url)),
    };
    let mut bytes = Vec::with_capacity(path.len());
    let mut it = path.bytes();
    while let Some(b) = it.next() {
        if b != b'%' {
            bytes.push(b);
            continue;
        }
        let hex = [it.next(), it.next()];
        let byte = match hex {
            [Some(h), Some(l)] => std::str::from_utf8(&[h, l])
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok()),
            _ => None,
        };
        match byte {
            Some(b) => bytes.push(b),
            None => bail!("{}: bad %-escape in the file URI", one_line(url)),
        }
    }
    Ok(Some(PathBuf::from(std::ffi::OsString::from_vec(bytes))))
}

/// Whether `text` starts with a URI scheme (`https:`, `javascript:`, ...):
/// a letter, then letters, digits, `+`, `-` or `.`, then `:`.
fn has_scheme(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// Text on one line of terminal output: control characters shown as U+FFFD.
fn one_line(text: &str) -> String {
    printable(text).replace('\n', "\u{fffd}")
}

fn shown(path: &Path) -> String {
    one_line(&path.to_string_lossy())
}

async fn dispatch(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Open {
            png,
            wait,
            detach,
            file,
        } => {
            let how = How { wait, detach };
            open(Target::file(&file)?, png.as_deref(), how).await
        }
        Cmd::Url {
            png,
            wait,
            detach,
            url,
        } => {
            let how = How { wait, detach };
            // The desktop handler passes files as file:// URIs (one entry
            // serves files and links), and some callers pass plain paths.
            match local_path(&url)? {
                Some(path) => open(Target::file(&path)?, png.as_deref(), how).await,
                None => open(Target::Link(&url), png.as_deref(), how).await,
            }
        }
        Cmd::Run {
            export_dir,
            detach,
            png,
            program,
            args,
        } => {
            let file = open_regular(&program)?;
            let (png_dir, made) = pages_dir(png.as_deref())?;
            let bus = Bus::connect().await?;
            let mut options: HashMap<&str, Value<'_>> = HashMap::new();
            if let Some(dir) = &png_dir {
                options.insert("png-dir", Value::from(dir.to_string_lossy().into_owned()));
                options.insert("viewer", Value::from(false));
            }
            let export_dir = export_dir.map(std::path::absolute).transpose()?;
            if let Some(dir) = &export_dir {
                options.insert(
                    "export-dir",
                    Value::from(dir.to_string_lossy().into_owned()),
                );
            }
            let fd = zbus::zvariant::Fd::from(&file);
            let task = bus.start("RunProgram", &(fd, args, options)).await?;
            if detach {
                if let Some(made) = made {
                    made.keep();
                }
                return Ok(detached(&task));
            }
            let done = bus.wait(task).await?;
            report(&done, &program.to_string_lossy());
            if let (Some(dir), Ok(n)) = (&png_dir, done.detail("png-pages").parse::<u32>()) {
                println!(
                    "frames    the terminal's last frame ({n} PNG file) in {}",
                    shown(dir)
                );
            }
            drop(made);
            Ok(ExitCode::from(run_exit_status(&done.verdict)))
        }
        Cmd::Convert {
            ocr,
            no_ocr,
            out,
            files,
        } => {
            let ocr = match (ocr, no_ocr) {
                (Some(lang), _) => Some(Value::from(lang)),
                (None, true) => Some(Value::from(false)),
                (None, false) => None,
            };
            convert::run(&files, ocr, out.as_deref()).await
        }
        Cmd::Ps => {
            let bus = Bus::connect().await?;
            let tasks: Vec<(OwnedObjectPath, String, String, String, String)> =
                bus.manager.call("ListTasks", &()).await?;
            println!(
                "{:<6} {:<12} {:<10} {:<28} VERDICT",
                "TASK", "KIND", "STATE", "NAME"
            );
            for (path, kind, name, state, verdict) in tasks {
                println!(
                    "{:<6} {:<12} {:<10} {:<28} {}",
                    task_number(&path),
                    kind,
                    state,
                    one_line(&name),
                    one_line(&verdict)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cancel { task } => {
            let bus = Bus::connect().await?;
            let path = task_path(&task)?;
            bus.task(&path)
                .await?
                .call::<_, _, ()>("Cancel", &())
                .await?;
            println!("cancelled {}", task_number(&path));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exports { action } => exports(action).await,
        Cmd::Templates { .. } => unreachable!("run before the runtime starts"),
    }
}

async fn exports(action: Option<ExportAction>) -> Result<ExitCode> {
    let bus = Bus::connect().await?;
    match action {
        None => {
            let list: Vec<(OwnedObjectPath, String, u64, String, String)> =
                bus.manager.call("ListExports", &()).await?;
            println!(
                "{:<6} {:<24} {:>10}  {:<64}  STATUS",
                "TASK", "NAME", "BYTES", "SHA256"
            );
            for (path, name, size, sha, status) in list {
                println!(
                    "{:<6} {:<24} {:>10}  {:<64}  {}",
                    task_number(&path),
                    one_line(&name),
                    size,
                    sha,
                    one_line(&status)
                );
            }
        }
        Some(ExportAction::Approve { task, name }) => {
            let path = task_path(&task)?;
            let written: String = bus
                .manager
                .call("ApproveExport", &(path.as_ref(), name.as_str()))
                .await?;
            println!("written   {}", one_line(&written));
        }
        Some(ExportAction::Deny { task, name }) => {
            let path = task_path(&task)?;
            bus.manager
                .call::<_, _, ()>("DenyExport", &(path.as_ref(), name.as_str()))
                .await?;
            println!("denied    {}", one_line(&name));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn task_number(path: &OwnedObjectPath) -> String {
    path.as_str()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn task_path(task: &str) -> Result<OwnedObjectPath> {
    let text = if task.chars().all(|c| c.is_ascii_digit()) && !task.is_empty() {
        format!("{MANAGER_PATH}/task/{task}")
    } else {
        task.to_owned()
    };
    OwnedObjectPath::try_from(text).with_context(|| format!("{task:?} is not a task"))
}

/// Opens `path` for reading without blocking on a FIFO; only regular files.
fn open_regular(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot read {}", shown(path)))?;
    if !file
        .metadata()
        .with_context(|| format!("cannot read {}", shown(path)))?
        .is_file()
    {
        bail!("{} is not a regular file", shown(path));
    }
    Ok(file)
}

/// What `open` shows: a file, opened here (so that a bad path fails before
/// the bus is asked), or a link.
#[derive(Debug)]
enum Target<'a> {
    File(&'a Path, std::fs::File),
    Link(&'a str),
}

impl<'a> Target<'a> {
    fn file(path: &'a Path) -> Result<Self> {
        Ok(Target::File(path, open_regular(path)?))
    }
}

/// How `open` and `url` stay with their task.
#[derive(Debug, Clone, Copy)]
struct How {
    /// Stay until the window closes.
    wait: bool,
    /// Return once the task has started.
    detach: bool,
}

/// Says how to follow a task that this command leaves running.
fn detached(task: &Started) -> ExitCode {
    let n = task_number(&task.path);
    println!(
        "task      {n} started, detached: it runs on without this command (`vitrine ps` shows \
         it, `vitrine cancel {n}` stops it)"
    );
    ExitCode::SUCCESS
}

/// Where the pages go: `--png DIR`, else a new folder when there is no
/// display (no window can show them), else nowhere (a window shows them).
/// A folder made here comes with its guard, which removes it if it stays
/// empty.
fn pages_dir(png: Option<&Path>) -> Result<(Option<PathBuf>, Option<RemovedIfEmpty>)> {
    let display = std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty());
    let mut made = None;
    let dir = match png {
        Some(dir) => Some(output_dir(dir)?),
        None if !display => {
            let dir = tempfile::Builder::new()
                .prefix("vitrine-pages-")
                .tempdir()
                .context("creating a directory for the pages")?
                .keep();
            made = Some(RemovedIfEmpty(dir.clone()));
            Some(dir)
        }
        None => None,
    };
    Ok((dir, made))
}

async fn open(target: Target<'_>, png: Option<&Path>, how: How) -> Result<ExitCode> {
    let (png_dir, made) = pages_dir(png)?;
    let bus = Bus::connect().await?;
    let mut options: HashMap<&str, Value<'_>> = HashMap::new();
    if let Some(dir) = &png_dir {
        options.insert("png-dir", Value::from(dir.to_string_lossy().into_owned()));
        options.insert("viewer", Value::from(false));
    }
    let (task, name) = match target {
        Target::File(path, file) => {
            let name = path.to_string_lossy().into_owned();
            let fd = zbus::zvariant::Fd::from(&file);
            (
                bus.start("OpenFile", &(fd, name.as_str(), options)).await?,
                name,
            )
        }
        Target::Link(url) => (bus.start("OpenUri", &(url, options)).await?, url.to_owned()),
    };
    if how.detach {
        if let Some(dir) = &png_dir {
            println!("pages     will be written to {}", shown(dir));
        }
        // The task writes there after this command has gone.
        if let Some(made) = made {
            made.keep();
        }
        return Ok(detached(&task));
    }
    let done = bus.wait(task).await?;
    report(&done, &name);
    if let Some(dir) = png_dir
        .as_ref()
        .filter(|_| done.verdict.starts_with("host"))
    {
        println!(
            "pages     none: nothing was sandboxed, so no pages were written to {}",
            shown(dir)
        );
    }
    if let Some(dir) = png_dir.filter(|_| done.verdict.starts_with("clean")) {
        let count = done.detail("png-pages");
        let announced = done.detail("pages");
        match (count.parse::<u32>(), announced.parse::<u32>()) {
            (Ok(0), _) => println!(
                "pages     none: the task drew no page, so nothing was written to {}",
                shown(&dir)
            ),
            (Ok(c), Ok(a)) if a > c => println!(
                "pages     {c} of {a} (the rest are past the page limit), written to {}:",
                shown(&dir)
            ),
            _ => println!("pages     {count}, written to {}:", shown(&dir)),
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "png"))
        {
            println!("  {}", shown(f));
        }
    }
    if done.detail("window") == "open" {
        println!("window    the pages are in the viewer window; close it when done");
        if how.wait {
            bus.wait_window(&done.path).await?;
        }
    }
    drop(made);
    Ok(exit_for(&done.verdict))
}

/// A folder this command made for the pages: removed again on every way
/// out if no page was written into it.
struct RemovedIfEmpty(PathBuf);

impl RemovedIfEmpty {
    /// Keeps the folder whatever it holds (a detached task fills it later).
    fn keep(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for RemovedIfEmpty {
    fn drop(&mut self) {
        // remove_dir fails on a folder that holds pages: those stay.
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}

/// `vitrine run`'s exit status for a verdict (see `AFTER_HELP`).
fn run_exit_status(verdict: &str) -> u8 {
    let number = |rest: &str| {
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse::<u8>().ok())
    };
    if verdict.starts_with("clean") {
        0
    } else if let Some(rest) = verdict.strip_prefix("exited: code ") {
        // A status outside 1..=255 cannot come from a Linux program.
        number(rest).filter(|&c| c != 0).unwrap_or(1)
    } else if let Some(rest) = verdict.strip_prefix("killed: signal ") {
        number(rest).filter(|&n| n < 128).map_or(1, |n| 128 + n)
    } else if verdict.starts_with("out of memory") {
        EXIT_OUT_OF_MEMORY
    } else if verdict.starts_with("timed-out") {
        EXIT_TIMED_OUT
    } else {
        1
    }
}

/// `vitrine run`: the guest's kernel killed the program for want of memory.
const EXIT_OUT_OF_MEMORY: u8 = 125;
/// `vitrine run`: the profile's time limit ran out (as `timeout(1)`).
const EXIT_TIMED_OUT: u8 = 124;

fn exit_for(verdict: &str) -> ExitCode {
    if verdict.starts_with("clean") || verdict.starts_with("host") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What a finished task reported.
#[derive(Debug)]
struct Finished {
    path: OwnedObjectPath,
    verdict: String,
    details: HashMap<String, String>,
    timings: HashMap<String, u64>,
}

impl Finished {
    fn detail(&self, key: &str) -> String {
        self.details.get(key).cloned().unwrap_or_default()
    }
    fn ms(&self, key: &str) -> Option<u64> {
        self.timings.get(key).map(|us| us / 1000)
    }
}

fn report(done: &Finished, name: &str) {
    let d = |k: &str| one_line(&done.detail(k));
    if done.detail("policy-status").starts_with("FAILING CLOSED") {
        eprintln!(
            "vitrine: WARNING: FAILING CLOSED: vitrined's policy does not load; every task is \
             sandboxed with the built-in `strict` profile until it is fixed ({})",
            d("policy-status")
        );
    }
    if done.details.contains_key("path") {
        println!("file      {} ({} bytes)", d("path"), d("size"));
        println!("type      {} (sniffed from the content)", d("type"));
        println!("origin    {}", d("origin"));
    }
    if done.details.contains_key("decision") {
        println!("policy    version {}", d("policy"));
        println!("decision  {}", d("decision"));
    }
    if done.details.contains_key("profile") {
        println!("profile   {}", d("profile"));
    }
    if done.details.contains_key("egress") {
        println!("egress    {}", d("egress"));
    }
    if done.details.contains_key("connections") {
        println!("network   {}", d("connections"));
    }
    if done.details.contains_key("vm") {
        println!("vm        {}", d("vm"));
    }
    if done.details.contains_key("office") {
        println!("office    {}", d("office"));
    }
    if let Some(line) = timings_line(done) {
        println!("timings   {line}");
    }
    let verdict = one_line(&done.verdict);
    println!("verdict   {verdict}");
    println!(
        "task      {} (receipt {})",
        task_number(&done.path),
        d("receipt")
    );
    let name = one_line(name);
    if let Some(rest) = done.verdict.strip_prefix("denied: ") {
        eprintln!(
            "vitrine: refused: the policy denies {name} ({}); nothing was opened",
            one_line(rest)
        );
    } else if done.verdict.starts_with("host") {
        println!(
            "host      trusted: this would open normally on the host, outside any VM (with \
             your usual application); vitrine does not open it itself"
        );
    } else if !done.verdict.starts_with("clean") {
        eprintln!("vitrine: error: {name}: {verdict}");
    }
}

/// The steps' times that the task reached, on one line; `None` before a VM
/// was taken. A step that never happened is left out, not shown blank.
fn timings_line(done: &Finished) -> Option<String> {
    let boot = done.details.get("boot-ms")?;
    let mut parts = vec![format!("boot to Ready {boot} ms")];
    if let Some(t) = done.details.get("transfer-ms") {
        parts.push(format!("transfer in {t} ms"));
    }
    match (done.details.get("first-frame-ms"), done.ms("first-frame")) {
        (Some(sent), Some(call)) => parts.push(format!(
            "first frame {sent} ms after the task was sent, {call} ms after the call"
        )),
        (None, Some(call)) => parts.push(format!("first frame {call} ms after the call")),
        (Some(sent), None) => parts.push(format!("first frame {sent} ms after the task was sent")),
        (None, None) => parts.push("no frame arrived".to_owned()),
    }
    let mut line = parts.join(", ");
    if let Some(total) = done.ms("vm-gone") {
        line.push_str(&format!("; total {total} ms"));
    }
    Some(one_line(&line))
}

/// The connection and the manager proxy.
struct Bus {
    connection: Connection,
    manager: zbus::Proxy<'static>,
}

impl Bus {
    async fn connect() -> Result<Bus> {
        let connection = Connection::session().await.context(
            "cannot reach the session bus (is DBUS_SESSION_BUS_ADDRESS set? vitrined is \
             started by D-Bus activation on it)",
        )?;
        let manager = zbus::Proxy::new_owned(
            connection.clone(),
            BUS_NAME,
            MANAGER_PATH,
            MANAGER_INTERFACE,
        )
        .await?;
        Ok(Bus {
            connection,
            manager,
        })
    }

    async fn task(&self, path: &OwnedObjectPath) -> Result<zbus::Proxy<'static>> {
        Ok(zbus::Proxy::new_owned(
            self.connection.clone(),
            BUS_NAME,
            path.clone(),
            TASK_INTERFACE,
        )
        .await?)
    }

    /// Calls `method`, which returns a task path. Listens for
    /// `TaskFinished`, for the daemon's name changing owner and for the
    /// signals that kill this command first, so that nothing is missed.
    async fn start<B>(&self, method: &str, body: &B) -> Result<Started>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let finished = self.manager.receive_signal("TaskFinished").await?;
        let owners = zbus::fdo::DBusProxy::new(&self.connection)
            .await?
            .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
            .await?;
        let interrupts = Interrupts::install()?;
        let reply = self
            .manager
            .call_method(method, body)
            .await
            .with_context(|| format!("calling vitrined's {method}"))?;
        let path: OwnedObjectPath = reply.body().deserialize()?;
        // The instance that took the task: only its end loses the task.
        let daemon = reply
            .header()
            .sender()
            .map(|s| s.to_string())
            .unwrap_or_default();
        Ok(Started {
            path,
            finished,
            owners,
            daemon,
            interrupts,
        })
    }

    /// Returns once the task's viewer window is closed.
    async fn wait_window(&self, path: &OwnedObjectPath) -> Result<()> {
        let task = self.task(path).await?;
        loop {
            let details: HashMap<String, String> = match task.get_property("Details").await {
                Ok(d) => d,
                // The task is gone from the daemon: so is its window.
                Err(_) => return Ok(()),
            };
            if details.get("window").is_none_or(|w| w != "open") {
                return Ok(());
            }
            tokio::time::sleep(WINDOW_POLL).await;
        }
    }

    /// Waits for the task's end. Returns early with an error when the
    /// daemon that runs it goes away or the bus connection ends, and with
    /// [`Interrupted`] (after cancelling the task) when this command is
    /// told to stop.
    async fn wait(&self, started: Started) -> Result<Finished> {
        let Started {
            path,
            finished,
            owners,
            daemon,
            mut interrupts,
        } = started;
        let mut finished = std::pin::pin!(finished);
        let mut owners = std::pin::pin!(owners);
        let task = self.task(&path).await?;
        let n = task_number(&path);
        let wait = async {
            // It may have finished before the signal stream was read.
            let verdict: String = task.get_property("Verdict").await?;
            if !verdict.is_empty() {
                return Ok::<String, anyhow::Error>(verdict);
            }
            loop {
                tokio::select! {
                    msg = next(&mut finished) => {
                        let Some(msg) = msg else { break };
                        let (p, verdict): (OwnedObjectPath, String) = msg.body().deserialize()?;
                        if p == path {
                            return Ok(verdict);
                        }
                    }
                    change = next(&mut owners) => {
                        let Some(change) = change else { break };
                        let args = change.args()?;
                        if args.old_owner().as_ref().is_some_and(|o| o.as_str() == daemon) {
                            bail!(
                                "vitrined stopped before task {n} finished ({BUS_NAME} lost its \
                                 owner): the task and its result are lost; run the command again"
                            );
                        }
                    }
                    signal = interrupts.next() => {
                        cancel_quietly(&task).await;
                        return Err(Interrupted { signal, task: n.clone() }.into());
                    }
                }
            }
            bail!("the session bus connection ended before task {n} finished: its result is lost")
        };
        let verdict = tokio::time::timeout(TASK_WAIT, wait)
            .await
            .context("the task did not finish in time")??;
        let details: HashMap<String, String> = task.get_property("Details").await?;
        let timings: HashMap<String, u64> = task.get_property("Timings").await?;
        Ok(Finished {
            path,
            verdict,
            details,
            timings,
        })
    }
}

/// The next item of a stream.
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

/// Longest wait for `Cancel` when this command is told to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// Cancels `task`, waiting at most [`CANCEL_WAIT`]; a daemon that does not
/// answer is not waited for (this command is being stopped).
async fn cancel_quietly(task: &zbus::Proxy<'static>) {
    match tokio::time::timeout(CANCEL_WAIT, task.call::<_, _, ()>("Cancel", &())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!(
            "vitrine: cancelling the task failed: {}",
            one_line(&e.to_string())
        ),
        Err(_) => eprintln!("vitrine: vitrined did not answer the cancel in time"),
    }
}

/// A started task and what its waiter listens to.
struct Started {
    path: OwnedObjectPath,
    finished: zbus::proxy::SignalStream<'static>,
    owners: zbus::fdo::NameOwnerChangedStream,
    /// Unique bus name of the daemon that took the task.
    daemon: String,
    interrupts: Interrupts,
}

/// SIGINT, SIGTERM and SIGHUP, caught while a task runs so that killing
/// this command cancels its task.
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("catching SIGINT")?,
            term: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("catching SIGHUP")?,
        })
    }

    /// The next signal that arrives.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

/// This command was told to stop while its task ran; the task was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("stopped by {}: task {task} cancelled", signal_name(*.signal))]
struct Interrupted {
    signal: i32,
    task: String,
}

impl Interrupted {
    /// 128 + N, as a shell reports a command killed by signal N.
    fn exit_code(&self) -> ExitCode {
        ExitCode::from(u8::try_from(128 + self.signal).unwrap_or(1))
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// `--png OUTDIR` as an absolute path (the daemon writes it, and creates
/// it private to this user only when there are pages to write).
fn output_dir(dir: &Path) -> Result<PathBuf> {
    std::path::absolute(dir).with_context(|| format!("resolving {}", shown(dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(details: &[(&str, &str)], timings: &[(&str, u64)]) -> Finished {
        Finished {
            path: task_path("7").unwrap(),
            verdict: "error: x".into(),
            details: details
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            timings: timings.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    #[test]
    fn timings_leave_out_the_steps_a_failed_task_never_reached() {
        let failed = finished(&[("boot-ms", "812")], &[("vm-gone", 905_000)]);
        let full = finished(
            &[
                ("boot-ms", "812"),
                ("transfer-ms", "3"),
                ("first-frame-ms", "40"),
            ],
            &[("first-frame", 860_000), ("vm-gone", 905_000)],
        );
        let refused = finished(&[], &[]);

        assert_eq!(
            timings_line(&failed).unwrap(),
            "boot to Ready 812 ms, no frame arrived; total 905 ms"
        );
        assert_eq!(
            timings_line(&full).unwrap(),
            "boot to Ready 812 ms, transfer in 3 ms, first frame 40 ms after the task was sent, \
             860 ms after the call; total 905 ms"
        );
        assert_eq!(timings_line(&refused), None);
    }

    #[test]
    fn run_exits_with_the_programs_end_like_docker_run() {
        let cases = [
            ("clean", 0),
            ("clean, 1 export(s) written", 0),
            ("exited: code 3", 3),
            ("exited: code 255", 255),
            ("killed: signal 9 (SIGKILL)", 137),
            ("killed: signal 11 (SIGSEGV)", 139),
            (
                "out of memory: the guest's kernel killed the program (SIGKILL) when the \
                 VM's memory ran out",
                125,
            ),
            ("timed-out", 124),
            ("failed: output flood", 1),
            ("denied: by rule 3", 1),
            ("cancelled", 1),
        ];
        for (verdict, status) in cases {
            assert_eq!(run_exit_status(verdict), status, "{verdict}");
        }
    }

    #[test]
    fn file_uris_and_plain_paths_name_local_files_and_links_do_not() {
        let cases = [
            (
                "file:///home/u/Downloads/a%20b.pdf",
                Some("/home/u/Downloads/a b.pdf"),
            ),
            ("file://localhost/tmp/x.pdf", Some("/tmp/x.pdf")),
            ("/tmp/plain.pdf", Some("/tmp/plain.pdf")),
            ("https://example.org/a.pdf", None),
            ("javascript:alert(1)", None),
            ("data:text/html,hi", None),
            ("./odd:name.pdf", Some("./odd:name.pdf")),
        ];
        for (url, want) in cases {
            assert_eq!(local_path(url).unwrap(), want.map(PathBuf::from), "{url}");
        }
        assert!(local_path("file://otherhost/x").is_err());
        assert!(local_path("file:///bad%zz").is_err());
        assert!(local_path("file:///cut%4").is_err());
    }
}
