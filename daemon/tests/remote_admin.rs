//! The remote admin endpoint over real TLS on 127.0.0.1, with a CA, server
//! and client certificates and a bundle signer key made here by rcgen. The
//! policy store and audit log are real directories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use tokio_rustls::rustls::ClientConfig;
use vitrine_daemon::remote_admin::bundle::load_signing_key;
use vitrine_daemon::remote_admin::{
    tls, AdminClient, BundleFile, ClientError, PolicyBundle, RemoteAdminConfig, RemoteAdminServer,
};
use vitrine_policy::{AuditConfig, AuditLog, FileFacts, Origin, PolicySet, PolicyStore, Request};

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf certificate and key, as PEM files `name.pem` and `name.key`.
    fn issue(&self, dir: &Path, name: &str, usage: ExtendedKeyUsagePurpose) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.pem()).unwrap();
        path.to_owned()
    }
}

/// A running endpoint with its directories and the admin's credentials.
struct Host {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    addr: String,
    policy: PathBuf,
    audit_dir: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    ca_pem: PathBuf,
    signer_pem: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn example_policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/examples/policy.d")
}

async fn start_host() -> Host {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    // One CA issues the server's and the admins' certificates.
    let ca = Ca::new("Vitrine admin CA");
    let ca_pem = ca.write(&dir.join("ca.pem"));
    // server.pem and server.key, named in the config below.
    ca.issue(&dir, "server", ExtendedKeyUsagePurpose::ServerAuth);
    let (admin_cert, admin_key) = ca.issue(&dir, "admin", ExtendedKeyUsagePurpose::ClientAuth);
    let signer = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let signer_pem = dir.join("signer.pem");
    std::fs::write(&signer_pem, signer.serialize_pem()).unwrap();
    std::fs::write(dir.join("signer.pub"), signer.public_key_pem()).unwrap();
    let config_path = dir.join("vitrined.toml");
    let config_text = "[remote_admin]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\n\
                       key = \"server.key\"\nclient_ca = \"ca.pem\"\n\
                       bundle_signer_pubkey = \"signer.pub\"\n";
    std::fs::write(&config_path, config_text).unwrap();
    let config = RemoteAdminConfig::from_file(&config_path).unwrap().unwrap();
    // The host starts with the example policy as a plain directory.
    let policy = dir.join("policy.d");
    std::fs::create_dir(&policy).unwrap();
    for entry in std::fs::read_dir(example_policy_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), policy.join(entry.file_name())).unwrap();
    }
    let audit_dir = dir.join("state");
    std::fs::create_dir(&audit_dir).unwrap();

    let server = RemoteAdminServer::bind(&config, &policy, &audit_dir)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        server.run().await.unwrap();
    });
    Host {
        _dir: tmp,
        dir,
        addr,
        policy,
        audit_dir,
        admin_cert,
        admin_key,
        ca_pem,
        signer_pem,
        server,
    }
}

impl Host {
    fn admin_tls(&self) -> Arc<ClientConfig> {
        tls::client_config(&self.admin_cert, &self.admin_key, &self.ca_pem).unwrap()
    }

    async fn admin(&self) -> AdminClient {
        AdminClient::connect(&self.addr, "localhost", self.admin_tls())
            .await
            .unwrap()
    }

    fn active_version(&self) -> String {
        PolicySet::load_dir(&self.policy).unwrap().version().hex()
    }

    fn bundle(&self, serial: u64, files: Vec<BundleFile>) -> PolicyBundle {
        PolicyBundle::sign(serial, files, &load_signing_key(&self.signer_pem).unwrap()).unwrap()
    }
}

/// The example policy with one more comment line: a new version.
fn changed_policy_files() -> Vec<BundleFile> {
    let mut files = PolicyBundle::files_of_dir(&example_policy_dir()).unwrap();
    files[0]
        .content
        .push_str("\n# pushed by the remote admin test\n");
    files
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out = format!("{out}: {c}");
        cause = c.source();
    }
    out
}

fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn good_bundle_is_applied_and_its_version_becomes_active() {
    let host = start_host().await;
    let before = host.active_version();
    let bundle = host.bundle(1, changed_policy_files());

    let applied = host.admin().await.push(&bundle).await.unwrap();

    assert!(applied.changed);
    assert_ne!(applied.version, before);
    assert_eq!(host.active_version(), applied.version);
    let status = PolicyStore::new(&host.policy).status();
    assert_eq!(status.active.as_deref(), Some(applied.version.as_str()));
    assert_eq!(applied.previous.as_deref(), Some(before.as_str()));
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let host = start_host().await;
    let before = host.active_version();
    let anonymous = tls::client_config_without_identity(&host.ca_pem).unwrap();
    let bundle = host.bundle(1, changed_policy_files());

    // TLS 1.3 finishes the client's handshake before the server checks the
    // client; the refusal arrives on the first read.
    let result = match AdminClient::connect(&host.addr, "localhost", anonymous).await {
        Ok(mut client) => client.push(&bundle).await.map(|_| ()),
        Err(e) => Err(e),
    };

    let err = chain(&result.expect_err("a client without a certificate must be refused"));
    assert!(err.contains("CertificateRequired"), "{err}");
    assert_eq!(host.active_version(), before);
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let host = start_host().await;
    let before = host.active_version();
    let other_ca = Ca::new("Some other CA");
    let (cert, key) = other_ca.issue(&host.dir, "intruder", ExtendedKeyUsagePurpose::ClientAuth);
    // It trusts the real server, but its own certificate is from elsewhere.
    let intruder = tls::client_config(&cert, &key, &host.ca_pem).unwrap();
    let bundle = host.bundle(1, changed_policy_files());

    let result = match AdminClient::connect(&host.addr, "localhost", intruder).await {
        Ok(mut client) => client.push(&bundle).await.map(|_| ()),
        Err(e) => Err(e),
    };

    let err = chain(&result.expect_err("a certificate from another CA must be refused"));
    assert!(
        err.contains("UnknownCA") || err.contains("BadCertificate"),
        "{err}"
    );
    assert_eq!(host.active_version(), before);
}

