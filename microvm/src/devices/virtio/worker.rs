//! The epoll thread that serves an activated device.
//!
//! Each device implements [`EventHandler`] with its own token enum. The loop
//! adds a kill eventfd; [`Worker`] writes it and joins the thread on drop, so
//! a device reset or VM teardown never leaves a thread behind. A snapshot
//! parks the thread and keeps its handler ([`Worker::pause`]). The loop can
//! also be driven by hand ([`EventLoop::run_once`]) from tests and
//! benchmarks that want one thread and deterministic steps.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::seccomp::{self, ThreadKind};

/// Reserved for the kill eventfd; no device token may encode to it.
const KILL_RAW: u64 = u64::MAX;
const EVENTS_PER_WAIT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot create the epoll instance or kill eventfd")]
    Setup(#[source] io::Error),
    #[error("cannot register fd {fd} with epoll")]
    Register {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("epoll_wait failed")]
    Wait(#[source] io::Error),
    #[error("cannot spawn the worker thread")]
    Spawn(#[source] io::Error),
    #[error("the worker thread is gone (it panicked or was stopped)")]
    Gone,
}

/// A device's epoll token: a typed enum that packs into epoll's u64.
pub trait EpollToken: Copy + fmt::Debug {
    fn to_raw(self) -> u64;
    fn from_raw(raw: u64) -> Option<Self>;
}

/// Typed view of the epoll instance, handed to handlers so they can add and
/// drop fds (vsock connections come and go).
pub struct Registry<T> {
    epoll: Epoll,
    _token: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for Registry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("epoll", &self.epoll.as_raw_fd())
            .finish()
    }
}

impl<T: EpollToken> Registry<T> {
    pub fn add(&self, fd: RawFd, token: T, events: EventSet) -> Result<(), WorkerError> {
        self.ctl(ControlOperation::Add, fd, token.to_raw(), events)
    }

    pub fn modify(&self, fd: RawFd, token: T, events: EventSet) -> Result<(), WorkerError> {
        self.ctl(ControlOperation::Modify, fd, token.to_raw(), events)
    }

    pub fn remove(&self, fd: RawFd) -> Result<(), WorkerError> {
        self.ctl(ControlOperation::Delete, fd, 0, EventSet::empty())
    }

    fn ctl(
        &self,
        op: ControlOperation,
        fd: RawFd,
        raw: u64,
        events: EventSet,
    ) -> Result<(), WorkerError> {
        debug_assert_ne!(raw, KILL_RAW, "token collides with the kill token");
        self.epoll
            .ctl(op, fd, EpollEvent::new(events, raw))
            .map_err(|source| WorkerError::Register { fd, source })
    }
}

/// What a device does on its worker thread.
pub trait EventHandler: Send + 'static {
    type Token: EpollToken;

    /// Registers the handler's fds. Called once, before the first wait.
    fn init(&mut self, registry: &Registry<Self::Token>) -> Result<(), WorkerError>;

    /// Handles one ready fd. Must do a bounded amount of work: the kill
    /// eventfd is only looked at between batches.
    fn handle_event(
        &mut self,
        token: Self::Token,
        events: EventSet,
        registry: &Registry<Self::Token>,
    );

    /// Earliest time at which [`Self::handle_deadline`] wants to run.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn handle_deadline(&mut self, _now: Instant, _registry: &Registry<Self::Token>) {}
}

/// Whether the loop goes on after a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// An epoll loop around one handler.
pub struct EventLoop<H: EventHandler> {
    registry: Registry<H::Token>,
    kill: EventFd,
    handler: H,
    events: Vec<EpollEvent>,
    handled: u64,
}

