//! `fetch` against a real local TLS server: rustls on 127.0.0.1 with a
//! certificate for `localhost` from a test CA, reached through a `Tunnel`
//! over TCP that does what the host daemon does (connect host:port, relay
//! bytes). Each server thread ends after its connections.
//!
//! The last tests run the real `vitrine-shim` binary on an `OpenUri` task
//! and play the host's side of the egress tunnel over its socket.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use support::{limits as task_limits, Guest, Outcome};
use vitrine_shim::fetch::{fetch, FetchError, FetchLimits, Fetched, Trust, Tunnel};
use vitrine_shim::protocol::{
    EgressReply, GuestMessage, HostMessage, InputEvent, Limits, TaskKind, TaskStatus,
};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// 2045-01-01 00:00:00 UTC: inside the test certificate's validity and far
/// from this machine's clock, so a pass shows the host's clock is used.
const HOST_NOW: u64 = 2_366_841_600;

/// A CA and a `localhost` server certificate valid 2040 to 2050.
struct Pki {
    ca_der: Vec<u8>,
    config: Arc<ServerConfig>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Vitrine fetch test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.not_before = rcgen::date_time_ymd(2040, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2050, 1, 1);
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
    Pki {
        ca_der: ca.der().to_vec(),
        config: Arc::new(config),
    }
}

/// What a test server saw: request heads, and handshake failures.
#[derive(Default)]
struct Seen {
    requests: Vec<String>,
    errors: Vec<String>,
}

struct Server {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

/// Serves `connections` TLS connections; `respond(target, port)` gives each response.
fn tls_server(
    config: Arc<ServerConfig>,
    connections: usize,
    respond: impl Fn(&str, u16) -> Vec<u8> + Send + 'static,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let conn = ServerConnection::new(config.clone()).unwrap();
            let mut tls = StreamOwned::new(conn, stream);
            match read_head(&mut tls) {
                Ok(head) => {
                    let target = head.split(' ').nth(1).unwrap_or_default().to_string();
                    log.lock().unwrap().requests.push(head);
                    let _ = tls.write_all(&respond(&target, port));
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
                Err(e) => log.lock().unwrap().errors.push(e.to_string()),
            }
        }
    });
    Server { port, seen }
}

fn read_head(stream: &mut impl Read) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The host daemon's part: connect to what the guest names (here always the
/// test server) and relay bytes.
struct TcpTunnel {
    server_port: u16,
    stream: Option<TcpStream>,
    opened: Vec<(String, u16)>,
}

impl TcpTunnel {
    fn to(server_port: u16) -> Self {
        Self {
            server_port,
            stream: None,
            opened: Vec::new(),
        }
    }

    fn stream(&mut self) -> Result<&mut TcpStream, FetchError> {
        self.stream
            .as_mut()
            .ok_or_else(|| FetchError::Link("no open connection".into()))
    }
}

impl Tunnel for TcpTunnel {
    fn open(&mut self, host: &str, port: u16) -> Result<(), FetchError> {
        self.opened.push((host.to_string(), port));
        let stream = TcpStream::connect(("127.0.0.1", self.server_port)).map_err(|e| {
            FetchError::Connect {
                host: host.into(),
                port,
                reason: e.to_string(),
            }
        })?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| FetchError::Link(e.to_string()))?;
        self.stream = Some(stream);
        Ok(())
    }

    fn send(&mut self, data: &[u8]) -> Result<(), FetchError> {
        self.stream()?
            .write_all(data)
            .map_err(|e| FetchError::Link(e.to_string()))
    }

    fn recv(&mut self, max: u32) -> Result<Vec<u8>, FetchError> {
        let mut buf = vec![0u8; usize::try_from(max).unwrap().min(64 * 1024)];
        let n = self
            .stream()?
            .read(&mut buf)
            .map_err(|e| FetchError::Link(e.to_string()))?;
        buf.truncate(n);
        Ok(buf)
    }

    fn close(&mut self) {
        self.stream = None;
    }
}

fn limits() -> FetchLimits {
    FetchLimits::until(Instant::now() + Duration::from_secs(30))
}

