//! Hot reload: a running evaluator picks up a changed policy directory.
//!
//! [`PolicyHandle`] holds the policy in force behind an atomic pointer
//! swap; a decision takes a snapshot and never waits for a reload.
//! [`PolicyWatcher`] watches the policy directory and its parent (the parent
//! sees `apply` replace the directory symlink), waits for the writes to
//! settle, reloads, and swaps the new policy in only if it loads cleanly.
//! A broken edit keeps the old policy and is reported; it never weakens,
//! and never empties, the policy in force.

use crate::decision::Decision;
use crate::diagnostics::Diagnostics;
use crate::policy::{PolicySet, PolicyVersion};
use crate::request::Request;
use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot start the policy watcher thread")]
    Spawn(#[source] std::io::Error),
}

/// The policy in force, shared by every thread that decides.
#[derive(Debug)]
pub struct PolicyHandle {
    current: ArcSwap<PolicySet>,
}

impl PolicyHandle {
    pub fn new(policy: PolicySet) -> Self {
        PolicyHandle {
            current: ArcSwap::from_pointee(policy),
        }
    }

    /// A snapshot of the policy in force.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    pub fn evaluate(&self, req: &Request) -> Decision {
        self.current.load().evaluate(req)
    }

    /// Replace the policy in force.
    pub fn replace(&self, policy: PolicySet) {
        self.current.store(Arc::new(policy));
    }

    /// Load `dir` and swap it in if it is valid and differs from the policy
    /// in force. A broken policy is not swapped in.
    pub fn reload_from(&self, dir: &Path) -> ReloadEvent {
        let old = self.current.load().version();
        match PolicySet::load_dir(dir) {
            Ok(new) if new.version() == old => ReloadEvent::Unchanged { version: old },
            Ok(new) => {
                let to = new.version();
                self.replace(new);
                log::info!(
                    "policy reloaded from {}: {} -> {}",
                    dir.display(),
                    old.short(),
                    to.short()
                );
                ReloadEvent::Applied { from: old, to }
            }
            Err(diagnostics) => {
                log::error!(
                    "policy in {} is broken; keeping version {}: {}",
                    dir.display(),
                    old.short(),
                    diagnostics.summary()
                );
                ReloadEvent::Rejected {
                    kept: old,
                    diagnostics,
                }
            }
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone)]
pub enum ReloadEvent {
    /// The new policy is in force.
    Applied {
        from: PolicyVersion,
        to: PolicyVersion,
    },
    /// The directory changed but the policy is the same.
    Unchanged { version: PolicyVersion },
    /// The new policy is broken; the old one stays in force.
    Rejected {
        kept: PolicyVersion,
        diagnostics: Diagnostics,
    },
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// How long the directory must be quiet before a reload: editors and
/// `apply` make several changes in a row.
pub const SETTLE: Duration = Duration::from_millis(150);

/// Watches a policy directory and reloads a [`PolicyHandle`]. Dropping it
/// stops the watch.
#[derive(Debug)]
pub struct PolicyWatcher {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Fs(_) => "Fs",
            Msg::Stop => "Stop",
        })
    }
}

impl PolicyWatcher {
    /// Watch `dir` (the path the policy was loaded from) and reload `handle`
    /// when it changes. `on_event` hears every reload outcome, on the
    /// watcher's thread; a daemon uses it to notify the user loudly of a
    /// rejected policy.
    pub fn spawn(
        dir: impl Into<PathBuf>,
        handle: Arc<PolicyHandle>,
        on_event: impl Fn(&ReloadEvent) + Send + 'static,
    ) -> Result<PolicyWatcher, WatchError> {
        let dir: PathBuf = dir.into().components().collect();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let (tx, rx) = mpsc::channel();
        let fs_tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |ev| {
            let _ = fs_tx.send(Msg::Fs(ev));
        })
        .map_err(|source| WatchError::Watch {
            path: dir.clone(),
            source,
        })?;
        watcher
            .watch(&parent, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                path: parent.clone(),
                source,
            })?;
        // The directory itself may not exist yet (the daemon failed closed);
        // the parent watch sees it appear.
        let _ = watcher.watch(&dir, RecursiveMode::NonRecursive);
        let thread = std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || run(watcher, rx, dir, handle, on_event))
            .map_err(WatchError::Spawn)?;
        Ok(PolicyWatcher {
            tx,
            thread: Some(thread),
        })
    }
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relevant(event: &notify::Event, dir: &Path) -> bool {
    let kind_matters = match event.kind {
        // Our own reads open the files; only a finished write matters.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    kind_matters && event.paths.iter().any(|p| p.starts_with(dir))
}

fn run(
    mut watcher: notify::RecommendedWatcher,
    rx: mpsc::Receiver<Msg>,
    dir: PathBuf,
    handle: Arc<PolicyHandle>,
    on_event: impl Fn(&ReloadEvent),
) {
    loop {
        // Wait for a change.
        match rx.recv() {
            Ok(Msg::Fs(Ok(ev))) if relevant(&ev, &dir) => {}
            Ok(Msg::Fs(Ok(_))) => continue,
            Ok(Msg::Fs(Err(e))) => {
                log::warn!("policy watcher: {e}");
                continue;
            }
            Ok(Msg::Stop) | Err(_) => return,
        }
        // Let the burst settle.
        loop {
            match rx.recv_timeout(SETTLE) {
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(Msg::Fs(_)) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        // `dir` may now be a different directory (a swapped symlink):
        // watch whatever it names now.
        let _ = watcher.unwatch(&dir);
        let _ = watcher.watch(&dir, RecursiveMode::NonRecursive);
        let event = handle.reload_from(&dir);
        on_event(&event);
    }
}
