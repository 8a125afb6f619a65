//! A TLS 1.3 server on 127.0.0.1 for the browser's tests and bench: a CA
//! made here (its PEM for `vitrined --egress-ca`), a leaf for `localhost`,
//! pages by path (`text/html`), every request line recorded and every
//! connection counted. A connection may carry several requests.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig, ServerConnection, StreamOwned};

/// A TLS 1.3 server on 127.0.0.1 serving `pages` by path; it records each
/// request line and counts connections.
pub struct TlsServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its CA, PEM.
    pub ca_pem: String,
    /// Request lines, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Connections accepted.
    pub connections: Arc<Mutex<u32>>,
}

impl TlsServer {
    /// Serves `pages` (path to HTML); any other path is a 404.
    pub fn start(pages: HashMap<String, String>) -> TlsServer {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Vitrine web test CA");
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
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (seen, count) = (requests.clone(), connections.clone());
        let pages = Arc::new(pages);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                *count.lock().unwrap() += 1;
                let (config, seen, pages) = (config.clone(), seen.clone(), pages.clone());
                std::thread::spawn(move || serve(stream, config, &seen, &pages));
            }
        });
        TlsServer {
            port,
            ca_pem: ca.pem(),
            requests,
            connections,
        }
    }

    /// Whether the server saw exactly this request line.
    pub fn requested(&self, line: &str) -> bool {
        self.requests.lock().unwrap().iter().any(|r| r == line)
    }
}

fn serve(
    stream: std::net::TcpStream,
    config: Arc<ServerConfig>,
    seen: &Mutex<Vec<String>>,
    pages: &HashMap<String, String>,
) {
    let conn = ServerConnection::new(config).unwrap();
    let mut tls = StreamOwned::new(conn, stream);
    loop {
        let mut reader = BufReader::new(&mut tls);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
        }
        let request_line = request_line.trim_end().to_owned();
        seen.lock().unwrap().push(request_line.clone());
        let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
        let (status, body) = match pages.get(&path) {
            Some(b) => ("200 OK", b.clone()),
            None => ("404 Not Found", "not here".to_owned()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
             Cache-Control: no-store\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(response.as_bytes()).is_err() || tls.flush().is_err() {
            return;
        }
    }
}
