//! `vitrine-viewer`: the window that shows a sandboxed task's pages. The
//! daemon starts it with a socketpair as stdin (see `vitrine_daemon::viewer`).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use anyhow::{bail, Context};
use clap::Parser;

/// Shows a sandboxed task's pages; started by vitrined, not by hand.
#[derive(Debug, Parser)]
#[command(name = "vitrine-viewer", version)]
struct Args {
    /// Window title (the daemon adds "(sandboxed)").
    #[arg(long, default_value = "Vitrine")]
    title: String,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("vitrine-viewer: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let stat = rustix::fs::fstat(fd).context("checking stdin")?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        bail!("stdin is not a socket: vitrine-viewer is started by vitrined with a socketpair");
    }
    let stream = UnixStream::from(fd.try_clone_to_owned().context("taking stdin")?);
    vitrine_daemon::viewer::window::run(&args.title, stream).context("viewer window")?;
    Ok(())
}