impl<H: EventHandler> fmt::Debug for EventLoop<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<H: EventHandler> EventLoop<H> {
    pub fn new(mut handler: H) -> Result<Self, WorkerError> {
        let epoll = Epoll::new().map_err(WorkerError::Setup)?;
        let kill = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::Setup)?;
        let registry = Registry {
            epoll,
            _token: PhantomData,
        };
        registry
            .epoll
            .ctl(
                ControlOperation::Add,
                kill.as_raw_fd(),
                EpollEvent::new(EventSet::IN, KILL_RAW),
            )
            .map_err(|source| WorkerError::Register {
                fd: kill.as_raw_fd(),
                source,
            })?;
        handler.init(&registry)?;
        Ok(Self {
            registry,
            kill,
            handler,
            events: vec![EpollEvent::default(); EVENTS_PER_WAIT],
            handled: 0,
        })
    }

    pub fn kill_evt(&self) -> &EventFd {
        &self.kill
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Ready fds dispatched so far. A loop that keeps counting while the
    /// guest and host are idle is spinning.
    pub fn events_handled(&self) -> u64 {
        self.handled
    }

    /// Waits for at most `max_wait` (forever if `None`, but never past the
    /// handler's deadline) and dispatches what is ready.
    pub fn run_once(&mut self, max_wait: Option<Duration>) -> Result<Flow, WorkerError> {
        let deadline = self.handler.next_deadline();
        let now = Instant::now();
        let until_deadline = deadline.map(|d| d.saturating_duration_since(now));
        let wait = match (max_wait, until_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout_ms = match wait {
            None => -1,
            // Round up so a deadline is never polled early in a busy loop.
            Some(d) => i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        };
        let n = match self.registry.epoll.wait(timeout_ms, &mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(WorkerError::Wait(e)),
        };
        for i in 0..n {
            let ev = self.events[i];
            let raw = ev.data();
            if raw == KILL_RAW {
                let _ = self.kill.read();
                return Ok(Flow::Stop);
            }
            self.handled += 1;
            match H::Token::from_raw(raw) {
                Some(token) => self
                    .handler
                    .handle_event(token, ev.event_set(), &self.registry),
                None => log::warn!("virtio worker: unknown epoll token {raw:#x}"),
            }
        }
        if let Some(d) = self.handler.next_deadline() {
            let now = Instant::now();
            if d <= now {
                self.handler.handle_deadline(now, &self.registry);
            }
        }
        Ok(Flow::Continue)
    }
}

/// A device's worker thread. It can be parked ([`Worker::pause`]) with its
/// handler kept intact, so a snapshot sees queues and guest memory that
/// no thread is changing, and started again ([`Worker::resume`]).
/// Dropping it stops and joins the thread.
pub struct Worker<H: EventHandler> {
    name: String,
    kill: EventFd,
    run: Run<H>,
}

enum Run<H: EventHandler> {
    Running(JoinHandle<EventLoop<H>>),
    /// Boxed: a handler can be large, and a running worker needs no room
    /// for it.
    Paused(Box<EventLoop<H>>),
    /// Stopped for good, or the thread panicked and took the handler.
    Gone,
}

impl<H: EventHandler> fmt::Debug for Worker<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let run = match self.run {
            Run::Running(_) => "running",
            Run::Paused(_) => "paused",
            Run::Gone => "gone",
        };
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("run", &run)
            .finish()
    }
}

/// Starts `handler` on its own thread named `name`.
pub fn spawn<H: EventHandler>(name: &str, handler: H) -> Result<Worker<H>, WorkerError> {
    let event_loop = EventLoop::new(handler)?;
    let kill = event_loop
        .kill_evt()
        .try_clone()
        .map_err(WorkerError::Setup)?;
    let thread = start_thread(name, event_loop)?;
    Ok(Worker {
        name: name.to_owned(),
        kill,
        run: Run::Running(thread),
    })
}

fn start_thread<H: EventHandler>(
    name: &str,
    mut event_loop: EventLoop<H>,
) -> Result<JoinHandle<EventLoop<H>>, WorkerError> {
    let thread_name = name.to_owned();
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            // Jail hook: the device worker's seccomp list, if armed.
            seccomp::on_thread_start(ThreadKind::Worker, &thread_name);
            loop {
                match event_loop.run_once(None) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop) => break,
                    Err(e) => {
                        log::error!("{thread_name}: worker stopped: {e}");
                        break;
                    }
                }
            }
            event_loop
        })
        .map_err(WorkerError::Spawn)
}

impl<H: EventHandler> Worker<H> {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_paused(&self) -> bool {
        matches!(self.run, Run::Paused(_))
    }

    /// Parks the thread after the batch it is handling and hands back the
    /// handler. Events that arrive meanwhile stay in their fds. Idempotent.
    pub fn pause(&mut self) -> Result<&mut H, WorkerError> {
        if matches!(self.run, Run::Running(_)) {
            let Run::Running(thread) = std::mem::replace(&mut self.run, Run::Gone) else {
                unreachable!("matched Running above");
            };
            if let Err(e) = self.kill.write(1) {
                log::error!("{}: cannot signal the worker to stop: {e}", self.name);
            }
            match thread.join() {
                Ok(event_loop) => self.run = Run::Paused(Box::new(event_loop)),
                Err(_) => log::error!("{}: worker thread panicked", self.name),
            }
            // The thread may have ended on an error before it saw the kill;
            // a count left behind would stop it again on resume.
            let _ = self.kill.read();
        }
        match &mut self.run {
            Run::Paused(event_loop) => Ok(event_loop.handler_mut()),
            Run::Running(_) | Run::Gone => Err(WorkerError::Gone),
        }
    }

    /// Starts a paused worker's thread again; a running one is left alone.
    pub fn resume(&mut self) -> Result<(), WorkerError> {
        match std::mem::replace(&mut self.run, Run::Gone) {
            Run::Paused(event_loop) => {
                self.run = Run::Running(start_thread(&self.name, *event_loop)?);
                Ok(())
            }
            Run::Running(thread) => {
                self.run = Run::Running(thread);
                Ok(())
            }
            Run::Gone => Err(WorkerError::Gone),
        }
    }

    /// Stops the thread, waits for it and drops the handler. Idempotent.
    pub fn stop(&mut self) {
        let _ = self.pause();
        self.run = Run::Gone;
    }
}

