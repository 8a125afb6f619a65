//! What happens when a filter denies a call: the filter returns
//! SECCOMP_RET_TRAP, the kernel raises SIGSYS on the offending thread, and
//! this handler writes one line to stderr and ends the whole process:
//!
//! ```text
//! vitrine-vmm: seccomp: denied syscall 41 (socket) on thread vcpu0
//! ```
//!
//! The exit status is [`EXIT_SECCOMP_DENIED`]. The handler only uses
//! async-signal-safe calls (`write`, `exit_group`), both on every
//! allowlist, and no allocation: the thread name comes from a fixed-size
//! thread-local set when the filter was installed.

use std::cell::Cell;
use std::io;
use std::sync::Once;

use super::syscall_names;

/// Exit status of a process killed for a denied syscall (128 + SIGSYS, as a
/// shell would report a death by SIGSYS).
pub const EXIT_SECCOMP_DENIED: i32 = 128 + libc::SIGSYS;

/// The line's prefix, for parsers on the daemon side.
pub const REPORT_PREFIX: &str = "vitrine-vmm: seccomp: denied syscall ";

const NAME_LEN: usize = 16;

thread_local! {
    /// This thread's name for the report ("vmm", "vcpu0", "virtio-blk").
    /// Const-initialised and without a destructor, so reading it from the
    /// signal handler touches no lazy state.
    static THREAD_NAME: Cell<[u8; NAME_LEN]> = const { Cell::new([0; NAME_LEN]) };
}

/// Records the calling thread's name for a later report (truncated to 15
/// bytes, like the kernel's comm).
pub fn set_thread_name(name: &str) {
    let mut buf = [0u8; NAME_LEN];
    let n = name.len().min(NAME_LEN - 1);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD_NAME.with(|c| c.set(buf));
}

/// Installs the SIGSYS handler for the whole process (once).
pub fn install_handler() -> io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler has the SA_SIGINFO signature and only calls
        // async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                result = Err(io::Error::last_os_error());
            }
        }
    });
    result
}

/// The x86_64 SIGSYS siginfo fields (`_sigsys` in the kernel's union): the
/// header is three ints and padding, then the call address, syscall number
/// and audit arch.
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: usize,
    syscall: i32,
    arch: u32,
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers,
    // and for SIGSYS (SYS_SECCOMP) its layout starts with `SigsysInfo`;
    // siginfo_t is 128 bytes, larger than the struct read here.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let mut line = [0u8; 160];
    let len = format_report(&mut line, i64::from(nr), &THREAD_NAME.with(Cell::get));
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is
    // valid for `len` bytes.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), len);
        libc::_exit(EXIT_SECCOMP_DENIED);
    }
}

/// Fills `out` with the report line and returns its length. No allocation,
/// so the signal handler can call it.
fn format_report(out: &mut [u8], nr: i64, thread: &[u8; NAME_LEN]) -> usize {
    let mut w = Cursor { buf: out, at: 0 };
    w.put(REPORT_PREFIX.as_bytes());
    w.put_number(nr);
    w.put(b" (");
    w.put(syscall_names::name(nr).unwrap_or("unknown").as_bytes());
    w.put(b") on thread ");
    let end = thread.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    if end == 0 {
        w.put(b"unnamed");
    } else {
        w.put(&thread[..end]);
    }
    w.put(b"\n");
    w.at
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - self.at;
        let n = bytes.len().min(room);
        self.buf[self.at..self.at + n].copy_from_slice(&bytes[..n]);
        self.at += n;
    }

    fn put_number(&mut self, n: i64) {
        if n < 0 {
            self.put(b"-");
        }
        let mut digits = [0u8; 20];
        let mut v = n.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[i..]);
    }
}

/// A parsed report line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub nr: i64,
    pub name: String,
    pub thread: String,
}

impl Denial {
    /// Finds the report line in a process's stderr.
    pub fn find(stderr: &str) -> Option<Denial> {
        stderr.lines().find_map(Self::parse)
    }

    fn parse(line: &str) -> Option<Denial> {
        let rest = line.strip_prefix(REPORT_PREFIX)?;
        let (nr, rest) = rest.split_once(" (")?;
        let (name, rest) = rest.split_once(") on thread ")?;
        Some(Denial {
            nr: nr.parse().ok()?,
            name: name.to_owned(),
            thread: rest.trim_end().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_names_number_syscall_and_thread() {
        let mut name = [0u8; NAME_LEN];
        name[..5].copy_from_slice(b"vcpu0");
        let mut out = [0u8; 160];

        let n = format_report(&mut out, 41, &name);

        let line = std::str::from_utf8(&out[..n]).unwrap();
        assert_eq!(
            line,
            "vitrine-vmm: seccomp: denied syscall 41 (socket) on thread vcpu0\n"
        );
        assert_eq!(
            Denial::find(line),
            Some(Denial {
                nr: 41,
                name: "socket".into(),
                thread: "vcpu0".into()
            })
        );
    }

    #[test]
    fn unknown_number_and_unnamed_thread_still_make_a_line() {
        let mut out = [0u8; 160];

        let n = format_report(&mut out, 9999, &[0; NAME_LEN]);

        assert_eq!(
            std::str::from_utf8(&out[..n]).unwrap(),
            "vitrine-vmm: seccomp: denied syscall 9999 (unknown) on thread unnamed\n"
        );
    }

    #[test]
    fn other_stderr_lines_are_not_a_denial() {
        assert_eq!(Denial::find("vitrine-vmm: error: no such file\n"), None);
    }
}
