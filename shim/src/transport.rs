//! The byte stream to the host: AF_VSOCK, else a virtio-serial port, else a
//! Unix socket (for running the shim as a local process in tests).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

/// The host's vsock context id.
pub const HOST_CID: u32 = 2;
/// Name of the virtio-serial port the host exposes.
pub const VIRTIO_PORT_NAME: &str = "org.vitrine.0";

/// No transport could be opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// vsock connect failed.
    #[error("vsock connect to CID {HOST_CID} port {port} failed")]
    Vsock {
        /// Port.
        port: u32,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// The Unix socket could not be reached.
    #[error("cannot connect to {0}")]
    Unix(PathBuf, #[source] std::io::Error),
    /// The virtio-serial port could not be opened.
    #[error("cannot open virtio-serial port {0}")]
    Serial(PathBuf, #[source] std::io::Error),
    /// Nothing is configured.
    #[error("no transport: no vitrine.port on the kernel command line, no virtio port named {VIRTIO_PORT_NAME}, no --socket")]
    None,
    /// Duplicating the stream failed.
    #[error("cannot duplicate the stream")]
    Clone(#[source] std::io::Error),
}

/// Where to connect, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket (tests, local process).
    Unix(PathBuf),
    /// AF_VSOCK to the host on this port.
    Vsock(u32),
    /// A virtio-serial character device.
    Serial(PathBuf),
}

/// Settings from the kernel command line (`vitrine.KEY=VALUE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelArgs {
    /// `vitrine.port`: vsock port on the host.
    pub port: Option<u32>,
    /// `vitrine.uid`: uid for sandboxed children.
    pub uid: Option<u32>,
    /// `vitrine.preload=office|web`: what runs before `Ready`.
    pub preload: crate::init::Preload,
}

impl KernelArgs {
    /// Parses a `/proc/cmdline` line.
    pub fn parse(cmdline: &str) -> Self {
        let mut out = Self::default();
        for word in cmdline.split_whitespace() {
            if let Some(v) = word.strip_prefix("vitrine.port=") {
                out.port = v.parse().ok();
            } else if let Some(v) = word.strip_prefix("vitrine.uid=") {
                out.uid = v.parse().ok();
            } else if let Some(v) = word
                .strip_prefix(crate::init::PRELOAD_PARAM)
                .and_then(|v| v.strip_prefix('='))
            {
                out.preload = crate::init::Preload::parse(v);
            }
        }
        out
    }

    /// Reads `/proc/cmdline` (empty when unreadable).
    pub fn from_proc() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }
}

