//! The endpoint: accepts mutually authenticated TLS connections and serves
//! `PushBundle` and `ReadAudit` requests. File work runs on the blocking
//! pool, never on the runtime's threads.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use vitrine_policy::PolicyStore;

use super::audit_tail;
use super::bundle::{hex, BundleError, PolicyBundle, SignerPublicKey};
use super::config::RemoteAdminConfig;
use super::tls::{self, TlsSetupError};
use super::wire::{
    read_frame, write_frame, AdminRequest, AdminResponse, WireError, AUDIT_RECORDS_PER_FRAME,
};

/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 16;
/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection may sit idle between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Suffix of the file, beside the policy path, holding the last serial applied.
const SERIAL_SUFFIX: &str = ".remote-admin-serial";

/// The endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("remote admin TLS setup failed")]
    Tls(#[from] TlsSetupError),
    #[error("cannot load the bundle signer key")]
    SignerKey(#[source] BundleError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A pushed bundle was not applied.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("installing the policy failed")]
    Store(#[from] vitrine_policy::store::StoreError),
    #[error("cannot {op} {}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the apply worker stopped")]
    Worker,
}

struct Endpoint {
    store: PolicyStore,
    serial_path: PathBuf,
    audit_dir: PathBuf,
    signer: SignerPublicKey,
    max_request_bytes: u32,
    max_audit_records: u32,
    // Serialises check-serial, apply, record-serial.
    applying: Mutex<()>,
}

/// A bound endpoint, not yet serving.
pub struct RemoteAdminServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    endpoint: Arc<Endpoint>,
}

impl std::fmt::Debug for RemoteAdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAdminServer")
            .field("listen", &self.listener.local_addr().ok())
            .field("policy", &self.endpoint.store.path())
            .finish()
    }
}

impl RemoteAdminServer {
    /// Loads the certificates and the signer key and binds the listener.
    /// `policy_store_dir` is the policy path the daemon loads
    /// (`/etc/vitrine/policy.d`, managed by [`PolicyStore`]); `audit_dir`
    /// holds `audit.jsonl`.
    pub async fn bind(
        config: &RemoteAdminConfig,
        policy_store_dir: &Path,
        audit_dir: &Path,
    ) -> Result<RemoteAdminServer, ServeError> {
        let tls = tls::server_config(&config.cert, &config.key, &config.client_ca)?;
        let signer = SignerPublicKey::from_pem_file(&config.bundle_signer_pubkey)
            .map_err(ServeError::SignerKey)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let store = PolicyStore::new(policy_store_dir);
        let mut serial_path = OsString::from(store.path().as_os_str());
        serial_path.push(SERIAL_SUFFIX);
        Ok(RemoteAdminServer {
            listener,
            acceptor: TlsAcceptor::from(tls),
            endpoint: Arc::new(Endpoint {
                store,
                serial_path: PathBuf::from(serial_path),
                audit_dir: audit_dir.to_owned(),
                signer,
                // The JSON around a bundle's files is small; hex and
                // escaping at most double them.
                max_request_bytes: u32::try_from(config.max_bundle_bytes.saturating_mul(2))
                    .unwrap_or(u32::MAX),
                max_audit_records: config.max_audit_records,
                applying: Mutex::new(()),
            }),
        })
    }

    /// The address it listens on (to learn a port chosen by the OS).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the future is dropped; a failed accept is logged and
    /// retried, never fatal.
    pub async fn run(self) -> Result<(), ServeError> {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (tcp, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors or a connection reset before
                    // accept: the next one may work, so wait and go on.
                    log::warn!("remote admin: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let acceptor = self.acceptor.clone();
            let endpoint = self.endpoint.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(acceptor, tcp, peer, endpoint).await {
                    log::warn!("remote admin: {peer}: {}", error_chain(&e));
                }
                drop(permit);
            });
        }
    }
}

