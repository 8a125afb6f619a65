//! `vitrine`: open a file safely. The policy decides deny, host or
//! sandbox(profile); a sandboxed file is rendered in a fresh VM and only its
//! pages of pixels come back, written as PNG files.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use vitrine_daemon::backend::qemu::QemuBackend;
use vitrine_daemon::backend::{Accel, GuestImage, VmExit};
use vitrine_daemon::fresh_guest::{run_in_fresh_guest, GuestDeadlines};
use vitrine_daemon::image_cache;
use vitrine_daemon::open_file::{self, Subject};
use vitrine_daemon::pages;
use vitrine_daemon::task::TaskInput;
use vitrine_policy::diagnostics::printable;
use vitrine_policy::profile::format_duration;
use vitrine_policy::{PolicySet, Profile, Verdict, SYSTEM_POLICY_DIR};
use vitrine_shim::protocol::TaskStatus;

/// How long the VM may take to end after `Shutdown` before it is killed;
/// it is thrown away either way.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

const OPEN_ABOUT: &str = "Open FILE safely.

Its type is sniffed from its content and its origin detected (quarantine
mark, Downloads folder); then the policy decides:
  deny              refuse; exit 1
  host              trusted: it would open normally on the host; nothing is
                    opened; exit 0
  sandbox(PROFILE)  render it in a fresh VM with the profile's memory, vCPUs,
                    time and display limits; only pages of pixels come back,
                    written as PNG files (page-1.png, page-2.png, ...); the VM
                    is then destroyed";

const OPEN_AFTER_HELP: &str = "The pages are written as PNG files for now; a window that shows them
(and sends input back) comes with the viewer (issue 7).

The guest image is the one shim/image/build.sh built (cached under
~/.cache/vitrine): --image-dir, else $VITRINE_IMAGE_DIR, else what
`shim/image/build.sh --print-dir` reports.

Exit status: 0 rendered, or a host decision; 1 denied or failed; 2 usage error.";

#[derive(Debug, Parser)]
#[command(
    name = "vitrine",
    version,
    about = "Open risky files inside a throwaway VM; only pixels come back"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open FILE safely, as the policy decides.
    #[command(long_about = OPEN_ABOUT, after_help = OPEN_AFTER_HELP)]
    Open(OpenArgs),
}