fn page(content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(server: &Server, path: &str, trust: &Trust) -> (Result<Fetched, FetchError>, TcpTunnel) {
    let mut tunnel = TcpTunnel::to(server.port);
    let uri = format!("https://localhost:{}{path}", server.port);
    let result = fetch(&mut tunnel, &uri, trust, &limits());
    (result, tunnel)
}

#[test]
fn html_page_is_fetched_over_tls13_with_the_test_ca() {
    // Arrange
    let pki = pki();
    let html = "<!doctype html><h1>Hello from TLS</h1>";
    let server = tls_server(pki.config.clone(), 1, move |_, _| {
        page("text/html; charset=utf-8", html)
    });
    let trust = Trust::new(HOST_NOW, vec![pki.ca_der.clone()]);

    // Act
    let (result, tunnel) = get(&server, "/path?q=1", &trust);

    // Assert
    let got = result.unwrap();
    assert_eq!(got.body, html.as_bytes());
    assert_eq!(got.status, 200);
    assert_eq!(
        got.content_type.as_deref(),
        Some("text/html; charset=utf-8")
    );
    let tls = got.tls.unwrap();
    assert!(tls.starts_with("TLSv1_3 TLS13_"), "{tls}");
    assert_eq!(
        got.final_uri,
        format!("https://localhost:{}/path?q=1", server.port)
    );
    assert_eq!(tunnel.opened, [("localhost".to_string(), server.port)]);
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.requests.len(), 1);
    let request = &seen.requests[0];
    assert!(
        request.starts_with("GET /path?q=1 HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains(&format!("\r\nHost: localhost:{}\r\n", server.port)),
        "{request}"
    );
    assert!(
        request.contains("\r\nUser-Agent: vitrine-shim/"),
        "{request}"
    );
    assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
}

#[test]
fn redirect_302_is_followed_to_the_new_page() {
    // Arrange
    let pki = pki();
    let server = tls_server(pki.config.clone(), 2, |target, port| match target {
        "/old" => format!(
            "HTTP/1.1 302 Found\r\nLocation: https://localhost:{port}/new\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes(),
        _ => page("text/plain", "moved here"),
    });
    let trust = Trust::new(HOST_NOW, vec![pki.ca_der.clone()]);

    // Act
    let (result, tunnel) = get(&server, "/old", &trust);

    // Assert
    let got = result.unwrap();
    assert_eq!(got.body, b"moved here");
    assert_eq!(
        got.final_uri,
        format!("https://localhost:{}/new", server.port)
    );
    assert_eq!(tunnel.opened.len(), 2);
    let seen = server.seen.lock().unwrap();
    let lines: Vec<&str> = seen
        .requests
        .iter()
        .map(|r| r.lines().next().unwrap())
        .collect();
    assert_eq!(lines, ["GET /old HTTP/1.1", "GET /new HTTP/1.1"]);
}

#[test]
fn certificate_from_an_unknown_ca_is_not_trusted() {
    // Arrange
    let pki = pki();
    let server = tls_server(pki.config.clone(), 1, |_, _| page("text/plain", "no"));
    let trust = Trust::new(HOST_NOW, Vec::new());

    // Act
    let (result, _) = get(&server, "/", &trust);

    // Assert
    assert_eq!(
        result.unwrap_err().to_string(),
        "certificate for localhost is not trusted (UnknownIssuer)"
    );
    assert!(server.seen.lock().unwrap().requests.is_empty());
}

#[test]
fn certificate_past_its_expiry_at_the_host_clock_is_refused() {
    // Arrange: 2060-01-01, ten years after the certificate's end.
    let pki = pki();
    let server = tls_server(pki.config.clone(), 1, |_, _| page("text/plain", "no"));
    let trust = Trust::new(2_840_140_800, vec![pki.ca_der.clone()]);

    // Act
    let (result, _) = get(&server, "/", &trust);

    // Assert
    let err = result.unwrap_err().to_string();
    assert!(
        err.starts_with(
            "certificate for localhost has expired (not valid after 2050-01-01 00:00:00 UTC; \
             the host's clock says 2060-01-01 00:00:0"
        ),
        "{err}"
    );
}

#[test]
fn certificate_before_its_start_at_the_host_clock_is_refused() {
    // Arrange: 2030-01-01, before the certificate's 2040 start.
    let pki = pki();
    let server = tls_server(pki.config.clone(), 1, |_, _| page("text/plain", "no"));
    let trust = Trust::new(1_893_456_000, vec![pki.ca_der.clone()]);

    // Act
    let (result, _) = get(&server, "/", &trust);

    // Assert
    let err = result.unwrap_err().to_string();
    assert!(
        err.starts_with(
            "certificate for localhost is not valid yet (not valid before 2040-01-01 00:00:00 UTC"
        ),
        "{err}"
    );
}

#[test]
fn server_that_answers_without_tls_fails_cleanly() {
    // Arrange: a plain HTTP server on the https port.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut hello = [0u8; 4096];
        let _ = stream.read(&mut hello);
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 7\r\n\r\nnot tls");
        let _ = stream.shutdown(Shutdown::Write);
        let _ = stream.read_to_end(&mut Vec::new());
    });
    let server = Server {
        port,
        seen: Arc::default(),
    };
    let trust = Trust::new(HOST_NOW, Vec::new());

    // Act
    let (result, _) = get(&server, "/", &trust);

    // Assert
    let err = result.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("localhost:{port} did not answer with TLS (")),
        "{err}"
    );
}

