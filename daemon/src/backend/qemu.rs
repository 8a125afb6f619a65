//! QEMU backend: `qemu-system-x86_64 -M microvm` boots the guest image, and
//! the shim is reached through a virtio-serial port that QEMU binds to a Unix
//! socket in the VM's private directory.
//!
//! QEMU runs in the same jail as the project's VMM (crate::vmm_jail):
//! `vitrine-vmm --jail <spec> exec -- qemu-system-x86_64 ...` enters new
//! mount, PID, network, IPC and UTS namespaces, a private root holding only
//! `/usr` (read-only; QEMU, its libraries, firmware and modules), the
//! loader's symlinks, the kernel and initrd (read-only) and the VM's
//! directory, landlock for those paths, rlimits, a memory/CPU/pids cgroup
//! sized from the VM, no_new_privs and no capabilities, and then execs
//! QEMU. QEMU's own `-sandbox` seccomp filter applies inside it. If the
//! jail cannot be set up, the VM does not start: there is no fallback to
//! an unjailed QEMU ([`QemuBackend::without_jail`] exists for tests and
//! measurements only).
//!
//! vhost-vsock would need `/dev/vhost-vsock` and a host-side AF_VSOCK
//! listener; [`vhost_vsock_available`] reports whether the host has the
//! device, but this backend always uses virtio-serial, which every host has
//! and which the shim falls back to.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vitrine_microvm::jail::launch::{self, PreparedJail};
use vitrine_shim::protocol::Ready;

use super::channel::{ChannelError, GuestChannel};
use super::kvm::KvmBackend;
use super::process::VmProcess;
use super::qmp::{Qmp, QmpError};
use super::runtime_dir;
use super::startup::{self, file_tail, file_text, HandshakeFailure};
use super::{Accel, Backend, GuestVm, VmConfig, VmExit};
use crate::vmm_jail::{self, ProgramFiles, VmmFiles, VmmJailError, VmmLauncher, VmmLimits};

/// QEMU binary used when `VITRINE_QEMU` is not set.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// Name of the virtio-serial port the shim opens.
pub const SHIM_PORT_NAME: &str = "org.vitrine.0";
/// How often start-up and waits look at the QEMU process.
const POLL: Duration = Duration::from_millis(10);
/// Longest Unix socket path (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Where QEMU, its libraries, firmware (`/usr/share/qemu`) and modules
/// (`/usr/lib/x86_64-linux-gnu/qemu`) live; bound read-only, executable.
const SYSTEM_PROGRAMS: &str = "/usr";
/// Where the dynamic loader is looked up (`/lib64/ld-linux-x86-64.so.2`)
/// and glibc's default library path; symlinks into /usr on merged-/usr
/// systems such as Debian 12.
const LOADER_DIRS: [&str; 2] = ["/lib64", "/lib"];
/// How long a killed jailed QEMU has to be reaped by its keeper.
const REAP_WAIT: Duration = Duration::from_secs(2);

