//! The project's own VMM as a backend: `vitrine-vmm run` boots the guest
//! image with virtio-vsock and virtio-rng. The shim connects to host port
//! [`SHIM_VSOCK_PORT`]; the VMM's hybrid vsock forwards that to the Unix
//! socket `<uds>_<port>`, where this backend listens. The VMM writes the
//! guest's result as one JSON line on its stdout (`--status-fd 1`, serial
//! goes to a log file), so a guest that dies before `Ready` is reported
//! with its fault, not as a time-out.
//!
//! Every VMM runs jailed (crate::vmm_jail): its own namespaces, a root that
//! holds only the kernel, initrd and the VM's directory, landlock, seccomp
//! per thread, and a cgroup sized from the VM. A wall that stops it (a
//! denied syscall, the memory limit) is named in the error.
//!
//! Where this host's KVM cannot run a full Linux guest (`vitrine-vmm probe`
//! says why), use the `qemu` backend; [`KvmBackend::probe`] tells which.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vitrine_microvm::jail::launch::PreparedJail;
use vitrine_microvm::status::{GuestReport, MAX_REPORT_BYTES};
use vitrine_shim::protocol::Ready;

use super::channel::{ChannelError, GuestChannel};
use super::process::VmProcess;
use super::runtime_dir;
use super::startup::{self, file_tail, file_text, HandshakeFailure};
use super::{Backend, GuestVm, VmConfig, VmExit};
use crate::vmm_jail::{self, VmmFiles, VmmJailError, VmmLauncher, VmmLimits};

/// VMM binary used when `VITRINE_VMM` is not set and none sits next to the
/// running program.
pub const DEFAULT_VMM: &str = "vitrine-vmm";
/// Host vsock port the shim connects to (`vitrine.port=` on its command line).
pub const SHIM_VSOCK_PORT: u32 = 1024;
/// How often start-up and waits look at the VMM.
const POLL: Duration = Duration::from_millis(5);
/// Longest Unix socket path (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Longest a template VM's VMM may take to write its snapshot once paused.
const SNAPSHOT_WRITE: Duration = Duration::from_secs(60);

const SERIAL_LOG: &str = "serial.log";
const VMM_LOG: &str = "vmm.log";
const VSOCK_SOCKET: &str = "vsock.sock";

