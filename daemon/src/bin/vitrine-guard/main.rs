//! `vitrine-guard [--config FILE] [--socket PATH]`: the root service that
//! refuses the exec of untrusted files (see `vitrine_daemon::guard`).

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vitrine_daemon::guard::config::{GuardConfig, DEFAULT_CONFIG};
use vitrine_daemon::guard::events::ExecGuard;
use vitrine_daemon::guard::subscribers::{self, Subscribers};

/// The guard's nice value (the unit sets it too, before dropping
/// CAP_SYS_NICE).
const GUARD_NICE: i32 = -10;

/// Refuse the exec of untrusted files on the watched filesystems and tell
/// the owning user's vitrined.
#[derive(Debug, Parser)]
#[command(name = "vitrine-guard")]
struct Args {
    /// The TOML config (a missing default means the built-in defaults).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The subscriber socket (overrides the config's `socket`).
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// Log lines on stderr (the journal under systemd).
#[derive(Debug)]
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let _ = writeln!(
                std::io::stderr(),
                "vitrine-guard: {}: {}",
                record.level(),
                record.args()
            );
        }
    }
    fn flush(&self) {}
}

fn main() -> anyhow::Result<()> {
    let _ = log::set_logger(&StderrLog).map(|()| log::set_max_level(log::LevelFilter::Info));
    let args = Args::parse();
    // Every exec on the watched filesystems waits for this process: a busy
    // desktop must not add its scheduling delay to each of them.
    if let Err(e) = rustix::process::setpriority_process(None, GUARD_NICE) {
        log::warn!("cannot raise the priority to nice {GUARD_NICE}: {e}");
    }
    let mut config = GuardConfig::load(&args.config)?;
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    // Blocked in every thread (they inherit the mask), read from the loop.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    stop_signals.thread_block().context("blocking SIGTERM")?;
    let stop = SignalFd::with_flags(&stop_signals, SfdFlags::SFD_CLOEXEC).context("signalfd")?;

    let listener = subscribers::listen(&config.socket)?;
    let socket = config.socket.clone();
    let folders = config.watched_folders();
    let subscribers = Arc::new(Subscribers::default());
    let mut guard = ExecGuard::new(config, &folders, Arc::clone(&subscribers))?;
    let pid = std::process::id();
    std::thread::Builder::new()
        .name("guard-socket".into())
        .spawn(move || subscribers.serve(listener, pid))
        .context("socket thread")?;
    log::info!("pid {pid} listening on {}", socket.display());

    let counts = guard.run(stop.as_fd())?;
    log::info!(
        "stopping: {} events answered: {} allowed, {} denied, {} allowed after an internal error",
        counts.allowed + counts.denied + counts.errors,
        counts.allowed,
        counts.denied,
        counts.errors
    );
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