/// A QEMU VM could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The VM's private directory could not be made.
    #[error("cannot create the VM's private directory")]
    PrivateDir(#[source] io::Error),
    /// The socket path would not fit a Unix socket address.
    #[error(
        "socket path {0} is longer than {MAX_SOCKET_PATH} bytes (set XDG_RUNTIME_DIR shorter)"
    )]
    SocketPathTooLong(PathBuf),
    /// KVM was asked for but cannot be opened.
    #[error("KVM was requested but /dev/kvm cannot be opened")]
    KvmUnavailable(#[source] io::Error),
    /// QEMU could not be started.
    #[error("cannot start {binary} (install Debian's qemu-system-x86 or set VITRINE_QEMU)")]
    Spawn {
        /// Binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The jail QEMU runs in could not be set up, so QEMU was not started.
    #[error("cannot set up the jail for QEMU; QEMU is not started without it")]
    Jail(#[from] VmmJailError),
    /// `vitrine-vmm`, which jails QEMU, could not be started.
    #[error("cannot start {vmm}, the jail QEMU runs in (build it with `cargo build -p vitrine-microvm` or set VITRINE_VMM); QEMU is not started without it")]
    SpawnJail {
        /// The `vitrine-vmm` binary.
        vmm: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file the jail must hold is missing.
    #[error("cannot find {0} for QEMU's jail")]
    JailFile(PathBuf, #[source] io::Error),
    /// A wall of the jail stopped QEMU (its memory limit, a signal).
    #[error("{wall}\n--- serial console (tail) ---\n{serial_tail}\n--- QEMU output (tail) ---\n{qemu_tail}")]
    StoppedByJail {
        /// The wall, in words.
        wall: String,
        /// End of the guest's serial console.
        serial_tail: String,
        /// End of QEMU's own stderr (and the jail's).
        qemu_tail: String,
    },
    /// QEMU ended before the shim said Ready.
    #[error("QEMU exited ({status}) before the shim was ready\n--- serial console (tail) ---\n{serial_tail}\n--- QEMU output (tail) ---\n{qemu_tail}")]
    ExitedEarly {
        /// QEMU's exit status.
        status: ExitStatus,
        /// End of the guest's serial console.
        serial_tail: String,
        /// End of QEMU's own stderr.
        qemu_tail: String,
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
    /// QEMU's socket could not be connected.
    #[error("cannot connect to QEMU's socket {path}")]
    Connect {
        /// Socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The channel was taken before.
    #[error("the guest channel was already taken")]
    ChannelTaken,
    /// QEMU's monitor refused or failed a step of a template save or clone.
    #[error("{step}\n--- QEMU output (tail) ---\n{qemu_tail}")]
    Monitor {
        /// What was being done.
        step: &'static str,
        /// Why.
        #[source]
        source: QmpError,
        /// End of QEMU's own stderr.
        qemu_tail: String,
    },
    /// The QEMU process could not be waited for.
    #[error("cannot wait for the QEMU process")]
    Wait(#[source] io::Error),
}

/// Whether this host could give a guest a vhost-vsock device.
pub fn vhost_vsock_available() -> bool {
    Path::new("/dev/vhost-vsock").exists()
}

/// Starts guests under QEMU, jailed.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    binary: PathBuf,
    /// The `vitrine-vmm` that jails QEMU; `None` only after
    /// [`Self::without_jail`].
    jail_vmm: Option<PathBuf>,
}

impl Default for QemuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl QemuBackend {
    /// Uses `$VITRINE_QEMU`, or `qemu-system-x86_64` from `PATH`.
    pub fn new() -> Self {
        let binary = std::env::var_os("VITRINE_QEMU")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_QEMU), PathBuf::from);
        Self::with_binary(binary)
    }

    /// Uses the given QEMU binary, jailed by the `vitrine-vmm` the KVM
    /// backend would use (`$VITRINE_VMM`, beside this program, or `PATH`).
    pub fn with_binary(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            jail_vmm: Some(KvmBackend::new().binary().to_owned()),
        }
    }

    /// Jails QEMU with this `vitrine-vmm` binary.
    pub fn with_jail_vmm(mut self, vmm: impl Into<PathBuf>) -> Self {
        self.jail_vmm = Some(vmm.into());
        self
    }

    /// Runs QEMU without the jail, under its `-sandbox` filter only: for
    /// tests that need a QEMU stand-in and for measuring what the jail
    /// costs. The daemon never calls this.
    pub fn without_jail(mut self) -> Self {
        self.jail_vmm = None;
        self
    }

    /// QEMU's version line (`QEMU emulator version 7.2.22 (Debian ...)`),
    /// part of a template's key: another QEMU may not load its state.
    pub fn version(&self) -> Result<String, QemuError> {
        let spawn = |source| QemuError::Spawn {
            binary: self.binary.clone(),
            source,
        };
        let out = Command::new(&self.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(spawn)?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text
            .lines()
            .next()
            .filter(|l| out.status.success() && !l.is_empty())
        {
            Some(line) => Ok(line.trim().to_owned()),
            None => Err(spawn(io::Error::other(format!(
                "`--version` printed no version ({})",
                out.status
            )))),
        }
    }

    /// Whether QEMU runs jailed.
    pub fn jailed(&self) -> bool {
        self.jail_vmm.is_some()
    }

    /// The command that starts QEMU for `config` with its files in `dir`:
    /// `vitrine-vmm --jail <spec> exec -- <qemu> ...` with the jail
    /// prepared, or QEMU itself when unjailed.
    fn command(
        &self,
        config: &VmConfig,
        dir: &Path,
        launch: &Launch,
    ) -> Result<(Command, Option<QemuJail>), QemuError> {
        let Some(vmm) = &self.jail_vmm else {
            let mut cmd = Command::new(&self.binary);
            cmd.args(self.launch_args(config, dir, launch));
            if let Some(ram) = launch.ram() {
                launch::pass_fd(&mut cmd, Arc::clone(ram), RAM_FD);
            }
            return Ok((cmd, None));
        };
        let program = find_program(&self.binary).map_err(|source| QemuError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let absolute =
            |p: &Path| std::fs::canonicalize(p).map_err(|e| QemuError::JailFile(p.to_owned(), e));
        // Inside the jail only the canonical paths exist.
        let mut config = config.clone();
        config.image.kernel = absolute(&config.image.kernel)?;
        config.image.initrd = absolute(&config.image.initrd)?;
        if let Some(disk) = &config.image.app_disk {
            config.image.app_disk = Some(absolute(disk)?);
        }
        let dir = absolute(dir)?;
        let mut read_only = vec![config.image.kernel.clone(), config.image.initrd.clone()];
        read_only.extend(config.image.app_disk.clone());
        let files = VmmFiles {
            read_only,
            read_write: vec![dir.clone()],
        };
        let mut programs = ProgramFiles {
            program: program.clone(),
            read_execute: vec![PathBuf::from(SYSTEM_PROGRAMS)],
            symlinks: Vec::new(),
        };
        for d in LOADER_DIRS.map(PathBuf::from) {
            match std::fs::symlink_metadata(&d) {
                Ok(m) if m.is_symlink() => programs.symlinks.push(d),
                Ok(_) => programs.read_execute.push(d),
                Err(_) => {}
            }
        }
        // The jail's own work dir (spec, root mount point) stays outside
        // every path QEMU can reach.
        let work = runtime_dir::jail_dir().map_err(QemuError::PrivateDir)?;
        let name = runtime_dir::cgroup_name("qemu");
        // No wall-clock limit here: the task's deadline and Drop end QEMU.
        let limits = VmmLimits::for_qemu(config.memory_mib, u32::from(config.vcpus), Duration::MAX);
        let launcher = VmmLauncher::new(vmm, work.path());
        let prepared =
            launcher.prepare_exec(&name, limits, &files, &programs, config.accel == Accel::Kvm)?;
        if let Some(why) = prepared.cgroup_skipped() {
            log::warn!("vm {name}: no memory/CPU cgroup on this host: {why}");
        }
        let mut cmd = launcher.exec_command(
            &prepared,
            &program,
            &self.launch_args(&config, &dir, launch),
        );
        // The jail passes it on to QEMU, which opens it as /proc/self/fd/N.
        if let Some(ram) = launch.ram() {
            launch::pass_fd(&mut cmd, Arc::clone(ram), RAM_FD);
        }
        Ok((
            cmd,
            Some(QemuJail {
                prepared,
                _work: work,
                wall: None,
            }),
        ))
    }

    /// The arguments QEMU gets to boot `config`, with its files in `dir`.
    pub fn args(&self, config: &VmConfig, dir: &Path) -> Vec<OsString> {
        self.launch_args(config, dir, &Launch::Boot)
    }

    /// The arguments for `launch`: a boot, a template VM whose RAM is a
    /// shared memfd, or a clone that maps a template's RAM private and
    /// waits for its state on the monitor.
    pub fn launch_args(&self, config: &VmConfig, dir: &Path, launch: &Launch) -> Vec<OsString> {
        let mut cmdline = config.image.cmdline.clone();
        if !config.extra_cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&config.extra_cmdline);
        }
        // A bounded TCG buffer, so the jail's memory limit can cover it.
        let tcg = format!("tcg,tb-size={}", vmm_jail::TCG_CODE_BUFFER_MIB);
        let accel = match config.accel {
            Accel::Tcg => tcg.as_str(),
            Accel::Kvm => "kvm",
        };
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        // acpi=off: the guest kernel has no ACPI, and without ACPI tables QEMU
        // lists the virtio-mmio devices on the kernel command line instead.
        let mut machine = "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off".to_owned();
        if launch.ram().is_some() {
            machine.push_str(",memory-backend=ram0");
        }
        push(&[
            "-M",
            &machine,
            "-cpu",
            cpu_model(config.accel),
            "-accel",
            accel,
        ]);
        push(&["-m", &config.memory_mib.to_string()]);
        if let Some(share) = launch.share() {
            // QEMU 7.2 opens mem-path read-write even for share=off; the
            // memfd's seals are what keep a clone from writing it.
            push(&[
                "-object",
                &format!(
                    "memory-backend-file,id=ram0,size={}M,mem-path=/proc/self/fd/{RAM_FD},share={share}",
                    config.memory_mib
                ),
            ]);
            let monitor = qemu_path_value(&dir.join(QMP_SOCKET));
            push(&["-qmp", &format!("unix:{monitor},server=on,wait=off")]);
        }
        if matches!(launch, Launch::Clone { .. }) {
            push(&["-incoming", "defer"]);
        }
        push(&["-smp", &config.vcpus.max(1).to_string()]);
        push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        // QEMU's own seccomp filter, inside the jail: no obsolete syscalls,
        // no setuid, no fork/exec, no scheduler or affinity changes.
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
        args.push("-kernel".into());
        args.push(config.image.kernel.clone().into());
        args.push("-initrd".into());
        args.push(config.image.initrd.clone().into());
        args.push("-append".into());
        args.push(cmdline.into());
        let serial = qemu_path_value(&dir.join(SERIAL_LOG));
        let socket = qemu_path_value(&dir.join(SHIM_SOCKET));
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        push(&["-chardev", &format!("file,id=console0,path={serial}")]);
        push(&["-serial", "chardev:console0"]);
        push(&["-device", "virtio-rng-device"]);
        push(&["-device", "virtio-serial-device"]);
        push(&[
            "-chardev",
            &format!("socket,id=vitrine0,path={socket},server=on,wait=off"),
        ]);
        push(&[
            "-device",
            &format!("virtserialport,chardev=vitrine0,name={SHIM_PORT_NAME}"),
        ]);
        // Last, so the other devices keep their virtio-mmio slots; a clone
        // gets the same devices as its template, the disk included.
        if let Some(disk) = &config.image.app_disk {
            let file = qemu_path_value(disk);
            push(&[
                "-drive",
                &format!("file={file},if=none,id=apps,format=raw,readonly=on,snapshot=off"),
            ]);
            push(&["-device", "virtio-blk-device,drive=apps"]);
        }
        args
    }
}

/// The guest's CPU. Under TCG, QEMU 7.2 emulates AVX, AVX2 and FMA, but
/// slowly: tesseract's page took 162 s with them and 26 s without (its
/// SIMD paths, chosen by CPUID), so TCG guests see SSE4.2 at most.
pub fn cpu_model(accel: Accel) -> &'static str {
    match accel {
        Accel::Tcg => "max,avx=off,avx2=off,fma=off,avx512f=off",
        Accel::Kvm => "max",
    }
}

const SERIAL_LOG: &str = "serial.log";
const QMP_SOCKET: &str = "qmp.sock";
/// The descriptor number guest RAM has in QEMU (`/proc/self/fd/N`).
pub const RAM_FD: i32 = 100;

/// How a QEMU VM starts.
#[derive(Debug, Clone)]
pub enum Launch {
    /// Boots the image, with anonymous RAM.
    Boot,
    /// Boots the image with its RAM in `ram`, a memfd mapped shared, and a
    /// monitor: the VM a template is saved from.
    TemplateSource {
        /// Guest RAM.
        ram: Arc<OwnedFd>,
    },
    /// Clones a template: its sealed RAM memfd mapped private, its saved
    /// state loaded from `state` over the monitor.
    Clone {
        /// The template's guest RAM.
        ram: Arc<OwnedFd>,
        /// The template's saved state, read from its start.
        state: Arc<OwnedFd>,
        /// What the shim said before the template was saved.
        ready: Ready,
        /// The template's id, for the VM's origin.
        template: String,
    },
}

impl Launch {
    fn ram(&self) -> Option<&Arc<OwnedFd>> {
        match self {
            Self::Boot => None,
            Self::TemplateSource { ram } | Self::Clone { ram, .. } => Some(ram),
        }
    }

    fn share(&self) -> Option<&'static str> {
        match self {
            Self::Boot => None,
            Self::TemplateSource { .. } => Some("on"),
            Self::Clone { .. } => Some("off"),
        }
    }
}
const QEMU_LOG: &str = "qemu.log";
const SHIM_SOCKET: &str = "shim.sock";

/// `binary` as an absolute, canonical path: as given if it holds a `/`,
/// else the first match on `PATH` (the jail execs by path, not by search).
fn find_program(binary: &Path) -> io::Result<PathBuf> {
    if binary.components().count() > 1 || binary.is_absolute() {
        return std::fs::canonicalize(binary);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
        .map_or_else(
            || {
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} is not on PATH", binary.display()),
                ))
            },
            std::fs::canonicalize,
        )
}

