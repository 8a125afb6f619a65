//! The reviewed allowlists, one per thread type. Every entry says why the
//! VMM needs the call; anything not listed traps (see [`super::report`]).
//!
//! Seccomp filters stack and are inherited by the threads a thread starts,
//! so a thread is held to the intersection of its own list and those of the
//! threads above it:
//!
//! - `vmm` is installed on the main thread just before the guest runs, after
//!   every file, KVM fd and guest mapping has been set up. Every vCPU and
//!   device worker starts under it, so it is the process ceiling: its own
//!   calls plus those of the vCPU list.
//! - `vcpu` is installed by each vCPU thread as it starts. Device workers of
//!   a freshly booted guest are started *by a vCPU thread* (when the driver
//!   writes DRIVER_OK), so the vCPU list also holds the worker calls.
//! - `worker` is installed by each device worker as it starts: no KVM
//!   ioctls, no thread creation, no file opening.
//! - `keeper` is the jail's waiting parent outside the PID namespace.
//!
//! Every list denies `socket` except AF_UNIX (worker: vsock relays to
//! host-side unix sockets), `execve`, `ptrace`, `mount`, `open_by_handle_at`,
//! `bpf`, `perf_event_open`, `userfaultfd`, `keyctl` and executable
//! mappings (`mmap`/`mprotect` with PROT_EXEC).

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};

/// What a rule lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Args {
    /// Any arguments.
    Any,
    /// `ioctl` with one of these request numbers (argument 1).
    Ioctl(&'static [Ioctl]),
    /// `socket(AF_UNIX, ...)` only.
    UnixSocket,
    /// `mmap`/`mprotect` without PROT_EXEC (argument 2).
    NoExec,
}

/// One ioctl request number and its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ioctl {
    pub request: u64,
    pub name: &'static str,
}

/// One allowed syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub nr: i64,
    pub args: Args,
    pub why: &'static str,
}

const fn rule(nr: i64, why: &'static str) -> Rule {
    Rule {
        nr,
        args: Args::Any,
        why,
    }
}

const fn with(nr: i64, args: Args, why: &'static str) -> Rule {
    Rule { nr, args, why }
}

// ioctl request encoding (asm-generic/ioctl.h), for the KVM numbers that
// kvm-ioctls keeps private.
const KVMIO: u64 = 0xae;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    // Struct sizes here are all far below the 14-bit size field.
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

const fn io(nr: u64, name: &'static str) -> Ioctl {
    Ioctl {
        request: ioc(0, nr, 0),
        name,
    }
}

const fn ior(nr: u64, size: usize, name: &'static str) -> Ioctl {
    Ioctl {
        request: ioc(IOC_READ, nr, size),
        name,
    }
}

const fn iowr(nr: u64, size: usize, name: &'static str) -> Ioctl {
    Ioctl {
        request: ioc(IOC_READ | IOC_WRITE, nr, size),
        name,
    }
}

use std::mem::size_of;

pub const KVM_RUN: Ioctl = io(0x80, "KVM_RUN");
const KVM_GET_REGS: Ioctl = ior(0x81, size_of::<kvm_regs>(), "KVM_GET_REGS");
const KVM_GET_SREGS: Ioctl = ior(0x83, size_of::<kvm_sregs>(), "KVM_GET_SREGS");
const KVM_TRANSLATE: Ioctl = iowr(0x85, size_of::<kvm_translation>(), "KVM_TRANSLATE");

/// A vCPU runs the guest and, on a fault, reads the registers and the
/// instruction bytes for the report.
const VCPU_IOCTLS: &[Ioctl] = &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_TRANSLATE];

/// The main thread also reads every piece of state a snapshot saves.
const VMM_IOCTLS: &[Ioctl] = &[
    KVM_RUN,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_TRANSLATE,
    iowr(0x88, size_of::<kvm_msrs>(), "KVM_GET_MSRS"),
    ior(0x8c, size_of::<kvm_fpu>(), "KVM_GET_FPU"),
    ior(0x8e, size_of::<kvm_lapic_state>(), "KVM_GET_LAPIC"),
    iowr(0x91, size_of::<kvm_cpuid2>(), "KVM_GET_CPUID2"),
    ior(0x98, size_of::<kvm_mp_state>(), "KVM_GET_MP_STATE"),
    ior(0x9f, size_of::<kvm_vcpu_events>(), "KVM_GET_VCPU_EVENTS"),
    ior(0xa1, size_of::<kvm_debugregs>(), "KVM_GET_DEBUGREGS"),
    ior(0xa4, size_of::<kvm_xsave>(), "KVM_GET_XSAVE"),
    ior(0xa6, size_of::<kvm_xcrs>(), "KVM_GET_XCRS"),
    iowr(0x62, size_of::<kvm_irqchip>(), "KVM_GET_IRQCHIP"),
    ior(0x9f, size_of::<kvm_pit_state2>(), "KVM_GET_PIT2"),
    ior(0x7c, size_of::<kvm_clock_data>(), "KVM_GET_CLOCK"),
    FIONBIO,
];

