//! QEMU backend: `qemu-system-x86_64 -M microvm` boots the guest image, and
//! the shim is reached through a virtio-serial port that QEMU binds to a Unix
//! socket in the VM's private directory.
//!
//! vhost-vsock would need `/dev/vhost-vsock` and a host-side AF_VSOCK
//! listener; [`vhost_vsock_available`] reports whether the host has the
//! device, but this backend always uses virtio-serial, which every host has
//! and which the shim falls back to.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use vitrine_shim::protocol::Ready;

use super::channel::{ChannelError, GuestChannel};
use super::process::VmProcess;
use super::startup::{self, file_tail, file_text, HandshakeFailure};
use super::{Accel, Backend, GuestVm, VmConfig, VmExit};

/// QEMU binary used when `VITRINE_QEMU` is not set.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// Name of the virtio-serial port the shim opens.
pub const SHIM_PORT_NAME: &str = "org.vitrine.0";
/// How often start-up and waits look at the QEMU process.
const POLL: Duration = Duration::from_millis(10);
/// Longest Unix socket path (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A QEMU VM could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The VM's private directory could not be made.
    #[error("cannot create the VM's private directory")]
    PrivateDir(#[source] io::Error),
    /// The socket path would not fit a Unix socket address.
    #[error("socket path {0} is longer than {MAX_SOCKET_PATH} bytes (set TMPDIR shorter)")]
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
    /// The QEMU process could not be waited for.
    #[error("cannot wait for the QEMU process")]
    Wait(#[source] io::Error),
}

/// Whether this host could give a guest a vhost-vsock device.
pub fn vhost_vsock_available() -> bool {
    Path::new("/dev/vhost-vsock").exists()
}

/// Starts guests under QEMU.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    binary: PathBuf,
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

    /// Uses the given QEMU binary.
    pub fn with_binary(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
        }
    }

    /// The arguments QEMU gets for `config`, with its files in `dir`.
    pub fn args(&self, config: &VmConfig, dir: &Path) -> Vec<OsString> {
        let mut cmdline = config.image.cmdline.clone();
        if !config.extra_cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&config.extra_cmdline);
        }
        let accel = match config.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        };
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        // acpi=off: the guest kernel has no ACPI, and without ACPI tables QEMU
        // lists the virtio-mmio devices on the kernel command line instead.
        push(&[
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off",
            "-cpu",
            "max",
            "-accel",
            accel,
        ]);
        push(&["-m", &config.memory_mib.to_string()]);
        push(&["-smp", &config.vcpus.max(1).to_string()]);
        push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        // QEMU's own seccomp filter: no obsolete syscalls, no setuid, no
        // fork/exec, no scheduler or affinity changes. The project's VMM
        // has its own jail; this is what the fallback backend gets.
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
        args
    }
}

const SERIAL_LOG: &str = "serial.log";
const QEMU_LOG: &str = "qemu.log";
const SHIM_SOCKET: &str = "shim.sock";

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
        if config.accel == Accel::Kvm {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .map_err(QemuError::KvmUnavailable)?;
        }
        let dir = tempfile::Builder::new()
            .prefix("vitrine-qemu-")
            .tempdir()
            .map_err(QemuError::PrivateDir)?;
        let socket = dir.path().join(SHIM_SOCKET);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(QemuError::SocketPathTooLong(socket));
        }
        let qemu_log = File::create(dir.path().join(QEMU_LOG)).map_err(QemuError::PrivateDir)?;
        let qemu_log_err = qemu_log.try_clone().map_err(QemuError::PrivateDir)?;

        let started = Instant::now();
        let child = Command::new(&self.binary)
            .args(self.args(config, dir.path()))
            .stdin(Stdio::null())
            .stdout(qemu_log)
            .stderr(qemu_log_err)
            .spawn()
            .map_err(|source| QemuError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        log::debug!(
            "qemu pid {} started in {}",
            child.id(),
            dir.path().display()
        );
        let mut vm = QemuVm {
            process: VmProcess::new(child, "qemu"),
            dir,
            channel: None,
            ready: Ready {
                shim_version: String::new(),
                capabilities: Vec::new(),
            },
            boot_time: Duration::ZERO,
        };
        let deadline = started + config.ready_timeout;
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
    process: VmProcess,
    dir: tempfile::TempDir,
    channel: Option<GuestChannel>,
    ready: Ready,
    boot_time: Duration,
}

impl QemuVm {
    /// Process id of QEMU (to check from outside that it is gone).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The VM's private directory (socket, serial log, QEMU log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// QEMU's exit status, if it has exited.
    fn poll_exit(&mut self) -> Result<Option<ExitStatus>, QemuError> {
        self.process.poll_exit().map_err(QemuError::Wait)
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
        QemuError::ExitedEarly {
            status,
            serial_tail: self.serial_tail(),
            qemu_tail: file_tail(&self.dir.path().join(QEMU_LOG)),
        }
    }

    fn serial_tail(&self) -> String {
        file_tail(&self.dir.path().join(SERIAL_LOG))
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
        self.process.wait_or_kill(limit).map_err(QemuError::Wait)
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    fn serial_log(&self) -> String {
        file_text(&self.dir.path().join(SERIAL_LOG))
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
        assert_eq!(arg_after(&args, "-accel"), ["tcg"]);
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
    fn start_with_a_missing_binary_names_it() {
        let backend = QemuBackend::with_binary("/nonexistent/qemu-system-x86_64");

        let err = backend.start(&config()).unwrap_err();

        assert!(matches!(err, QemuError::Spawn { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/qemu"), "{err}");
    }

    #[test]
    fn start_reports_qemu_output_when_qemu_exits_before_ready() {
        // `false` exits at once with status 1, as QEMU does on a bad option.
        let backend = QemuBackend::with_binary("false");

        let err = backend.start(&config()).unwrap_err();

        assert!(matches!(err, QemuError::ExitedEarly { .. }), "{err:?}");
    }
}