/// A path as a QEMU option value: commas are doubled, as QEMU's parser wants.
fn qemu_path_value(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

impl Backend for QemuBackend {
    type Vm = QemuVm;
    type Error = QemuError;

    fn name(&self) -> String {
        "qemu".to_owned()
    }

    fn start(&self, config: &VmConfig) -> Result<QemuVm, QemuError> {
        self.start_with(config, &Launch::Boot)
    }
}

impl QemuBackend {
    /// Starts a VM the way `launch` says: [`Launch::Boot`] and
    /// [`Launch::TemplateSource`] boot the image to the shim's `Ready`;
    /// [`Launch::Clone`] loads a template's state over the monitor, resumes
    /// it, and takes the template's `Ready` as its own (the shim said it
    /// before the template was saved, and waits for its identity now).
    pub fn start_with(&self, config: &VmConfig, launch: &Launch) -> Result<QemuVm, QemuError> {
        if config.accel == Accel::Kvm {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .map_err(QemuError::KvmUnavailable)?;
        }
        let dir = runtime_dir::vm_dir("qemu").map_err(QemuError::PrivateDir)?;
        let socket = dir.path().join(SHIM_SOCKET);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(QemuError::SocketPathTooLong(socket));
        }
        let qemu_log = File::create(dir.path().join(QEMU_LOG)).map_err(QemuError::PrivateDir)?;
        let qemu_log_err = qemu_log.try_clone().map_err(QemuError::PrivateDir)?;

        let (mut cmd, jail) = self.command(config, dir.path(), launch)?;
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(qemu_log)
            .stderr(qemu_log_err)
            .spawn()
            .map_err(|source| {
                // Nothing will join the cgroup the jail made: remove it.
                if let Some(cg) = jail.as_ref().and_then(|j| j.prepared.cgroup()) {
                    if let Err(e) = cg.remove() {
                        log::warn!("cannot remove QEMU's unused cgroup {cg}: {e}");
                    }
                }
                match &self.jail_vmm {
                    Some(vmm) => QemuError::SpawnJail {
                        vmm: vmm.clone(),
                        source,
                    },
                    None => QemuError::Spawn {
                        binary: self.binary.clone(),
                        source,
                    },
                }
            })?;
        log::debug!(
            "qemu pid {} ({}) started in {}",
            child.id(),
            if jail.is_some() {
                "jail keeper"
            } else {
                "unjailed"
            },
            dir.path().display()
        );
        let mut vm = QemuVm {
            process: VmProcess::new(child, "qemu"),
            jail,
            dir,
            channel: None,
            ready: Ready {
                shim_version: String::new(),
                capabilities: Vec::new(),
            },
            boot_time: Duration::ZERO,
            cloned_from: None,
        };
        let deadline = started + config.ready_timeout;
        if let Launch::Clone {
            state,
            ready,
            template,
            ..
        } = launch
        {
            vm.cloned_from = Some(template.clone());
            // Connected before the guest runs: the template was saved with
            // its port connected, and a clone that woke to a closed port
            // would read end-of-file and its shim would end.
            let stream = vm.connect(&socket, deadline, config.ready_timeout)?;
            vm.incoming(state, deadline)?;
            let channel = GuestChannel::new(stream).map_err(|source| vm.handshake_error(source))?;
            vm.ready = ready.clone();
            vm.boot_time = started.elapsed();
            vm.channel = Some(channel);
            return Ok(vm);
        }
        let stream = vm.connect(&socket, deadline, config.ready_timeout)?;
        let mut channel = GuestChannel::new(stream).map_err(|source| vm.handshake_error(source))?;
        vm.ready = vm.await_ready(&mut channel, deadline, config.ready_timeout)?;
        vm.boot_time = started.elapsed();
        vm.channel = Some(channel);
        Ok(vm)
    }
}