/// A VM of this backend could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The VM's private directory or its files could not be made.
    #[error("cannot set up the VM's private directory")]
    PrivateDir(#[source] io::Error),
    /// The socket path would not fit a Unix socket address.
    #[error("socket path {0} is longer than {MAX_SOCKET_PATH} bytes (set TMPDIR shorter)")]
    SocketPathTooLong(PathBuf),
    /// The VMM could not be started.
    #[error(
        "cannot start {binary} (build it with `cargo build -p vitrine-microvm` or set VITRINE_VMM)"
    )]
    Spawn {
        /// Binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The guest or the VMM ended before the shim said Ready.
    #[error("the VM ended before the shim was ready: {result}\n--- serial console (tail) ---\n{serial_tail}\n--- VMM output (tail) ---\n{vmm_tail}")]
    EndedEarly {
        /// The VMM's report, or its exit status when it wrote none.
        result: String,
        /// End of the guest's serial console.
        serial_tail: String,
        /// End of the VMM's stderr.
        vmm_tail: String,
    },
    /// `vitrine-vmm snapshot` wrote no snapshot.
    #[error("no template snapshot: {result}\n--- serial console (tail) ---\n{serial_tail}\n--- VMM output (tail) ---\n{vmm_tail}")]
    Snapshot {
        /// How the VMM ended, or the jail wall that stopped it.
        result: String,
        /// End of the template VM's serial console.
        serial_tail: String,
        /// End of the VMM's stderr.
        vmm_tail: String,
    },
    /// The shim did not say Ready in time.
    #[error(
        "no Ready from the shim within {waited:?}\n--- serial console (tail) ---\n{serial_tail}"
    )]
    ReadyTimeout {
        /// How long start-up waited.
        waited: Duration,
        /// End of the guest's serial console.
        serial_tail: String,
    },
    /// The shim's stream broke before Ready.
    #[error("the shim's stream failed before Ready\n--- serial console (tail) ---\n{serial_tail}")]
    Handshake {
        /// Why.
        #[source]
        source: ChannelError,
        /// End of the guest's serial console.
        serial_tail: String,
    },
    /// The shim's first message was not Ready.
    #[error("the shim's first message was {0}, not Ready")]
    NotReady(String),
    /// The channel was taken before.
    #[error("the guest channel was already taken")]
    ChannelTaken,
    /// The VMM process could not be waited for.
    #[error("cannot wait for the VMM process")]
    Wait(#[source] io::Error),
    /// The jail could not be set up.
    #[error("cannot jail the VMM")]
    Jail(#[from] VmmJailError),
    /// A guest file could not be resolved to an absolute path for the jail.
    #[error("guest image file {0}")]
    ImageFile(PathBuf, #[source] io::Error),
}

/// What `vitrine-vmm probe` says about this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSupport {
    /// Full Linux guests run here.
    FullGuests,
    /// They do not, for this reason.
    No(String),
}

/// Starts guests under the project's VMM.
#[derive(Debug, Clone)]
pub struct KvmBackend {
    binary: PathBuf,
    jailed: bool,
}

impl Default for KvmBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl KvmBackend {
    /// Uses `$VITRINE_VMM`, else `vitrine-vmm` next to the running program,
    /// else `vitrine-vmm` from `PATH`.
    pub fn new() -> Self {
        if let Some(v) = std::env::var_os("VITRINE_VMM").filter(|v| !v.is_empty()) {
            return Self::with_binary(v);
        }
        let beside = std::env::current_exe().ok().and_then(|exe| {
            // Test binaries live one level down, in target/<profile>/deps.
            let dir = exe.parent()?;
            [dir, dir.parent()?]
                .into_iter()
                .map(|d| d.join(DEFAULT_VMM))
                .find(|p| p.is_file())
        });
        Self::with_binary(beside.unwrap_or_else(|| PathBuf::from(DEFAULT_VMM)))
    }

    /// Uses the given VMM binary, jailed.
    pub fn with_binary(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            jailed: true,
        }
    }

    /// Runs the VMM without its jail: only for measuring what the jail
    /// costs, and for debugging the VMM itself.
    pub fn without_jail(mut self) -> Self {
        self.jailed = false;
        self
    }

    /// The command for `args`: `vitrine-vmm --jail <spec> ...` with the
    /// jail prepared, or the bare VMM.
    fn command(
        &self,
        config: &VmConfig,
        read_only: &[&Path],
        read_write: &[&Path],
        args: &[OsString],
    ) -> Result<(Command, Option<VmJail>), KvmError> {
        if !self.jailed {
            let mut cmd = Command::new(&self.binary);
            cmd.args(args);
            return Ok((cmd, None));
        }
        let absolute = |p: &&Path| {
            std::fs::canonicalize(p).map_err(|e| KvmError::ImageFile(p.to_path_buf(), e))
        };
        let files = VmmFiles {
            read_only: read_only.iter().map(absolute).collect::<Result<_, _>>()?,
            read_write: read_write.iter().map(absolute).collect::<Result<_, _>>()?,
        };
        // The jail's own work dir (spec, root mount point) stays outside
        // every path the VMM can reach.
        let work = runtime_dir::jail_dir().map_err(KvmError::PrivateDir)?;
        let name = runtime_dir::cgroup_name("vm");
        // The backend has no wall of its own to enforce: the task's
        // deadline and Drop kill the VMM.
        let limits = VmmLimits::for_vm(config.memory_mib, u32::from(config.vcpus), Duration::MAX);
        let prepared = VmmLauncher::new(&self.binary, work.path())
            .prepare_with_limits(&name, limits, &files)?;
        if let Some(why) = prepared.cgroup_skipped() {
            log::warn!("vm {name}: no memory/CPU cgroup on this host: {why}");
        }
        let cmd = prepared.command(&self.binary, args);
        Ok((
            cmd,
            Some(VmJail {
                prepared,
                _work: work,
                ending: None,
            }),
        ))
    }

    /// The VMM binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Asks `vitrine-vmm probe` whether this host runs full Linux guests.
    pub fn probe(&self) -> Result<HostSupport, KvmError> {
        let out = Command::new(&self.binary)
            .args(["probe", "--json"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|source| KvmError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        Ok(host_support(&out.stdout))
    }

    /// The kernel command line a VM of `config` boots with.
    pub fn cmdline(&self, config: &VmConfig) -> String {
        let mut cmdline = config.image.cmdline.clone();
        if !config.extra_cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&config.extra_cmdline);
        }
        // The image reboots by triple fault (reboot=t), which this VMM
        // rightly reports as a fault; the i8042 reset is a clean stop.
        cmdline.push_str(&format!(" reboot=k vitrine.port={SHIM_VSOCK_PORT}"));
        cmdline
    }

    /// The kernel command line of `config`'s template VM: the boot's, with
    /// the kernel's info messages on the console (the image says `quiet`),
    /// so that [`TEMPLATE_POINT`] is printed there.
    pub fn template_cmdline(&self, config: &VmConfig) -> String {
        format!("{} loglevel=7", self.cmdline(config))
    }

    /// The arguments the VMM gets for `config`, with its files in `dir`.
    pub fn args(&self, config: &VmConfig, dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["run".into()];
        args.extend(boot_args(config, self.cmdline(config)));
        args.extend(vm_dir_args(dir));
        args.push("--status-fd".into());
        args.push("1".into());
        args
    }

    /// The arguments of `vitrine-vmm snapshot` for `config`'s template:
    /// boot with `dir` as the VM's private directory, pause where the
    /// kernel starts the shim ([`TEMPLATE_POINT`]), and write the snapshot
    /// to `out`.
    pub fn snapshot_args(
        &self,
        config: &VmConfig,
        dir: &Path,
        out: &Path,
        point: &str,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["snapshot".into()];
        args.extend(boot_args(config, self.template_cmdline(config)));
        args.extend(vm_dir_args(dir));
        args.push("--out".into());
        args.push(out.into());
        args.push("--snapshot-on-serial".into());
        args.push(point.into());
        args.push("--time-limit".into());
        args.push(format!("{:.3}", config.ready_timeout.as_secs_f64()).into());
        args
    }

    /// The arguments of `vitrine-vmm restore` for a clone of `snapshot`
    /// with its own vsock socket and console in `dir`.
    /// The template's disks are opened again for the clone, in the order
    /// they were attached.
    pub fn restore_args(&self, config: &VmConfig, snapshot: &Path, dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["restore".into(), "--snapshot".into()];
        args.push(snapshot.into());
        args.extend(disk_args(config));
        args.extend(vm_dir_args(dir));
        args.push("--status-fd".into());
        args.push("1".into());
        args
    }
}

