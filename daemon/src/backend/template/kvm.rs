//! Templates on the project's own VMM, the `kvm` backend. A template is a
//! `vitrine-vmm snapshot` of the guest image, taken on the console line
//! where the kernel starts the shim ([`TEMPLATE_POINT`]): every driver has
//! probed and no vsock connection is open yet. Each clone is a jailed
//! `vitrine-vmm restore` of that directory, bound read-only, with its own
//! vsock socket: the VMM maps `mem` MAP_PRIVATE, writes a fresh identity
//! page and resets the vsock transport, and the clone's shim connects to
//! its own socket and says Ready there. That connection is the clone's
//! channel, and its identity exchange follows as for any VM.
//!
//! Why not at the shim's Ready, as under QEMU: the shim's connection to
//! the host cannot survive the transport reset, and the shim does not
//! connect again. So a clone still runs the shim's start-up (no kernel
//! boot); moving the point to Ready needs a shim that reconnects after a
//! reset.
//!
//! A new template is kept only after one clone of it reached Ready (its
//! `Ready` is what `template.json` records). A template that fails its
//! hashes, or whose clone fails, is made again once; when none can be
//! made, VMs boot from scratch and the log says so loudly.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::book::{TemplateBook, STALE_BUILD};
use super::store::{
    SnapshotTemplate, TemplateKey, TemplateMeta, TemplateStore, TemplateStoreError, FORMAT,
    KVM_BACKEND,
};
use crate::backend::kvm::{KvmBackend, KvmError, KvmVm, TEMPLATE_POINT};
use crate::backend::{Backend, GuestVm, VmConfig};
use crate::service::vm_seam::{RunningVm, VmSeamError, VmStarter};
use crate::service::worker::chain;