/// A running QEMU guest whose shim said Ready. Dropping it kills QEMU and
/// removes its private directory.
#[derive(Debug)]
pub struct QemuVm {
    /// QEMU, or the keeper of its jail.
    process: VmProcess,
    jail: Option<QemuJail>,
    dir: tempfile::TempDir,
    channel: Option<GuestChannel>,
    ready: Ready,
    boot_time: Duration,
    /// The template this VM is a clone of.
    cloned_from: Option<String>,
}

/// QEMU's jail, kept until QEMU has ended so its cgroup can say why and
/// be removed.
#[derive(Debug)]
struct QemuJail {
    prepared: PreparedJail,
    _work: tempfile::TempDir,
    /// Once QEMU has ended: the wall that stopped it, if one did.
    wall: Option<Option<String>>,
}

impl QemuVm {
    /// Process id of the process the backend started: the jail's keeper
    /// (QEMU itself when unjailed). To check from outside that it is gone.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Process id of QEMU itself, as the host sees it (PID 1 of the jail's
    /// namespace); `None` once it has ended.
    pub fn qemu_pid(&self) -> Option<u32> {
        if self.jail.is_none() {
            return Some(self.process.pid());
        }
        launch::children_of(self.process.pid()).into_iter().next()
    }

    /// The wall of the jail that stopped QEMU, once it has ended, if one did.
    pub fn stopped_by_jail(&self) -> Option<&str> {
        self.jail.as_ref()?.wall.as_ref()?.as_deref()
    }

