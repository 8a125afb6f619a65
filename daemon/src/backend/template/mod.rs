//! Task VMs as copy-on-write clones of a snapshotted template, the way
//! Kata Containers templates QEMU VMs. One template per VM shape (image,
//! memory, vCPUs, command line, accelerator, QEMU version) is booted once
//! to the shim's `Ready` with its RAM in a shared memfd, then saved with
//! `x-ignore-shared` and stopped for good ([`store`] caches it). Each
//! clone maps the template's RAM private (`share=off`) from a sealed memfd
//! and loads the saved device state with `migrate-incoming`: it shares
//! every page it does not write, and is up in a fraction of a boot.
//!
//! [`TemplateCloner`] is the [`VmStarter`] the daemon uses with QEMU: it
//! makes or loads the template of a VM's shape and clones it. A template
//! that fails its checksum, or whose state QEMU refuses, is removed and
//! made again, and the log says why. Only when no template can be made
//! does a VM boot from scratch, and the log says so loudly.

pub mod book;
pub mod kvm;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::qemu::{Launch, QemuBackend, QemuError, QemuVm};
use super::{Backend, GuestVm, VmConfig};
use crate::service::vm_seam::{RunningVm, VmSeamError, VmStarter};
use crate::service::worker::chain;
use book::{TemplateBook, STALE_BUILD};
use store::{LoadedTemplate, TemplateKey, TemplateMeta, TemplateStore, TemplateStoreError};

/// Longest a template VM may take to save its state.
const SAVE_WAIT: Duration = Duration::from_secs(60);

