//! The guard's socket: one JSON object per line, guard to daemon only.
//!
//! The guard (root) listens on a root-owned socket; a user's `vitrined`
//! connects, the guard reads the peer's uid (`SO_PEERCRED`) and sends that
//! connection only the denials of that uid. The daemon checks that its peer
//! is root before it believes a line. Nothing flows the other way, so a
//! daemon can never hold up the guard.

use serde::{Deserialize, Serialize};

/// Where the guard listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vitrine/guard.sock";
/// The version in [`GuardMessage::Hello`].
pub const VERSION: u32 = 1;
/// Longest line either side accepts, newline included.
pub const MAX_LINE: usize = 64 * 1024;
/// Most arguments a denial carries (the rest are dropped, and it says so).
pub const MAX_ARGS: usize = 256;

/// One line from the guard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GuardMessage {
    /// The first line on every connection.
    Hello {
        /// [`VERSION`].
        version: u32,
        /// The guard's process id (its execs are never held).
        guard_pid: u32,
        /// The uid this connection gets denials for.
        uid: u32,
    },
    /// An untrusted file was kept from running on the host.
    Denied(Denied),
}

/// How the untrusted file was about to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DenyKind {
    /// `execve` of the file itself (a binary, or a script with a shebang).
    Exec,
    /// A listed interpreter (`sh`, `python3`, ...) opened it to run it.
    Interpreter {
        /// The interpreter's executable, from `/proc/PID/exe`.
        interpreter: String,
    },
}

/// One denied exec or interpreter open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Denied {
    /// The file, as the event's fd resolves (`/proc/self/fd/N`).
    pub path: String,
    /// Its device and inode: the daemon opens `path` itself and runs it
    /// only if these still match.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
    /// Its size in bytes when denied.
    pub size: u64,
    /// The real uid of the process that tried to run it.
    pub uid: u32,
    /// That process.
    pub pid: u32,
    /// Exec or interpreter.
    pub how: DenyKind,
    /// Why the file is untrusted: the mark found (`user.vitrine.untrusted`,
    /// `user.xdg.origin.url=URL`) or the guard rule that matched.
    pub reason: String,
    /// The arguments after the program, when they could be read (an
    /// interpreter's command line); `None` when the kernel had not yet
    /// replaced the caller's command line (a plain exec).
    pub args: Option<Vec<String>>,
    /// The process's working directory, when readable.
    pub cwd: Option<String>,
}

/// A line that is not a [`GuardMessage`].
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Longer than [`MAX_LINE`].
    #[error("a guard line of over {MAX_LINE} bytes")]
    TooLong,
    /// Not the JSON of a message.
    #[error("a guard line that is no message: {0}")]
    Json(#[from] serde_json::Error),
}

impl GuardMessage {
    /// The line to send, newline included.
    pub fn to_line(&self) -> String {
        // A message of strings and numbers always serializes.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Parses one line (with or without its newline).
    pub fn from_line(line: &[u8]) -> Result<GuardMessage, WireError> {
        if line.len() > MAX_LINE {
            return Err(WireError::TooLong);
        }
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        Ok(serde_json::from_slice(line)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_survives_its_line() {
        let denied = GuardMessage::Denied(Denied {
            path: "/home/u/Downloads/setup".into(),
            dev: 2049,
            ino: 77,
            size: 900_000,
            uid: 1000,
            pid: 4242,
            how: DenyKind::Interpreter {
                interpreter: "/usr/bin/python3.11".into(),
            },
            reason: "user.vitrine.untrusted".into(),
            args: Some(vec!["--fast".into(), "a b".into()]),
            cwd: Some("/home/u".into()),
        });

        let line = denied.to_line();

        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        assert_eq!(GuardMessage::from_line(line.as_bytes()).unwrap(), denied);
    }

    #[test]
    fn unknown_fields_and_long_lines_are_refused() {
        let extra = br#"{"hello":{"version":1,"guard_pid":1,"uid":0,"more":1}}"#;
        let long = vec![b' '; MAX_LINE + 1];

        assert!(matches!(
            GuardMessage::from_line(extra),
            Err(WireError::Json(_))
        ));
        assert!(matches!(
            GuardMessage::from_line(&long),
            Err(WireError::TooLong)
        ));
    }
}
