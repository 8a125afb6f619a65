//! `vitrined`: the host service. It owns the D-Bus API ([`bus`]), runs each
//! task on its own thread ([`worker`]) behind channels, gates exports
//! ([`export_gate`]), signs receipts ([`receipt`]), and keeps its records
//! where the XDG spec says ([`state_dirs`]). [`vm_seam`] is where a backend
//! plugs in.

pub mod bus;
pub mod call_signature;
pub mod export_gate;
pub mod guard_link;
pub mod receipt;
pub mod safe_copy;
pub mod state_dirs;
pub mod verdict;
pub mod vm_seam;
pub mod warm_pool;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vitrine_policy::watch::ReloadEvent;
use vitrine_policy::{AuditConfig, AuditLog, PolicyHandle, PolicySet, PolicyWatcher};

use crate::backend::qemu::QemuBackend;
use crate::backend::runtime_dir;
use crate::backend::select::HostBackend;
use crate::backend::template::kvm::KvmTemplates;
use crate::backend::template::store::TemplateStore;
use crate::backend::template::TemplateCloner;
use crate::backend::{Accel, GuestImage};
use crate::image_cache;
use crate::viewer::viewer_binary;
use receipt::ReceiptSigner;
use state_dirs::StateDirs;
use vm_seam::{LocalProcessBackend, VmStarter};
use warm_pool::WarmPool;
use worker::{image_info, WorkerContext};