    /// Once, when QEMU (its keeper) has ended: asks the jail which wall,
    /// if any, stopped it, and removes its cgroup.
    fn ended(&mut self, status: ExitStatus) {
        let log = self.dir.path().join(QEMU_LOG);
        if let Some(jail) = self.jail.as_mut().filter(|j| j.wall.is_none()) {
            let wall = match jail.prepared.ending(status, &file_text(&log), None) {
                // QEMU's own exit status is not a wall.
                Ok(ending) => vmm_jail::exit_code(ending).err().map(|e| e.to_string()),
                Err(e) => Some(format!("cannot read how jailed QEMU ended: {e}")),
            };
            jail.wall = Some(wall);
        }
    }

    /// The VM's private directory (socket, serial log, QEMU log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// QEMU's exit status, if it has exited.
    fn poll_exit(&mut self) -> Result<Option<ExitStatus>, QemuError> {
        let exit = self.process.poll_exit().map_err(QemuError::Wait)?;
        if let Some(status) = exit {
            self.ended(status);
        }
        Ok(exit)
    }

    fn connect(
        &mut self,
        socket: &Path,
        deadline: Instant,
        waited: Duration,
    ) -> Result<UnixStream, QemuError> {
        loop {
            match UnixStream::connect(socket) {
                Ok(stream) => return Ok(stream),
                // QEMU has not created or bound the socket yet.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) => {}
                Err(source) => {
                    return Err(QemuError::Connect {
                        path: socket.to_owned(),
                        source,
                    })
                }
            }
            if let Some(status) = self.poll_exit()? {
                return Err(self.exited_early(status));
            }
            if Instant::now() >= deadline {
                return Err(QemuError::ReadyTimeout {
                    waited,
                    serial_tail: self.serial_tail(),
                });
            }
            thread::sleep(POLL);
        }
    }

