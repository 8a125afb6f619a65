//! Privilege drop: rlimits, no_new_privs and every capability set.

use super::{sys, JailError, Rlimits};

/// RLIMIT_CORE is always 0: a VMM's core would hold guest memory.
pub fn set_rlimits(limits: &Rlimits, user_namespace: bool) -> Result<(), JailError> {
    let mut set: Vec<(libc::__rlimit_resource_t, &str, u64)> =
        vec![(libc::RLIMIT_CORE, "RLIMIT_CORE", 0)];
    if let Some(v) = limits.address_space {
        set.push((libc::RLIMIT_AS, "RLIMIT_AS", v));
    }
    if let Some(v) = limits.open_files {
        set.push((libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", v));
    }
    // Counted per user over the whole host: only meaningful for a user of
    // our own (see `Rlimits::processes`).
    if let (Some(v), true) = (limits.processes, user_namespace) {
        set.push((libc::RLIMIT_NPROC, "RLIMIT_NPROC", v));
    }
    for (resource, name, value) in set {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: `lim` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(sys(format!("setrlimit({name}, {value})"))(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// No execve from here on can gain privileges (setuid bits, file caps).
/// Also for the daemon: vitrined calls this at start-up.
pub fn set_no_new_privs() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(sys("prctl(PR_SET_NO_NEW_PRIVS)")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// Capability numbers fit in 64 bits of the v3 sets.
const CAP_SLOTS: libc::c_ulong = 64;

/// Empties the bounding and ambient sets, then effective, permitted and
/// inheritable. The bounding set goes first: dropping from it needs
/// CAP_SETPCAP, which the last step removes.
pub fn drop_capabilities() -> Result<(), JailError> {
    for cap in 0..CAP_SLOTS {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            // EINVAL: past the kernel's last capability.
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(sys(format!("drop capability {cap} from the bounding set"))(
                err,
            ));
        }
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(sys("clear the ambient capabilities")(
            std::io::Error::last_os_error(),
        ));
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as capset(2) v3 reads.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(sys("capset(0)")(std::io::Error::last_os_error()));
    }
    Ok(())
}
