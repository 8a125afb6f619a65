//! `vitrine-guard`: the root service that holds every exec of an untrusted
//! file (fanotify permission events) and tells the owning user's `vitrined`
//! to run it in a VM instead. [`wire`] is what the guard and the daemons
//! say to each other.
//!
//! # What the guard catches, and what it does not
//!
//! A file is untrusted when it carries `user.vitrine.untrusted` (set by the
//! Downloads watcher), or `user.xdg.origin.url` (set by browsers) with an
//! origin the config does not trust, or when a config `untrusted_paths`
//! rule names it. The attributes are read from the event's fd, never by
//! path. Only the filesystems holding the watched folders are marked
//! (`FAN_MARK_FILESYSTEM`, so bind mounts of them are seen too; a
//! filesystem that refuses it gets a mount mark, and the log says so).
//!
//! Caught, with `EPERM` for the caller and a denial sent to the daemon:
//! - `execve` of a marked binary, or of a marked script with a shebang
//!   (`./setup.sh`): the exec of the file itself (`FAN_OPEN_EXEC_PERM`);
//! - a listed interpreter (`sh`, `bash`, `dash`, `python3*`, `perl`,
//!   `ruby`, `node` by default, matched on `/proc/PID/exe`) opening a marked
//!   file, as in `sh marked.sh` or `python3 marked.py` (`FAN_OPEN_PERM`).
//!   A listed interpreter is refused every marked file it opens, data
//!   too: a shell's `< marked.csv` redirect fails the same way.
//!
//! Not caught:
//! - `ld.so ./marked` (the loader maps the file; no exec of it happens);
//! - a marked shared library that is `dlopen`ed or `mmap`ed;
//! - an interpreter that is not in the list (`busybox sh marked.sh`, a
//!   copied `python3`), or one fed the script on stdin by a process that
//!   is not listed (`cat marked.sh | sh`);
//! - a copy that dropped the attributes: plain `cp` and most tools copy no
//!   extended attributes, so the copy is trusted unless a path rule or a
//!   watched folder's Downloads watcher marks it again; `cp
//!   --preserve=xattr` (or `cp -a`) keeps the mark, and the copy is denied
//!   wherever a watched filesystem holds it;
//! - files on filesystems that no watched folder is on, and filesystems
//!   without user extended attributes (unless a path rule names them);
//! - anything while the guard is down: when its fanotify group closes
//!   (exit, crash, SIGKILL), the kernel answers every event still pending
//!   with allow, so an exec held at that moment runs on the host. systemd
//!   restarts the guard (`Restart=always`, one second).
//!
//! The guard's own execs and opens, and the opens of the connected daemons
//! (their `SO_PEERCRED` pid), are always allowed; the event thread never
//! opens a path, so it cannot wait on itself. A daemon's execs are checked
//! like any other (see [`events`]: anyone may connect).
//!
//! Cost: the kernel sends an exec as two events, FAN_OPEN_EXEC_PERM then
//! (when allowed) FAN_OPEN_PERM, so with interpreters listed every allowed
//! exec on a watched filesystem waits for two answers, and every open there
//! for one (`cargo bench --bench exec_guard` measures it). The exec event
//! comes first, so a shell's `./marked` is denied as an exec, not as an
//! interpreter open.

pub mod caller;
pub mod config;
pub mod events;
pub mod mark;
pub mod subscribers;
pub mod wire;