/// A template could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The cache failed.
    #[error(transparent)]
    Store(#[from] TemplateStoreError),
    /// The template VM did not boot or save.
    #[error("the template VM failed")]
    Qemu(#[from] QemuError),
}

/// Makes, caches and clones templates under QEMU.
#[derive(Debug)]
pub struct TemplateCloner {
    qemu: QemuBackend,
    store: TemplateStore,
    image_sha256: String,
    qemu_version: String,
    book: TemplateBook<LoadedTemplate>,
}

/// How a clone's VM came to be, for the task's details.
#[derive(Debug, Clone)]
pub struct CloneOrigin {
    /// The template's directory name (its key's hash).
    pub template: String,
    /// How long the clone took, from spawn to running.
    pub clone_time: Duration,
}

impl TemplateCloner {
    /// Clones VMs of the image whose SHA-256 is `image_sha256`, with
    /// templates cached in `store`.
    pub fn new(qemu: QemuBackend, store: TemplateStore, image_sha256: impl Into<String>) -> Self {
        let removed = store.remove_stale_builds(STALE_BUILD);
        for dir in removed {
            log::info!(
                "templates: removed {}, left by a daemon that died while saving it",
                dir.display()
            );
        }
        let qemu_version = qemu.version().unwrap_or_else(|e| format!("unknown ({e})"));
        Self {
            qemu,
            store,
            image_sha256: image_sha256.into(),
            qemu_version,
            book: TemplateBook::default(),
        }
    }

    /// The cache.
    pub fn store(&self) -> &TemplateStore {
        &self.store
    }

    /// What a template for `config` must match.
    pub fn key(&self, config: &VmConfig) -> TemplateKey {
        let mut cmdline = config.image.cmdline.clone();
        if !config.extra_cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&config.extra_cmdline);
        }
        TemplateKey {
            image_sha256: self.image_sha256.clone(),
            memory_mib: config.memory_mib,
            vcpus: config.vcpus,
            cmdline,
            accel: format!(
                "{:?} cpu={}",
                config.accel,
                super::qemu::cpu_model(config.accel)
            ),
            backend: "qemu".to_owned(),
            backend_version: self.qemu_version.clone(),
            app_disk: store::app_disk_identity(&config.image),
        }
    }

    /// Why the last template was removed and made again, if one was.
    pub fn last_rebuild(&self) -> Option<String> {
        self.book.last_rebuild()
    }

    /// The loaded template for `config`: from memory, from the cache
    /// (checked), or made now.
    pub fn template(&self, config: &VmConfig) -> Result<Arc<LoadedTemplate>, TemplateError> {
        let key = self.key(config);
        self.book.load_or_make(
            &key,
            &self.store,
            || self.store.load(&key),
            || self.make(config, &key),
        )
    }

    /// Throws the template of `config` away (from memory and the cache),
    /// so the next clone makes it again.
    pub fn discard(&self, config: &VmConfig, why: &str) -> Result<(), TemplateError> {
        Ok(self.book.discard(&self.key(config), &self.store, why)?)
    }

    /// Boots the template VM for `config` to Ready, saves it, and caches it.
    fn make(&self, config: &VmConfig, key: &TemplateKey) -> Result<LoadedTemplate, TemplateError> {
        let started = Instant::now();
        let build = self.store.begin()?;
        let bytes = u64::from(config.memory_mib) * 1024 * 1024;
        let ram = Arc::new(store::new_guest_ram(bytes)?);
        let mut vm = self.qemu.start_with(
            config,
            &Launch::TemplateSource {
                ram: Arc::clone(&ram),
            },
        )?;
        let ready = vm.ready().clone();
        let state_path = store::state_path(build.path());
        let state = std::fs::File::create(&state_path)
            .map_err(|e| TemplateStoreError::Io(state_path.display().to_string(), e))?;
        let saved = vm.save_template(&state, Instant::now() + SAVE_WAIT)?;
        drop(state);
        drop(vm);
        let meta = TemplateMeta {
            format: store::FORMAT,
            key: key.clone(),
            memory_bytes: bytes,
            memory_sha256: String::new(),
            state_sha256: String::new(),
            ready,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            build_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let dir = self.store.commit(build, &ram, meta)?;
        drop(ram);
        let loaded = self.store.load(key)?.ok_or_else(|| {
            TemplateStoreError::Meta(dir.clone(), "vanished after it was saved".into())
        })?;
        log::info!(
            "templates: made {} in {} ms ({} bytes of device state sent: {})",
            dir.display(),
            started.elapsed().as_millis(),
            loaded.state.len(),
            saved.get("ram").map(|r| r.to_string()).unwrap_or_default()
        );
        Ok(loaded)
    }

    /// A clone of `config`'s template, running, its channel open; the shim
    /// waits for its identity.
    pub fn clone_vm(&self, config: &VmConfig) -> Result<(QemuVm, CloneOrigin), TemplateError> {
        let template = self.template(config)?;
        let launch = Launch::Clone {
            ram: Arc::clone(&template.memory),
            state: Arc::new(template.state_fd()?),
            ready: template.meta.ready.clone(),
            template: template.meta.key.id(),
        };
        let vm = self.qemu.start_with(config, &launch)?;
        let origin = CloneOrigin {
            template: template.meta.key.id(),
            clone_time: GuestVm::boot_time(&vm),
        };
        Ok((vm, origin))
    }

    fn start_vm(&self, config: &VmConfig) -> Result<QemuVm, String> {
        self.book.start(
            &self.key(config).id(),
            || {
                self.clone_vm(config)
                    .map(|(vm, _)| vm)
                    .map_err(|e| chain(&e))
            },
            |why| self.discard(config, why).map_err(|e| chain(&e)),
            || Backend::start(&self.qemu, config).map_err(|e| chain(&e)),
        )
    }
}

impl VmStarter for TemplateCloner {
    fn name(&self) -> String {
        "qemu".to_owned()
    }

    fn start(&self, config: &VmConfig) -> Result<Box<dyn RunningVm>, VmSeamError> {
        self.start_vm(config)
            .map(|vm| Box::new(vm) as Box<dyn RunningVm>)
            .map_err(VmSeamError::Backend)
    }
}