/// std's `set_nonblocking` on sockets.
const FIONBIO: Ioctl = Ioctl {
    request: libc::FIONBIO,
    name: "FIONBIO",
};

const WORKER_IOCTLS: &[Ioctl] = &[FIONBIO];

use libc::*;

/// What every Rust thread needs to run, allocate, lock, exit and report a
/// denial.
pub const RUNTIME: &[Rule] = &[
    rule(SYS_futex, "std Mutex/Condvar and thread join"),
    rule(
        SYS_write,
        "stderr, serial output, eventfd signals; the denial report itself",
    ),
    rule(SYS_close, "dropping fds (connections, files, eventfds)"),
    rule(SYS_exit, "a thread ending"),
    rule(
        SYS_exit_group,
        "the process ending (also after a denial report)",
    ),
    rule(SYS_rt_sigreturn, "return from the vCPU kick signal handler"),
    rule(
        SYS_rt_sigprocmask,
        "glibc masks signals around thread start and exit",
    ),
    rule(
        SYS_sigaltstack,
        "std's stack-overflow guard, set up and torn down per thread",
    ),
    with(
        SYS_mmap,
        Args::NoExec,
        "malloc arenas and thread stacks, never executable",
    ),
    with(
        SYS_mprotect,
        Args::NoExec,
        "thread stack guard pages, never executable",
    ),
    rule(SYS_munmap, "free()d arenas, thread stacks"),
    rule(SYS_mremap, "realloc of large buffers (vsock)"),
    rule(SYS_madvise, "glibc returns freed thread stacks and arenas"),
    rule(SYS_brk, "malloc's main heap"),
    rule(SYS_getrandom, "HashMap keys; virtio-rng entropy"),
    rule(SYS_gettid, "glibc thread bookkeeping"),
    rule(SYS_sched_yield, "spin-then-park in std locks"),
    rule(SYS_sched_getaffinity, "std::thread::available_parallelism"),
    rule(SYS_clock_gettime, "Instant::now where the vDSO falls back"),
    rule(SYS_clock_nanosleep, "thread::sleep (vCPU kick retry)"),
    rule(SYS_nanosleep, "thread::sleep on older glibc"),
    rule(SYS_restart_syscall, "an interrupted sleep resumes"),
    rule(SYS_rseq, "glibc registers restartable sequences per thread"),
    rule(
        SYS_set_robust_list,
        "glibc sets up a new thread's robust futex list",
    ),
    rule(SYS_prctl, "std names a new thread (PR_SET_NAME)"),
];

/// A device worker: epoll on its queues' eventfds, block reads, entropy,
/// and the vsock relay to host-side unix sockets.
pub const WORKER: &[Rule] = &[
    rule(SYS_epoll_wait, "the worker's event loop"),
    rule(SYS_epoll_pwait, "the worker's event loop (libc variant)"),
    rule(SYS_epoll_ctl, "vsock connections come and go from the loop"),
    rule(
        SYS_read,
        "queue-notify and kill eventfds; vsock stream data",
    ),
    rule(SYS_readv, "vectored reads of vsock stream data"),
    rule(SYS_writev, "vectored writes of vsock stream data"),
    rule(SYS_pread64, "virtio-blk reads at an offset"),
    rule(SYS_preadv, "virtio-blk vectored reads"),
    rule(
        SYS_pwrite64,
        "virtio-blk writes (writable disks; the jail binds disks read-only)",
    ),
    rule(SYS_fdatasync, "virtio-blk flush"),
    rule(
        SYS_accept4,
        "vsock: a host program connects to the device's listener",
    ),
    with(
        SYS_socket,
        Args::UnixSocket,
        "vsock: a guest connect is relayed to <uds>_<port>, AF_UNIX only",
    ),
    rule(SYS_connect, "vsock: the relay's connect to <uds>_<port>"),
    rule(SYS_recvfrom, "vsock stream data from the host side"),
    rule(SYS_sendto, "vsock stream data to the host side"),
    rule(SYS_recvmsg, "vsock stream data from the host side"),
    rule(SYS_sendmsg, "vsock stream data to the host side"),
    rule(SYS_shutdown, "vsock half-close"),
    rule(SYS_poll, "std checks a socket for hang-up"),
    rule(SYS_fcntl, "std dup/cloexec/nonblocking on sockets"),
    with(
        SYS_ioctl,
        Args::Ioctl(WORKER_IOCTLS),
        "FIONBIO: nonblocking sockets",
    ),
];

