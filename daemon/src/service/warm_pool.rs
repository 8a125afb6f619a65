//! VMs booted ahead of the task that will use them. A pooled VM has booted
//! to the shim's `Ready` and has never seen a task, so taking one is the
//! same as booting one, minus the boot: no state passes between tasks, and
//! each VM still serves exactly one task and is destroyed after it.
//!
//! The pool keeps up to `size` VMs for each VM shape (memory, vCPUs,
//! command line) that tasks used, plus the shape it is asked to warm at
//! start. One long-lived thread boots them, for two reasons: boots never
//! compete with each other, and a jailed VMM, which dies with the thread
//! that started it (PR_SET_PDEATHSIG follows the thread, not the process),
//! outlives the task that asked for the refill.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::vm_seam::{RunningVm, VmStarter};
use crate::backend::{GuestChannel, VmConfig};

/// A pooled VM unused for this long is shut down (it holds its memory).
const MAX_IDLE: Duration = Duration::from_secs(15 * 60);

/// A VM from the pool, with its channel already open.
pub struct WarmVm {
    /// The VM.
    pub vm: Box<dyn RunningVm>,
    /// Its channel; the shim said `Ready` on it and nothing since.
    pub channel: GuestChannel,
    /// How long it waited in the pool.
    pub idle: Duration,
}

impl std::fmt::Debug for WarmVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmVm")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

struct Pooled {
    key: String,
    vm: Box<dyn RunningVm>,
    channel: GuestChannel,
    since: Instant,
}

#[derive(Default)]
struct State {
    ready: Vec<Pooled>,
    /// Boots asked for or running, by shape.
    filling: HashMap<String, usize>,
    closed: bool,
}

/// The pool of one daemon.
pub struct WarmPool {
    size: usize,
    state: Arc<(Mutex<State>, Condvar)>,
    boots: Option<Mutex<Sender<(String, VmConfig)>>>,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The shape of a VM: what must match for a pooled VM to serve a task.
fn shape(config: &VmConfig) -> String {
    format!(
        "{}|{}|{}|{}|{:?}|{} MiB|{} vCPU|{}",
        config.image.kernel.display(),
        config.image.initrd.display(),
        config.image.cmdline,
        config.extra_cmdline,
        config.accel,
        config.memory_mib,
        config.vcpus,
        config.ready_timeout.as_millis()
    )
}

impl WarmPool {
    /// A pool of up to `size` VMs per shape, booted with `backend`; size 0
    /// keeps nothing and boots nothing.
    pub fn new(backend: Arc<dyn VmStarter>, size: usize) -> Self {
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        if size == 0 {
            return Self {
                size,
                state,
                boots: None,
            };
        }
        let (tx, rx) = channel::<(String, VmConfig)>();
        let shared = Arc::clone(&state);
        let spawned = std::thread::Builder::new()
            .name("warm-pool".into())
            .spawn(move || {
                for (key, config) in rx {
                    let booted = backend.start(&config).and_then(|mut vm| {
                        let channel = vm.take_channel()?;
                        Ok((vm, channel))
                    });
                    let (lock, ready) = &*shared;
                    let Ok(mut state) = lock.lock() else { return };
                    if let Some(n) = state.filling.get_mut(&key) {
                        *n = n.saturating_sub(1);
                    }
                    match booted {
                        Ok((vm, channel)) if !state.closed => {
                            log::info!("warm pool: a VM is ready ({key})");
                            state.ready.push(Pooled {
                                key,
                                vm,
                                channel,
                                since: Instant::now(),
                            });
                        }
                        Ok((mut vm, _)) => vm.kill(),
                        Err(e) => log::warn!("warm pool: a VM did not boot: {e}"),
                    }
                    ready.notify_all();
                }
            });
        let boots = match spawned {
            Ok(_) => Some(Mutex::new(tx)),
            Err(e) => {
                log::warn!("warm pool: no booting thread, so no pool: {e}");
                None
            }
        };
        Self { size, state, boots }
    }

