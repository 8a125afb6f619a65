//! The guard's socket server: the user daemons that listen for denials.
//!
//! Each connection's uid and pid come from `SO_PEERCRED`. A connection gets
//! `Hello`, then the denials of its uid. Each has a bounded queue and its
//! own writer thread; the event thread only ever `try_send`s, so a slow or
//! stuck daemon loses denials (logged) but never delays a kernel answer.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::wire::{Denied, GuardMessage, VERSION};

/// Denials queued per subscriber before new ones are dropped.
pub const QUEUE: usize = 64;
/// A daemon that takes longer than this to take one line is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle writer checks that its daemon is still there (its pid
/// must not stay trusted after it left).
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// The socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SubscribersError {
    /// Binding or preparing the listening socket failed.
    #[error("cannot listen on {}", .path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who got a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// The daemon of this uid (the caller's, else the file owner's).
    Uid(u32),
    /// That daemon's queue was full; the denial was dropped.
    QueueFull(u32),
    /// No daemon of either uid is connected.
    Nobody,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    uid: u32,
    pid: u32,
    tx: SyncSender<Denied>,
}

/// The connected daemons.
#[derive(Debug, Default)]
pub struct Subscribers {
    list: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
}

impl Subscribers {
    /// True when `pid` is a connected daemon (its opens are never held).
    pub fn is_daemon_pid(&self, pid: u32) -> bool {
        self.locked().iter().any(|e| e.pid == pid)
    }

    /// Queues `denied` for the daemon of its uid, else of `owner`.
    pub fn tell(&self, denied: &Denied, owner: u32) -> Told {
        let list = self.locked();
        let Some(entry) = [denied.uid, owner]
            .iter()
            .find_map(|uid| list.iter().find(|e| e.uid == *uid))
        else {
            return Told::Nobody;
        };
        match entry.tx.try_send(denied.clone()) {
            Ok(()) => Told::Uid(entry.uid),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                Told::QueueFull(entry.uid)
            }
        }
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A writer thread that panicked leaves a usable list.
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remove(&self, id: u64) {
        self.locked().retain(|e| e.id != id);
    }

    /// Accepts daemons on `listener` for ever, each on its own thread.
    pub fn serve(self: Arc<Self>, listener: UnixListener, guard_pid: u32) {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("accepting a daemon: {e}");
                    continue;
                }
            };
            let cred = match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("a daemon's SO_PEERCRED: {e}");
                    continue;
                }
            };
            let uid = cred.uid.as_raw();
            let pid = u32::try_from(cred.pid.as_raw_nonzero().get()).unwrap_or(0);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = sync_channel(QUEUE);
            self.locked().push(Entry { id, uid, pid, tx });
            log::info!("daemon pid {pid} uid {uid} subscribed");
            let subscribers = Arc::clone(&self);
            let spawned = std::thread::Builder::new()
                .name(format!("guard-sub-{id}"))
                .spawn(move || {
                    if let Err(e) = write_to(&stream, rx, guard_pid, uid) {
                        log::info!("daemon pid {pid} uid {uid} left: {e}");
                    }
                    subscribers.remove(id);
                });
            if let Err(e) = spawned {
                log::warn!("no thread for daemon pid {pid}: {e}");
                self.remove(id);
            }
        }
    }
}