    fn await_ready(
        &mut self,
        channel: &mut GuestChannel,
        deadline: Instant,
        waited: Duration,
    ) -> Result<Ready, QemuError> {
        match startup::await_ready(channel, deadline) {
            Ok(ready) => Ok(ready),
            Err(HandshakeFailure::NotReady(what)) => Err(QemuError::NotReady(what)),
            Err(HandshakeFailure::TimedOut) => Err(QemuError::ReadyTimeout {
                waited,
                serial_tail: self.serial_tail(),
            }),
            Err(HandshakeFailure::Stream(source)) => {
                // A closed stream usually means QEMU is going away: give
                // it a moment so the error can say how it ended.
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until {
                    if let Some(status) = self.poll_exit()? {
                        return Err(self.exited_early(status));
                    }
                    thread::sleep(POLL);
                }
                Err(self.handshake_error(source))
            }
        }
    }

    fn handshake_error(&self, source: ChannelError) -> QemuError {
        QemuError::Handshake {
            source,
            serial_tail: self.serial_tail(),
        }
    }

    fn exited_early(&self, status: ExitStatus) -> QemuError {
        if let Some(wall) = self.stopped_by_jail() {
            return QemuError::StoppedByJail {
                wall: wall.to_owned(),
                serial_tail: self.serial_tail(),
                qemu_tail: file_tail(&self.dir.path().join(QEMU_LOG)),
            };
        }
        QemuError::ExitedEarly {
            status,
            serial_tail: self.serial_tail(),
            qemu_tail: file_tail(&self.dir.path().join(QEMU_LOG)),
        }
    }

    fn serial_tail(&self) -> String {
        file_tail(&self.dir.path().join(SERIAL_LOG))
    }

    fn monitor(&self, deadline: Instant) -> Result<Qmp, QemuError> {
        let left = deadline.saturating_duration_since(Instant::now());
        Qmp::connect(&self.dir.path().join(QMP_SOCKET), deadline, left.max(POLL))
            .map_err(|source| self.monitor_error("cannot reach QEMU's monitor", source))
    }

    fn checked<T>(&self, step: &'static str, r: Result<T, QmpError>) -> Result<T, QemuError> {
        r.map_err(|e| self.monitor_error(step, e))
    }

    fn monitor_error(&self, step: &'static str, source: QmpError) -> QemuError {
        QemuError::Monitor {
            step,
            source,
            qemu_tail: file_tail(&self.dir.path().join(QEMU_LOG)),
        }
    }

    /// A clone: loads the template's state (`state`) with `x-ignore-shared`
    /// (RAM is already there, mapped from the template) and resumes the
    /// guest.
    fn incoming(&mut self, state: &Arc<OwnedFd>, deadline: Instant) -> Result<(), QemuError> {
        let mut qmp = self.monitor(deadline)?;
        let left = || deadline.saturating_duration_since(Instant::now());
        self.checked("cannot turn on x-ignore-shared", qmp.ignore_shared_ram())?;
        self.checked(
            "cannot pass the template state to QEMU",
            qmp.send_fd("state", state.as_ref()),
        )?;
        let incoming = qmp.execute(
            "migrate-incoming",
            Some(serde_json::json!({ "uri": "fd:state" })),
        );
        self.checked("QEMU refused the template state", incoming)?;
        if let Err(e) = qmp.wait_incoming(left()) {
            // A state QEMU cannot load ends it: say how.
            thread::sleep(Duration::from_millis(50));
            if let Some(status) = self.poll_exit()? {
                return Err(self.exited_early(status));
            }
            return Err(self.monitor_error("QEMU did not load the template state", e));
        }
        self.checked("QEMU did not resume the clone", qmp.execute("cont", None))?;
        Ok(())
    }

