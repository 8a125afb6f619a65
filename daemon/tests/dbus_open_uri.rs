//! Links over a private bus. A dangerous scheme is denied by its rule with no
//! VM. A sandboxed link is fetched by the guest through the host's egress
//! tunnel from a real TLS 1.3 server on this host (certificate from a CA made
//! here and given to `vitrined --egress-ca`): TLS ends inside the guest, the
//! page comes back as pixels, and the server saw the guest's request. A link
//! whose profile allows only a wildcard entry cannot reach loopback, and the
//! server sees nothing of it.
//!
//! The fetch needs QEMU and the guest image; without them it prints SKIPPED.

mod dbus_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dbus_support::{
    example_policy, image_or_skip, loud, ocr_or_skip, text, tool_or_skip, PrivateBus,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig, ServerConnection, StreamOwned};
use vitrine_daemon::pages::PageImage;

const PAGE: &str = "<!DOCTYPE html><html><head><title>Tunnel test</title></head><body>\
<h1>Fetched through the tunnel</h1>\
<p>VITRINE EGRESS WORKS</p>\
<p>This page came over TLS that ended inside the guest.</p></body></html>";

#[test]
fn a_dangerous_link_is_denied_by_its_rule_and_listed() {
    let test = "a_dangerous_link_is_denied_by_its_rule_and_listed";
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    // Arrange
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            example_policy().as_os_str(),
            "--no-windows".as_ref(),
        ],
        &[],
    );

    // Act
    let js = bus.vitrine(&["url".as_ref(), "javascript:alert(1)".as_ref()]);
    let ps = bus.vitrine(&["ps".as_ref()]);
    let cancel = bus.vitrine(&["cancel".as_ref(), "1".as_ref()]);

    // Assert
    assert_eq!(js.status.code(), Some(1), "{}", text(&js));
    assert!(
        String::from_utf8_lossy(&js.stderr).contains("rule `dangerous-schemes`"),
        "{}",
        text(&js)
    );
    let listed = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.status.success(), "{}", text(&ps));
    assert!(
        listed.contains("open-uri") && listed.contains("denied: by rule `dangerous-schemes`"),
        "{}",
        text(&ps)
    );
    assert!(cancel.status.success(), "{}", text(&cancel));
}

/// What the test server saw of one connection.
#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    host: String,
    tls: String,
}

/// A TLS 1.3 server on 127.0.0.1 that serves `PAGE` at /page.html, a
/// redirect at /old, and records every request.
struct TlsServer {
    port: u16,
    ca_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<Mutex<u32>>,
}

impl TlsServer {
    fn start() -> TlsServer {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Vitrine egress test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (seen2, connections2) = (seen.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                *connections2.lock().unwrap() += 1;
                let (config, seen) = (config.clone(), seen2.clone());
                std::thread::spawn(move || serve(stream, config, &seen, port));
            }
        });
        TlsServer {
            port,
            ca_pem: ca.pem(),
            seen,
            connections,
        }
    }
}

fn serve(
    stream: std::net::TcpStream,
    config: Arc<ServerConfig>,
    seen: &Mutex<Vec<Seen>>,
    port: u16,
) {
    let conn = ServerConnection::new(config).unwrap();
    let mut tls = StreamOwned::new(conn, stream);
    let mut reader = BufReader::new(&mut tls);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut host = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line
            .strip_prefix("Host:")
            .or_else(|| line.strip_prefix("host:"))
        {
            host = v.trim().to_owned();
        }
    }
    let version = format!("{:?}", tls.conn.protocol_version());
    seen.lock().unwrap().push(Seen {
        request_line: request_line.trim_end().to_owned(),
        host,
        tls: version,
    });
    let response = if request_line.starts_with("GET /old ") {
        format!(
            "HTTP/1.1 302 Found\r\nLocation: https://localhost:{port}/page.html\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
            PAGE.len()
        )
    };
    let _ = tls.write_all(response.as_bytes());
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let mut rest = Vec::new();
    let _ = tls.sock.read_to_end(&mut rest);
}