    /// VMs the pool keeps per shape.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A VM of `config`'s shape: a ready one, or one already booting (it
    /// started earlier than a new boot would, so waiting for it, up to
    /// `config.ready_timeout`, is never slower). `None`: boot one yourself.
    pub fn take(&self, config: &VmConfig) -> Option<WarmVm> {
        self.boots.as_ref()?;
        let key = shape(config);
        let (lock, ready) = &*self.state;
        let give_up = Instant::now() + config.ready_timeout;
        let mut state = lock.lock().ok()?;
        loop {
            if state.closed {
                return None;
            }
            expire(&mut state);
            while let Some(i) = state.ready.iter().position(|p| p.key == key) {
                let mut pooled = state.ready.swap_remove(i);
                if pooled.channel.idle_and_open() {
                    return Some(WarmVm {
                        vm: pooled.vm,
                        channel: pooled.channel,
                        idle: pooled.since.elapsed(),
                    });
                }
                log::warn!("warm pool: a pooled VM died or spoke unasked; dropped");
                pooled.vm.kill();
            }
            let booting = state.filling.get(&key).copied().unwrap_or(0) > 0;
            let left = give_up.saturating_duration_since(Instant::now());
            if !booting || left.is_zero() {
                return None;
            }
            state = ready.wait_timeout(state, left).ok()?.0;
        }
    }

    /// Boots VMs of `config`'s shape in the background until `size` are
    /// ready or booting.
    pub fn refill(&self, config: &VmConfig) {
        let Some(boots) = &self.boots else { return };
        let key = shape(config);
        let (lock, _) = &*self.state;
        let Ok(mut state) = lock.lock() else { return };
        if state.closed {
            return;
        }
        expire(&mut state);
        let have = state.ready.iter().filter(|p| p.key == key).count()
            + state.filling.get(&key).copied().unwrap_or(0);
        for _ in have..self.size {
            let sent = boots
                .lock()
                .map(|tx| tx.send((key.clone(), config.clone())).is_ok())
                .unwrap_or(false);
            if !sent {
                return;
            }
            *state.filling.entry(key.clone()).or_insert(0) += 1;
        }
    }
}

/// Shuts down VMs that waited too long.
fn expire(state: &mut State) {
    let mut i = 0;
    while i < state.ready.len() {
        if state.ready[i].since.elapsed() > MAX_IDLE {
            let mut old = state.ready.swap_remove(i);
            old.vm.kill();
            log::info!("warm pool: an idle VM was shut down");
        } else {
            i += 1;
        }
    }
}

impl WarmPool {
    /// Kills every waiting VM; one still booting is killed when it is up
    /// (or with its booting thread, for a jailed VM). Takes nothing after.
    pub fn shutdown(&self) {
        let (lock, ready) = &*self.state;
        if let Ok(mut state) = lock.lock() {
            state.closed = true;
            for mut pooled in state.ready.drain(..) {
                // Kills and reaps.
                let _ = pooled.vm.wait_or_kill(Duration::ZERO);
            }
            state.filling.clear();
        }
        ready.notify_all();
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::backend::{GuestImage, VmExit};
    use crate::service::vm_seam::VmSeamError;

    /// A VM whose "guest" is the far end of a socket pair the test holds.
    struct PairVm {
        channel: Option<GuestChannel>,
        killed: Arc<AtomicUsize>,
    }

    impl RunningVm for PairVm {
        fn boot_time(&self) -> Duration {
            Duration::from_millis(1)
        }
        fn take_channel(&mut self) -> Result<GuestChannel, VmSeamError> {
            self.channel.take().ok_or(VmSeamError::ChannelTaken)
        }
        fn wait_or_kill(&mut self, _: Duration) -> Result<VmExit, VmSeamError> {
            self.kill();
            Ok(VmExit::Killed)
        }
        fn kill(&mut self) {
            self.killed.fetch_add(1, Ordering::SeqCst);
        }
        fn serial_log(&self) -> String {
            String::new()
        }
    }

    #[derive(Default)]
    struct PairBackend {
        boots: AtomicUsize,
        killed: Arc<AtomicUsize>,
        guests: Mutex<Vec<UnixStream>>,
    }

    impl VmStarter for PairBackend {
        fn name(&self) -> String {
            "pairs".into()
        }
        fn start(&self, _: &VmConfig) -> Result<Box<dyn RunningVm>, VmSeamError> {
            self.boots.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            let (host, guest) = UnixStream::pair().map_err(VmSeamError::Socket)?;
            self.guests.lock().unwrap().push(guest);
            Ok(Box::new(PairVm {
                channel: Some(
                    GuestChannel::new(host).map_err(|e| VmSeamError::Backend(e.to_string()))?,
                ),
                killed: self.killed.clone(),
            }))
        }
    }

    fn config(memory_mib: u32) -> VmConfig {
        let mut c = VmConfig::new(GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: String::new(),
            app_disk: None,
        });
        c.memory_mib = memory_mib;
        c.ready_timeout = Duration::from_secs(5);
        c
    }