/// The daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Its directories could not be found or made.
    #[error("state directories")]
    Dirs(#[from] state_dirs::StateDirsError),
    /// The receipt key could not be loaded or made.
    #[error("receipt signing key")]
    Receipt(#[from] receipt::ReceiptError),
    /// The audit log could not be opened.
    #[error("audit log")]
    Audit(#[from] vitrine_policy::audit::AuditError),
    /// The bus could not be reached or served.
    #[error("session bus")]
    Bus(#[from] zbus::Error),
    /// Serving failed.
    #[error("D-Bus service")]
    Serve(#[from] bus::BusError),
    /// The daemon could not drop what it does not need.
    #[error("hardening the daemon")]
    Harden(#[from] crate::vmm_jail::VmmJailError),
    /// The config file is broken (the error names its line).
    #[error(transparent)]
    Config(#[from] crate::remote_admin::ConfigError),
    /// The stop signals could not be caught.
    #[error("cannot catch SIGTERM, SIGINT and SIGHUP")]
    Signals(#[source] std::io::Error),
}

/// Which backend runs the guests.
#[derive(Debug, Clone)]
pub enum BackendChoice {
    /// The project's VMM where `vitrine-vmm probe` says full guests run,
    /// else QEMU with TCG.
    Auto,
    /// QEMU with the guest image (and the configured accelerator).
    Qemu,
    /// A local guest program over a Unix socket: no isolation, tests only.
    LocalProcess(PathBuf),
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The policy directory (fails closed when missing or broken).
    pub policy_dir: PathBuf,
    /// The guest image directory; `None`: the build cache.
    pub image_dir: Option<PathBuf>,
    /// The backend.
    pub backend: BackendChoice,
    /// How QEMU runs vCPUs.
    pub accel: Accel,
    /// Show viewer windows when $DISPLAY is set.
    pub windows: bool,
    /// Bus address; `None`: the session bus.
    pub address: Option<String>,
    /// Daemon config file with an optional `[remote_admin]` section; `None`:
    /// no remote admin endpoint (the default).
    pub config_file: Option<PathBuf>,
    /// Mark new files in the watched download folders untrusted.
    pub watch_downloads: bool,
    /// DER certificates that guests trust for links beside the web's own
    /// roots (an organisation's CA); see [`load_egress_roots`].
    pub egress_roots: Vec<Vec<u8>>,
    /// VMs kept booted ahead per VM shape (0: boot each on demand).
    pub warm_pool: usize,
    /// Clone task VMs from a template per VM shape (QEMU: a saved VM;
    /// kvm: a `vitrine-vmm snapshot`), else boot each from scratch.
    pub templates: bool,
    /// The profile whose VM shape is warmed at start (if the policy has it).
    pub warm_profile: Option<String>,
    /// `vitrine-guard`'s socket, whose denied programs run as tasks;
    /// `None`: not followed.
    pub guard_socket: Option<PathBuf>,
}

/// Reads the PEM certificates in `path`, for [`DaemonConfig::egress_roots`].
pub fn load_egress_roots(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect();
    let certs = certs.map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    let most = vitrine_shim::protocol::MAX_EXTRA_ROOTS;
    if certs.len() > most {
        return Err(format!("{}: more than {most} certificates", path.display()));
    }
    Ok(certs)
}

/// Prepares everything and serves until the bus connection ends.
pub async fn run(config: DaemonConfig) -> Result<(), ServiceError> {
    // Nothing the daemon starts (VMMs, viewers, QEMU) may gain privileges.
    crate::vmm_jail::harden_daemon()?;
    // From here a stop signal ends the daemon the orderly way (see below).
    let stop = stop_signal()?;
    match runtime_dir::remove_stale() {
        Ok(sweep) => report_sweep("at start", &sweep),
        Err(e) => eprintln!("vitrined: VMs cannot start: {}", worker::chain(&e)),
    }
    let remote_admin = match &config.config_file {
        Some(path) => crate::remote_admin::RemoteAdminConfig::from_file(path)?,
        None => None,
    };
    let dirs = StateDirs::from_env()?;
    dirs.create()?;
    let signer = ReceiptSigner::load_or_create(&dirs.data)?;
    let (policy, problems) = PolicySet::load_or_fail_closed(&config.policy_dir);
    if let Some(diags) = problems {
        eprintln!(
            "vitrined: WARNING: FAILING CLOSED: the policy in {} does not load; every task is \
             sandboxed with the built-in `strict` profile until it is fixed:\n{diags}",
            config.policy_dir.display()
        );
    }
    let policy = Arc::new(PolicyHandle::new(policy));
    let _watcher = PolicyWatcher::spawn(&config.policy_dir, policy.clone(), |event| {
        if let ReloadEvent::Rejected { .. } = event {
            eprintln!("vitrined: WARNING: a policy edit was rejected; the old policy stays");
        }
    })
    .map_err(|e| eprintln!("vitrined: policy hot reload is off: {e}"))
    .ok();
    let audit = AuditLog::open(AuditConfig::new(dirs.audit_log()))?;
    let image = match &config.backend {
        // The local program is the whole guest: its hash stands for the image.
        BackendChoice::LocalProcess(program) => image_info(GuestImage {
            kernel: program.clone(),
            initrd: PathBuf::from("/dev/null"),
            cmdline: String::new(),
            app_disk: None,
        }),
        BackendChoice::Auto | BackendChoice::Qemu => {
            image_cache::locate(config.image_dir.as_deref())
                .map_err(|e| e.to_string())
                .and_then(|dir| GuestImage::from_dir(&dir).map_err(|e| worker::chain(&e)))
                .and_then(image_info)
        }
    };
    if let Err(why) = &image {
        eprintln!("vitrined: no guest image, sandboxed tasks will fail: {why}");
    }
    let mut accel = config.accel;
    let backend: Arc<dyn VmStarter> = match &config.backend {
        BackendChoice::Auto => {
            let chosen = HostBackend::choose();
            eprintln!("vitrined: backend {}", chosen.describe());
            accel = chosen.accel();
            match chosen {
                HostBackend::Qemu { backend, .. } => {
                    with_templates(backend, &image, config.templates, TemplateCloner::new)
                }
                HostBackend::Kvm(kvm) => {
                    with_templates(kvm, &image, config.templates, KvmTemplates::new)
                }
            }
        }
        BackendChoice::Qemu => with_templates(
            QemuBackend::new(),
            &image,
            config.templates,
            TemplateCloner::new,
        ),
        BackendChoice::LocalProcess(program) => {
            eprintln!(
                "vitrined: WARNING: guests run as LOCAL PROCESSES ({}) with NO VM ISOLATION; \
                 this backend is for tests only",
                program.display()
            );
            Arc::new(LocalProcessBackend {
                program: program.clone(),
                env: Vec::new(),
                ready_timeout: Duration::from_secs(20),
            })
        }
    };
    let pool = WarmPool::new(Arc::clone(&backend), config.warm_pool);
    let display = std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty());
    let viewer = (config.windows && display).then(viewer_binary);
    let first_id = dirs.next_task_number();
    let ctx = Arc::new(WorkerContext {
        policy,
        audit: Some(audit),
        backend,
        accel,
        image,
        signer,
        dirs,
        downloads_dirs: crate::open_file::default_downloads_dirs(),
        viewer,
        egress_roots: config.egress_roots.clone(),
        pool,
    });
    if let Some(name) = &config.warm_profile {
        ctx.prewarm(name);
    }
    let _downloads = config.watch_downloads.then(watch_downloads);
    if let Some(admin) = remote_admin {
        let policy_dir = config.policy_dir.clone();
        let audit_dir = ctx_audit_dir(&ctx.dirs);
        tokio::spawn(async move {
            if let Err(e) = crate::remote_admin::serve(admin, policy_dir, audit_dir).await {
                eprintln!("vitrined: remote admin endpoint stopped: {e}");
            }
        });
    }
    let builder = match &config.address {
        Some(address) => zbus::connection::Builder::address(address.as_str())?,
        None => zbus::connection::Builder::session()?,
    };
    let connection = builder.build().await?;
    let served = bus::serve(
        connection,
        Arc::clone(&ctx),
        first_id,
        config.guard_socket.clone(),
        stop,
    )
    .await;
    // The process ends next, without dropping what the bus objects hold:
    // VMs waiting in the pool must not outlive the daemon, nor their files
    // and cgroups (nor those of a VM that was still starting).
    ctx.pool.shutdown();
    report_sweep("at exit", &runtime_dir::sweep_own());
    served?;
    Ok(())
}

/// Completes on the first SIGTERM, SIGINT or SIGHUP, saying which.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>, ServiceError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ServiceError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServiceError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServiceError::Signals)?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
        };
        eprintln!("vitrined: stopping on {name}: cancelling tasks, removing VM files");
    })
}

/// Logs each removal of a sweep of the runtime directory and cgroups.
fn report_sweep(when: &str, sweep: &runtime_dir::Sweep) {
    for removed in &sweep.removed {
        eprintln!("vitrined: {when}: {removed}");
    }
    for kept in &sweep.kept {
        eprintln!("vitrined: {when}: kept {kept}");
    }
}

/// `backend`, cloning each VM from its shape's template (`cloner` makes
/// the cache over it) when `templates` and there is an image to key them
/// by, else booting each.
fn with_templates<B, C>(
    backend: B,
    image: &Result<worker::ImageInfo, String>,
    templates: bool,
    cloner: impl FnOnce(B, TemplateStore, String) -> C,
) -> Arc<dyn VmStarter>
where
    B: VmStarter + 'static,
    C: VmStarter + 'static,
{
    match image {
        Ok(info) if templates => {
            let store = TemplateStore::from_env();
            eprintln!(
                "vitrined: task VMs are clones of a template per VM shape (cache {})",
                store.root().display()
            );
            Arc::new(cloner(backend, store, info.sha256.clone()))
        }
        _ => {
            eprintln!("vitrined: task VMs boot from scratch (no templates)");
            Arc::new(backend)
        }
    }
}

/// The folder holding the audit log and its rotations.
fn ctx_audit_dir(dirs: &StateDirs) -> PathBuf {
    let log = dirs.audit_log();
    log.parent()
        .map_or(log.clone(), std::path::Path::to_path_buf)
}

/// Starts the Downloads watcher, which marks new files untrusted so that
/// opening them goes to the sandbox. A folder that cannot be watched is
/// reported, not fatal.
fn watch_downloads() -> Option<crate::downloads_watch::DownloadsWatcher> {
    let config = crate::downloads_watch::WatchConfig::from_env();
    match crate::downloads_watch::DownloadsWatcher::start(config) {
        Ok(w) => {
            for dir in w.watched() {
                eprintln!("vitrined: marking new files in {} untrusted", dir.display());
            }
            Some(w)
        }
        Err(e) => {
            eprintln!("vitrined: the Downloads watcher is off: {e}");
            None
        }
    }
}
