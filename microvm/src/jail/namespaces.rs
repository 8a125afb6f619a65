//! New namespaces, and the fork that makes the VMM PID 1 of its own PID
//! namespace while a small keeper waits outside.

use std::sync::atomic::{AtomicI32, Ordering};

use super::{sys, JailError};
use crate::seccomp::{self, ThreadKind};

/// Threads of this process (the jail needs exactly one).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Unshares mount, PID, network, IPC and UTS namespaces, after a user
/// namespace of its own when not root. Returns whether it made a user
/// namespace.
pub fn unshare_all() -> Result<bool, JailError> {
    // SAFETY: geteuid/getegid only read the process credentials.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let user_namespace = uid != 0;
    if user_namespace {
        unshare(libc::CLONE_NEWUSER, "unshare(CLONE_NEWUSER)")?;
        std::fs::write("/proc/self/setgroups", "deny").map_err(sys("write setgroups"))?;
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).map_err(sys("write uid_map"))?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).map_err(sys("write gid_map"))?;
    }
    unshare(
        libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS,
        "unshare(mnt, pid, net, ipc, uts)",
    )?;
    Ok(user_namespace)
}

fn unshare(flags: libc::c_int, what: &str) -> Result<(), JailError> {
    // SAFETY: unshare only changes this process's namespaces.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(sys(what)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes this process (the keeper to be) die with the thread that started
/// it: a jail whose launcher is gone (a daemon that exited or crashed, a
/// warm-pool thread) has nobody left to stop its VM, which would otherwise
/// run on as an orphan. The VMM in turn dies with the keeper.
pub fn die_with_launcher() -> Result<(), JailError> {
    // SAFETY: getppid takes no arguments and cannot fail.
    let launcher = unsafe { libc::getppid() };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(sys("prctl(PR_SET_PDEATHSIG)")(
            std::io::Error::last_os_error(),
        ));
    }
    // The launcher may have ended before the prctl took effect.
    // SAFETY: as above.
    if unsafe { libc::getppid() } != launcher {
        return Err(JailError::LauncherGone);
    }
    Ok(())
}

/// The VMM's PID, seen from the keeper, for forwarding signals.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Forks. Returns in the child (PID 1 of the new namespace, killed if the
/// keeper dies); the parent becomes the keeper and never returns.
pub fn fork_keeper() -> Result<(), JailError> {
    // SAFETY: the caller checked the process has one thread, so the child
    // gets consistent copies of every lock and allocator state.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys("fork")(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
            return Err(sys("prctl(PR_SET_PDEATHSIG)")(
                std::io::Error::last_os_error(),
            ));
        }
        return Ok(());
    }
    keep(pid)
}

extern "C" fn forward(sig: libc::c_int) {
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, sig) };
    }
}

/// The keeper: drops what it can, passes termination signals on, waits for
/// the VMM and exits as it did.
fn keep(child: libc::pid_t) -> ! {
    CHILD.store(child, Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: `forward` only calls kill, which is async-signal-safe.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    let lockdown = super::privileges::set_no_new_privs()
        .and_then(|()| super::fs_rules::restrict_keeper().map_err(JailError::from))
        .and_then(|_| super::privileges::drop_capabilities())
        .map_err(|e| e.to_string())
        .and_then(|()| seccomp::install(ThreadKind::Keeper, "keeper").map_err(|e| e.to_string()));
    if let Err(e) = lockdown {
        eprintln!("vitrine-vmm: jail: cannot lock the keeper down: {e}");
        // SAFETY: kill and _exit take plain integers.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::_exit(1);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // SAFETY: _exit takes a plain integer.
            unsafe { libc::_exit(1) };
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        eprintln!(
            "vitrine-vmm: jail: the VMM was killed by signal {sig} ({})",
            signal_name(sig)
        );
        128 + sig
    } else {
        1
    };
    // SAFETY: _exit takes a plain integer; the keeper has nothing to flush.
    unsafe { libc::_exit(code) }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSYS => "SIGSYS",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        _ => "other",
    }
}