/// Finds `/dev/vportNpM` whose sysfs name is `name`.
pub fn find_virtio_port(sys_root: &Path, name: &str) -> Option<PathBuf> {
    let dir = std::fs::read_dir(sys_root.join("class/virtio-ports")).ok()?;
    for entry in dir.filter_map(Result::ok) {
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

/// Chooses endpoints: an explicit socket wins, then vsock, then virtio-serial.
pub fn endpoints(socket: Option<PathBuf>, kernel: &KernelArgs) -> Vec<Endpoint> {
    let mut out = Vec::new();
    if let Some(path) = socket {
        out.push(Endpoint::Unix(path));
        return out;
    }
    if let Some(port) = kernel.port {
        out.push(Endpoint::Vsock(port));
    }
    if let Some(dev) = find_virtio_port(Path::new("/sys"), VIRTIO_PORT_NAME) {
        out.push(Endpoint::Serial(dev));
    }
    out
}

/// An open connection, split into halves for the reader thread and the writer.
pub struct Connection {
    /// Host to guest.
    pub reader: Box<dyn Read + Send>,
    /// Guest to host.
    pub writer: Box<dyn Write + Send>,
    /// What was connected.
    pub endpoint: Endpoint,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn connect_vsock(port: u32) -> Result<File, TransportError> {
    let err = |source| TransportError::Vsock { port, source };
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(HOST_CID, port),
    )
    .map_err(err)?;
    Ok(File::from(fd))
}

fn split(file: File, endpoint: Endpoint) -> Result<Connection, TransportError> {
    let writer = file.try_clone().map_err(TransportError::Clone)?;
    Ok(Connection {
        reader: Box::new(file),
        writer: Box::new(writer),
        endpoint,
    })
}

/// Opens one endpoint. vsock is retried briefly: the host may still be
/// setting up its listener.
pub fn open(endpoint: &Endpoint) -> Result<Connection, TransportError> {
    match endpoint {
        Endpoint::Unix(path) => {
            let stream =
                UnixStream::connect(path).map_err(|e| TransportError::Unix(path.clone(), e))?;
            let writer = stream.try_clone().map_err(TransportError::Clone)?;
            Ok(Connection {
                reader: Box::new(stream),
                writer: Box::new(writer),
                endpoint: endpoint.clone(),
            })
        }
        Endpoint::Vsock(port) => {
            let mut last = None;
            for attempt in 0..5u32 {
                match connect_vsock(*port) {
                    Ok(file) => return split(file, endpoint.clone()),
                    // No vsock device at all: retrying cannot help.
                    Err(TransportError::Vsock {
                        source: nix::Error::EAFNOSUPPORT | nix::Error::ENODEV,
                        ..
                    }) if attempt == 0 => {
                        return Err(TransportError::Vsock {
                            port: *port,
                            source: nix::Error::ENODEV,
                        })
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(50 << attempt));
            }
            Err(last.unwrap_or(TransportError::None))
        }
        Endpoint::Serial(path) => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| TransportError::Serial(path.clone(), e))?;
            split(file, endpoint.clone())
        }
    }
}

/// Tries the endpoints in order; returns the first that opens, with the
/// errors of those that did not (for the log).
pub fn connect_first(
    endpoints: &[Endpoint],
) -> Result<(Connection, Vec<TransportError>), Vec<TransportError>> {
    let mut errors = Vec::new();
    for endpoint in endpoints {
        match open(endpoint) {
            Ok(conn) => return Ok((conn, errors)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        errors.push(TransportError::None);
    }
    Err(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Preload;

    #[test]
    fn kernel_cmdline_gives_port_and_uid() {
        let args = KernelArgs::parse("console=ttyS0 vitrine.port=1024 quiet vitrine.uid=4242");

        assert_eq!(args.port, Some(1024));
        assert_eq!(args.uid, Some(4242));
        assert_eq!(args.preload, Preload::None);
    }

    #[test]
    fn kernel_cmdline_asks_for_libreoffice_only_by_its_exact_word() {
        let preload = |line: &str| KernelArgs::parse(line).preload;
        assert_eq!(preload("quiet vitrine.preload=office"), Preload::Office);
        assert_eq!(preload("vitrine.preload=web quiet"), Preload::Web);
        assert_eq!(preload("vitrine.preload=officer"), Preload::None);
        assert_eq!(preload("vitrine.preload="), Preload::None);
        assert_eq!(preload("vitrine.preloaded=web"), Preload::None);
    }

    #[test]
    fn explicit_socket_wins_over_vsock() {
        let kernel = KernelArgs {
            port: Some(5),
            ..KernelArgs::default()
        };

        let eps = endpoints(Some("/tmp/s".into()), &kernel);

        assert_eq!(eps, vec![Endpoint::Unix("/tmp/s".into())]);
    }

    #[test]
    fn virtio_port_is_found_by_its_sysfs_name() {
        let root = tempfile::tempdir().unwrap();
        for (dev, name) in [("vport0p1", "other"), ("vport0p2", "org.vitrine.0")] {
            let d = root.path().join("class/virtio-ports").join(dev);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        }

        let found = find_virtio_port(root.path(), VIRTIO_PORT_NAME);

        assert_eq!(found, Some(PathBuf::from("/dev/vport0p2")));
    }
}