/// Binds the endpoint of `config` and serves it until the returned future
/// is dropped. This is what `vitrined` runs when `[remote_admin]` is set.
pub async fn serve(
    config: RemoteAdminConfig,
    policy_store_dir: PathBuf,
    audit_dir: PathBuf,
) -> Result<(), ServeError> {
    let server = RemoteAdminServer::bind(&config, &policy_store_dir, &audit_dir).await?;
    log::info!("remote admin listening on {}", config.listen);
    server.run().await
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("TLS handshake failed")]
    Handshake(#[source] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    endpoint: Arc<Endpoint>,
) -> Result<(), ConnectionError> {
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| ConnectionError::HandshakeTimeout)?
        .map_err(ConnectionError::Handshake)?;
    let who = client_fingerprint(&tls);
    loop {
        let request = match tokio::time::timeout(
            IDLE_TIMEOUT,
            read_frame::<_, AdminRequest>(&mut tls, endpoint.max_request_bytes),
        )
        .await
        {
            Err(_) | Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(r))) => r,
            Ok(Err(e)) => {
                // Say why before hanging up, if the connection still works.
                let refused = AdminResponse::Refused {
                    error: format!("bad request: {}", error_chain(&e)),
                };
                let _ = write_frame(&mut tls, &refused).await;
                return Err(e.into());
            }
        };
        match request {
            AdminRequest::PushBundle { bundle } => {
                let serial = bundle.serial;
                let ep = endpoint.clone();
                let result = tokio::task::spawn_blocking(move || ep.apply(&bundle))
                    .await
                    .unwrap_or(Err(ApplyError::Worker));
                let response = match result {
                    Ok(switch) => {
                        log::info!(
                            "remote admin: {peer} (client cert {who}) applied policy {} (serial {serial})",
                            switch.active.short()
                        );
                        AdminResponse::Applied {
                            version: switch.active.hex(),
                            previous: switch.previous.map(|v| v.hex()),
                            changed: switch.changed,
                            serial,
                        }
                    }
                    Err(e) => {
                        let error = error_chain(&e);
                        log::warn!(
                            "remote admin: {peer} (client cert {who}) bundle refused: {error}"
                        );
                        AdminResponse::Refused { error }
                    }
                };
                write_frame(&mut tls, &response).await?;
            }
            AdminRequest::ReadAudit { last } => {
                let n = usize::try_from(last.min(endpoint.max_audit_records)).unwrap_or(0);
                let dir = endpoint.audit_dir.clone();
                let records =
                    tokio::task::spawn_blocking(move || audit_tail::last_records(&dir, n)).await;
                match records {
                    Ok(Ok(records)) => {
                        for chunk in records.chunks(AUDIT_RECORDS_PER_FRAME) {
                            let frame = AdminResponse::AuditRecords {
                                records: chunk.to_vec(),
                            };
                            write_frame(&mut tls, &frame).await?;
                        }
                        let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
                        write_frame(&mut tls, &AdminResponse::AuditEnd { count }).await?;
                    }
                    Ok(Err(e)) => {
                        let error = error_chain(&e);
                        write_frame(&mut tls, &AdminResponse::Refused { error }).await?;
                    }
                    Err(_) => {
                        let error = "the audit reader stopped".to_owned();
                        write_frame(&mut tls, &AdminResponse::Refused { error }).await?;
                    }
                }
            }
        }
    }
}

impl Endpoint {
    /// Signature, serial, policy, then the atomic install; any failure
    /// leaves the active policy as it was.
    fn apply(&self, bundle: &PolicyBundle) -> Result<vitrine_policy::store::Switch, ApplyError> {
        bundle.verify(&self.signer)?;
        let _applying = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.last_serial()?;
        if bundle.serial <= last {
            return Err(BundleError::StaleSerial {
                got: bundle.serial,
                last,
            }
            .into());
        }
        bundle.load_policy()?;
        let parent = match self.store.path().parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let staged = tempfile::Builder::new()
            .prefix(".vitrine-bundle-")
            .tempdir_in(&parent)
            .map_err(|source| ApplyError::Io {
                op: "create a staging directory in",
                path: parent.clone(),
                source,
            })?;
        bundle.write_to(staged.path())?;
        let switch = self.store.apply(staged.path())?;
        self.record_serial(bundle.serial)?;
        Ok(switch)
    }

    fn last_serial(&self) -> Result<u64, ApplyError> {
        match std::fs::read_to_string(&self.serial_path) {
            Ok(text) => Ok(text.trim().parse().unwrap_or(u64::MAX)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(ApplyError::Io {
                op: "read",
                path: self.serial_path.clone(),
                source,
            }),
        }
    }

    fn record_serial(&self, serial: u64) -> Result<(), ApplyError> {
        let mut tmp = self.serial_path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| ApplyError::Io { op, path, source }
        };
        std::fs::write(&tmp, format!("{serial}\n")).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &self.serial_path).map_err(io("rename", &self.serial_path))
    }
}

fn client_fingerprint(tls: &TlsStream<TcpStream>) -> String {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| {
            let digest = ring::digest::digest(&ring::digest::SHA256, c.as_ref());
            format!("sha256:{}", hex(&digest.as_ref()[..8]))
        })
        .unwrap_or_else(|| "none".to_owned())
}

/// An error and its causes on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