/// `Hello`, then each queued denial, until the daemon leaves.
fn write_to(
    stream: &UnixStream,
    rx: Receiver<Denied>,
    guard_pid: u32,
    uid: u32,
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut out = stream;
    let hello = GuardMessage::Hello {
        version: VERSION,
        guard_pid,
        uid,
    };
    out.write_all(hello.to_line().as_bytes())?;
    loop {
        match rx.recv_timeout(IDLE_CHECK) {
            Ok(denied) => out.write_all(GuardMessage::Denied(denied).to_line().as_bytes())?,
            Err(RecvTimeoutError::Timeout) if peer_left(stream) => {
                return Err(std::io::ErrorKind::ConnectionReset.into())
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// True when the daemon closed its end (nothing ever flows guard-ward, so
/// a readable end-of-file is the only thing to see).
fn peer_left(stream: &UnixStream) -> bool {
    use rustix::net::RecvFlags;
    let mut probe = [0u8; 1];
    match rustix::net::recv(
        stream,
        &mut probe[..],
        RecvFlags::PEEK | RecvFlags::DONTWAIT,
    ) {
        Ok((0, _)) => true,
        Ok(_) | Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => false,
        Err(_) => true,
    }
}

/// The listening socket at `path`: a stale one is replaced, and any user
/// may connect (each gets only its own uid's denials).
pub fn listen(path: &Path) -> Result<UnixListener, SubscribersError> {
    let err = |source| SubscribersError::Listen {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use super::*;
    use crate::guard::wire::DenyKind;

    fn denied(uid: u32) -> Denied {
        Denied {
            path: "/tmp/x".into(),
            dev: 1,
            ino: 2,
            size: 3,
            uid,
            pid: 4,
            how: DenyKind::Exec,
            reason: "user.vitrine.untrusted".into(),
            args: None,
            cwd: None,
        }
    }

    /// Subscribers served on `g.sock` in a fresh folder, as guard pid 77.
    fn serving() -> (tempfile::TempDir, Arc<Subscribers>) {
        let dir = tempfile::tempdir().unwrap();
        let subscribers = Arc::new(Subscribers::default());
        let listener = listen(&dir.path().join("g.sock")).unwrap();
        let serving = Arc::clone(&subscribers);
        std::thread::spawn(move || serving.serve(listener, 77));
        (dir, subscribers)
    }

    #[test]
    fn a_daemon_gets_hello_then_its_uids_denials_and_its_pid_is_trusted() {
        let (dir, subscribers) = serving();
        let path = dir.path().join("g.sock");
        let me = rustix::process::getuid().as_raw();
        let stream = UnixStream::connect(&path).unwrap();
        let mut lines = BufReader::new(stream).lines();
        let hello = GuardMessage::from_line(lines.next().unwrap().unwrap().as_bytes()).unwrap();

        let other = subscribers.tell(&denied(me + 1), me + 2);
        let by_owner = subscribers.tell(&denied(me + 1), me);
        let line = lines.next().unwrap().unwrap();

        assert_eq!(
            hello,
            GuardMessage::Hello {
                version: VERSION,
                guard_pid: 77,
                uid: me
            }
        );
        assert!(subscribers.is_daemon_pid(std::process::id()));
        assert_eq!(other, Told::Nobody);
        assert_eq!(by_owner, Told::Uid(me));
        assert_eq!(
            GuardMessage::from_line(line.as_bytes()).unwrap(),
            GuardMessage::Denied(denied(me + 1))
        );
    }

    #[test]
    fn a_stuck_daemon_fills_its_queue_without_blocking_the_teller() {
        let (tx, _rx) = sync_channel(QUEUE);
        let subscribers = Subscribers::default();
        subscribers.locked().push(Entry {
            id: 0,
            uid: 5,
            pid: 6,
            tx,
        });

        let told: Vec<Told> = (0..=QUEUE)
            .map(|_| subscribers.tell(&denied(5), 0))
            .collect();

        assert!(told[..QUEUE].iter().all(|t| *t == Told::Uid(5)));
        assert_eq!(told[QUEUE], Told::QueueFull(5));
    }

    #[test]
    fn a_daemon_that_leaves_is_no_longer_trusted() {
        let (dir, subscribers) = serving();
        let path = dir.path().join("g.sock");
        let stream = UnixStream::connect(&path).unwrap();
        let mut first = String::new();
        BufReader::new(&stream).read_line(&mut first).unwrap();
        assert!(subscribers.is_daemon_pid(std::process::id()));

        drop(stream);
        std::thread::sleep(IDLE_CHECK * 3);

        assert!(!subscribers.is_daemon_pid(std::process::id()));
    }
}
