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
use std::path::Path;

use dbus_support::tls_server::TlsServer;
use dbus_support::{image_or_skip, loud, ocr_or_skip, text, tool_or_skip, PrivateBus};
use vitrine_daemon::pages::PageImage;

/// An 8x8 PNG of pure #ff00ff.
const MAGENTA_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEUlEQVR4nGP4z/AfK2IYWhIA0ad/gXfwoGMAAAAASUVORK5CYII=";

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
