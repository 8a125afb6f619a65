//! Running renderers and untrusted programs in child processes with hard
//! limits: rlimits, a fresh session (so the whole group can be killed), an
//! unprivileged uid when we are root, and a wall-clock deadline.
//!
//! The limits are applied by the shim binary itself in `exec-limited` mode
//! (setrlimit, setsid, controlling tty, then exec), so no `unsafe` pre-exec
//! hook is needed.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// A sandboxed child could not be started or supervised.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The shim cannot find its own executable.
    #[error("cannot locate the shim executable")]
    SelfExe(#[source] std::io::Error),
    /// Spawning failed.
    #[error("cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    /// Waiting failed.
    #[error("cannot wait for the child")]
    Wait(#[source] std::io::Error),
    /// `exec-limited` got bad arguments.
    #[error("bad exec-limited arguments: {0}")]
    Usage(String),
    /// A limit could not be set.
    #[error("cannot apply {0}")]
    Limit(&'static str, #[source] nix::Error),
    /// The program could not be executed.
    #[error("cannot execute {0}")]
    Exec(String, #[source] std::io::Error),
    /// Dropping to the sandbox uid failed or did not stick.
    #[error("cannot become uid {0}")]
    BecomeUid(u32, #[source] nix::Error),
}

/// Resource limits of one child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildLimits {
    /// RLIMIT_AS, bytes.
    pub address_space: u64,
    /// RLIMIT_CPU, seconds.
    pub cpu_secs: u64,
    /// RLIMIT_FSIZE, bytes.
    pub file_size: u64,
    /// RLIMIT_NPROC: processes of the sandbox uid.
    pub nproc: u64,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// SIGKILL it when the thread that started it ends (a long-lived
    /// child must not outlive a shim that was killed).
    pub die_with_parent: bool,
}

impl ChildLimits {
    /// For a renderer such as pdftoppm or the image worker.
    pub fn renderer(time_limit: Duration) -> Self {
        Self {
            address_space: 2 << 30,
            cpu_secs: time_limit.as_secs() + 1,
            file_size: 512 << 20,
            nproc: 16,
            nofile: 64,
            die_with_parent: false,
        }
    }

    /// For LibreOffice: a big address space (it maps much it never
    /// touches; the VM's memory is the real bound) and its many threads,
    /// which count as processes.
    pub fn office(time_limit: Duration) -> Self {
        Self {
            address_space: 16 << 30,
            cpu_secs: time_limit.as_secs() + 1,
            file_size: 512 << 20,
            nproc: 256,
            nofile: 1024,
            die_with_parent: true,
        }
    }

    /// For the browser: no address-space cap, since V8 and PartitionAlloc
    /// reserve far more than they touch (V8's heap cap and the VM's memory
    /// are the bounds), and its many threads.
    pub fn browser(time_limit: Duration) -> Self {
        Self {
            address_space: u64::MAX,
            cpu_secs: time_limit.as_secs() + 1,
            file_size: 512 << 20,
            nproc: 512,
            nofile: 4096,
            die_with_parent: true,
        }
    }

    /// For an untrusted program on the terminal.
    pub fn program(time_limit: Duration) -> Self {
        Self {
            address_space: 1 << 30,
            cpu_secs: time_limit.as_secs() + 1,
            file_size: 64 << 20,
            nproc: 32,
            nofile: 64,
            die_with_parent: false,
        }
    }
}

/// Who the child runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The shim's own uid (not root, so it cannot switch).
    Inherit,
    /// This uid and gid (we are root).
    Uid(u32),
}

impl Identity {
    /// Creates `dir` (and its parents) and gives it to this identity, so a
    /// child run as it can write there.
    pub fn make_dir(self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        match self {
            Identity::Uid(uid) => std::os::unix::fs::chown(dir, Some(uid), Some(uid)),
            Identity::Inherit => Ok(()),
        }
    }

    /// `Uid(uid)` when running as root, else `Inherit`.
    pub fn for_sandbox(uid: u32) -> Self {
        if nix::unistd::geteuid().is_root() {
            Identity::Uid(uid)
        } else {
            Identity::Inherit
        }
    }
}

/// How a supervised child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// It exited or was killed by a signal on its own.
    Exited(ExitStatus),
    /// The deadline passed; the whole group was killed.
    TimedOut,
}

impl RunOutcome {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        matches!(self, RunOutcome::Exited(s) if s.success())
    }
}

