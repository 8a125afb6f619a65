//! The browser's only route out: an HTTP proxy on the guest's loopback.
//! Each connection the browser makes (`CONNECT host:port` for https, an
//! absolute-form request for plain http) becomes one tunnel stream to the
//! host, whose egress policy decides. TLS still ends in the browser, in the
//! guest: the proxy relays bytes it does not read.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

/// Longest request head the browser may send the proxy.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Bytes read from the browser per tunnel send.
const READ_BYTES: usize = 64 * 1024;
/// Longest wait for the browser's request head.
const HEAD_WAIT: Duration = Duration::from_secs(10);

/// What the proxy tells the session.
#[derive(Debug)]
pub enum ProxyEvent {
    /// The browser asked for `host:port` on connection `conn`. Answer it
    /// with [`accept`] or [`refuse`] on `client`.
    Open {
        /// Connection serial, unique in this proxy's life.
        conn: u64,
        /// Target host.
        host: String,
        /// Target port.
        port: u16,
        /// The browser's end, for the answer and the bytes that come back.
        client: TcpStream,
        /// Plain http: the request head to send first (in origin form);
        /// `None` for a CONNECT tunnel.
        first: Option<Vec<u8>>,
    },
    /// Bytes the browser sent on `conn`.
    Data {
        /// Connection.
        conn: u64,
        /// Bytes.
        data: Vec<u8>,
    },
    /// The browser closed `conn`.
    Closed {
        /// Connection.
        conn: u64,
    },
}

/// A request head the proxy cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(String);

/// The target of a request head, and for plain http the head to send on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host (brackets removed from an IPv6 literal).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Plain http: the head in origin form, `Connection: close`.
    pub first: Option<Vec<u8>>,
}

/// Parses a proxy request head (through the blank line).
pub fn parse_head(head: &[u8]) -> Result<Target, BadRequest> {
    let text = std::str::from_utf8(head).map_err(|_| BadRequest("head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest(format!("bad request line {line:?}")));
    };
    if method == "CONNECT" {
        let (host, port) = split_host_port(target, None)?;
        return Ok(Target {
            host,
            port,
            first: None,
        });
    }
    let rest = target
        .strip_prefix("http://")
        .ok_or_else(|| BadRequest(format!("{method} {target}: only http:// goes unencrypted")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = split_host_port(authority, Some(80))?;
    let mut out = format!("{method} {path} {version}\r\n");
    for header in lines.filter(|l| !l.is_empty()) {
        let name = header.split(':').next().unwrap_or_default().trim();
        // One request per connection: the next may be for another host.
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("proxy-connection")
        {
            continue;
        }
        out.push_str(header);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    Ok(Target {
        host,
        port,
        first: Some(out.into_bytes()),
    })
}

fn split_host_port(s: &str, default: Option<u16>) -> Result<(String, u16), BadRequest> {
    let bad = || BadRequest(format!("bad host:port {s:?}"));
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        (h, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match (port, default) {
        (Some(p), _) => p.parse::<u16>().map_err(|_| bad())?,
        (None, Some(d)) => d,
        (None, None) => return Err(bad()),
    };
    if host.is_empty() || port == 0 || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Answers the browser that its connection is open (a CONNECT tunnel).
pub fn accept(client: &mut TcpStream) -> std::io::Result<()> {
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
}

/// Answers the browser that the policy refused `why`, and closes.
pub fn refuse(client: &mut TcpStream, why: &str) {
    let body = format!("Vitrine: {why}\n");
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = client.write_all(head.as_bytes());
    let _ = client.write_all(body.as_bytes());
    let _ = client.shutdown(Shutdown::Both);
}

/// Starts the proxy on `127.0.0.1:0`; returns its port. Each event goes to
/// `emit`, which says whether the session still listens.
pub fn start(
    emit: impl Fn(ProxyEvent) -> bool + Send + Sync + Clone + 'static,
) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for (conn, client) in (1u64..).zip(listener.incoming()) {
            let Ok(client) = client else { continue };
            let emit = emit.clone();
            std::thread::spawn(move || serve(conn, client, &emit));
        }
    });
    Ok(port)
}

fn serve(conn: u64, mut client: TcpStream, emit: &dyn Fn(ProxyEvent) -> bool) {
    let _ = client.set_nodelay(true);
    let (head, extra) = match read_head(&mut client) {
        Ok(x) => x,
        Err(why) => return refuse(&mut client, &why),
    };
    let target = match parse_head(&head) {
        Ok(t) => t,
        Err(e) => return refuse(&mut client, &e.0),
    };
    let Ok(answer) = client.try_clone() else {
        return;
    };
    let open = ProxyEvent::Open {
        conn,
        host: target.host,
        port: target.port,
        client: answer,
        first: target.first,
    };
    if !emit(open) {
        return;
    }
    if !extra.is_empty() && !emit(ProxyEvent::Data { conn, data: extra }) {
        return;
    }
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !emit(ProxyEvent::Data {
                    conn,
                    data: buf[..n].to_vec(),
                }) {
                    return;
                }
            }
        }
    }
    emit(ProxyEvent::Closed { conn });
}

/// Reads through the blank line; returns the head and any bytes after it.
fn read_head(client: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), String> {
    let _ = client.set_read_timeout(Some(HEAD_WAIT));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            let _ = client.set_read_timeout(None);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(format!(
                "a proxy request head of more than {MAX_HEAD_BYTES} bytes"
            ));
        }
        match client.read(&mut chunk) {
            Ok(0) => return Err("the browser closed before its request".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading the request: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_names_its_target() {
        let t = parse_head(b"CONNECT Example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
            .unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.first),
            ("example.org", 443, None)
        );
        let v6 = parse_head(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8443));
    }

    #[test]
    fn plain_http_goes_on_in_origin_form_one_request_per_connection() {
        let t = parse_head(
            b"GET http://example.org/a/b?c HTTP/1.1\r\nHost: example.org\r\n\
              Proxy-Connection: keep-alive\r\n\r\n",
        )
        .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("example.org", 80));
        assert_eq!(
            String::from_utf8(t.first.unwrap()).unwrap(),
            "GET /a/b?c HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn other_requests_are_refused_with_a_reason() {
        for head in [
            &b"GET https://example.org/ HTTP/1.1\r\n\r\n"[..],
            b"CONNECT example.org HTTP/1.1\r\n\r\n",
            b"CONNECT example.org:0 HTTP/1.1\r\n\r\n",
            b"CONNECT :443 HTTP/1.1\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                parse_head(head).is_err(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