/// The console line at which a template VM is saved: the kernel is about
/// to exec the shim, every driver has probed, and no vsock connection is
/// open yet. Not later: the shim's connection to the host would not
/// survive the vsock transport reset every clone gets, and the shim does
/// not connect again.
pub const TEMPLATE_POINT: &str = "Run /init as init process";

/// The guest image and the VM's shape.
fn boot_args(config: &VmConfig, cmdline: String) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--kernel".into()];
    args.push(config.image.kernel.clone().into());
    args.push("--initrd".into());
    args.push(config.image.initrd.clone().into());
    args.push("--cmdline".into());
    args.push(cmdline.into());
    for (flag, value) in [
        ("--mem-mib", config.memory_mib.to_string()),
        ("--vcpus", config.vcpus.max(1).to_string()),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    args.push("--rng".into());
    args.extend(disk_args(config));
    args
}

/// The image's application disk (vitrine-vmm opens disks read-only).
fn disk_args(config: &VmConfig) -> Vec<OsString> {
    match &config.image.app_disk {
        Some(disk) => vec!["--disk".into(), disk.into()],
        None => Vec::new(),
    }
}

/// The image's files, bound read-only into the VMM's jail.
fn image_files(config: &VmConfig) -> Vec<&Path> {
    let mut files = vec![config.image.kernel.as_path(), config.image.initrd.as_path()];
    files.extend(config.image.app_disk.as_deref());
    files
}