#[tokio::test]
async fn bundle_with_a_bad_signature_is_refused_and_the_old_policy_stays() {
    let host = start_host().await;
    let before = host.active_version();
    let stranger = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let stranger_pem = host.dir.join("stranger.pem");
    std::fs::write(&stranger_pem, stranger.serialize_pem()).unwrap();
    let forged = PolicyBundle::sign(
        1,
        changed_policy_files(),
        &load_signing_key(&stranger_pem).unwrap(),
    )
    .unwrap();
    let mut tampered = host.bundle(2, changed_policy_files());
    tampered.files[0]
        .content
        .push_str("# edited after signing\n");
    let mut admin = host.admin().await;

    let forged_why = refusal(admin.push(&forged).await);
    let tampered_why = refusal(admin.push(&tampered).await);

    assert!(forged_why.contains("signature"), "{forged_why}");
    assert!(tampered_why.contains("signature"), "{tampered_why}");
    assert_eq!(host.active_version(), before);
    assert_eq!(PolicyStore::new(&host.policy).status().state, "directory");
}

#[tokio::test]
async fn broken_policy_bundle_is_refused_with_its_file_and_line() {
    let host = start_host().await;
    let before = host.active_version();
    let mut files = changed_policy_files();
    files.push(BundleFile {
        name: "55-broken.toml".into(),
        content: "[profile.tiny]\nmemory_mib = 512\nvcpus = 0\n".into(),
    });
    let bundle = host.bundle(1, files);

    let why = refusal(host.admin().await.push(&bundle).await);

    assert!(why.contains("55-broken.toml:3:"), "{why}");
    assert!(why.contains("vcpus"), "{why}");
    assert_eq!(host.active_version(), before);
}

#[tokio::test]
async fn replayed_bundle_is_refused_after_a_newer_one() {
    let host = start_host().await;
    let old = host.bundle(
        10,
        PolicyBundle::files_of_dir(&example_policy_dir()).unwrap(),
    );
    let new = host.bundle(11, changed_policy_files());
    let mut admin = host.admin().await;
    admin.push(&old).await.unwrap();
    let applied = admin.push(&new).await.unwrap();

    let why = refusal(admin.push(&old).await);

    assert!(why.contains("serial 10"), "{why}");
    assert_eq!(host.active_version(), applied.version);
}

#[tokio::test]
async fn audit_log_is_read_back_newest_last() {
    let host = start_host().await;
    let policy = PolicySet::load_dir(&host.policy).unwrap();
    let log = AuditLog::open(AuditConfig::new(host.audit_dir.join("audit.jsonl"))).unwrap();
    for path in [
        "/home/a/Downloads/1.pdf",
        "/home/a/Downloads/2.pdf",
        "/home/a/Downloads/3.pdf",
    ] {
        let req = Request::open_file(FileFacts {
            mime: "application/pdf".into(),
            name: Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into()),
            path: Some(path.into()),
            origin: Origin {
                quarantined: true,
                downloads: true,
            },
        })
        .unwrap();
        log.record(&req, &policy.evaluate(&req));
    }
    drop(log); // flushes the writer thread

    let records = host.admin().await.audit(2).await.unwrap();

    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["request"]["path"], "/home/a/Downloads/2.pdf");
    assert_eq!(records[1]["request"]["path"], "/home/a/Downloads/3.pdf");
    assert_eq!(records[1]["event"], "decision");
    assert_eq!(records[1]["policy_version"], policy.version().hex());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_signs_and_pushes_a_bundle_and_reads_the_audit_log() {
    let host = start_host().await;
    let bin = env!("CARGO_BIN_EXE_vitrine-admin");
    let staged = host.dir.join("next-policy");
    std::fs::create_dir(&staged).unwrap();
    for f in changed_policy_files() {
        std::fs::write(staged.join(&f.name), &f.content).unwrap();
    }
    let bundle = host.dir.join("next.bundle");
    let conn = |cmd: &str| {
        let mut c = Command::new(bin);
        c.arg(cmd)
            .args(["--server", &host.addr, "--server-name", "localhost"])
            .arg("--cert")
            .arg(&host.admin_cert)
            .arg("--key")
            .arg(&host.admin_key)
            .arg("--ca")
            .arg(&host.ca_pem);
        c
    };

    let sign = Command::new(bin)
        .arg("sign-bundle")
        .arg("--key")
        .arg(&host.signer_pem)
        .args(["--serial", "7", "--out"])
        .arg(&bundle)
        .arg(&staged)
        .output()
        .unwrap();
    let push = tokio::task::spawn_blocking({
        let mut c = conn("push");
        c.arg(&bundle);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let audit = tokio::task::spawn_blocking({
        let mut c = conn("audit");
        c.args(["--last", "5"]);
        move || c.output().unwrap()
    })
    .await
    .unwrap();

    assert!(
        sign.status.success(),
        "{}",
        String::from_utf8_lossy(&sign.stderr)
    );
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let said = String::from_utf8_lossy(&push.stdout);
    assert!(
        said.contains(&format!("applied policy {}", host.active_version())),
        "{said}"
    );
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
}
