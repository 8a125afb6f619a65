//! `vitrine templates`: the VM templates task VMs are cloned from, in the
//! cache this user's `vitrined` uses (`$VITRINE_TEMPLATE_DIR`, else
//! `~/.cache/vitrine/templates`). A template is current when it was made
//! from the guest image and the QEMU installed now; any other one is stale
//! and no daemon will clone it again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use vitrine_daemon::backend::qemu::QemuBackend;
use vitrine_daemon::backend::template::store::{TemplateEntry, TemplateStore};
use vitrine_daemon::backend::template::TemplateCloner;
use vitrine_daemon::backend::{Accel, GuestImage};
use vitrine_daemon::image_cache;
use vitrine_daemon::service::worker::{image_info, task_vm_config};
use vitrine_policy::{PolicySet, SYSTEM_POLICY_DIR};

#[derive(Debug, Subcommand)]
pub enum TemplateAction {
    /// Each template with its key, size on disk and age (the default).
    List,
    /// Remove stale and broken templates (`--all`: every template).
    Prune {
        /// Remove current templates too.
        #[arg(long)]
        all: bool,
    },
    /// Make the template of a profile's VM shape again, now.
    Rebuild {
        /// The profile whose VM shape is rebuilt.
        #[arg(long, default_value = "document")]
        profile: String,
        /// Policy directory holding the profile.
        #[arg(long, value_name = "DIR", env = "VITRINE_POLICY_DIR", default_value = SYSTEM_POLICY_DIR)]
        policy_dir: PathBuf,
    },
}

/// What the installed image and QEMU are, to tell current from stale.
struct Current {
    image_sha256: Option<String>,
    qemu_version: Option<String>,
}

impl Current {
    fn find() -> Self {
        let image_sha256 = image_cache::locate(None)
            .ok()
            .and_then(|dir| GuestImage::from_dir(&dir).ok())
            .and_then(|image| image_info(image).ok())
            .map(|i| i.sha256);
        Self {
            image_sha256,
            qemu_version: QemuBackend::new().version().ok(),
        }
    }

    /// Why `entry` will not be cloned again, if it will not.
    fn stale(&self, entry: &TemplateEntry) -> Option<String> {
        let meta = match &entry.meta {
            Ok(m) => m,
            Err(why) => return Some(format!("broken: {why}")),
        };
        if self.image_sha256.as_deref() != Some(&meta.key.image_sha256) {
            return Some("stale: made from another guest image".to_owned());
        }
        if meta.key.backend == "qemu"
            && self.qemu_version.as_deref() != Some(&meta.key.backend_version)
        {
            return Some(format!("stale: made by {}", meta.key.backend_version));
        }
        None
    }
}

pub fn run(action: Option<TemplateAction>) -> Result<ExitCode> {
    let store = TemplateStore::from_env();
    match action.unwrap_or(TemplateAction::List) {
        TemplateAction::List => {
            list(&store);
            Ok(ExitCode::SUCCESS)
        }
        TemplateAction::Prune { all } => {
            let current = Current::find();
            let mut removed = 0;
            for entry in store.list() {
                let why = match current.stale(&entry) {
                    Some(why) => why,
                    None if all => "--all".to_owned(),
                    None => continue,
                };
                std::fs::remove_dir_all(&entry.dir)
                    .with_context(|| format!("removing {}", entry.dir.display()))?;
                println!(
                    "removed   {} ({why}; {})",
                    entry.dir.display(),
                    mib(entry.disk_bytes)
                );
                removed += 1;
            }
            println!(
                "templates {removed} removed from {}",
                store.root().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        TemplateAction::Rebuild {
            profile,
            policy_dir,
        } => rebuild(store, &profile, &policy_dir),
    }
}

fn list(store: &TemplateStore) {
    let current = Current::find();
    let entries = store.list();
    println!(
        "{:<16} {:<8} {:>9} {:>6} {:>10} {:>8}  STATE",
        "TEMPLATE", "BACKEND", "MEMORY", "VCPUS", "DISK", "AGE"
    );
    for entry in &entries {
        let id = entry.dir.file_name().unwrap_or_default().to_string_lossy();
        let state = current.stale(entry).unwrap_or_else(|| "current".to_owned());
        match &entry.meta {
            Ok(m) => println!(
                "{:<16} {:<8} {:>5} MiB {:>6} {:>10} {:>8}  {state}",
                id,
                m.key.backend,
                m.key.memory_mib,
                m.key.vcpus,
                mib(entry.disk_bytes),
                age(entry.age),
            ),
            Err(_) => println!(
                "{:<16} {:<8} {:>9} {:>6} {:>10} {:>8}  {state}",
                id,
                "?",
                "?",
                "?",
                mib(entry.disk_bytes),
                age(entry.age)
            ),
        }
    }
    for entry in entries
        .iter()
        .filter_map(|e| e.meta.as_ref().ok().map(|m| (e, m)))
    {
        let (e, m) = entry;
        println!(
            "\n{}:\n  image   sha256 {}\n  kernel  {}\n  backend {} {}\n  made in {} ms; RAM sha256 {}; state sha256 {}",
            e.dir.display(),
            m.key.image_sha256,
            m.key.cmdline,
            m.key.backend,
            m.key.backend_version,
            m.build_ms,
            m.memory_sha256,
            m.state_sha256
        );
    }
    if entries.is_empty() {
        println!(
            "(none in {}: vitrined makes one per VM shape on first use)",
            store.root().display()
        );
    }
}

fn rebuild(store: TemplateStore, profile: &str, policy_dir: &std::path::Path) -> Result<ExitCode> {
    let (policy, problems) = PolicySet::load_or_fail_closed(policy_dir);
    if let Some(diags) = problems {
        anyhow::bail!(
            "the policy in {} does not load, so its profiles are unknown:\n{diags}",
            policy_dir.display()
        );
    }
    let profile = policy.profile(profile).with_context(|| {
        format!(
            "the policy in {} has no profile `{profile}`",
            policy_dir.display()
        )
    })?;
    let dir = image_cache::locate(None).map_err(anyhow::Error::msg)?;
    let image = GuestImage::from_dir(&dir)?;
    let info = image_info(image.clone()).map_err(anyhow::Error::msg)?;
    // The shape vitrined gives this profile's tasks under QEMU (TCG).
    let config = task_vm_config(profile, image, Accel::Tcg).map_err(anyhow::Error::msg)?;
    let cloner = TemplateCloner::new(QemuBackend::new(), store, info.sha256);
    let key = cloner.key(&config);
    cloner
        .discard(&config, "`vitrine templates rebuild` asked for it")
        .context("removing the old template")?;
    let started = Instant::now();
    let made = cloner.template(&config).context("making the template")?;
    println!(
        "template  {} made in {} ms for profile `{}` ({} MiB, {} vCPU): {}",
        key.id(),
        started.elapsed().as_millis(),
        profile.name,
        config.memory_mib,
        config.vcpus,
        made.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn age(d: Duration) -> String {
    match d.as_secs() {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}