/// The VM's own vsock socket and console log, in its private directory.
fn vm_dir_args(dir: &Path) -> Vec<OsString> {
    vec![
        "--vsock-uds".into(),
        dir.join(VSOCK_SOCKET).into(),
        "--serial-log".into(),
        dir.join(SERIAL_LOG).into(),
    ]
}

/// Reads `vitrine-vmm probe --json` output.
fn host_support(json: &[u8]) -> HostSupport {
    #[derive(serde::Deserialize)]
    struct Check {
        name: String,
        ok: bool,
        detail: String,
    }
    #[derive(serde::Deserialize)]
    struct Report {
        kvm: Result<(), String>,
        checks: Vec<Check>,
        full_linux_guests: bool,
    }
    let report: Report = match serde_json::from_slice(json) {
        Ok(r) => r,
        Err(e) => return HostSupport::No(format!("unreadable probe report: {e}")),
    };
    if let Err(e) = report.kvm {
        return HostSupport::No(format!("KVM unavailable: {e}"));
    }
    if report.full_linux_guests {
        return HostSupport::FullGuests;
    }
    let failed: Vec<_> = report
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    HostSupport::No(failed.join("; "))
}

/// The VMM's report, once its status line has been read.
type ReportSlot = Arc<Mutex<Option<Result<GuestReport, String>>>>;

/// Reads the one status line from the VMM's stdout.
fn read_report(stdout: ChildStdout, slot: ReportSlot) {
    let mut line = String::new();
    let limit = u64::try_from(MAX_REPORT_BYTES).unwrap_or(u64::MAX);
    let got = match BufReader::new(stdout.take(limit)).read_line(&mut line) {
        Ok(0) => Err("the VMM exited without a report".to_owned()),
        Ok(_) => GuestReport::parse(&line).map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot read the VMM's report: {e}")),
    };
    if let Ok(mut s) = slot.lock() {
        *s = Some(got);
    }
}

impl Backend for KvmBackend {
    type Vm = KvmVm;
    type Error = KvmError;

    fn name(&self) -> String {
        "kvm".to_owned()
    }

    fn start(&self, config: &VmConfig) -> Result<KvmVm, KvmError> {
        self.launch(config, &image_files(config), |dir| self.args(config, dir))
    }
}

impl KvmBackend {
    /// A clone of the snapshot in `snapshot` (`vitrine-vmm restore`, the
    /// directory bound read-only into its jail) with its own vsock socket,
    /// running once its shim has connected and said Ready. `config` sizes
    /// its jail and bounds the wait.
    pub fn restore(&self, config: &VmConfig, snapshot: &Path) -> Result<KvmVm, KvmError> {
        let mut read_only = vec![snapshot];
        read_only.extend(config.image.app_disk.as_deref());
        let mut vm = self.launch(config, &read_only, |dir| {
            self.restore_args(config, snapshot, dir)
        })?;
        vm.cloned_from = snapshot
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        Ok(vm)
    }

    /// Boots `config`'s template VM (`vitrine-vmm snapshot`, jailed) and
    /// writes its snapshot, taken at [`TEMPLATE_POINT`], into `out`.
    pub fn snapshot(&self, config: &VmConfig, out: &Path) -> Result<(), KvmError> {
        self.snapshot_on(config, out, TEMPLATE_POINT)
    }

