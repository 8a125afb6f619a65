//! The private root: a small tmpfs holding bind mounts of exactly the
//! spec's paths (at their host paths; noexec unless marked read-execute),
//! the spec's symlinks, /dev/kvm and a PID-only /proc, made
//! the process's `/` with pivot_root. The old root is detached, so no path
//! leads back to the host's filesystem.

use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{sys, Access, JailError, JailSpec};

const DEV_KVM: &str = "/dev/kvm";
const HOSTNAME: &str = "vitrine-vmm";

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::BadPath(p.to_path_buf()))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let what = format!("mount {}", target.display());
    let source = source.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype.map(|s| CString::new(s).unwrap_or_default());
    let data = data.map(|s| CString::new(s).unwrap_or_default());
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call, or null where mount(2) allows it.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc != 0 {
        return Err(sys(what)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Where host path `p` appears under the new root `root`.
fn inside(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Binds `source` at the same path under `root`, with `extra` mount flags.
fn bind(root: &Path, source: &Path, extra: libc::c_ulong) -> Result<(), JailError> {
    let target = inside(root, source);
    let is_dir = fs::metadata(source)
        .map_err(|e| JailError::MissingPath(source.to_path_buf(), e))?
        .is_dir();
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(sys(format!("mkdir {}", parent.display())))?;
    }
    if is_dir {
        fs::create_dir_all(&target).map_err(sys(format!("mkdir {}", target.display())))?;
    } else if !target.exists() {
        File::create(&target).map_err(sys(format!("create {}", target.display())))?;
    }
    mount(
        Some(source),
        &target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    // Bind flags only take effect on a remount.
    mount(
        None,
        &target,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | extra,
        None,
    )
}

/// Makes the host's symlink `link` again under `root`, same target.
fn symlink(root: &Path, link: &Path) -> Result<(), JailError> {
    let target = fs::read_link(link).map_err(|e| JailError::MissingPath(link.to_path_buf(), e))?;
    let inner = inside(root, link);
    if let Some(parent) = inner.parent() {
        fs::create_dir_all(parent).map_err(sys(format!("mkdir {}", parent.display())))?;
    }
    std::os::unix::fs::symlink(&target, &inner).map_err(sys(format!(
        "symlink {} -> {}",
        link.display(),
        target.display()
    )))
}

pub fn build_and_pivot(spec: &JailSpec) -> Result<(), JailError> {
    let root = spec.root.as_path();
    // Nothing below propagates back to the host's mount namespace.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=0755,size=1m,nr_inodes=1024"),
    )?;

    // Parents before children, so a nested path lands on its parent's bind.
    let mut paths: Vec<_> = spec.paths.iter().collect();
    paths.sort_by_key(|p| p.path.components().count());
    for p in paths {
        let flags = match p.access {
            Access::ReadOnly => libc::MS_RDONLY | libc::MS_NOEXEC,
            Access::ReadWrite => libc::MS_NOEXEC,
            // The one kind of bind a program may be executed from.
            Access::ReadExecute => libc::MS_RDONLY,
            Access::Symlink => {
                symlink(root, &p.path)?;
                continue;
            }
        };
        bind(root, &p.path, libc::MS_NODEV | flags)?;
    }
    if spec.dev_kvm {
        // The one device node: nodev is left off this mount only.
        bind(root, Path::new(DEV_KVM), libc::MS_NOEXEC)?;
    }

    // A /proc of the new PID namespace only: the VMM sees itself, and
    // `subset=pid` leaves out /proc/sys, /proc/kcore and the rest.
    let proc_dir = root.join("proc");
    fs::create_dir_all(&proc_dir).map_err(sys("mkdir /proc"))?;
    mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("subset=pid,hidepid=invisible"),
    )?;

    pivot(root)?;
    // The new root itself is read-only; writable binds stay writable.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )?;
    let name = HOSTNAME.as_bytes();
    // SAFETY: the buffer is valid for `name.len()` bytes.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(sys("sethostname")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// pivot_root(".", ".") stacks the old root under the new one at `/`;
/// detaching it leaves only the new root (the runc idiom, no put_old dir).
fn pivot(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(sys("chdir to the new root"))?;
    let dot = CString::new(".").unwrap_or_default();
    // SAFETY: both arguments are NUL-terminated strings.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    if rc != 0 {
        return Err(sys("pivot_root")(std::io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(sys("detach the old root")(std::io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(sys("chdir /"))
}
