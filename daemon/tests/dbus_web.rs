//! Links in a real browser engine inside the VM, over a private bus: a local
//! TLS 1.3 server (its CA given to `vitrined --egress-ca`) serves a page
//! with a CSS-styled heading, an inline PNG, a line JavaScript writes and
//! links; Chromium in the guest shows it, reaching the server only through
//! the shim's proxy and the host's tunnel streams. A host outside the
//! profile's egress list is refused and sees no connection. A page that
//! spins or allocates without end ends with a clear verdict and the daemon
//! goes on serving.
//!
//! Needs QEMU and the guest image; without them it prints SKIPPED.

mod dbus_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use dbus_support::{image_or_skip, loud, ocr_or_skip, text, tool_or_skip, PrivateBus};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig, ServerConnection, StreamOwned};
use vitrine_daemon::pages::PageImage;

/// An 8x8 PNG of pure #ff00ff.
const MAGENTA_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEUlEQVR4nGP4z/AfK2IYWhIA0ad/gXfwoGMAAAAASUVORK5CYII=";

/// A TLS 1.3 server on 127.0.0.1 serving `pages` by path; it records each
/// request line and counts connections.
struct TlsServer {
    port: u16,
    ca_pem: String,
    requests: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<u32>>,
}

impl TlsServer {
    fn start(pages: HashMap<String, String>) -> TlsServer {
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
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(response.as_bytes()).is_err() || tls.flush().is_err() {
            return;
        }
    }
}

fn main_page(other_port: u16) -> String {
    format!(
        "<!doctype html><html><head><title>Vitrine web test</title>\
         <style>h1{{color:#0033cc;font:bold 44px sans-serif;margin:24px}}\
         p{{font:28px sans-serif;margin:24px}}</style></head>\
         <body style=\"margin:0;background:#ffffff\">\
         <h1>STYLED HEADING</h1><p id=js>script did not run</p>\
         <script>document.getElementById('js').textContent='WRITTEN BY SCRIPT';</script>\
         <p><a id=next href=\"/second.html\">second page</a></p>\
         <p><a id=away href=\"https://127.0.0.1:{other_port}/\">elsewhere</a></p>\
         <img src=\"data:image/png;base64,{MAGENTA_PNG}\" width=120 height=120 \
              style=\"position:absolute;left:600px;top:300px\"></body></html>"
    )
}

fn policy(dir: &Path, port: u16) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("10-web.toml"),
        format!(
            r#"
[profile.web-test]
memory_mib = 1024
vcpus = 1
time_limit = "60s"
preload = "web"
display = {{ max_width = 1280, max_height = 1024, max_fps = 30 }}
egress = ["localhost:{port}"]

[[rule]]
name = "test-server"
action = "open-uri"
scheme = "https"
sandbox = "web-test"
"#
        ),
    )
    .unwrap();
}

fn pixel(page: &PageImage, x: u32, y: u32) -> (u8, u8, u8) {
    let i = ((y * page.width + x) * 4) as usize;
    (page.rgba[i], page.rgba[i + 1], page.rgba[i + 2])
}

#[test]
fn a_link_is_shown_by_chromium_in_the_vm_and_other_hosts_stay_unreachable() {
    let test = "a_link_is_shown_by_chromium_in_the_vm_and_other_hosts_stay_unreachable";
    if !tool_or_skip(test, "dbus-daemon", "dbus") {
        return;
    }
    let Some(image) = image_or_skip(test) else {
        return;
    };
    // Arrange: the page's server, and a second server the profile does not name.
    let other = TlsServer::start(HashMap::new());
    let pages = HashMap::from([
        ("/".to_owned(), main_page(other.port)),
        (
            "/spin.html".to_owned(),
            "<!doctype html><p>spinning</p><script>while(true){}</script>".to_owned(),
        ),
        (
            "/hog.html".to_owned(),
            "<!doctype html><p>allocating</p><script>let a=[];\
             while(true){a.push(new Array(1e6).fill(Math.random()));}</script>"
                .to_owned(),
        ),
    ]);
    let server = TlsServer::start(pages);
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
    let png_dir = work.path().join("pages");
    let url = |path: &str| format!("https://localhost:{}{path}", server.port);

    // Act
    let shown = bus.vitrine(&[
        "url".as_ref(),
        "--png".as_ref(),
        png_dir.as_os_str(),
        url("/").as_ref(),
    ]);
    let refused = bus.vitrine(&[
        "url".as_ref(),
        format!("https://127.0.0.1:{}/", other.port).as_ref(),
    ]);
    let spin = bus.vitrine(&["url".as_ref(), url("/spin.html").as_ref()]);
    let hog = bus.vitrine(&["url".as_ref(), url("/hog.html").as_ref()]);
    let again = bus.vitrine(&["url".as_ref(), url("/").as_ref()]);

    // Assert: the page, as Chromium drew it, over TLS from the guest.
    let out = String::from_utf8_lossy(&shown.stdout);
    loud(&format!("{test}: {out}"));
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(out.contains("verdict   clean"), "{}", text(&shown));
    assert!(
        server
            .requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r == "GET / HTTP/1.1"),
        "{:?}",
        server.requests.lock().unwrap()
    );
    let png = png_dir.join("page-1.png");
    let page = PageImage::read_png(&png).unwrap();
    assert_eq!(
        pixel(&page, 660, 360),
        (255, 0, 255),
        "the PNG is not at its place"
    );
    let heading_blue = page
        .rgba
        .chunks_exact(4)
        .filter(|p| (p[0], p[1], p[2]) == (0x00, 0x33, 0xcc))
        .count();
    assert!(
        heading_blue > 300,
        "the heading's CSS colour has {heading_blue} pixels"
    );
    if let Some(words) = ocr_or_skip(&format!("{test} (OCR)"), &png) {
        assert!(words.contains("STYLED HEADING"), "OCR read: {words}");
        assert!(words.contains("WRITTEN BY SCRIPT"), "OCR read: {words}");
    }

    // Assert: a host outside the egress list is refused; it saw nothing.
    let refused_out = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        refused_out.contains("not in profile `web-test`'s egress list"),
        "{}",
        text(&refused)
    );
    assert_eq!(*other.connections.lock().unwrap(), 0);

    // Assert: a spinning page and a hog end within the limits, clearly.
    let spin_out = String::from_utf8_lossy(&spin.stdout);
    assert_eq!(spin.status.code(), Some(1), "{}", text(&spin));
    assert!(spin_out.contains("time limit"), "{}", text(&spin));
    let hog_out = String::from_utf8_lossy(&hog.stdout);
    assert_eq!(hog.status.code(), Some(1), "{}", text(&hog));
    assert!(
        hog_out.contains("crashed") || hog_out.contains("time limit"),
        "{}",
        text(&hog)
    );
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(again_out.contains("verdict   clean"), "{}", text(&again));
}
