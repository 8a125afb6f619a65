//! Remote admin: an optional TLS endpoint through which an admin machine
//! pushes signed policy bundles and reads the audit log.
//!
//! Off by default; `vitrined` starts it when its config file has a
//! `[remote_admin]` section ([`RemoteAdminConfig`]). Every connection is
//! TLS 1.3 with a client certificate that must chain to the configured
//! admin CA. A pushed bundle must carry an Ed25519 signature by the
//! configured signer key and a serial above the last one applied; its
//! policy must then load without errors, and only then is it installed,
//! atomically, through [`vitrine_policy::PolicyStore`]. Anything less
//! changes nothing and the admin gets the reason back (for a policy that
//! does not load: its file, line and column).
//!
//! Two keys, two jobs: the client certificate says who may talk to the
//! endpoint; the signer key says which policies may be installed. A stolen
//! admin workstation certificate alone cannot install a policy.

mod audit_tail;
pub mod bundle;
pub mod client;
pub mod config;
mod server;
pub mod tls;
pub mod wire;

pub use audit_tail::{last_records, AuditTailError, AUDIT_FILE};
pub use bundle::{BundleError, BundleFile, PolicyBundle, SignerPublicKey};
pub use client::{AdminClient, Applied, ClientError};
pub use config::{ConfigError, RemoteAdminConfig};
pub use server::{serve, RemoteAdminServer, ServeError};
