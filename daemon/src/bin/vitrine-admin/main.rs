//! `vitrine-admin`: pushes signed policy bundles to a Vitrine host's remote
//! admin endpoint, reads its audit log, and signs bundles.
//!
//! ```text
//! vitrine-admin sign-bundle --key signer.pem --out policy.bundle /path/to/policy.d
//! vitrine-admin push  --server host:7443 --cert me.pem --key me.key --ca admin-ca.pem policy.bundle
//! vitrine-admin audit --server host:7443 --cert me.pem --key me.key --ca admin-ca.pem --last 50
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use vitrine_daemon::remote_admin::bundle::{load_signing_key, public_key_of};
use vitrine_daemon::remote_admin::{tls, AdminClient, PolicyBundle};

#[derive(Parser)]
#[command(
    name = "vitrine-admin",
    version,
    about = "Remote administration of Vitrine hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Push a signed policy bundle; the host installs it if it verifies
    /// and loads, and keeps its policy otherwise.
    Push {
        #[command(flatten)]
        conn: Connection,
        /// Bundle written by `sign-bundle`.
        bundle: PathBuf,
    },
    /// Print the host's last audit records, one JSON object per line.
    Audit {
        #[command(flatten)]
        conn: Connection,
        /// How many records.
        #[arg(long, default_value_t = 100)]
        last: u32,
    },
    /// Sign the `*.toml` files of a policy directory into a bundle.
    SignBundle {
        /// Ed25519 private key, PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
        #[arg(long)]
        key: PathBuf,
        /// Bundle serial; must be above the last one the host applied
        /// [default: seconds since 1970].
        #[arg(long)]
        serial: Option<u64>,
        /// Where to write the bundle (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The policy directory.
        policy_dir: PathBuf,
    },
}

#[derive(Args)]
struct Connection {
    /// The host's endpoint, `host:port`.
    #[arg(long)]
    server: String,
    /// Name the server certificate must be valid for (default: the host
    /// part of --server).
    #[arg(long)]
    server_name: Option<String>,
    /// This admin's client certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// CA that issued the server's certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
}

impl Connection {
    async fn open(&self) -> anyhow::Result<AdminClient> {
        let config = tls::client_config(&self.cert, &self.key, &self.ca)?;
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(&self.server).to_owned(),
        };
        Ok(AdminClient::connect(&self.server, &name, config).await?)
    }
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vitrine-admin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::SignBundle {
            key,
            serial,
            out,
            policy_dir,
        } => sign_bundle(&key, serial, out, &policy_dir),
        Command::Push { conn, bundle } => {
            let text = std::fs::read(&bundle)
                .with_context(|| format!("cannot read {}", bundle.display()))?;
            let bundle: PolicyBundle = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a policy bundle", bundle.display()))?;
            runtime()?.block_on(async {
                let applied = conn.open().await?.push(&bundle).await?;
                println!(
                    "applied policy {} (serial {}){}",
                    applied.version,
                    applied.serial,
                    if applied.changed {
                        ""
                    } else {
                        "; it was already active"
                    }
                );
                if let Some(prev) = applied.previous {
                    println!("previous policy {prev}");
                }
                Ok(())
            })
        }
        Command::Audit { conn, last } => runtime()?.block_on(async {
            for record in conn.open().await?.audit(last).await? {
                println!("{record}");
            }
            Ok(())
        }),
    }
}

fn sign_bundle(
    key: &std::path::Path,
    serial: Option<u64>,
    out: Option<PathBuf>,
    policy_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let key = load_signing_key(key)?;
    let serial = match serial {
        Some(s) => s,
        None => SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    };
    let files = PolicyBundle::files_of_dir(policy_dir)?;
    let bundle = PolicyBundle::sign(serial, files, &key)?;
    // Refuse to sign what the host would refuse to load.
    bundle.load_policy()?;
    let json = serde_json::to_string_pretty(&bundle)?;
    match out {
        Some(path) => std::fs::write(&path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{json}"),
    }
    let signer = vitrine_daemon::remote_admin::bundle::hex(public_key_of(&key).as_bytes());
    eprintln!(
        "signed {} file(s), serial {serial}, signer ed25519:{signer}",
        bundle.files.len()
    );
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
