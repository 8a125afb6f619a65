//! TLS for the endpoint and its client: rustls with the ring provider,
//! TLS 1.3 only, and a client certificate that must chain to the admin CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{version, ClientConfig, RootCertStore, ServerConfig};

/// Certificates or keys could not be loaded, or make no valid TLS setup.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {what} {}", .path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: tokio_rustls::rustls::pki_types::pem::Error,
    },
    #[error("{what} {} holds no certificate", .path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("CA certificate in {} is not usable", .path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: tokio_rustls::rustls::Error,
    },
    #[error("cannot build the client certificate verifier")]
    Verifier(#[from] tokio_rustls::rustls::server::VerifierBuilderError),
    #[error("certificate and key do not make a TLS identity")]
    Identity(#[from] tokio_rustls::rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem_err = |source| TlsSetupError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsSetupError::Pem {
        what: "private key",
        path: path.to_owned(),
        source,
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for ca in certs(path, "CA certificate")? {
        roots.add(ca).map_err(|source| TlsSetupError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The endpoint's TLS: its certificate chain and key, and client
/// certificates required and verified against `client_ca`.
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_ca)?), provider())
            .build()?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert, "certificate")?, key(key_path)?)?;
    Ok(Arc::new(config))
}

/// The admin client's TLS: the server must chain to `ca`, and the client
/// shows its own certificate and key.
pub fn client_config(
    cert: &Path,
    key_path: &Path,
    ca: &Path,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(certs(cert, "certificate")?, key(key_path)?)?;
    Ok(Arc::new(config))
}

/// A client that shows no certificate (to test that the endpoint refuses it).
pub fn client_config_without_identity(ca: &Path) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
