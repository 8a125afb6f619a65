//! The real shim, as a local process, showing a link in a real Chromium
//! (Debian's `chromium-headless-shell`, named by `VITRINE_CHROMIUM`): the
//! test plays the host's tunnel streams over real TCP to a local server.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{limits, Guest, Outcome};
use vitrine_shim::protocol::{
    EgressReply, GuestMessage, HostMessage, StreamData, StreamReply, TaskKind, TaskStatus,
};

const CHROMIUM: &str = "/usr/lib/chromium/chromium-headless-shell";

/// A local HTTP server: `/` is a page with a styled heading, text written
/// by JavaScript and an inline red PNG; it records every request line.
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

fn server(pages: HashMap<&'static str, Vec<u8>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let pages = pages.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let line = head.lines().next().unwrap_or_default().to_owned();
                seen.lock().unwrap().push(line.clone());
                let path = line.split(' ').nth(1).unwrap_or("/");
                let (status, body) = match pages.get(path) {
                    Some(b) => ("200 OK", b.clone()),
                    None => ("404 Not Found", b"no".to_vec()),
                };
                let kind = if path.ends_with(".pdf") {
                    "application/pdf"
                } else {
                    "text/html; charset=utf-8"
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(&body);
            });
        }
    });
    Server { port, requests }
}

