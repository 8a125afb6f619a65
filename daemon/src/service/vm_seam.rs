//! The seam between the task worker and the VM backends: any
//! [`Backend`] whose VMs can move between threads becomes a
//! [`VmStarter`], so the daemon holds one backend chosen at start (QEMU
//! today, the project's KVM VMM where the host runs full guests) without
//! being generic over it.
//!
//! [`LocalProcessBackend`] runs a guest program as a plain local process
//! over a Unix socket, the transport the shim already speaks in its own
//! tests. It isolates nothing: it exists for tests (a hostile guest, or the
//! real shim without a VM) and the daemon says so loudly when it is chosen.

use std::ffi::OsString;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use vitrine_shim::protocol::{GuestMessage, Ready};

use super::worker::chain;
use crate::backend::process::VmProcess;
use crate::backend::{Backend, ChannelError, GuestChannel, GuestVm, VmConfig, VmExit};

/// A VM could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum VmSeamError {
    /// The backend failed; its error chain, as text (backends differ in type).
    #[error("{0}")]
    Backend(String),
    /// The local guest's socket directory or socket could not be made.
    #[error("cannot set up the local guest's socket")]
    Socket(#[source] std::io::Error),
    /// The local guest program did not start.
    #[error("cannot start the local guest {program}")]
    Spawn {
        /// Program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The local guest did not connect in time.
    #[error("the local guest did not connect within {0:?}")]
    NoConnect(Duration),
    /// The local guest's first message was not `Ready`.
    #[error("the local guest did not say Ready")]
    NotReady(#[source] ChannelError),
    /// The local guest's first message was something else.
    #[error("the local guest's first message was not Ready")]
    Unexpected,
    /// The channel was taken already.
    #[error("the guest channel was taken already")]
    ChannelTaken,
}

/// A started VM, object-safe and movable between threads.
pub trait RunningVm: Send {
    /// Time from start to `Ready`.
    fn boot_time(&self) -> Duration;
    /// The framed stream to the shim. Can be taken once.
    fn take_channel(&mut self) -> Result<GuestChannel, VmSeamError>;
    /// Waits up to `limit` for the VM to end, then kills it.
    fn wait_or_kill(&mut self, limit: Duration) -> Result<VmExit, VmSeamError>;
    /// Kills the VM now (from any thread that holds it).
    fn kill(&mut self);
    /// The guest's serial console so far.
    fn serial_log(&self) -> String;
    /// `booted`, or `cloned from template ID`.
    fn origin(&self) -> String {
        "booted".to_owned()
    }
}

impl<V> RunningVm for V
where
    V: GuestVm + Send,
{
    fn boot_time(&self) -> Duration {
        GuestVm::boot_time(self)
    }
    fn take_channel(&mut self) -> Result<GuestChannel, VmSeamError> {
        GuestVm::take_channel(self).map_err(|e| VmSeamError::Backend(chain(&e)))
    }
    fn wait_or_kill(&mut self, limit: Duration) -> Result<VmExit, VmSeamError> {
        GuestVm::wait_or_kill(self, limit).map_err(|e| VmSeamError::Backend(chain(&e)))
    }
    fn kill(&mut self) {
        GuestVm::kill(self);
    }
    fn serial_log(&self) -> String {
        GuestVm::serial_log(self)
    }
    fn origin(&self) -> String {
        GuestVm::origin(self)
    }
}

/// Starts VMs; object-safe.
pub trait VmStarter: Send + Sync {
    /// Short name for receipts and logs.
    fn name(&self) -> String;
    /// Starts a VM and waits for its shim's `Ready` (blocking).
    fn start(&self, config: &VmConfig) -> Result<Box<dyn RunningVm>, VmSeamError>;
}

impl<B> VmStarter for B
where
    B: Backend + Send + Sync,
    B::Vm: Send + 'static,
{
    fn name(&self) -> String {
        Backend::name(self)
    }
    fn start(&self, config: &VmConfig) -> Result<Box<dyn RunningVm>, VmSeamError> {
        match Backend::start(self, config) {
            Ok(vm) => Ok(Box::new(vm)),
            Err(e) => Err(VmSeamError::Backend(chain(&e))),
        }
    }
}

/// Runs `program --socket PATH` as a local process: NO isolation.
#[derive(Debug, Clone)]
pub struct LocalProcessBackend {
    /// The guest program.
    pub program: PathBuf,
    /// Extra environment for it.
    pub env: Vec<(OsString, OsString)>,
    /// Longest wait for it to connect and say `Ready`.
    pub ready_timeout: Duration,
}

/// A local guest process.
#[derive(Debug)]
pub struct LocalProcessVm {
    process: VmProcess,
    channel: Option<GuestChannel>,
    ready: Ready,
    boot_time: Duration,
    _dir: tempfile::TempDir,
}

impl Backend for LocalProcessBackend {
    type Vm = LocalProcessVm;
    type Error = VmSeamError;

    fn name(&self) -> String {
        "local-process (no isolation)".to_owned()
    }

    fn start(&self, _config: &VmConfig) -> Result<LocalProcessVm, VmSeamError> {
        let started = Instant::now();
        let dir = crate::backend::runtime_dir::vm_dir("local").map_err(VmSeamError::Socket)?;
        let socket = dir.path().join("guest.sock");
        let listener = UnixListener::bind(&socket).map_err(VmSeamError::Socket)?;
        listener
            .set_nonblocking(true)
            .map_err(VmSeamError::Socket)?;
        let mut child = Command::new(&self.program)
            .arg("--socket")
            .arg(&socket)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("VITRINE_SHIM_WORKDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|source| VmSeamError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        let deadline = started + self.ready_timeout;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(VmSeamError::NoConnect(self.ready_timeout));
                }
            }
        };
        let ready = stream
            .set_nonblocking(false)
            .map_err(VmSeamError::Socket)
            .and_then(|()| GuestChannel::new(stream).map_err(VmSeamError::NotReady))
            .and_then(|mut channel| match channel.recv_until(deadline) {
                Ok(GuestMessage::Ready(ready)) => Ok((channel, ready)),
                Ok(_) => Err(VmSeamError::Unexpected),
                Err(e) => Err(VmSeamError::NotReady(e)),
            });
        match ready {
            Ok((channel, ready)) => Ok(LocalProcessVm {
                process: VmProcess::new(child, "local guest"),
                channel: Some(channel),
                ready,
                boot_time: started.elapsed(),
                _dir: dir,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

impl GuestVm for LocalProcessVm {
    type Error = VmSeamError;

    fn ready(&self) -> &Ready {
        &self.ready
    }
    fn boot_time(&self) -> Duration {
        self.boot_time
    }
    fn take_channel(&mut self) -> Result<GuestChannel, VmSeamError> {
        self.channel.take().ok_or(VmSeamError::ChannelTaken)
    }
    fn wait_or_kill(&mut self, limit: Duration) -> Result<VmExit, VmSeamError> {
        self.process
            .wait_or_kill(limit)
            .map_err(VmSeamError::Socket)
    }
    fn kill(&mut self) {
        self.process.kill();
    }
    fn serial_log(&self) -> String {
        String::new()
    }
}

impl Drop for LocalProcessVm {
    fn drop(&mut self) {
        GuestVm::kill(self);
    }
}
