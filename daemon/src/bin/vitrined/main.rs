//! `vitrined`: the Vitrine service on the session bus (`org.vitrine.Sandbox1`).
//! Usually started by D-Bus activation or its systemd user unit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use vitrine_daemon::backend::Accel;
use vitrine_daemon::service::{self, BackendChoice, DaemonConfig};
use vitrine_policy::SYSTEM_POLICY_DIR;

#[derive(Debug, Parser)]
#[command(
    name = "vitrined",
    version,
    about = "Vitrine's service: opens files, links and programs in throwaway VMs on request \
             over D-Bus (org.vitrine.Sandbox1)"
)]
struct Args {
    /// Policy directory (fails closed to the built-in `strict` sandbox when
    /// it is missing or broken; reloaded when it changes).
    #[arg(long, value_name = "DIR", env = "VITRINE_POLICY_DIR", default_value = SYSTEM_POLICY_DIR)]
    policy_dir: PathBuf,
    /// Guest image directory (default: $VITRINE_IMAGE_DIR, else the build cache).
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// VM backend: `auto` runs the project's VMM where `vitrine-vmm probe`
    /// says this host runs full Linux guests, else QEMU (TCG); `qemu` always
    /// uses QEMU with --accel.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// How QEMU runs the guest's vCPUs (with --backend qemu).
    #[arg(long, value_enum, default_value_t = AccelArg::Tcg)]
    accel: AccelArg,
    /// TESTS ONLY: run guests as local processes of PROGRAM over a Unix
    /// socket, with no VM isolation at all.
    #[arg(long, value_name = "PROGRAM", hide = true)]
    insecure_local_guest: Option<PathBuf>,
    /// Never open viewer windows (pages go to PNG files when a task asks).
    #[arg(long)]
    no_windows: bool,
    /// Bus address (default: the session bus).
    #[arg(long, value_name = "ADDRESS")]
    address: Option<String>,
    /// Daemon config file; its optional `[remote_admin]` section turns on
    /// the mTLS admin endpoint (off by default). Default:
    /// $XDG_CONFIG_HOME/vitrine/vitrined.toml when it exists.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Do not mark new files in the download folders ($VITRINE_WATCH_DIRS,
    /// else ~/Downloads) untrusted.
    #[arg(long)]
    no_watch_downloads: bool,
    /// PEM certificates that guests trust for links, beside the web's own
    /// roots (an organisation's CA).
    #[arg(long, value_name = "FILE", env = "VITRINE_EGRESS_CA")]
    egress_ca: Option<PathBuf>,
    /// VMs to keep ready ahead for each VM shape tasks use (each one
    /// serves one task and is destroyed after it; 0: clone or boot on
    /// demand).
    #[arg(long, value_name = "N", default_value_t = 1)]
    warm_pool: usize,
    /// Boot every VM from scratch instead of cloning it from the VM
    /// shape's template (for measuring what templates save).
    #[arg(long)]
    no_templates: bool,
    /// Profile whose VM is booted ahead at start ("" for none).
    #[arg(long, value_name = "PROFILE", default_value = "document")]
    warm_profile: String,
    /// The socket of the exec guard (`vitrine-guard`, a root service):
    /// programs it keeps from running on the host run here in a VM.
    #[arg(long, value_name = "PATH", env = "VITRINE_GUARD_SOCKET",
          default_value = vitrine_daemon::guard::wire::DEFAULT_SOCKET)]
    guard_socket: PathBuf,
    /// Do not follow the exec guard.
    #[arg(long)]
    no_guard_link: bool,
}

/// `$XDG_CONFIG_HOME/vitrine/vitrined.toml` (or under ~/.config), if it exists.
fn default_config_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    let file = base.join("vitrine/vitrined.toml");
    file.is_file().then_some(file)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Qemu,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AccelArg {
    Tcg,
    Kvm,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let egress_roots = match args.egress_ca.as_deref().map(service::load_egress_roots) {
        None => Vec::new(),
        Some(Ok(roots)) => roots,
        Some(Err(why)) => {
            eprintln!("vitrined: --egress-ca: {why}");
            return ExitCode::from(2);
        }
    };
    let config = DaemonConfig {
        policy_dir: args.policy_dir,
        image_dir: args.image_dir,
        backend: match (args.insecure_local_guest, args.backend) {
            (Some(program), _) => BackendChoice::LocalProcess(program),
            (None, BackendArg::Auto) => BackendChoice::Auto,
            (None, BackendArg::Qemu) => BackendChoice::Qemu,
        },
        accel: match args.accel {
            AccelArg::Tcg => Accel::Tcg,
            AccelArg::Kvm => Accel::Kvm,
        },
        windows: !args.no_windows,
        address: args.address,
        config_file: args.config.or_else(default_config_file),
        watch_downloads: !args.no_watch_downloads,
        egress_roots,
        warm_pool: args.warm_pool,
        templates: !args.no_templates,
        warm_profile: Some(args.warm_profile).filter(|p| !p.is_empty()),
        guard_socket: (!args.no_guard_link).then_some(args.guard_socket),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vitrined: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vitrined: error: {:#}", anyhow::Error::new(e));
            ExitCode::FAILURE
        }
    }
}