impl<H: EventHandler> Drop for Worker<H> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A device's explicit lifecycle: no worker until the driver sets
/// DRIVER_OK, then one worker thread serving its queues. Every device
/// holds one; the worker is stopped and joined on reset or drop, and
/// parked while a snapshot is taken.
#[derive(Debug)]
pub enum DeviceState<H: EventHandler> {
    Inactive,
    Activated(Worker<H>),
}

impl<H: EventHandler> DeviceState<H> {
    pub fn is_activated(&self) -> bool {
        matches!(self, Self::Activated(_))
    }

    /// Starts `handler` on its worker thread named `name`.
    pub fn activate(&mut self, name: &str, handler: H) -> Result<(), WorkerError> {
        *self = Self::Activated(spawn(name, handler)?);
        Ok(())
    }

    /// Stops and joins the worker, if any; the device is inactive after.
    pub fn deactivate(&mut self) {
        if let Self::Activated(mut worker) = std::mem::replace(self, Self::Inactive) {
            worker.stop();
        }
    }

    /// Parks the worker and reports its queues' positions (`None` when
    /// inactive), read by `positions` from the parked handler.
    pub fn pause(
        &mut self,
        positions: impl FnOnce(&mut H) -> Vec<super::queue::QueuePosition>,
    ) -> Result<Option<Vec<super::queue::QueuePosition>>, WorkerError> {
        match self {
            Self::Inactive => Ok(None),
            Self::Activated(worker) => Ok(Some(positions(worker.pause()?))),
        }
    }

    pub fn resume(&mut self) -> Result<(), WorkerError> {
        match self {
            Self::Inactive => Ok(()),
            Self::Activated(worker) => worker.resume(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Token {
        Ping,
    }

    impl EpollToken for Token {
        fn to_raw(self) -> u64 {
            0
        }
        fn from_raw(raw: u64) -> Option<Self> {
            (raw == 0).then_some(Token::Ping)
        }
    }

    struct Counter {
        evt: EventFd,
        seen: Arc<AtomicU32>,
    }

    impl EventHandler for Counter {
        type Token = Token;
        fn init(&mut self, reg: &Registry<Token>) -> Result<(), WorkerError> {
            reg.add(self.evt.as_raw_fd(), Token::Ping, EventSet::IN)
        }
        fn handle_event(&mut self, _: Token, _: EventSet, _: &Registry<Token>) {
            let _ = self.evt.read();
            self.seen.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn worker_handles_events_and_joins_on_drop() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let worker = spawn(
            "test-worker",
            Counter {
                evt: evt.try_clone().unwrap(),
                seen: seen.clone(),
            },
        )
        .unwrap();

        evt.write(1).unwrap();
        let start = Instant::now();
        while seen.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(1));
        }
        drop(worker);

        assert_eq!(seen.load(Ordering::SeqCst), 1);
        // The handler (and its dup of the eventfd) is gone with the thread.
        assert_eq!(Arc::strong_count(&seen), 1);
    }

    fn wait_for(seen: &AtomicU32, n: u32) {
        let start = Instant::now();
        while seen.load(Ordering::SeqCst) < n && start.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_paused_worker_keeps_its_handler_and_leaves_events_for_resume() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let mut worker = spawn(
            "test-pause",
            Counter {
                evt: evt.try_clone().unwrap(),
                seen: seen.clone(),
            },
        )
        .unwrap();
        evt.write(1).unwrap();
        wait_for(&seen, 1);

        let handler_seen = worker.pause().unwrap().seen.load(Ordering::SeqCst);
        evt.write(1).unwrap();
        thread::sleep(Duration::from_millis(20));
        let while_paused = seen.load(Ordering::SeqCst);
        let paused = worker.is_paused();
        worker.resume().unwrap();
        wait_for(&seen, 2);

        assert_eq!(handler_seen, 1);
        assert_eq!(while_paused, 1, "nothing is handled while paused");
        assert!(paused);
        assert_eq!(
            seen.load(Ordering::SeqCst),
            2,
            "the event waited for resume"
        );
        assert!(!worker.is_paused());
    }

    #[test]
    fn pause_twice_and_resume_twice_are_harmless() {
        let seen = Arc::new(AtomicU32::new(0));
        let mut worker = spawn(
            "test-idempotent",
            Counter {
                evt: EventFd::new(EFD_NONBLOCK).unwrap(),
                seen,
            },
        )
        .unwrap();

        worker.pause().unwrap();
        worker.pause().unwrap();
        worker.resume().unwrap();
        worker.resume().unwrap();
        worker.stop();

        assert!(matches!(worker.pause(), Err(WorkerError::Gone)));
        assert!(matches!(worker.resume(), Err(WorkerError::Gone)));
    }

    #[test]
    fn run_once_with_timeout_returns_when_idle() {
        let seen = Arc::new(AtomicU32::new(0));
        let mut ev = EventLoop::new(Counter {
            evt: EventFd::new(EFD_NONBLOCK).unwrap(),
            seen: seen.clone(),
        })
        .unwrap();

        let flow = ev.run_once(Some(Duration::from_millis(1))).unwrap();

        assert_eq!(flow, Flow::Continue);
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }
}
