//! The fanotify group and its event loop: every permission event gets an
//! answer, from this one thread, which never opens a path.
//!
//! Checks, in order: the guard's own pid is allowed; the connected daemons'
//! pids are allowed to open (not to exec); an unmarked file is allowed; the
//! exec of a marked file is denied; the open of a marked file by a listed
//! interpreter is denied; anything else is allowed. An internal error (or
//! panic) allows and logs.
//!
//! Why a daemon's execs are still checked: any user may connect to the
//! socket, and a process keeps its pid through `execve`, so exempting them
//! would let any process connect and then exec a marked file. The guard
//! never waits on a daemon (its queue is non-blocking), so checking a
//! daemon's exec cannot deadlock; a daemon never runs a marked file on the
//! host, it hands it to a VM (an open, which stays exempt).

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::AT_FDCWD;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyEvent, FanotifyResponse, InitFlags, MarkFlags, MaskFlags,
    Response,
};

use super::caller;
use super::config::GuardConfig;
use super::mark::{judge, Attributes, Mark};
use super::subscribers::{Subscribers, Told};
use super::wire::{Denied, DenyKind, MAX_ARGS};

/// A process denied the same file again within this time (python3 opens
/// its script twice) is denied without telling its daemon again.
const RETELL_AFTER: Duration = Duration::from_secs(2);
/// Recent denials remembered for that.
const RECENT: usize = 64;

/// The group could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// `fanotify_init` failed (needs CAP_SYS_ADMIN and a kernel with
    /// fanotify permission events).
    #[error("fanotify_init(FAN_CLASS_CONTENT)")]
    Init(#[source] Errno),
    /// Neither a filesystem nor a mount mark could be placed.
    #[error("fanotify_mark on {}", .folder.display())]
    Mark {
        folder: PathBuf,
        #[source]
        source: Errno,
    },
    /// None of the watched folders exists.
    #[error("none of the watched folders exists ({0}); fix `watch` in the config")]
    NothingWatched(String),
    /// Reading the group failed.
    #[error("reading fanotify events")]
    Read(#[source] Errno),
    /// Waiting on the group failed.
    #[error("waiting for fanotify events")]
    Poll(#[source] Errno),
}

/// How many events got which answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Allowed by the checks.
    pub allowed: u64,
    /// Denied.
    pub denied: u64,
    /// Allowed because a check failed.
    pub errors: u64,
}

/// The guard's fanotify group, marked on the watched filesystems.
#[derive(Debug)]
pub struct ExecGuard {
    group: Fanotify,
    config: GuardConfig,
    subscribers: Arc<Subscribers>,
    own_pid: u32,
    counts: Counts,
    /// (pid, dev, ino) of recent denials, oldest first.
    recent: VecDeque<((u32, u64, u64), Instant)>,
}

impl ExecGuard {
    /// Creates the group and marks the filesystem of each folder in
    /// `folders` (found before any mark is placed: listing them later
    /// could wait on this very group).
    pub fn new(
        config: GuardConfig,
        folders: &[PathBuf],
        subscribers: Arc<Subscribers>,
    ) -> Result<ExecGuard, EventsError> {
        if folders.is_empty() {
            return Err(EventsError::NothingWatched(config.watch.join(", ")));
        }
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(EventsError::Init)?;
        let mut mask = MaskFlags::FAN_OPEN_EXEC_PERM;
        if !config.interpreters.is_empty() {
            mask |= MaskFlags::FAN_OPEN_PERM;
        }
        for folder in folders {
            mark(&group, mask, folder)?;
        }
        Ok(ExecGuard {
            group,
            config,
            subscribers,
            own_pid: std::process::id(),
            counts: Counts::default(),
            recent: VecDeque::with_capacity(RECENT),
        })
    }

    /// Answers events until `stop` (a signalfd) is readable; the counts.
    pub fn run(&mut self, stop: BorrowedFd<'_>) -> Result<Counts, EventsError> {
        loop {
            let mut fds = [
                PollFd::new(self.group.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(EventsError::Poll(e)),
            }
            if fds[1].any().unwrap_or(false) {
                return Ok(self.counts);
            }
            match self.group.read_events() {
                Ok(events) => events.iter().for_each(|e| self.answer(e)),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                // Not retried: a loop on a broken group would spin. Exiting
                // releases every pending event (allowed) and systemd
                // restarts the guard.
                Err(e) => return Err(EventsError::Read(e)),
            }
        }
    }

    /// Decides and answers one event (allowing on any error or panic).
    fn answer(&mut self, event: &FanotifyEvent) {
        if !event.check_version() {
            log::error!(
                "fanotify event version {}, built for {}: answered as usual",
                event.version(),
                nix::sys::fanotify::FANOTIFY_METADATA_VERSION
            );
        }
        let mask = event.mask();
        if mask.contains(MaskFlags::FAN_Q_OVERFLOW) {
            log::warn!("fanotify queue overflow: some notification events were lost");
        }
        let Some(fd) = event.fd() else { return };
        if !mask.intersects(MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM) {
            return;
        }
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.decide(fd, event.pid(), mask)
        }));
        let (response, denied) = match decided {
            Ok(Ok(None)) => {
                self.counts.allowed += 1;
                (Response::FAN_ALLOW, None)
            }
            Ok(Ok(Some(denied))) => {
                self.counts.denied += 1;
                (Response::FAN_DENY, Some(denied))
            }
            Ok(Err(e)) => {
                self.counts.errors += 1;
                log::error!("pid {}: {e}: allowed", event.pid());
                (Response::FAN_ALLOW, None)
            }
            Err(_) => {
                self.counts.errors += 1;
                log::error!("pid {}: the check panicked: allowed", event.pid());
                (Response::FAN_ALLOW, None)
            }
        };
        if let Err(e) = self
            .group
            .write_response(FanotifyResponse::new(fd, response))
        {
            log::error!("answering pid {}: {e}", event.pid());
        }
        // After the answer: telling logs, and a log write may block.
        if let Some(denied) = denied {
            self.tell(denied, fd);
        }
    }

    /// `None`: allow. `Some`: deny, with what the daemon is told.
    fn decide(
        &self,
        fd: BorrowedFd<'_>,
        pid: i32,
        mask: MaskFlags,
    ) -> Result<Option<Denied>, super::mark::MarkError> {
        let upid = u32::try_from(pid).unwrap_or(0);
        let exec = mask.contains(MaskFlags::FAN_OPEN_EXEC_PERM);
        if upid == self.own_pid || (!exec && self.subscribers.is_daemon_pid(upid)) {
            return Ok(None);
        }
        let attrs = Attributes::of_fd(fd)?;
        let Some(mark) = judge(&attrs, &self.config, || caller::fd_path(fd.as_raw_fd())) else {
            return Ok(None);
        };
        // The kernel sends an exec's FAN_OPEN_EXEC_PERM first, then (only if
        // allowed) its FAN_OPEN_PERM; should both ever come as one event,
        // the exec bit decides.
        if exec {
            return Ok(Some(denial(fd, pid, DenyKind::Exec, &mark, false)));
        }
        match caller::exe(pid) {
            Some(exe) if self.config.is_interpreter(&exe) => Ok(Some(denial(
                fd,
                pid,
                DenyKind::Interpreter { interpreter: exe },
                &mark,
                true,
            ))),
            _ => Ok(None),
        }
    }

    /// Hands a denial to the daemon of the caller's uid, else the owner's,
    /// unless that process was just denied that file.
    fn tell(&mut self, denied: Denied, fd: BorrowedFd<'_>) {
        let now = Instant::now();
        let key = (denied.pid, denied.dev, denied.ino);
        self.recent
            .retain(|(_, at)| now.duration_since(*at) < RETELL_AFTER);
        if self.recent.iter().any(|(k, _)| *k == key) {
            log::info!("denied {} to pid {} again", denied.path, denied.pid);
            return;
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((key, now));
        let owner = nix::sys::stat::fstat(fd)
            .map(|s| s.st_uid)
            .unwrap_or(u32::MAX);
        log::info!(
            "denied {:?} of {} by pid {} uid {} ({})",
            denied.how,
            denied.path,
            denied.pid,
            denied.uid,
            denied.reason
        );
        match self.subscribers.tell(&denied, owner) {
            Told::Uid(_) => {}
            Told::QueueFull(uid) => log::warn!(
                "the daemon of uid {uid} is not reading: denial of {} dropped",
                denied.path
            ),
            Told::Nobody => log::info!(
                "no daemon of uid {} or {owner} listens: nobody was told",
                denied.uid
            ),
        }
    }
}