/// What a limited child's standard fds are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStdio {
    /// As the caller sets them.
    Plain,
    /// Stdin is a terminal, which becomes the child's controlling tty.
    Tty,
    /// Stdin and stdout move to fds 3 and 4, Chromium's DevTools pipe
    /// (`--remote-debugging-pipe`); stdin becomes /dev/null and stdout
    /// joins stderr.
    CdpPipe,
}

/// A command that runs `program args` through `vitrine-shim exec-limited`.
pub fn limited_command(
    limits: ChildLimits,
    identity: Identity,
    stdio: ChildStdio,
    program: &Path,
    args: &[OsString],
) -> Result<Command, SandboxError> {
    let exe = std::env::current_exe().map_err(SandboxError::SelfExe)?;
    let mut cmd = Command::new(exe);
    cmd.arg("exec-limited")
        .arg(format!("--as={}", limits.address_space))
        .arg(format!("--cpu={}", limits.cpu_secs))
        .arg(format!("--fsize={}", limits.file_size))
        .arg(format!("--nproc={}", limits.nproc))
        .arg(format!("--nofile={}", limits.nofile));
    match stdio {
        ChildStdio::Plain => {}
        ChildStdio::Tty => {
            cmd.arg("--ctty");
        }
        ChildStdio::CdpPipe => {
            cmd.arg("--cdp-pipe");
        }
    }
    if limits.die_with_parent {
        cmd.arg("--die-with-parent");
    }
    // The helper starts as root and drops to the uid itself, after its
    // limits and before the final exec: the shim binary need not be
    // reachable by the sandbox uid (it may sit in a 0700 directory).
    if let Identity::Uid(uid) = identity {
        cmd.arg(format!("--uid={uid}"));
    }
    cmd.arg("--").arg(program).args(args);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null());
    Ok(cmd)
}