/// A TLS 1.3 server for `localhost` (its CA's DER returned) that answers
/// every request with `page`.
fn tls_server(page: String) -> (u16, Vec<u8>) {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Vitrine browser test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (config, page) = (config.clone(), page.clone());
            std::thread::spawn(move || {
                let tls = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(tls, conn);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{page}",
                    page.len()
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (port, ca.der().to_vec())
}

/// Plays the host: streams to 127.0.0.1 only, everything else refused.
fn run_until_done(guest: &mut Guest, uri: &str, time_limit_ms: u32) -> (Outcome, Vec<String>) {
    run_with_roots(guest, uri, Vec::new(), time_limit_ms)
}

fn run_with_roots(
    guest: &mut Guest,
    uri: &str,
    roots: Vec<Vec<u8>>,
    time_limit_ms: u32,
) -> (Outcome, Vec<String>) {
    let kind = TaskKind::OpenUri {
        uri: uri.into(),
        now_unix_secs: 1_800_000_000,
        extra_roots: roots.into_iter().map(serde_bytes::ByteBuf::from).collect(),
    };
    let t0 = Instant::now();
    guest.submit(kind, &[], limits(time_limit_ms));
    let mut out = Outcome::default();
    let mut streams: HashMap<u32, TcpStream> = HashMap::new();
    let mut opened = Vec::new();
    loop {
        let msg = guest
            .reader
            .recv()
            .unwrap()
            .expect("shim closed before Done");
        match msg {
            GuestMessage::StreamOpen { stream, host, port } => {
                opened.push(format!("{host}:{port}"));
                let outcome = if host == "localhost" || host == "127.0.0.1" {
                    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.set_nonblocking(true).unwrap();
                    streams.insert(stream, s);
                    EgressReply::Connected
                } else {
                    EgressReply::Refused(format!("{host}:{port} is not in the test's list"))
                };
                guest.send(HostMessage::Stream(StreamReply::Opened { stream, outcome }));
            }
            GuestMessage::StreamSend { stream, data } => {
                if let Some(s) = streams.get_mut(&stream) {
                    s.set_nonblocking(false).unwrap();
                    let _ = s.write_all(&data);
                    s.set_nonblocking(true).unwrap();
                }
            }
            GuestMessage::StreamClose { stream } => {
                streams.remove(&stream);
            }
            GuestMessage::StreamPoll { wait_ms } => {
                std::thread::sleep(Duration::from_millis(u64::from(wait_ms).min(5)));
                let mut list = Vec::new();
                let mut ended = Vec::new();
                for (&id, s) in &mut streams {
                    let mut buf = vec![0u8; 64 * 1024];
                    match s.read(&mut buf) {
                        Ok(0) => {
                            ended.push(id);
                            list.push(StreamData {
                                stream: id,
                                data: Vec::new(),
                                end: true,
                            });
                        }
                        Ok(n) => list.push(StreamData {
                            stream: id,
                            data: buf[..n].to_vec(),
                            end: false,
                        }),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => {
                            ended.push(id);
                            list.push(StreamData {
                                stream: id,
                                data: Vec::new(),
                                end: true,
                            });
                        }
                    }
                }
                for id in ended {
                    streams.remove(&id);
                }
                guest.send(HostMessage::Stream(StreamReply::Data(list)));
            }
            GuestMessage::Location { .. } => {}
            other => {
                if guest.apply(&mut out, other, t0) {
                    return (out, opened);
                }
            }
        }
    }
}

fn have_chromium(test: &str) -> bool {
    if Path::new(CHROMIUM).is_file() {
        return true;
    }
    support::skip(test, "Debian's chromium-headless-shell is not installed");
    false
}

fn guest() -> Guest {
    Guest::start_with_env(&[("VITRINE_CHROMIUM", Path::new(CHROMIUM))])
}

const RED_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEklEQVR4nGP4z8CAFWEXHbQSACj/P8Fu7N9hAAAAAElFTkSuQmCC";

#[test]
fn a_link_is_shown_by_the_browser_with_its_styles_script_and_image() {
    if !have_chromium("a_link_is_shown_by_the_browser_with_its_styles_script_and_image") {
        return;
    }
    // Arrange
    let page = format!(
        "<!doctype html><html><head><title>Test page</title></head>\
         <body style=\"margin:0;background:#fff\">\
         <h1 style=\"color:#0000ff;font:bold 48px sans-serif;margin:20px\">Styled heading</h1>\
         <p id=js style=\"font:32px sans-serif;margin:20px\"></p>\
         <script>document.getElementById('js').textContent='Written by script';</script>\
         <img src=\"data:image/png;base64,{RED_PNG}\" width=100 height=100 \
              style=\"position:absolute;left:400px;top:300px\"></body></html>"
    );
    let srv = server(HashMap::from([("/", page.into_bytes())]));
    let mut guest = guest();

    // Act
    let uri = format!("http://localhost:{}/", srv.port);
    let (out, opened) = run_until_done(&mut guest, &uri, 60_000);

    // Assert
    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    assert!(
        opened.contains(&format!("localhost:{}", srv.port)),
        "{opened:?}"
    );
    let shot = out.pages.get(&0).expect("no frame of the page");
    let rgba = shot.rgba();
    let at = |x: u32, y: u32| {
        let i = ((y * shot.width() + x) * 4) as usize;
        (rgba[i], rgba[i + 1], rgba[i + 2])
    };
    assert_eq!(
        at(450, 350),
        (255, 0, 0),
        "the image's red is not at its place"
    );
    let blue = (0..shot.height())
        .flat_map(|y| (0..shot.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| at(x, y) == (0, 0, 255))
        .count();
    assert!(blue > 500, "the heading's blue has {blue} pixels");
    assert!(srv
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("GET / ")));
    guest.shutdown();
}

#[test]
fn an_html_file_is_laid_out_by_the_browser_offline_into_pages() {
    let test = "an_html_file_is_laid_out_by_the_browser_offline_into_pages";
    if !have_chromium(test) || !support::have_poppler(test) {
        return;
    }
    // Arrange: a page that names a server; it must never be reached.
    let srv = server(HashMap::from([("/x.png", b"no".to_vec())]));
    let html = format!(
        "<!doctype html><html><body><h1 style=\"color:#0000ff;font:bold 40px sans-serif\">\
         Offline heading</h1><p>distribution of words, never cut mid-word</p>\
         <img src=\"http://127.0.0.1:{}/x.png\"><img src=\"file:///etc/passwd\"></body></html>",
        srv.port
    );
    let mut guest = guest();

    // Act
    let out = guest.open_file("saved.html", html.as_bytes(), limits(60_000));

    // Assert
    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    let page = out.pages.get(&0).expect("no page");
    let blue = page
        .rgba()
        .chunks_exact(4)
        .filter(|p| p[2] > 200 && p[0] < 60 && p[1] < 60)
        .count();
    assert!(blue > 200, "the heading's blue has {blue} pixels");
    assert!(
        srv.requests.lock().unwrap().is_empty(),
        "the file reached the network"
    );
    guest.shutdown();
}

#[test]
fn a_preloaded_browser_trusts_the_tasks_extra_root_and_only_it() {
    let test = "a_preloaded_browser_trusts_the_tasks_extra_root_and_only_it";
    if !have_chromium(test) || !Path::new("/usr/bin/certutil").is_file() {
        support::skip(
            test,
            "no chromium-headless-shell or certutil (libnss3-tools)",
        );
        return;
    }
    // Arrange
    let page = "<!doctype html><body style=\"margin:0;background:#00ff00\">green</body>";
    let (port, ca) = tls_server(page.to_owned());
    let uri = format!("https://localhost:{port}/");
    let env = [
        ("VITRINE_CHROMIUM", Path::new(CHROMIUM)),
        ("VITRINE_PRELOAD", Path::new("web")),
    ];

    // Act: a preloaded browser, given the CA with the task; a cold one without it.
    let mut with_root = Guest::start_with_env(&env);
    let (trusted, _) = run_with_roots(&mut with_root, &uri, vec![ca], 60_000);
    with_root.shutdown();
    let mut without = Guest::start_with_env(&env);
    let (untrusted, _) = run_with_roots(&mut without, &uri, Vec::new(), 60_000);
    without.shutdown();

    // Assert
    assert_eq!(trusted.status, Some(TaskStatus::Ok), "{:?}", trusted.logs);
    assert!(
        trusted
            .logs
            .iter()
            .any(|l| l.contains("preloaded in the template")),
        "{:?}",
        trusted.logs
    );
    let shot = trusted.pages.get(&0).expect("no frame");
    assert_eq!(&shot.rgba()[..4], &[0, 255, 0, 255], "not the page's green");
    match &untrusted.status {
        Some(TaskStatus::Failed(why)) => assert!(why.contains("CERT"), "{why}"),
        other => panic!("an unknown CA was trusted: {other:?} {:?}", untrusted.logs),
    }
}

#[test]
fn a_link_to_a_file_shows_its_pages_and_offers_it_for_export() {
    let test = "a_link_to_a_file_shows_its_pages_and_offers_it_for_export";
    if !have_chromium(test) || !support::have_poppler(test) {
        return;
    }
    // Arrange
    let pdf = include_bytes!("../fixtures/three-pages.pdf").to_vec();
    let srv = server(HashMap::from([("/report.pdf", pdf.clone())]));
    let mut guest = guest();

    // Act
    let uri = format!("http://localhost:{}/report.pdf", srv.port);
    let (out, _) = run_until_done(&mut guest, &uri, 60_000);

    // Assert
    assert_eq!(out.status, Some(TaskStatus::Ok), "{:?}", out.logs);
    assert_eq!(out.page_count, Some(3), "{:?}", out.logs);
    assert_eq!(out.exports.len(), 1, "{:?}", out.logs);
    assert_eq!(out.exports[0].name, "report.pdf");
    assert_eq!(out.exports[0].size, pdf.len() as u64);
    guest.shutdown();
}

#[test]
fn a_refused_link_shows_vitrines_error_page_and_fails_with_the_reason() {
    let test = "a_refused_link_shows_vitrines_error_page_and_fails_with_the_reason";
    if !have_chromium(test) {
        return;
    }
    // Arrange: the test's host refuses everything but 127.0.0.1.
    let mut guest = guest();

    // Act
    let (out, opened) = run_until_done(&mut guest, "https://blocked.example:443/", 60_000);

    // Assert: a clear reason, and the tab shows Vitrine's page, not a hang.
    match &out.status {
        Some(TaskStatus::Failed(why)) => assert!(
            why.contains("blocked.example:443 is not in the test's list"),
            "{why}"
        ),
        other => panic!("not refused: {other:?} {:?}", out.logs),
    }
    assert_eq!(opened, ["blocked.example:443"]);
    let page = out.pages.get(&0).expect("no error page was shown");
    let red = page
        .rgba()
        .chunks_exact(4)
        .filter(|p| (p[0], p[1], p[2]) == (0xa4, 0, 0))
        .count();
    assert!(red > 100, "the error page's heading has {red} pixels");
    guest.shutdown();
}