    /// The template VM, once its shim said Ready: stops the guest for good
    /// and saves its device and CPU state into `state` with
    /// `x-ignore-shared` (its RAM stays in the shared memfd), then ends
    /// QEMU. Returns the migration's own account of what it wrote.
    pub fn save_template(
        &mut self,
        state: &File,
        deadline: Instant,
    ) -> Result<serde_json::Value, QemuError> {
        let mut qmp = self.monitor(deadline)?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.checked("cannot stop the template VM", qmp.execute("stop", None))?;
        self.checked("cannot turn on x-ignore-shared", qmp.ignore_shared_ram())?;
        self.checked(
            "cannot pass the state file to QEMU",
            qmp.send_fd("state", state),
        )?;
        let migrate = qmp.execute("migrate", Some(serde_json::json!({ "uri": "fd:state" })));
        self.checked("QEMU refused to save the template", migrate)?;
        let info = self.checked("QEMU did not save the template", qmp.wait_migration(left))?;
        // Stopped for good: nothing may write the RAM after this.
        let _ = qmp.execute("quit", None);
        let _ = self.process.wait_exit(REAP_WAIT);
        self.kill();
        Ok(info)
    }
}

impl GuestVm for QemuVm {
    type Error = QemuError;

    fn ready(&self) -> &Ready {
        &self.ready
    }

    fn boot_time(&self) -> Duration {
        self.boot_time
    }

    fn take_channel(&mut self) -> Result<GuestChannel, QemuError> {
        self.channel.take().ok_or(QemuError::ChannelTaken)
    }

    fn wait_or_kill(&mut self, limit: Duration) -> Result<VmExit, QemuError> {
        match self.process.wait_exit(limit).map_err(QemuError::Wait)? {
            Some(status) => {
                self.ended(status);
                Ok(VmExit::Exited(status))
            }
            // Killed the jailed way, QEMU before its keeper.
            None => {
                self.kill();
                Ok(VmExit::Killed)
            }
        }
    }