/// A kvm template could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum KvmTemplateError {
    /// The cache failed.
    #[error(transparent)]
    Store(#[from] TemplateStoreError),
    /// The template VM or a clone failed.
    #[error("the VMM failed")]
    Vmm(#[from] KvmError),
}

/// [`TemplateKey::backend_version`] of kvm templates: the VMM's snapshot
/// format, which a restore checks too.
pub fn backend_version() -> String {
    format!(
        "vitrine-vmm snapshot format {}",
        vitrine_microvm::snapshot::file::VERSION
    )
}

/// Makes, caches and clones templates under `vitrine-vmm`.
#[derive(Debug)]
pub struct KvmTemplates {
    kvm: KvmBackend,
    store: TemplateStore,
    image_sha256: String,
    book: TemplateBook<SnapshotTemplate>,
}

impl KvmTemplates {
    /// Clones VMs of the image whose SHA-256 is `image_sha256`, with
    /// templates cached in `store`.
    pub fn new(kvm: KvmBackend, store: TemplateStore, image_sha256: impl Into<String>) -> Self {
        for dir in store.remove_stale_builds(STALE_BUILD) {
            log::info!(
                "templates: removed {}, left by a daemon that died while saving it",
                dir.display()
            );
        }
        Self {
            kvm,
            store,
            image_sha256: image_sha256.into(),
            book: TemplateBook::default(),
        }
    }

    /// The cache.
    pub fn store(&self) -> &TemplateStore {
        &self.store
    }

    /// What a template for `config` must match: the command line is the
    /// template VM's own, as the VMM gets it.
    pub fn key(&self, config: &VmConfig) -> TemplateKey {
        TemplateKey {
            image_sha256: self.image_sha256.clone(),
            memory_mib: config.memory_mib,
            vcpus: config.vcpus,
            cmdline: self.kvm.template_cmdline(config),
            accel: format!("{:?}", config.accel),
            backend: KVM_BACKEND.to_owned(),
            backend_version: backend_version(),
            app_disk: super::store::app_disk_identity(&config.image),
        }
    }

    /// The checked template for `config`: from memory, from the cache
    /// (its hashes checked), or made now.
    pub fn template(&self, config: &VmConfig) -> Result<Arc<SnapshotTemplate>, KvmTemplateError> {
        let key = self.key(config);
        self.book.load_or_make(
            &key,
            &self.store,
            || self.store.load_snapshot(&key),
            || self.make(config, &key),
        )
    }

    /// Throws the template of `config` away, from memory and the cache.
    pub fn discard(&self, config: &VmConfig, why: &str) -> Result<(), KvmTemplateError> {
        Ok(self.book.discard(&self.key(config), &self.store, why)?)
    }

    /// Snapshots the template VM of `config`, checks it with one clone,
    /// and caches it.
    fn make(
        &self,
        config: &VmConfig,
        key: &TemplateKey,
    ) -> Result<SnapshotTemplate, KvmTemplateError> {
        let started = Instant::now();
        let build = self.store.begin()?;
        self.kvm.snapshot(config, build.path())?;
        let snapshot_ms = started.elapsed().as_millis();
        // A snapshot that cannot bring a shim to Ready is never kept.
        let check = self.kvm.restore(config, build.path())?;
        let ready = check.ready().clone();
        let check_ms = GuestVm::boot_time(&check).as_millis();
        drop(check);
        let meta = TemplateMeta {
            format: FORMAT,
            key: key.clone(),
            memory_bytes: 0,
            memory_sha256: String::new(),
            state_sha256: String::new(),
            ready,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            build_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let dir = self.store.commit_snapshot(build, meta)?;
        let template = self.store.load_snapshot(key)?.ok_or_else(|| {
            TemplateStoreError::Meta(dir.clone(), "vanished after it was saved".into())
        })?;
        log::info!(
            "templates: made {} in {} ms (snapshot at {TEMPLATE_POINT:?} {snapshot_ms} ms, \
             its checking clone to Ready {check_ms} ms)",
            dir.display(),
            started.elapsed().as_millis(),
        );
        Ok(template)
    }

    /// A clone of `config`'s template whose shim said Ready on the clone's
    /// own vsock socket; it waits for its identity.
    pub fn clone_vm(&self, config: &VmConfig) -> Result<KvmVm, KvmTemplateError> {
        let template = self.template(config)?;
        Ok(self.kvm.restore(config, &template.dir)?)
    }

    fn start_vm(&self, config: &VmConfig) -> Result<KvmVm, String> {
        self.book.start(
            &self.key(config).id(),
            || self.clone_vm(config).map_err(|e| chain(&e)),
            |why| self.discard(config, why).map_err(|e| chain(&e)),
            || Backend::start(&self.kvm, config).map_err(|e| chain(&e)),
        )
    }
}

impl VmStarter for KvmTemplates {
    fn name(&self) -> String {
        "kvm".to_owned()
    }

    fn start(&self, config: &VmConfig) -> Result<Box<dyn RunningVm>, VmSeamError> {
        self.start_vm(config)
            .map(|vm| Box::new(vm) as Box<dyn RunningVm>)
            .map_err(VmSeamError::Backend)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::backend::{Accel, GuestImage};

    fn config() -> VmConfig {
        let mut config = VmConfig::new(GuestImage {
            kernel: PathBuf::from("/images/vmlinux"),
            initrd: PathBuf::from("/images/initrd.gz"),
            cmdline: "console=ttyS0 reboot=t quiet".to_owned(),
            app_disk: None,
        });
        config.accel = Accel::Kvm;
        config
    }

    fn templates(root: &std::path::Path) -> KvmTemplates {
        KvmTemplates::new(
            KvmBackend::with_binary("/nonexistent/vitrine-vmm"),
            TemplateStore::at(root),
            "cd".repeat(32),
        )
    }

    #[test]
    fn the_key_names_the_vmm_snapshot_format_and_the_template_cmdline() {
        let root = tempfile::tempdir().unwrap();

        let key = templates(root.path()).key(&config());

        assert_eq!(key.backend, "kvm");
        assert_eq!(
            key.backend_version,
            format!(
                "vitrine-vmm snapshot format {}",
                vitrine_microvm::snapshot::file::VERSION
            )
        );
        assert_eq!(
            key.cmdline,
            "console=ttyS0 reboot=t quiet reboot=k vitrine.port=1024 loglevel=7"
        );
        assert_eq!(key.accel, "Kvm");
        assert_eq!(key.layout(), super::super::store::Layout::Snapshot);
    }

    #[test]
    fn each_vm_shape_has_its_own_template() {
        let root = tempfile::tempdir().unwrap();
        let templates = templates(root.path());
        let mut bigger = config();
        bigger.memory_mib *= 2;
        let mut more_cpus = config();
        more_cpus.vcpus += 1;
        let mut other_cmdline = config();
        other_cmdline.extra_cmdline = "clearcpuid=avx".to_owned();

        let ids: Vec<String> = [config(), bigger, more_cpus, other_cmdline]
            .iter()
            .map(|c| templates.key(c).id())
            .collect();

        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
    }

    #[test]
    fn with_no_vmm_a_vm_falls_back_to_booting_and_says_why() {
        let root = tempfile::tempdir().unwrap();
        let templates = templates(root.path());

        let err = templates.start_vm(&config()).unwrap_err();

        // The boot fallback ran (the jail refuses the made-up image
        // first), and the failed shape is remembered for RETRY_AFTER.
        assert!(err.contains("/images/vmlinux"), "{err}");
        let why = templates
            .book
            .failed(&templates.key(&config()).id())
            .unwrap();
        assert!(why.contains("/images/vmlinux"), "{why}");
        // No half-made template is left in the cache.
        assert!(templates.store().list().is_empty());
    }
}