    /// [`Self::snapshot`], taken when the console prints `point` (for a
    /// kernel or test guest that prints another line).
    pub fn snapshot_on(&self, config: &VmConfig, out: &Path, point: &str) -> Result<(), KvmError> {
        let dir = runtime_dir::vm_dir("kvm").map_err(KvmError::PrivateDir)?;
        let vmm_log_path = dir.path().join(VMM_LOG);
        let vmm_log = File::create(&vmm_log_path).map_err(KvmError::PrivateDir)?;
        let args = self.snapshot_args(config, dir.path(), out, point);
        let (mut cmd, jail) =
            self.command(config, &image_files(config), &[dir.path(), out], &args)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(vmm_log)
            .spawn()
            .map_err(|source| KvmError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let mut process = VmProcess::new(child, "vitrine-vmm snapshot");
        // The VMM gives up at --time-limit itself; this is for a VMM that hangs.
        let exit = process
            .wait_exit(config.ready_timeout + SNAPSHOT_WRITE)
            .map_err(KvmError::Wait)?;
        process.kill();
        let status = exit.or_else(|| process.exit());
        let wall = match (jail, status) {
            (Some(jail), Some(status)) => {
                match jail
                    .prepared
                    .ending(status, &file_text(&vmm_log_path), None)
                {
                    Ok(ending) => vmm_jail::exit_code(ending).err().map(|e| e.to_string()),
                    Err(e) => Some(format!("cannot read how the jailed VMM ended: {e}")),
                }
            }
            _ => None,
        };
        if exit.is_some_and(|s| s.success()) {
            return Ok(());
        }
        let result = match (exit, wall) {
            (_, Some(wall)) => wall,
            (Some(status), None) => format!("vitrine-vmm snapshot failed ({status})"),
            (None, None) => format!(
                "vitrine-vmm snapshot did not end within {:?}",
                config.ready_timeout + SNAPSHOT_WRITE
            ),
        };
        Err(KvmError::Snapshot {
            result,
            serial_tail: file_tail(&dir.path().join(SERIAL_LOG)),
            vmm_tail: file_tail(&vmm_log_path),
        })
    }

    /// Starts the VMM with `args_of(private dir)`, `read_only` bound into
    /// its jail, and waits for the shim's Ready on the VM's vsock socket.
    fn launch(
        &self,
        config: &VmConfig,
        read_only: &[&Path],
        args_of: impl FnOnce(&Path) -> Vec<OsString>,
    ) -> Result<KvmVm, KvmError> {
        let dir = runtime_dir::vm_dir("kvm").map_err(KvmError::PrivateDir)?;
        let listen_path = dir.path().join(format!("{VSOCK_SOCKET}_{SHIM_VSOCK_PORT}"));
        if listen_path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(KvmError::SocketPathTooLong(listen_path));
        }
        // Listen before the guest exists, so its connect cannot race us.
        let listener = UnixListener::bind(&listen_path).map_err(KvmError::PrivateDir)?;
        listener
            .set_nonblocking(true)
            .map_err(KvmError::PrivateDir)?;
        let vmm_log = File::create(dir.path().join(VMM_LOG)).map_err(KvmError::PrivateDir)?;

        let args = args_of(dir.path());
        let (mut cmd, jail) = self.command(config, read_only, &[dir.path()], &args)?;
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(vmm_log)
            .spawn()
            .map_err(|source| KvmError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        log::debug!(
            "vitrine-vmm pid {} started in {}",
            child.id(),
            dir.path().display()
        );
        let report: ReportSlot = Arc::default();
        if let Some(stdout) = child.stdout.take() {
            let slot = report.clone();
            thread::Builder::new()
                .name("vmm-status".into())
                .spawn(move || read_report(stdout, slot))
                .map_err(KvmError::PrivateDir)?;
        }
        let mut vm = KvmVm {
            process: VmProcess::new(child, "vitrine-vmm"),
            dir,
            channel: None,
            ready: Ready {
                shim_version: String::new(),
                capabilities: Vec::new(),
            },
            boot_time: Duration::ZERO,
            report,
            jail,
            cloned_from: None,
        };
        let deadline = started + config.ready_timeout;
        let stream = vm.accept(&listener, deadline, config.ready_timeout)?;
        let mut channel = GuestChannel::new(stream).map_err(|source| vm.handshake_error(source))?;
        vm.ready = match startup::await_ready(&mut channel, deadline) {
            Ok(ready) => ready,
            Err(HandshakeFailure::NotReady(what)) => return Err(KvmError::NotReady(what)),
            Err(HandshakeFailure::TimedOut) => {
                return Err(KvmError::ReadyTimeout {
                    waited: config.ready_timeout,
                    serial_tail: vm.serial_tail(),
                })
            }
            Err(HandshakeFailure::Stream(source)) => {
                // The VMM reports within milliseconds of the guest's end.
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until {
                    if let Some(e) = vm.ended_early()? {
                        return Err(e);
                    }
                    thread::sleep(POLL);
                }
                return Err(vm.handshake_error(source));
            }
        };
        vm.boot_time = started.elapsed();
        vm.channel = Some(channel);
        Ok(vm)
    }
}

/// A guest under `vitrine-vmm` whose shim said Ready. Dropping it kills the
/// VMM and removes its private directory.
#[derive(Debug)]
pub struct KvmVm {
    process: VmProcess,
    dir: tempfile::TempDir,
    channel: Option<GuestChannel>,
    ready: Ready,
    boot_time: Duration,
    report: ReportSlot,
    jail: Option<VmJail>,
    /// The template directory's name, for a clone.
    cloned_from: Option<String>,
}

/// A VMM's jail, kept until the VMM has ended so its cgroup can say why and
/// be removed.
#[derive(Debug)]
struct VmJail {
    prepared: PreparedJail,
    _work: tempfile::TempDir,
    /// The wall that stopped the VMM, once it has ended (None: none did).
    ending: Option<Option<String>>,
}

impl KvmVm {
    /// Process id of the VMM.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The VMM's report of the guest's result, once it has ended.
    pub fn report(&self) -> Option<Result<GuestReport, String>> {
        self.report.lock().ok().and_then(|r| r.clone())
    }