/// `exec-limited` mode: applies limits to this process, starts a new
/// session, optionally takes stdin as controlling tty, then becomes `program`.
/// Returns only on failure.
pub fn exec_limited(args: &[OsString]) -> SandboxError {
    match parse_and_exec(args) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn parse_and_exec(args: &[OsString]) -> Result<Never, SandboxError> {
    let mut limits = ChildLimits::program(Duration::from_secs(30));
    let mut ctty = false;
    let mut cdp_pipe = false;
    let mut uid = None;
    let mut rest = args.iter();
    for arg in rest.by_ref() {
        let s = arg
            .to_str()
            .ok_or_else(|| SandboxError::Usage(format!("{arg:?}")))?;
        if s == "--" {
            break;
        }
        if s == "--ctty" {
            ctty = true;
            continue;
        }
        if s == "--cdp-pipe" {
            cdp_pipe = true;
            continue;
        }
        if s == "--die-with-parent" {
            limits.die_with_parent = true;
            continue;
        }
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| SandboxError::Usage(s.to_owned()))?;
        let value: u64 = value
            .parse()
            .map_err(|_| SandboxError::Usage(s.to_owned()))?;
        match key {
            "--as" => limits.address_space = value,
            "--cpu" => limits.cpu_secs = value,
            "--fsize" => limits.file_size = value,
            "--nproc" => limits.nproc = value,
            "--nofile" => limits.nofile = value,
            "--uid" => {
                uid = Some(u32::try_from(value).map_err(|_| SandboxError::Usage(s.to_owned()))?)
            }
            _ => return Err(SandboxError::Usage(s.to_owned())),
        }
    }
    let program = rest
        .next()
        .ok_or_else(|| SandboxError::Usage("no program".into()))?;
    let program_args: Vec<&OsString> = rest.collect();

    nix::unistd::setsid().map_err(|e| SandboxError::Limit("setsid", e))?;
    if ctty {
        rustix::process::ioctl_tiocsctty(std::io::stdin()).map_err(|e| {
            SandboxError::Limit("TIOCSCTTY", nix::Error::from_raw(e.raw_os_error()))
        })?;
    }
    if cdp_pipe {
        move_to_cdp_fds().map_err(|e| SandboxError::Limit("the DevTools pipe's fds", e))?;
    }
    let set = |res: Resource, name: &'static str, v: u64| {
        setrlimit(res, v, v).map_err(|e| SandboxError::Limit(name, e))
    };
    set(Resource::RLIMIT_AS, "RLIMIT_AS", limits.address_space)?;
    set(Resource::RLIMIT_CPU, "RLIMIT_CPU", limits.cpu_secs)?;
    set(Resource::RLIMIT_FSIZE, "RLIMIT_FSIZE", limits.file_size)?;
    set(Resource::RLIMIT_NPROC, "RLIMIT_NPROC", limits.nproc)?;
    set(Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", limits.nofile)?;
    set(Resource::RLIMIT_CORE, "RLIMIT_CORE", 0)?;
    // The shim running itself (the render worker) is exec'd by fd, opened
    // while still root: the sandbox uid may not reach the binary's path.
    // The kernel still checks the file's execute bit against that uid.
    let own_binary = std::env::current_exe()
        .is_ok_and(|exe| exe == Path::new(program))
        .then(|| File::open("/proc/self/exe"))
        .transpose()
        .map_err(|e| SandboxError::Exec(program.to_string_lossy().into_owned(), e))?;
    if let Some(uid) = uid {
        become_uid(uid)?;
    }
    // After the uid change, which clears it.
    if limits.die_with_parent {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
            .map_err(|e| SandboxError::Limit("PR_SET_PDEATHSIG", e))?;
    }
    if let Some(binary) = own_binary {
        return Err(exec_fd(&binary, program, &program_args));
    }
    let err = Command::new(program).args(program_args).exec();
    Err(SandboxError::Exec(
        program.to_string_lossy().into_owned(),
        err,
    ))
}

/// Moves stdin to fd 3 and stdout to fd 4, where Chromium looks for its
/// DevTools pipe; then stdin reads /dev/null and stdout writes to stderr.
/// Only 0, 1 and 2 are open here (the shim opens everything close-on-exec),
/// so the two files opened first take fds 3 and 4.
fn move_to_cdp_fds() -> Result<(), nix::Error> {
    let open_null = || {
        File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::Error::EIO as i32)))
    };
    let mut three = open_null()?;
    let mut four = open_null()?;
    if three.as_raw_fd() != 3 || four.as_raw_fd() != 4 {
        return Err(nix::Error::EBADF);
    }
    nix::unistd::dup2(std::io::stdin(), &mut three)?;
    nix::unistd::dup2(std::io::stdout(), &mut four)?;
    let null = open_null()?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(std::io::stderr())?;
    // dup2 cleared close-on-exec on 3 and 4: they stay open into Chromium.
    let _ = three.into_raw_fd();
    let _ = four.into_raw_fd();
    Ok(())
}

/// A started child in its own session.
#[derive(Debug)]
pub struct Supervised {
    child: Child,
    identity: Identity,
    deadline: Instant,
}

impl Supervised {
    /// Spawns `cmd`, to be killed at `deadline`.
    pub fn spawn(
        mut cmd: Command,
        identity: Identity,
        deadline: Instant,
    ) -> Result<Self, SandboxError> {
        let child = cmd
            .spawn()
            .map_err(|e| SandboxError::Spawn(format!("{:?}", cmd.get_program()), e))?;
        Ok(Self {
            child,
            identity,
            deadline,
        })
    }