/// The host's answer to every `EgressOpen` in an agent test.
enum Policy {
    /// Connect to this local port and relay.
    Relay(u16),
    /// Refuse with this reason.
    Refuse(&'static str),
    /// Never answer; send this message instead while the guest waits.
    Silent(Option<HostMessage>),
}

/// Submits an `OpenUri` task and plays the host's egress side until Done.
fn open_uri(
    guest: &mut Guest,
    uri: &str,
    roots: Vec<Vec<u8>>,
    limits: Limits,
    mut policy: Policy,
) -> (Outcome, Vec<(String, u16)>) {
    let kind = TaskKind::OpenUri {
        uri: uri.into(),
        now_unix_secs: HOST_NOW,
        extra_roots: roots.into_iter().map(serde_bytes::ByteBuf::from).collect(),
    };
    let t0 = Instant::now();
    guest.submit(kind, &[], limits);
    let mut out = Outcome::default();
    let mut opened = Vec::new();
    let mut stream: Option<TcpStream> = None;
    loop {
        let msg = guest
            .reader
            .recv()
            .unwrap()
            .expect("shim closed before Done");
        let reply = match msg {
            GuestMessage::EgressOpen { host, port } => {
                opened.push((host, port));
                match &mut policy {
                    Policy::Relay(local) => {
                        let s = TcpStream::connect(("127.0.0.1", *local)).unwrap();
                        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                        stream = Some(s);
                        Some(EgressReply::Connected)
                    }
                    Policy::Refuse(reason) => Some(EgressReply::Refused(reason.to_string())),
                    Policy::Silent(meanwhile) => {
                        if let Some(msg) = meanwhile.take() {
                            guest.send(msg);
                        }
                        None
                    }
                }
            }
            GuestMessage::EgressSend { data } => {
                stream.as_mut().unwrap().write_all(&data).unwrap();
                None
            }
            GuestMessage::EgressRecv { max } => {
                let mut buf = vec![0u8; usize::try_from(max).unwrap().min(64 * 1024)];
                Some(match stream.as_mut().unwrap().read(&mut buf) {
                    Ok(n) => EgressReply::Data(buf[..n].to_vec()),
                    Err(e) => EgressReply::Failed(e.to_string()),
                })
            }
            GuestMessage::EgressClose => {
                stream = None;
                None
            }
            other => {
                if guest.apply(&mut out, other, t0) {
                    return (out, opened);
                }
                None
            }
        };
        if let Some(reply) = reply {
            guest.send(HostMessage::Egress(reply));
        }
    }
}

#[test]
fn open_uri_task_fetches_through_the_tunnel_and_renders_the_page() {
    // Arrange
    let pki = pki();
    let html = "<!doctype html><html><body><h1>Fetched through the tunnel</h1>\
                <p>Rendered in the guest.</p></body></html>";
    let server = tls_server(pki.config.clone(), 1, move |_, _| {
        page("text/html; charset=utf-8", html)
    });
    let uri = format!("https://localhost:{}/news/today", server.port);
    let mut guest = Guest::start();

    // Act
    let (out, opened) = open_uri(
        &mut guest,
        &uri,
        vec![pki.ca_der.clone()],
        task_limits(20_000),
        Policy::Relay(server.port),
    );

    // Assert
    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    assert_eq!(opened, [("localhost".to_string(), server.port)]);
    assert!(
        out.logs.contains(&format!("fetching {uri}")),
        "{:?}",
        out.logs
    );
    let fetched = format!(
        "fetched {uri}: {} bytes, text/html; charset=utf-8, TLSv1_3 TLS13_",
        html.len()
    );
    assert!(
        out.logs.iter().any(|l| l.starts_with(&fetched)),
        "{:?}",
        out.logs
    );
    assert!(
        out.logs.contains(&"rendering today as html".to_string()),
        "{:?}",
        out.logs
    );
    assert_eq!(out.page_count, Some(1));
    let page = &out.pages[&0];
    assert!(page.dark_pixels() > 200, "page has little ink: {page:?}");
    guest.shutdown();
}

#[test]
fn open_uri_refused_by_the_egress_policy_fails_with_the_reason() {
    // Arrange
    let mut guest = Guest::start();

    // Act
    let (out, opened) = open_uri(
        &mut guest,
        "https://blocked.example/",
        Vec::new(),
        task_limits(20_000),
        Policy::Refuse("blocked.example:443 is not in profile `links`' egress list"),
    );

    // Assert
    assert_eq!(opened, [("blocked.example".to_string(), 443)]);
    assert_eq!(
        out.status,
        Some(TaskStatus::Failed(
            "the host's egress policy refused blocked.example:443: \
             blocked.example:443 is not in profile `links`' egress list"
                .into()
        ))
    );
    guest.shutdown();
}

#[test]
fn open_uri_with_a_bad_link_fails_before_any_egress() {
    // Arrange
    let mut guest = Guest::start();

    // Act
    let (out, opened) = open_uri(
        &mut guest,
        "ftp://files.example/x",
        Vec::new(),
        task_limits(20_000),
        Policy::Refuse("unused"),
    );

    // Assert
    assert!(opened.is_empty());
    assert_eq!(
        out.status,
        Some(TaskStatus::Failed(
            "\"ftp://files.example/x\" is not a link the guest can fetch: \
             scheme \"ftp\" is not http or https"
                .into()
        ))
    );
    guest.shutdown();
}

#[test]
fn open_uri_times_out_when_the_host_never_answers_and_drops_input_meanwhile() {
    // Arrange
    let mut guest = Guest::start();
    let input = HostMessage::Input(InputEvent::PageChange { page: 3 });

    // Act
    let t0 = Instant::now();
    let (out, _) = open_uri(
        &mut guest,
        "https://slow.example/",
        Vec::new(),
        task_limits(1_500),
        Policy::Silent(Some(input)),
    );

    // Assert
    assert_eq!(out.status, Some(TaskStatus::TimedOut), "{:?}", out.logs);
    assert!(t0.elapsed() >= Duration::from_millis(1_400));
    assert!(
        out.logs
            .iter()
            .any(|l| l.starts_with("input while fetching dropped: PageChange")),
        "{:?}",
        out.logs
    );
    guest.shutdown();
}

#[test]
fn shutdown_while_the_fetch_waits_ends_the_shim_cleanly() {
    // Arrange
    let mut guest = Guest::start();
    let kind = TaskKind::OpenUri {
        uri: "https://slow.example/".into(),
        now_unix_secs: HOST_NOW,
        extra_roots: Vec::new(),
    };
    guest.submit(kind, &[], task_limits(20_000));
    loop {
        match guest.reader.recv().unwrap() {
            Some(GuestMessage::EgressOpen { .. }) => break,
            Some(GuestMessage::Log { .. }) => {}
            other => panic!("expected EgressOpen, got {other:?}"),
        }
    }

    // Act + Assert: `shutdown` checks that the shim exits 0 on its own.
    guest.shutdown();
}