#[derive(Debug, clap::Args)]
struct OpenArgs {
    /// Policy directory (fails closed to the built-in `strict` sandbox when
    /// it is missing or broken).
    #[arg(long, value_name = "DIR", env = "VITRINE_POLICY_DIR", default_value = SYSTEM_POLICY_DIR)]
    policy_dir: PathBuf,
    /// Write the pages into OUTDIR (created if needed) instead of a new
    /// temporary directory.
    #[arg(long = "png", value_name = "OUTDIR")]
    png: Option<PathBuf>,
    /// VM backend. Only `qemu` today; Vitrine's own KVM VMM follows.
    #[arg(long, value_enum, default_value_t = BackendArg::Qemu)]
    backend: BackendArg,
    /// How QEMU runs the guest's vCPUs: `tcg` (software, runs anywhere) or
    /// `kvm` (needs a /dev/kvm that can run a full Linux guest).
    #[arg(long, value_enum, default_value_t = AccelArg::Tcg)]
    accel: AccelArg,
    /// Guest image directory (vmlinux, initrd.gz, cmdline).
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// A Downloads folder whose files count as `downloads` (repeatable;
    /// default: $XDG_DOWNLOAD_DIR or ~/Downloads).
    #[arg(long = "downloads-dir", value_name = "DIR")]
    downloads_dir: Vec<PathBuf>,
    /// The file to open.
    file: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Qemu,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AccelArg {
    Tcg,
    Kvm,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Open(args) => open(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Errors can quote the guest (its console, its failure reason)
            // and hostile file names: keep their control characters out.
            eprintln!("vitrine: error: {}", printable(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// A path on one line of terminal output: control characters (a hostile
/// file name's escape sequences or newlines) are shown as U+FFFD.
fn shown(path: &Path) -> String {
    printable(&path.to_string_lossy()).replace('\n', "\u{fffd}")
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn open(args: &OpenArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let downloads = if args.downloads_dir.is_empty() {
        open_file::default_downloads_dirs()
    } else {
        args.downloads_dir.clone()
    };
    let subject = Subject::read(&args.file, &downloads)?;
    let request = subject.request()?;
    let policy = load_policy(&args.policy_dir);
    let decision = policy.evaluate(&request);

    println!(
        "file      {} ({} bytes)",
        shown(&subject.path),
        subject.data.len()
    );
    println!("type      {} (sniffed from the content)", subject.mime);
    println!("origin    {}", subject.origin_text());
    println!(
        "policy    {}, version {}",
        shown(&args.policy_dir),
        policy.version().short()
    );
    let matched = printable(&decision.matched.to_string()).replace('\n', " ");
    println!("decision  {}, by {matched}", decision.verdict);

    match &decision.verdict {
        Verdict::Deny => {
            eprintln!(
                "vitrine: refused: the policy denies opening {} ({matched}); nothing was opened",
                shown(&subject.given),
            );
            Ok(ExitCode::FAILURE)
        }
        Verdict::Host => {
            println!(
                "host      trusted: this file would open normally on the host, outside any VM \
                 (with your usual application); `vitrine open` does not open it itself"
            );
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Sandbox(profile) => {
            sandbox(args, subject, profile, started)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the policy as the daemon does: a missing or broken one fails
/// closed, and says so loudly.
fn load_policy(dir: &Path) -> PolicySet {
    let (policy, problems) = PolicySet::load_or_fail_closed(dir);
    if let Some(diags) = problems {
        eprintln!(
            "vitrine: WARNING: FAILING CLOSED: the policy in {} does not load; every file is \
             sandboxed with the built-in `strict` profile until it is fixed:\n{}",
            shown(dir),
            printable(&diags.to_string())
        );
    }
    policy
}

fn sandbox(args: &OpenArgs, subject: Subject, profile: &Profile, started: Instant) -> Result<()> {
    let limits = open_file::task_limits(profile);
    println!(
        "profile   {}: {} MiB, {} vCPU, time limit {}, pages up to {}x{}",
        profile.name,
        profile.memory_mib,
        profile.vcpus,
        format_duration(profile.time_limit),
        limits.max_width,
        limits.max_height
    );
    let image_dir = image_cache::locate(args.image_dir.as_deref())?;
    let image = GuestImage::from_dir(&image_dir)?;
    let (backend, accel) = match (args.backend, args.accel) {
        (BackendArg::Qemu, AccelArg::Tcg) => (QemuBackend::new(), Accel::Tcg),
        (BackendArg::Qemu, AccelArg::Kvm) => (QemuBackend::new(), Accel::Kvm),
    };
    let config = open_file::vm_config(profile, image, accel)?;
    println!(
        "guest     qemu ({}), image {}",
        match accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        },
        shown(&image_dir)
    );

    let name = shown(&subject.given);
    let input = TaskInput::file(&subject.guest_name, subject.mime, subject.data, limits);
    let deadlines = GuestDeadlines {
        lifetime: Some(profile.time_limit),
        shutdown_wait: SHUTDOWN_WAIT,
    };
    let done = run_in_fresh_guest(&backend, &config, &input, deadlines)
        .with_context(|| format!("opening {name} in a fresh guest"))?;
    let run = done.task;
    match &run.status {
        Some(TaskStatus::Ok) => {}
        Some(TaskStatus::Failed(reason)) => bail!("the guest could not render {name}: {reason}"),
        Some(TaskStatus::TimedOut) => bail!(
            "rendering {name} ran past its {} limit",
            ms(Duration::from_millis(limits.time_limit_ms.into()))
        ),
        None => bail!("the guest ended the task without a status"),
    }
    if run.pages.is_empty() {
        bail!("the guest rendered {name} but sent no page");
    }
    for text in &run.unexpected {
        // Debug text of a guest message: escaped, but possibly long.
        let head: String = text.chars().take(200).collect();
        eprintln!("vitrine: ignored a message outside the task's flow: {head}");
    }

    let out = output_dir(args.png.as_deref())?;
    let files = pages::write_pages(&run.pages, &out)?;
    let total = started.elapsed();
    let announced = run.page_count.unwrap_or(0);
    let count = files.len();
    if usize::try_from(announced).is_ok_and(|a| a > count) {
        println!(
            "pages     {count} of {announced} (the rest are past the page limit), written to {}:",
            shown(&out)
        );
    } else {
        println!("pages     {count}, written to {}:", shown(&out));
    }
    for (path, page) in files.iter().zip(run.pages.values()) {
        println!("  {}  {}x{}", shown(path), page.width, page.height);
    }
    let first_frame = run.times.first_frame.unwrap_or_default();
    println!(
        "timings   boot to Ready {}, transfer in {}, first frame {} after the task was sent \
         ({} after the VM started), total {}",
        ms(done.boot),
        ms(run.transfer_in().unwrap_or_default()),
        ms(first_frame),
        ms(done.boot + first_frame),
        ms(total)
    );
    println!(
        "vm        {}; nothing of it is left",
        match done.exit {
            VmExit::Exited(_) => "ended after Shutdown",
            VmExit::Killed => "killed after Shutdown",
        }
    );
    Ok(())
}

/// `--png OUTDIR` (made private to this user if it is created), or a new
/// temporary directory that is kept.
fn output_dir(png: Option<&Path>) -> Result<PathBuf> {
    match png {
        Some(dir) => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            Ok(dir.to_owned())
        }
        None => Ok(tempfile::Builder::new()
            .prefix("vitrine-pages-")
            .tempdir()
            .context("creating a directory for the pages")?
            .keep()),
    }
}