    fn poll_exit(&mut self) -> Result<Option<ExitStatus>, KvmError> {
        let exit = self.process.poll_exit().map_err(KvmError::Wait)?;
        if let Some(status) = exit {
            self.ended(status);
        }
        Ok(exit)
    }

    /// Once, when the VMM has ended: asks its jail which wall, if any,
    /// stopped it, and removes its cgroup.
    fn ended(&mut self, status: ExitStatus) {
        let log = self.dir.path().join(VMM_LOG);
        if let Some(jail) = self.jail.as_mut().filter(|j| j.ending.is_none()) {
            let wall = match jail.prepared.ending(status, &file_text(&log), None) {
                Ok(ending) => vmm_jail::exit_code(ending).err().map(|e| e.to_string()),
                Err(e) => Some(format!("cannot read how the jailed VMM ended: {e}")),
            };
            jail.ending = Some(wall);
        }
    }

    /// The jail wall that stopped the VMM, if one did.
    pub fn stopped_by_jail(&self) -> Option<&str> {
        self.jail.as_ref()?.ending.as_ref()?.as_deref()
    }

    /// The error for a VM that already ended, if it did.
    fn ended_early(&mut self) -> Result<Option<KvmError>, KvmError> {
        let result = match (self.report(), self.poll_exit()?) {
            (Some(Ok(report)), _) => describe(&report),
            (Some(Err(why)), Some(status)) => match self.stopped_by_jail() {
                Some(wall) => wall.to_owned(),
                None => format!("{why} ({status})"),
            },
            (None | Some(Err(_)), _) => return Ok(None),
        };
        Ok(Some(KvmError::EndedEarly {
            result,
            serial_tail: self.serial_tail(),
            vmm_tail: file_tail(&self.dir.path().join(VMM_LOG)),
        }))
    }

    fn accept(
        &mut self,
        listener: &UnixListener,
        deadline: Instant,
        waited: Duration,
    ) -> Result<UnixStream, KvmError> {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(KvmError::PrivateDir)?;
                    return Ok(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(KvmError::PrivateDir(e)),
            }
            if let Some(e) = self.ended_early()? {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(KvmError::ReadyTimeout {
                    waited,
                    serial_tail: self.serial_tail(),
                });
            }
            thread::sleep(POLL);
        }
    }

    fn handshake_error(&self, source: ChannelError) -> KvmError {
        KvmError::Handshake {
            source,
            serial_tail: self.serial_tail(),
        }
    }

    fn serial_tail(&self) -> String {
        file_tail(&self.dir.path().join(SERIAL_LOG))
    }
}

