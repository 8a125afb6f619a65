//! The daemon's end of `vitrine-guard`'s socket: each program the guard kept
//! from running on the host comes here, is opened again by the daemon (as
//! its user, checked against the guard's device and inode), and becomes a
//! `RunProgram` task, announced with a desktop notification.
//!
//! Only a root peer (the guard) or one of this daemon's own user is
//! believed: either could ask for a sandboxed run over D-Bus anyway, so a
//! line on this socket gives nobody more than they had. Lines are bounded
//! ([`MAX_LINE`]) and a bad one drops the connection, which is then made
//! again, like a guard that is not running yet.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::guard::wire::{Denied, DenyKind, GuardMessage, WireError, MAX_LINE, VERSION};

/// How long the daemon waits before it tries the socket again.
const RETRY: Duration = Duration::from_secs(2);

/// A denied program, opened again by the daemon and ready to run.
#[derive(Debug)]
pub struct Intercepted {
    /// The program, opened by this daemon (not the guard's fd).
    pub file: File,
    /// What the guard said.
    pub denied: Denied,
}

/// Why a connection to the guard ended, or a denial was not run.
#[derive(Debug, thiserror::Error)]
pub enum GuardLinkError {
    /// The socket failed.
    #[error("the guard socket failed")]
    Io(#[from] io::Error),
    /// The peer is neither root nor this daemon's user.
    #[error("the guard socket's peer is uid {0}, neither root nor this user: not believed")]
    Peer(u32),
    /// A line that is not a message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The first line was not a `Hello` of this version.
    #[error("the guard did not say hello in version {VERSION}: {0:?}")]
    Hello(Box<GuardMessage>),
    /// The socket closed.
    #[error("the guard closed the connection")]
    Closed,
    /// The file cannot be opened again.
    #[error("cannot open {path} again to run it")]
    Reopen {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The path now names another file than the guard denied.
    #[error("{0} was replaced after the guard denied it; it is not run")]
    Replaced(String),
}

/// Follows the guard at `socket` until `tx` closes: connects (again after
/// [`RETRY`] whenever it is not there), and sends each denial, reopened, to
/// `tx`. A denial that cannot be reopened is logged and skipped.
pub async fn follow(socket: PathBuf, tx: mpsc::Sender<Intercepted>) {
    let mut said_absent = false;
    loop {
        match UnixStream::connect(&socket).await {
            Ok(stream) => {
                said_absent = false;
                match serve_connection(stream, &tx).await {
                    Err(GuardLinkError::Closed) => {
                        eprintln!("vitrined: the exec guard went away; waiting for it again");
                    }
                    Err(e) => eprintln!(
                        "vitrined: exec guard at {}: {}",
                        socket.display(),
                        super::worker::chain(&e)
                    ),
                    Ok(()) => return,
                }
            }
            Err(e) if !said_absent => {
                said_absent = true;
                eprintln!(
                    "vitrined: no exec guard at {} ({e}): programs run directly on the host \
                     are not intercepted until vitrine-guard runs",
                    socket.display()
                );
            }
            Err(_) => {}
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One connection: peer check, `Hello`, then denials until it ends.
/// `Ok` only when `tx` closed.
async fn serve_connection(
    stream: UnixStream,
    tx: &mpsc::Sender<Intercepted>,
) -> Result<(), GuardLinkError> {
    let peer = stream.peer_cred()?.uid();
    let me = rustix::process::geteuid().as_raw();
    if peer != 0 && peer != me {
        return Err(GuardLinkError::Peer(peer));
    }
    let mut reader = BufReader::new(stream);
    match read_message(&mut reader).await? {
        GuardMessage::Hello { version, uid, .. } if version == VERSION => {
            eprintln!(
                "vitrined: the exec guard sends this daemon the programs it denies uid {uid}"
            );
        }
        other => return Err(GuardLinkError::Hello(Box::new(other))),
    }
    loop {
        let denied = match read_message(&mut reader).await? {
            GuardMessage::Denied(d) => d,
            other => return Err(GuardLinkError::Hello(Box::new(other))),
        };
        match reopen(&denied) {
            Ok(file) => {
                if tx.send(Intercepted { file, denied }).await.is_err() {
                    return Ok(());
                }
            }
            Err(e) => eprintln!(
                "vitrined: the exec guard denied {}, but {}",
                denied.path,
                super::worker::chain(&e)
            ),
        }
    }
}

/// Reads one bounded line and parses it.
async fn read_message(reader: &mut BufReader<UnixStream>) -> Result<GuardMessage, GuardLinkError> {
    let mut line = Vec::new();
    let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX);
    let n = reader.take(limit).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Err(GuardLinkError::Closed);
    }
    if line.last() != Some(&b'\n') {
        // Either the limit cut it or the peer closed mid-line.
        return Err(if line.len() >= MAX_LINE {
            WireError::TooLong.into()
        } else {
            GuardLinkError::Closed
        });
    }
    Ok(GuardMessage::from_line(&line)?)
}

/// Opens the denied file again as this daemon's user, refusing a path that
/// now names another file (or a symlink, a FIFO, a device).
pub fn reopen(denied: &Denied) -> Result<File, GuardLinkError> {
    let path = Path::new(&denied.path);
    let reopen = |source| GuardLinkError::Reopen {
        path: denied.path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(reopen)?;
    let meta = file.metadata().map_err(reopen)?;
    if !meta.is_file() || meta.dev() != denied.dev || meta.ino() != denied.ino {
        return Err(GuardLinkError::Replaced(denied.path.clone()));
    }
    Ok(file)
}

/// The notification's body: what was stopped, why, and where it runs now.
pub fn notice(denied: &Denied, task: &str) -> String {
    let how = match &denied.how {
        DenyKind::Exec => "running it".to_owned(),
        DenyKind::Interpreter { interpreter } => format!("running it with {interpreter}"),
    };
    let args = match &denied.args {
        Some(a) if a.is_empty() => "with no arguments".to_owned(),
        Some(a) => format!("with its {} argument(s)", a.len()),
        None => "without its arguments (they cannot be read at exec time)".to_owned(),
    };
    format!(
        "{} is untrusted ({}), so {how} on this computer was refused (the shell saw \
         \"Operation not permitted\"). It runs instead in a disposable Vitrine VM, {args}: \
         task {task}.",
        denied.path, denied.reason
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(path: &Path) -> Denied {
        let meta = std::fs::metadata(path).unwrap();
        Denied {
            path: path.to_string_lossy().into_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            uid: 0,
            pid: 1,
            how: DenyKind::Exec,
            reason: "user.vitrine.untrusted".into(),
            args: None,
            cwd: None,
        }
    }

    #[test]
    fn a_denied_file_is_reopened_only_while_it_is_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("setup");
        std::fs::write(&prog, b"\x7fELF").unwrap();
        let same = denied(&prog);
        let mut moved = same.clone();
        moved.ino += 1;
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&prog, &link).unwrap();
        let mut via_link = same.clone();
        via_link.path = link.to_string_lossy().into_owned();

        assert!(reopen(&same).is_ok());
        assert!(matches!(reopen(&moved), Err(GuardLinkError::Replaced(_))));
        assert!(matches!(
            reopen(&via_link),
            Err(GuardLinkError::Reopen { .. })
        ));
    }

    #[tokio::test]
    async fn a_line_past_the_cap_ends_the_connection() {
        let (a, b) = UnixStream::pair().unwrap();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut b = b;
            let _ = b.write_all(&vec![b'x'; MAX_LINE + 10]).await;
        });
        let mut reader = BufReader::new(a);

        let got = read_message(&mut reader).await;

        assert!(
            matches!(got, Err(GuardLinkError::Wire(WireError::TooLong))),
            "{got:?}"
        );
        writer.abort();
    }

    #[test]
    fn the_notice_says_what_was_refused_and_where_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("setup.sh");
        std::fs::write(&prog, b"#!/bin/sh\n").unwrap();
        let mut d = denied(&prog);
        d.how = DenyKind::Interpreter {
            interpreter: "/usr/bin/dash".into(),
        };
        d.args = Some(vec!["-v".into()]);

        let text = notice(&d, "/org/vitrine/Sandbox1/task/7");

        assert!(text.contains("setup.sh is untrusted (user.vitrine.untrusted)"));
        assert!(text.contains("with /usr/bin/dash"));
        assert!(text.contains("Operation not permitted"));
        assert!(text.contains("its 1 argument(s): task /org/vitrine/Sandbox1/task/7"));
    }
}