/// `localhost:PORT` is named in profile `web-here`; `127.0.0.1` falls to
/// `web-anywhere`, whose only entry is the wildcard `*:PORT`.
fn policy(dir: &Path, port: u16) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("10-links.toml"),
        format!(
            r#"
[profile.web-here]
memory_mib = 512
vcpus = 1
time_limit = "5m"
display = {{ max_width = 1280, max_height = 1024, max_fps = 30 }}
egress = ["localhost:{port}"]

[profile.web-anywhere]
memory_mib = 512
vcpus = 1
time_limit = "5m"
display = {{ max_width = 1280, max_height = 1024, max_fps = 30 }}
egress = ["*:{port}"]

[[rule]]
name = "test-server"
action = "open-uri"
scheme = "https"
host = "localhost"
sandbox = "web-here"

[[rule]]
name = "anything-else"
action = "open-uri"
scheme = "https"
sandbox = "web-anywhere"
"#
        ),
    )
    .unwrap();
}

/// Dark pixels (text) in a PNG page.
fn dark_pixels(png: &Path) -> usize {
    let page = PageImage::read_png(png).unwrap();
    page.rgba
        .chunks_exact(4)
        .filter(|p| p[0] < 96 && p[1] < 96 && p[2] < 96)
        .count()
}

#[test]
fn a_link_is_fetched_over_tls_inside_the_guest_and_loopback_stays_closed_to_wildcards() {
    let test = "a_link_is_fetched_over_tls_inside_the_guest_and_loopback_stays_closed_to_wildcards";
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let Some(image) = image_or_skip(test) else {
        return;
    };
    // Arrange
    let server = TlsServer::start();
    let work = tempfile::tempdir().unwrap();
    let policy_dir = work.path().join("policy");
    policy(&policy_dir, server.port);
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let bus = PrivateBus::start(
        &[
            "--policy-dir".as_ref(),
            policy_dir.as_os_str(),
            "--image-dir".as_ref(),
            image.as_os_str(),
            "--egress-ca".as_ref(),
            ca.as_os_str(),
            "--no-windows".as_ref(),
        ],
        &[],
    );
    let pages = work.path().join("pages");
    let link = format!("https://localhost:{}/old", server.port);

    // Act
    let started = Instant::now();
    let fetched = bus.vitrine(&[
        "url".as_ref(),
        "--png".as_ref(),
        pages.as_os_str(),
        link.as_ref(),
    ]);
    let fetch_took = started.elapsed();
    let connections_after_fetch = *server.connections.lock().unwrap();
    let wild = format!("https://127.0.0.1:{}/page.html", server.port);
    let refused = bus.vitrine(&["url".as_ref(), wild.as_ref()]);

    // Assert: the page came over TLS 1.3 from the guest, through a redirect.
    loud(&format!("{test}: fetch and render took {fetch_took:?}"));
    let out = String::from_utf8_lossy(&fetched.stdout);
    assert!(fetched.status.success(), "{}", text(&fetched));
    assert!(out.contains("verdict   clean"), "{}", text(&fetched));
    let seen = server.seen.lock().unwrap().clone();
    let requests: Vec<&str> = seen.iter().map(|s| s.request_line.as_str()).collect();
    assert_eq!(
        requests,
        ["GET /old HTTP/1.1", "GET /page.html HTTP/1.1"],
        "{seen:?}"
    );
    for s in &seen {
        assert_eq!(s.host, format!("localhost:{}", server.port), "{seen:?}");
        assert_eq!(s.tls, "Some(TLSv1_3)", "{seen:?}");
    }
    assert!(
        out.contains(&format!(
            "localhost:{} connected to 127.0.0.1:",
            server.port
        )),
        "{}",
        text(&fetched)
    );
    let png = pages.join("page-1.png");
    assert!(png.is_file(), "no page PNG: {}", text(&fetched));
    let dark = dark_pixels(&png);
    assert!(dark > 500, "the page has only {dark} dark pixels");
    if let Some(words) = ocr_or_skip(&format!("{test} (OCR of the page)"), &png) {
        assert!(words.contains("EGRESS WORKS"), "OCR read: {words}");
    }

    // Assert: a wildcard entry does not reach loopback; nothing connected.
    let refused_out = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        refused_out.contains("local or private addresses"),
        "{}",
        text(&refused)
    );
    assert_eq!(*server.connections.lock().unwrap(), connections_after_fetch);
}