/// A report in words, for errors.
fn describe(report: &GuestReport) -> String {
    match report {
        GuestReport::DebugExit { code } => format!("the guest exited with code {code}"),
        GuestReport::Stopped { how } => format!("the guest stopped ({how})"),
        GuestReport::Ready => "the guest paused at its ready point".to_owned(),
        GuestReport::Fault { detail, .. } => format!("guest fault: {detail}"),
        GuestReport::Error { detail } => format!("VMM error: {detail}"),
    }
}

impl GuestVm for KvmVm {
    type Error = KvmError;

    fn ready(&self) -> &Ready {
        &self.ready
    }

    fn boot_time(&self) -> Duration {
        self.boot_time
    }

    fn take_channel(&mut self) -> Result<GuestChannel, KvmError> {
        self.channel.take().ok_or(KvmError::ChannelTaken)
    }

    fn wait_or_kill(&mut self, limit: Duration) -> Result<VmExit, KvmError> {
        let exit = self.process.wait_or_kill(limit).map_err(KvmError::Wait)?;
        if let Some(status) = self.process.exit() {
            self.ended(status);
        }
        Ok(exit)
    }

    fn kill(&mut self) {
        self.process.kill();
        if let Some(status) = self.process.exit() {
            self.ended(status);
        }
    }

    fn serial_log(&self) -> String {
        file_text(&self.dir.path().join(SERIAL_LOG))
    }

    fn origin(&self) -> String {
        match &self.cloned_from {
            Some(t) => format!("cloned from template {t}"),
            None => "booted".to_owned(),
        }
    }
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::GuestImage;

    fn config() -> VmConfig {
        VmConfig::new(GuestImage {
            kernel: PathBuf::from("/images/vmlinux"),
            initrd: PathBuf::from("/images/initrd.gz"),
            cmdline: "console=ttyS0 reboot=t quiet".to_owned(),
            app_disk: None,
        })
    }