/// A vCPU thread: KVM_RUN and exit dispatch, plus starting a device worker
/// when the driver writes DRIVER_OK (the worker inherits this list).
pub const VCPU: &[Rule] = &[
    with(
        SYS_ioctl,
        Args::Ioctl(VCPU_IOCTLS),
        "KVM_RUN; registers and translation for a fault report",
    ),
    rule(SYS_read, "device registers backed by eventfds"),
    rule(SYS_clone3, "a device worker is started on DRIVER_OK"),
    rule(SYS_clone, "glibc's fallback when clone3 is unavailable"),
    rule(
        SYS_epoll_create1,
        "a new worker's event loop is built on DRIVER_OK",
    ),
    rule(SYS_eventfd2, "a new worker's kill eventfd"),
    rule(SYS_epoll_ctl, "a new worker registers its fds"),
    rule(SYS_fcntl, "dup of eventfds for a new worker"),
    rule(SYS_dup, "dup of eventfds for a new worker"),
    rule(
        SYS_seccomp,
        "a new worker narrows itself with its own filter (filters only add limits)",
    ),
];

/// The main thread from the first guest instruction on: kick and join the
/// vCPUs, restart parked workers, write a snapshot and its working set.
pub const VMM: &[Rule] = &[
    with(
        SYS_ioctl,
        Args::Ioctl(VMM_IOCTLS),
        "KVM_RUN inherited by vCPUs; state reads for a snapshot",
    ),
    rule(SYS_tgkill, "kick a vCPU out of KVM_RUN at the end of a run"),
    rule(
        SYS_rt_sigaction,
        "install the vCPU kick handler as the first vCPU starts",
    ),
    rule(SYS_read, "eventfds; reading the snapshot's working set"),
    rule(SYS_openat, "snapshot files (landlock bounds where)"),
    rule(SYS_newfstatat, "file sizes for snapshot writes"),
    rule(SYS_statx, "file sizes for snapshot writes"),
    rule(SYS_fstat, "file sizes for snapshot writes"),
    rule(SYS_lseek, "snapshot files"),
    rule(SYS_ftruncate, "size the snapshot memory file"),
    rule(SYS_fallocate, "size the snapshot memory file"),
    rule(SYS_pwrite64, "sparse snapshot memory writes"),
    rule(SYS_fsync, "snapshot durability"),
    rule(SYS_fdatasync, "snapshot durability"),
    rule(SYS_rename, "atomic snapshot file replace"),
    rule(SYS_renameat, "atomic snapshot file replace"),
    rule(SYS_renameat2, "atomic snapshot file replace"),
    rule(SYS_linkat, "publish an O_TMPFILE snapshot file"),
    rule(SYS_mkdir, "create the snapshot directory"),
    rule(SYS_mkdirat, "create the snapshot directory"),
    rule(SYS_unlink, "replace an old snapshot file"),
    rule(SYS_unlinkat, "replace an old snapshot file"),
    rule(SYS_getdents64, "list the snapshot directory"),
    rule(SYS_memfd_create, "scratch memory for snapshot pages"),
    rule(
        SYS_mincore,
        "record the pages a clone touched (working set)",
    ),
    rule(SYS_getpid, "std and glibc bookkeeping"),
    rule(
        SYS_seccomp,
        "a vCPU or worker narrows itself with its own filter (filters only add limits)",
    ),
];

/// The jail's keeper: it only waits for the VMM and reports how it ended.
pub const KEEPER: &[Rule] = &[
    rule(SYS_wait4, "wait for the jailed VMM"),
    rule(SYS_kill, "pass a termination on to the VMM"),
    rule(SYS_rt_sigaction, "reset signal dispositions"),
];