    fn kill(&mut self) {
        if self.jail.is_some() && matches!(self.process.poll_exit(), Ok(None)) {
            // QEMU first, so its keeper reaps it and exits by itself; the
            // keeper is killed only if it does not.
            launch::kill_jailed(self.process.pid());
            let _ = self.process.wait_or_kill(REAP_WAIT);
        }
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

impl Drop for QemuVm {
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
            cmdline: "console=ttyS0 quiet".to_owned(),
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
    fn args_boot_the_image_on_microvm_with_the_shim_port() {
        let backend = QemuBackend::with_binary("qemu");
        let dir = Path::new("/run/vm1");

        let args = backend.args(&config(), dir);

        assert_eq!(
            arg_after(&args, "-M"),
            ["microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off"]
        );
        assert_eq!(arg_after(&args, "-accel"), ["tcg,tb-size=256"]);
        assert_eq!(arg_after(&args, "-kernel"), ["/images/vmlinux"]);
        assert_eq!(arg_after(&args, "-initrd"), ["/images/initrd.gz"]);
        assert_eq!(arg_after(&args, "-append"), ["console=ttyS0 quiet"]);
        assert_eq!(arg_after(&args, "-m"), ["512"]);
        assert!(arg_after(&args, "-chardev")
            .contains(&"socket,id=vitrine0,path=/run/vm1/shim.sock,server=on,wait=off"));
        assert!(arg_after(&args, "-device")
            .contains(&"virtserialport,chardev=vitrine0,name=org.vitrine.0"));
        assert!(arg_after(&args, "-device").contains(&"virtio-rng-device"));
        for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            assert!(args.iter().any(|a| a == flag), "missing {flag}");
        }
        assert_eq!(
            arg_after(&args, "-sandbox"),
            ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        );
    }

    #[test]
    fn args_use_kvm_and_extra_cmdline_when_asked() {
        let backend = QemuBackend::with_binary("qemu");
        let mut config = config();
        config.accel = Accel::Kvm;
        config.extra_cmdline = "noxsave".to_owned();

        let args = backend.args(&config, Path::new("/d"));

        assert_eq!(arg_after(&args, "-accel"), ["kvm"]);
        assert_eq!(arg_after(&args, "-append"), ["console=ttyS0 quiet noxsave"]);
    }

    #[test]
    fn args_double_commas_in_paths_given_to_qemu_options() {
        let backend = QemuBackend::with_binary("qemu");

        let args = backend.args(&config(), Path::new("/tmp/a,b"));

        assert!(
            arg_after(&args, "-chardev").contains(&"file,id=console0,path=/tmp/a,,b/serial.log")
        );
    }

    #[test]
    fn args_attach_the_app_disk_read_only_alike_for_a_boot_a_template_and_its_clone() {
        let backend = QemuBackend::with_binary("qemu");
        let mut config = config();
        config.image.app_disk = Some(PathBuf::from("/images/a,b/apps.squashfs"));
        let fd = || Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let launches = [
            Launch::Boot,
            Launch::TemplateSource { ram: fd() },
            Launch::Clone {
                ram: fd(),
                state: fd(),
                ready: Ready {
                    shim_version: "0".into(),
                    capabilities: Vec::new(),
                },
                template: "t".into(),
            },
        ];

        let all: Vec<Vec<OsString>> = launches
            .iter()
            .map(|l| backend.launch_args(&config, Path::new("/d"), l))
            .collect();

        for args in &all {
            assert_eq!(
                arg_after(args, "-drive"),
                [
                    "file=/images/a,,b/apps.squashfs,if=none,id=apps,format=raw,\
                     readonly=on,snapshot=off"
                ]
            );
            // The devices, in the same order, whatever the launch.
            let devices = arg_after(args, "-device");
            assert_eq!(devices, arg_after(&all[0], "-device"));
            assert_eq!(devices.last(), Some(&"virtio-blk-device,drive=apps"));
        }
    }

    #[test]
    fn args_without_an_app_disk_attach_no_drive() {
        let backend = QemuBackend::with_binary("qemu");

        let args = backend.args(&config(), Path::new("/d"));

        assert!(arg_after(&args, "-drive").is_empty());
        assert!(!arg_after(&args, "-device").contains(&"virtio-blk-device,drive=apps"));
    }

    #[test]
    fn start_with_a_missing_binary_names_it() {
        for backend in [
            QemuBackend::with_binary("/nonexistent/qemu-system-x86_64"),
            QemuBackend::with_binary("/nonexistent/qemu-system-x86_64").without_jail(),
        ] {
            let err = backend.start(&config()).unwrap_err();

            assert!(matches!(err, QemuError::Spawn { .. }), "{err:?}");
            assert!(err.to_string().contains("/nonexistent/qemu"), "{err}");
        }
    }

    #[test]
    fn start_reports_qemu_output_when_qemu_exits_before_ready() {
        // `false` exits at once with status 1, as QEMU does on a bad option.
        // Unjailed: the jail would first refuse the made-up image paths.
        let backend = QemuBackend::with_binary("false").without_jail();

        let err = backend.start(&config()).unwrap_err();

        assert!(matches!(err, QemuError::ExitedEarly { .. }), "{err:?}");
    }

    /// Real (empty) image files, so the jail gets as far as starting.
    fn config_with_files(dir: &Path) -> VmConfig {
        let kernel = dir.join("vmlinux");
        let initrd = dir.join("initrd.gz");
        std::fs::write(&kernel, b"").unwrap();
        std::fs::write(&initrd, b"").unwrap();
        VmConfig::new(GuestImage {
            kernel,
            initrd,
            cmdline: "console=ttyS0".to_owned(),
            app_disk: None,
        })
    }

    #[test]
    fn start_without_the_jail_binary_fails_instead_of_running_qemu_unjailed() {
        let images = tempfile::tempdir().unwrap();
        let backend = QemuBackend::with_binary("true").with_jail_vmm("/nonexistent/vitrine-vmm");

        let err = backend
            .start(&config_with_files(images.path()))
            .unwrap_err();

        assert!(matches!(err, QemuError::SpawnJail { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/vitrine-vmm"),
            "{err}"
        );
    }

    #[test]
    fn start_with_a_missing_image_names_it_before_anything_runs() {
        let backend = QemuBackend::with_binary("true");

        let err = backend.start(&config()).unwrap_err();

        assert!(
            matches!(err, QemuError::JailFile(ref p, _) if p.ends_with("vmlinux")),
            "{err:?}"
        );
    }

    #[test]
    fn find_program_resolves_a_bare_name_on_path_to_an_absolute_path() {
        let found = find_program(Path::new("true")).unwrap();

        assert!(found.is_absolute(), "{}", found.display());
        assert!(found.ends_with("true"), "{}", found.display());
        assert!(find_program(Path::new("no-such-program-vitrine")).is_err());
    }
}
