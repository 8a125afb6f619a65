//! `vitrine-integrate`: installs or removes Vitrine's desktop integration
//! (the "Open safely" handler, file-manager actions, D-Bus activation file
//! and systemd user unit).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use vitrine_daemon::desktop::install::{self, InstallOptions, Targets};

/// Installs or removes Vitrine's desktop integration.
#[derive(Debug, Parser)]
#[command(name = "vitrine-integrate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Installs the handler and actions (again: updates them).
    Install {
        #[command(flatten)]
        place: Place,
        /// The `vitrine` CLI the actions run [default: beside this program, else from PATH].
        #[arg(long)]
        vitrine: Option<PathBuf>,
        /// The `vitrined` daemon [default: beside this program, else from PATH].
        #[arg(long)]
        vitrined: Option<PathBuf>,
        /// Folder with org.vitrine.Sandbox1.service and vitrined.service.
        #[arg(long, env = "VITRINE_DESKTOP_DIR")]
        service_files: Option<PathBuf>,
    },
    /// Removes exactly what install added.
    Uninstall {
        #[command(flatten)]
        place: Place,
    },
}

#[derive(Debug, Args)]
struct Place {
    /// Install for the user with this home [default: $HOME].
    #[arg(long, conflicts_with = "prefix")]
    home: Option<PathBuf>,
    /// Install system-wide under this prefix (for packagers).
    #[arg(long)]
    prefix: Option<PathBuf>,
}

impl Place {
    fn targets(&self) -> anyhow::Result<Targets> {
        if let Some(prefix) = &self.prefix {
            return Ok(Targets::for_prefix(prefix));
        }
        let home = match &self.home {
            Some(h) => h.clone(),
            None => {
                PathBuf::from(std::env::var_os("HOME").context("HOME is not set; pass --home")?)
            }
        };
        // XDG_*_HOME describe the running user's home, not one given by hand.
        let xdg = |var| {
            if self.home.is_none() {
                std::env::var_os(var).map(PathBuf::from)
            } else {
                None
            }
        };
        let (data, config) = (xdg("XDG_DATA_HOME"), xdg("XDG_CONFIG_HOME"));
        Ok(Targets::for_home(&home, data.as_deref(), config.as_deref()))
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("vitrine-integrate: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let changes = match Cli::parse().command {
        Command::Install {
            place,
            vitrine,
            vitrined,
            service_files,
        } => {
            let opts = InstallOptions {
                targets: place.targets()?,
                vitrine: program(vitrine, "vitrine")?,
                vitrined: program(vitrined, "vitrined")?,
                service_files: service_files.unwrap_or_else(install::default_service_files),
            };
            install::install(&opts)?
        }
        Command::Uninstall { place } => install::uninstall(&place.targets()?)?,
    };
    for change in changes {
        println!("{change}");
    }
    Ok(())
}

/// The given path, else the program beside this one, else the one on PATH.
fn program(given: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(std::path::absolute(p)?);
    }
    let exe = std::env::current_exe()?;
    if let Some(beside) = exe.parent().map(|d| d.join(name)).filter(|p| p.exists()) {
        return Ok(beside);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    match std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_file(p))
    {
        Some(found) => Ok(found),
        None => bail!("cannot find `{name}` beside this program or on PATH; pass --{name}"),
    }
}

fn is_file(p: &Path) -> bool {
    p.is_file()
}