    /// Process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Checks once without blocking; kills the group when the deadline passed.
    pub fn poll(&mut self) -> Result<Option<RunOutcome>, SandboxError> {
        if let Some(status) = self.child.try_wait().map_err(SandboxError::Wait)? {
            return Ok(Some(RunOutcome::Exited(status)));
        }
        if Instant::now() >= self.deadline {
            self.kill();
            return Ok(Some(RunOutcome::TimedOut));
        }
        Ok(None)
    }

    /// Blocks until the child ends or the deadline passes.
    pub fn wait(&mut self) -> Result<RunOutcome, SandboxError> {
        loop {
            if let Some(outcome) = self.poll()? {
                return Ok(outcome);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the child's session group and everything left running under
    /// the sandbox uid, then reaps the child.
    pub fn kill(&mut self) {
        kill_tree(self.child.id(), self.identity);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Kills process group `pgid` and, for a dedicated uid, every process of it
/// (children that started their own session escape the group kill).
pub fn kill_tree(pgid: u32, identity: Identity) {
    if let Ok(raw) = i32::try_from(pgid) {
        let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
    }
    if let Identity::Uid(uid) = identity {
        kill_uid(uid);
    }
}

/// execs the open file `binary` with argv `program args` and this
/// process's environment. Returns only on failure.
fn exec_fd(binary: &File, program: &OsString, args: &[&OsString]) -> SandboxError {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let failed = |e: std::io::Error| SandboxError::Exec(program.to_string_lossy().into_owned(), e);
    let cstr = |s: &[u8]| CString::new(s).map_err(|e| failed(std::io::Error::other(e)));
    let argv: Result<Vec<CString>, _> = std::iter::once(program)
        .chain(args.iter().copied())
        .map(|a| cstr(a.as_bytes()))
        .collect();
    let env: Result<Vec<CString>, _> = std::env::vars_os()
        .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect();
    match (argv, env) {
        (Ok(argv), Ok(env)) => match nix::unistd::fexecve(binary, &argv, &env) {
            Ok(never) => match never {},
            Err(e) => failed(std::io::Error::from(e)),
        },
        (Err(e), _) | (_, Err(e)) => e,
    }
}

/// Drops every group and becomes `uid`/`uid` for good (root cannot come
/// back: setuid from root clears the saved uid and all capabilities).
fn become_uid(uid: u32) -> Result<(), SandboxError> {
    use nix::unistd::{getegid, geteuid, getgid, getuid, setgid, setgroups, setuid, Gid, Uid};
    let fail = |e| SandboxError::BecomeUid(uid, e);
    setgroups(&[]).map_err(fail)?;
    setgid(Gid::from_raw(uid)).map_err(fail)?;
    setuid(Uid::from_raw(uid)).map_err(fail)?;
    let ids = [
        getuid().as_raw(),
        geteuid().as_raw(),
        getgid().as_raw(),
        getegid().as_raw(),
    ];
    if ids.iter().any(|&id| id != uid) {
        return Err(fail(nix::Error::EPERM));
    }
    Ok(())
}

/// Runs `vitrine-shim kill-uid UID`, which becomes UID and kills all its
/// processes with kill(-1): the only race-free way to end a fork bomb. It
/// is started as root and drops to UID itself, like `exec-limited`.
fn kill_uid(uid: u32) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let _ = Command::new(exe)
        .arg("kill-uid")
        .arg(uid.to_string())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `kill-uid` mode body: becomes `uid`, then repeats until nothing of it is
/// left, because a fork bomb refills the slots freed by a pass.
pub fn kill_all_of_uid(uid: u32) -> Result<(), SandboxError> {
    become_uid(uid)?;
    for _ in 0..200 {
        // kill(-1) signals every process this uid may signal, except
        // ourselves; ESRCH means none is left.
        if nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL).is_err() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Describes an exit status for a "task failed" reason.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!(
            "killed by {}",
            Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.as_str().to_owned())
        ),
        _ => "unknown end".to_owned(),
    }
}

/// Reads at most the last `max` bytes of a file, as text for logs.
pub fn tail_of(path: &Path, max: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

/// Finds an executable on the usual paths.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