    #[test]
    fn a_refilled_shape_is_served_once_and_other_shapes_are_not() {
        let backend = Arc::new(PairBackend::default());
        let pool = WarmPool::new(backend.clone(), 1);
        pool.refill(&config(512));
        pool.refill(&config(512));

        let first = pool.take(&config(512));
        let other = pool.take(&config(1024));
        let second = pool.take(&config(512));

        assert!(first.is_some(), "the booting VM is waited for");
        assert!(other.is_none(), "another shape is never served");
        assert!(second.is_none(), "a pooled VM serves one task");
        assert_eq!(backend.boots.load(Ordering::SeqCst), 1, "size 1: one boot");
    }

    #[test]
    fn a_vm_that_preloads_an_application_never_serves_one_that_does_not() {
        let backend = Arc::new(PairBackend::default());
        let pool = WarmPool::new(backend.clone(), 1);
        let plain = config(1024);
        let mut office = config(1024);
        office.extra_cmdline = "vitrine.preload=office".into();
        pool.refill(&office);

        let as_plain = pool.take(&plain);
        let as_office = pool.take(&office);

        assert!(as_plain.is_none(), "same memory, other command line");
        assert!(as_office.is_some());
    }

    #[test]
    fn a_pooled_vm_whose_guest_went_away_is_dropped_not_served() {
        let backend = Arc::new(PairBackend::default());
        let pool = WarmPool::new(backend.clone(), 1);
        pool.refill(&config(512));
        let deadline = Instant::now() + Duration::from_secs(5);
        while backend.guests.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        backend.guests.lock().unwrap().clear();

        let taken = pool.take(&config(512));

        assert!(taken.is_none());
        assert_eq!(backend.killed.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn size_zero_boots_nothing_and_dropping_the_pool_kills_what_waits() {
        let backend = Arc::new(PairBackend::default());
        let empty = WarmPool::new(backend.clone(), 0);
        empty.refill(&config(512));
        assert!(empty.take(&config(512)).is_none());
        assert_eq!(backend.boots.load(Ordering::SeqCst), 0);

        let pool = WarmPool::new(backend.clone(), 2);
        pool.refill(&config(512));
        let deadline = Instant::now() + Duration::from_secs(5);
        while backend.guests.lock().unwrap().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        drop(pool);
        assert_eq!(backend.killed.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn after_shutdown_nothing_is_served_or_booted() {
        let backend = Arc::new(PairBackend::default());
        let pool = WarmPool::new(backend.clone(), 1);
        pool.refill(&config(512));
        assert!(pool.take(&config(512)).is_some());

        pool.shutdown();
        pool.refill(&config(512));
        let taken = pool.take(&config(512));

        assert!(taken.is_none());
        assert_eq!(backend.boots.load(Ordering::SeqCst), 1);
    }
}