/// Places a filesystem mark on `folder`'s filesystem, else a mount mark.
fn mark(group: &Fanotify, mask: MaskFlags, folder: &Path) -> Result<(), EventsError> {
    let add = MarkFlags::FAN_MARK_ADD;
    match group.mark(
        add | MarkFlags::FAN_MARK_FILESYSTEM,
        mask,
        AT_FDCWD,
        Some(folder),
    ) {
        Ok(()) => {
            log::info!("watching the filesystem of {}", folder.display());
            Ok(())
        }
        Err(fs_err) => {
            group
                .mark(
                    add | MarkFlags::FAN_MARK_MOUNT,
                    mask,
                    AT_FDCWD,
                    Some(folder),
                )
                .map_err(|source| EventsError::Mark {
                    folder: folder.to_owned(),
                    source,
                })?;
            log::warn!(
                "the filesystem of {} refused a filesystem mark ({fs_err}): watching its mount only, so bind mounts of it elsewhere are not watched",
                folder.display()
            );
            Ok(())
        }
    }
}

/// What the daemon is told about a denied exec or open.
fn denial(fd: BorrowedFd<'_>, pid: i32, how: DenyKind, mark: &Mark, interpreter: bool) -> Denied {
    let stat = nix::sys::stat::fstat(fd).ok();
    let path = caller::fd_path(fd.as_raw_fd()).unwrap_or_else(|| "(unknown)".into());
    let cwd = caller::cwd(pid);
    // A plain exec is held inside execve, before the kernel replaced the
    // caller's command line: /proc/PID/cmdline is still the parent's (the
    // shell's), not the program's arguments. An interpreter already runs
    // with its own.
    let args = if interpreter {
        caller::cmdline(pid).and_then(|c| caller::args_after_script(&c, cwd.as_deref(), &path))
    } else {
        None
    };
    let args = args.map(|mut a| {
        if a.len() > MAX_ARGS {
            log::warn!(
                "pid {pid}: {} arguments, only {MAX_ARGS} passed on",
                a.len()
            );
            a.truncate(MAX_ARGS);
        }
        a
    });
    Denied {
        path,
        dev: stat.map_or(0, |s| s.st_dev),
        ino: stat.map_or(0, |s| s.st_ino),
        size: stat.map_or(0, |s| u64::try_from(s.st_size).unwrap_or(0)),
        uid: caller::real_uid(pid)
            .or(stat.map(|s| s.st_uid))
            .unwrap_or(u32::MAX),
        pid: u32::try_from(pid).unwrap_or(0),
        how,
        reason: mark.reason(),
        args,
        cwd,
    }
}
