//! The admin side: connects with its client certificate and sends
//! requests (what `vitrine-admin` runs).

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use super::bundle::PolicyBundle;
use super::wire::{
    read_frame, write_frame, AdminRequest, AdminResponse, WireError, MAX_RESPONSE_BYTES,
};

/// A request failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed")]
    Handshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the server closed the connection without answering")]
    NoAnswer,
    #[error("refused by the server: {0}")]
    Refused(String),
    #[error("unexpected answer from the server: {0}")]
    Unexpected(String),
}

/// The answer to a push that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: String,
    pub previous: Option<String>,
    pub changed: bool,
    pub serial: u64,
}

/// One connection to the endpoint.
#[derive(Debug)]
pub struct AdminClient {
    stream: TlsStream<TcpStream>,
}

impl AdminClient {
    /// Connects to `addr` (`host:port`) and checks that the server's
    /// certificate is valid for `server_name`.
    pub async fn connect(
        addr: &str,
        server_name: &str,
        tls: Arc<ClientConfig>,
    ) -> Result<AdminClient, ClientError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| ClientError::ServerName(server_name.to_owned()))?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| ClientError::Handshake {
                addr: addr.to_owned(),
                source,
            })?;
        Ok(AdminClient { stream })
    }

    /// Pushes a signed bundle; `Ok` once its policy is active.
    pub async fn push(&mut self, bundle: &PolicyBundle) -> Result<Applied, ClientError> {
        let request = AdminRequest::PushBundle {
            bundle: bundle.clone(),
        };
        write_frame(&mut self.stream, &request).await?;
        match self.answer().await? {
            AdminResponse::Applied {
                version,
                previous,
                changed,
                serial,
            } => Ok(Applied {
                version,
                previous,
                changed,
                serial,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// The last `last` audit records, oldest first.
    pub async fn audit(&mut self, last: u32) -> Result<Vec<serde_json::Value>, ClientError> {
        write_frame(&mut self.stream, &AdminRequest::ReadAudit { last }).await?;
        let mut records = Vec::new();
        loop {
            match self.answer().await? {
                AdminResponse::AuditRecords { records: mut chunk } => {
                    records.append(&mut chunk);
                }
                AdminResponse::AuditEnd { count } => {
                    if usize::try_from(count).ok() != Some(records.len()) {
                        return Err(ClientError::Unexpected(format!(
                            "{} audit records received, the server sent {count}",
                            records.len()
                        )));
                    }
                    return Ok(records);
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    async fn answer(&mut self) -> Result<AdminResponse, ClientError> {
        match read_frame(&mut self.stream, MAX_RESPONSE_BYTES).await? {
            None => Err(ClientError::NoAnswer),
            Some(AdminResponse::Refused { error }) => Err(ClientError::Refused(error)),
            Some(r) => Ok(r),
        }
    }
}

fn unexpected(r: AdminResponse) -> ClientError {
    let text = serde_json::to_string(&r).unwrap_or_default();
    ClientError::Unexpected(text.chars().take(200).collect())
}
