//! What the QEMU and kvm template caches share: the templates this daemon
//! has loaded, one template made at a time, shapes that could get none,
//! and the rule for starting a VM: clone; if the clone fails, make the
//! template again once and clone; if that fails too, boot from scratch,
//! loudly, and do not try that shape again for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::store::{TemplateKey, TemplateStore, TemplateStoreError};

/// A shape whose template could not be made is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(5 * 60);
/// A `.build-*` directory older than this was left by a dead daemon.
pub const STALE_BUILD: Duration = Duration::from_secs(10 * 60);

/// Loaded templates by key id, and what went wrong with the others.
#[derive(Debug)]
pub struct TemplateBook<T> {
    loaded: Mutex<HashMap<String, Arc<T>>>,
    /// One template is made at a time; the others wait for it.
    making: Mutex<()>,
    /// Shapes whose template could not be made, and when.
    failed: Mutex<HashMap<String, (Instant, String)>>,
    /// Why the last template was thrown away and made again.
    last_rebuild: Mutex<Option<String>>,
}

impl<T> Default for TemplateBook<T> {
    fn default() -> Self {
        Self {
            loaded: Mutex::default(),
            making: Mutex::default(),
            failed: Mutex::default(),
            last_rebuild: Mutex::default(),
        }
    }
}

impl<T> TemplateBook<T> {
    fn cached(&self, id: &str) -> Option<Arc<T>> {
        self.loaded.lock().ok()?.get(id).cloned()
    }

    /// The loaded template `id`, or what `load_or_make` gives, run while no
    /// other template is being made.
    fn get_or<E>(
        &self,
        id: &str,
        load_or_make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        if let Some(t) = self.cached(id) {
            return Ok(t);
        }
        let _making = self.making.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = self.cached(id) {
            return Ok(t);
        }
        let template = Arc::new(load_or_make()?);
        if let Ok(mut l) = self.loaded.lock() {
            l.insert(id.to_owned(), Arc::clone(&template));
        }
        Ok(template)
    }

    /// The template of `key`: loaded before, or `load`ed from `store`
    /// (which checks its hashes), or `make`d now. One that fails to load
    /// is removed from the cache and made again, and the log says why.
    pub fn load_or_make<E: From<TemplateStoreError>>(
        &self,
        key: &TemplateKey,
        store: &TemplateStore,
        load: impl FnOnce() -> Result<Option<T>, TemplateStoreError>,
        make: impl Fn() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let id = key.id();
        self.get_or(&id, || match load() {
            Ok(Some(t)) => Ok(t),
            Ok(None) => make(),
            Err(why) => {
                self.note_rebuild(&id, &why.to_string());
                store.remove(key)?;
                make()
            }
        })
    }

    /// Forgets the template of `key`, removes it from `store`, and says
    /// why it is made again.
    pub fn discard(
        &self,
        key: &TemplateKey,
        store: &TemplateStore,
        why: &str,
    ) -> Result<(), TemplateStoreError> {
        let id = key.id();
        self.note_rebuild(&id, why);
        if let Ok(mut l) = self.loaded.lock() {
            l.remove(&id);
        }
        store.remove(key)
    }

    /// Logs, and keeps for [`Self::last_rebuild`], why template `id` is
    /// made again.
    pub fn note_rebuild(&self, id: &str, why: &str) {
        log::warn!("templates: template {id} is unusable and is made again: {why}");
        if let Ok(mut last) = self.last_rebuild.lock() {
            *last = Some(format!("template {id}: {why}"));
        }
    }

    /// Why the last template was removed and made again, if one was.
    pub fn last_rebuild(&self) -> Option<String> {
        self.last_rebuild.lock().ok()?.clone()
    }

    /// Why the shape of template `id` boots from scratch now, if it does.
    pub fn failed(&self, id: &str) -> Option<String> {
        let failed = self.failed.lock().ok()?;
        let (at, why) = failed.get(id)?;
        (at.elapsed() < RETRY_AFTER).then(|| why.clone())
    }

    /// A VM of the shape whose template is `id`: `clone`d; after a failed
    /// clone, `discard`ed and cloned once more; after that, `boot`ed, and
    /// this shape boots for [`RETRY_AFTER`] without trying again.
    pub fn start<V>(
        &self,
        id: &str,
        clone: impl Fn() -> Result<V, String>,
        discard: impl FnOnce(&str) -> Result<(), String>,
        boot: impl FnOnce() -> Result<V, String>,
    ) -> Result<V, String> {
        let why = match self.failed(id) {
            Some(why) => why,
            None => match clone() {
                Ok(vm) => return Ok(vm),
                Err(first) => {
                    // A clone that failed may come from a broken template.
                    if let Err(e) = discard(&format!("a clone of it failed: {first}")) {
                        log::warn!("templates: cannot remove template {id}: {e}");
                    }
                    match clone() {
                        Ok(vm) => return Ok(vm),
                        Err(why) => {
                            if let Ok(mut f) = self.failed.lock() {
                                f.insert(id.to_owned(), (Instant::now(), why.clone()));
                            }
                            why
                        }
                    }
                }
            },
        };
        log::error!(
            "templates: NO TEMPLATE for this VM shape, so the VM BOOTS FROM SCRATCH \
             (seconds, not milliseconds): {why}"
        );
        boot()
    }
}