    fn arg_after<'a>(args: &'a [OsString], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].to_str().unwrap())
            .collect()
    }

    #[test]
    fn args_give_the_guest_vsock_rng_and_the_shim_port() {
        let mut config = config();
        config.extra_cmdline = "clearcpuid=avx".to_owned();
        let args = KvmBackend::with_binary("vmm").args(&config, Path::new("/run/vm1"));

        assert_eq!(args[0], "run");
        assert_eq!(arg_after(&args, "--kernel"), ["/images/vmlinux"]);
        assert_eq!(arg_after(&args, "--initrd"), ["/images/initrd.gz"]);
        assert_eq!(
            arg_after(&args, "--cmdline"),
            ["console=ttyS0 reboot=t quiet clearcpuid=avx reboot=k vitrine.port=1024"]
        );
        assert_eq!(arg_after(&args, "--mem-mib"), ["512"]);
        assert_eq!(arg_after(&args, "--vsock-uds"), ["/run/vm1/vsock.sock"]);
        assert_eq!(arg_after(&args, "--serial-log"), ["/run/vm1/serial.log"]);
        assert_eq!(arg_after(&args, "--status-fd"), ["1"]);
        assert!(args.iter().any(|a| a == "--rng"));
    }

    #[test]
    fn the_app_disk_goes_to_the_boot_the_template_and_each_clone() {
        let backend = KvmBackend::with_binary("vmm");
        let mut config = config();
        config.image.app_disk = Some(PathBuf::from("/images/apps.squashfs"));
        let dir = Path::new("/run/vm1");

        let boot = backend.args(&config, dir);
        let template = backend.snapshot_args(&config, dir, Path::new("/out"), TEMPLATE_POINT);
        let clone = backend.restore_args(&config, Path::new("/cache/t"), dir);
        let bare = backend.args(&self::config(), dir);

        for args in [&boot, &template, &clone] {
            assert_eq!(arg_after(args, "--disk"), ["/images/apps.squashfs"]);
        }
        assert!(arg_after(&bare, "--disk").is_empty());
        assert_eq!(
            image_files(&config).last(),
            Some(&Path::new("/images/apps.squashfs"))
        );
    }

    #[test]
    fn snapshot_args_pause_where_the_kernel_starts_the_shim_and_write_out() {
        let backend = KvmBackend::with_binary("vmm");
        let mut config = config();
        config.ready_timeout = Duration::from_millis(20_500);

        let args = backend.snapshot_args(
            &config,
            Path::new("/run/t1"),
            Path::new("/cache/.build-x"),
            TEMPLATE_POINT,
        );

        assert_eq!(args[0], "snapshot");
        assert_eq!(arg_after(&args, "--kernel"), ["/images/vmlinux"]);
        assert_eq!(arg_after(&args, "--initrd"), ["/images/initrd.gz"]);
        // `quiet` would hide the point's line; loglevel=7 comes after it.
        assert_eq!(
            arg_after(&args, "--cmdline"),
            ["console=ttyS0 reboot=t quiet reboot=k vitrine.port=1024 loglevel=7"]
        );
        assert_eq!(
            arg_after(&args, "--snapshot-on-serial"),
            ["Run /init as init process"]
        );
        assert_eq!(arg_after(&args, "--out"), ["/cache/.build-x"]);
        assert_eq!(arg_after(&args, "--time-limit"), ["20.500"]);
        assert_eq!(arg_after(&args, "--vsock-uds"), ["/run/t1/vsock.sock"]);
        assert_eq!(arg_after(&args, "--serial-log"), ["/run/t1/serial.log"]);
        assert!(args.iter().any(|a| a == "--rng"));
        // `snapshot` has no status fd; its exit status says it all.
        assert!(!args.iter().any(|a| a == "--status-fd"));
    }

    #[test]
    fn restore_args_give_each_clone_its_own_socket_and_console() {
        let backend = KvmBackend::with_binary("vmm");

        let args = backend.restore_args(
            &config(),
            Path::new("/cache/templates/0123"),
            Path::new("/run/c7"),
        );

        assert_eq!(args[0], "restore");
        assert_eq!(arg_after(&args, "--snapshot"), ["/cache/templates/0123"]);
        assert_eq!(arg_after(&args, "--vsock-uds"), ["/run/c7/vsock.sock"]);
        assert_eq!(arg_after(&args, "--serial-log"), ["/run/c7/serial.log"]);
        assert_eq!(arg_after(&args, "--status-fd"), ["1"]);
        // The shape, image and devices come from the snapshot.
        for flag in ["--kernel", "--initrd", "--cmdline", "--mem-mib", "--rng"] {
            assert!(!args.iter().any(|a| a == flag), "{flag} in {args:?}");
        }
    }

    #[test]
    fn probe_output_says_why_full_guests_cannot_run() {
        let no = br#"{"kvm":{"Ok":null},"checks":[{"name":"sse","what":"x","ok":false,"detail":"emulation failure"}],"cpuid_masking":null,"integer_guests":true,"full_linux_guests":false}"#;
        let yes = br#"{"kvm":{"Ok":null},"checks":[],"cpuid_masking":null,"integer_guests":true,"full_linux_guests":true}"#;
        let no_kvm = br#"{"kvm":{"Err":"no /dev/kvm"},"checks":[],"cpuid_masking":null,"integer_guests":false,"full_linux_guests":false}"#;

        assert_eq!(host_support(yes), HostSupport::FullGuests);
        assert_eq!(
            host_support(no),
            HostSupport::No("sse: emulation failure".into())
        );
        assert!(matches!(host_support(no_kvm), HostSupport::No(w) if w.contains("no /dev/kvm")));
        assert!(matches!(host_support(b"garbage"), HostSupport::No(w) if w.contains("unreadable")));
    }

    #[test]
    fn start_with_a_missing_binary_names_it() {
        // Unjailed: the jail would first refuse the made-up image paths.
        let err = KvmBackend::with_binary("/nonexistent/vitrine-vmm")
            .without_jail()
            .start(&config())
            .unwrap_err();

        assert!(matches!(err, KvmError::Spawn { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/vitrine-vmm"),
            "{err}"
        );
    }
}
