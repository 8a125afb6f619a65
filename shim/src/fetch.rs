//! Links fetched in the guest: a small HTTP/1.1 client whose bytes travel
//! through the host's egress tunnel. TLS ends here (rustls with ring), so the
//! host relays bytes it cannot read. Certificates are checked against
//! Mozilla's roots plus the task's extra roots, at the host's clock: the
//! guest's own clock is not trusted.
//!
//! Every response is hostile input: head, chunk lines, bodies and redirect
//! counts all have hard caps, and every failure reads as one clear line.

use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::ClientConnection;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::time_provider::TimeProvider;
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::protocol::{MAX_CHUNK_BYTES, MAX_HOST_BYTES, MAX_URI_BYTES};

/// Default cap on a response body.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// Default cap on a response head (status line and headers, interim
/// responses and trailers included).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default number of redirects followed.
pub const DEFAULT_MAX_REDIRECTS: u32 = 5;

/// Bytes asked of the tunnel per receive: one host round trip each.
const RECV_BYTES: u32 = 256 * 1024;
/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Longest piece of a server's text (reason phrase, bad line) quoted in errors.
const QUOTE_CHARS: usize = 120;

/// The byte pipe to one `host:port` at a time: the host's egress tunnel in
/// the guest, a TCP socket in tests.
pub trait Tunnel {
    /// Opens a connection, replacing any open one.
    fn open(&mut self, host: &str, port: u16) -> Result<(), FetchError>;
    /// Sends bytes on the open connection.
    fn send(&mut self, data: &[u8]) -> Result<(), FetchError>;
    /// Receives 1 to `max` bytes; empty at the end of the stream.
    fn recv(&mut self, max: u32) -> Result<Vec<u8>, FetchError>;
    /// Closes the open connection, if any.
    fn close(&mut self);
}

/// What certificates are trusted, and when "now" is.
#[derive(Debug, Clone)]
pub struct Trust {
    now_unix_secs: u64,
    at: Instant,
    extra_roots: Vec<Vec<u8>>,
}

impl Trust {
    /// `now_unix_secs` is the host's clock at this moment; `extra_roots` are
    /// DER CA certificates trusted beside Mozilla's roots.
    pub fn new(now_unix_secs: u64, extra_roots: Vec<Vec<u8>>) -> Self {
        Self {
            now_unix_secs,
            at: Instant::now(),
            extra_roots,
        }
    }
}

/// The host's clock carried forward by the guest's monotonic clock.
#[derive(Debug)]
struct HostClock {
    now_unix_secs: u64,
    at: Instant,
}

impl TimeProvider for HostClock {
    fn current_time(&self) -> Option<UnixTime> {
        Duration::from_secs(self.now_unix_secs)
            .checked_add(self.at.elapsed())
            .map(UnixTime::since_unix_epoch)
    }
}

/// Caps of one fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Most body bytes.
    pub max_body_bytes: u64,
    /// Most head bytes per response.
    pub max_header_bytes: usize,
    /// Most redirects followed.
    pub max_redirects: u32,
    /// When the whole fetch must be done.
    pub deadline: Instant,
}

impl FetchLimits {
    /// The default caps with this deadline.
    pub fn until(deadline: Instant) -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            deadline,
        }
    }
}

/// A fetched document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The URL the body came from, after redirects.
    pub final_uri: String,
    /// Its HTTP status (2xx).
    pub status: u16,
    /// Its `Content-Type`, if it gave one.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// Protocol version and cipher suite, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`;
    /// `None` for plain http.
    pub tls: Option<String>,
}

/// A fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The link is not one the guest fetches.
    #[error("{uri:?} is not a link the guest can fetch: {reason}")]
    BadUri {
        /// The link (shortened).
        uri: String,
        /// Why.
        reason: String,
    },
    /// An extra root certificate could not be used.
    #[error("extra root certificate {index} is not a usable CA certificate: {reason}")]
    BadRoot {
        /// Position in the task's list.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The host's egress policy said no.
    #[error("the host's egress policy refused {}: {reason}", endpoint(host, *port))]
    Refused {
        /// Host asked for.
        host: String,
        /// Port asked for.
        port: u16,
        /// The host's reason.
        reason: String,
    },
    /// The host could not connect (DNS, TCP).
    #[error("could not connect to {}: {reason}", endpoint(host, *port))]
    Connect {
        /// Host asked for.
        host: String,
        /// Port asked for.
        port: u16,
        /// The host's reason.
        reason: String,
    },
    /// The open connection broke.
    #[error("the connection broke: {0}")]
    Link(String),
    /// The session with the host ended while the fetch waited on it.
    #[error("the host link ended during the fetch")]
    Interrupted,
    /// The deadline passed.
    #[error("the time limit ran out during the fetch")]
    TimedOut,
    /// The server's certificate chain does not lead to a trusted root.
    #[error("certificate for {host} is not trusted ({reason})")]
    Untrusted {
        /// Server name.
        host: String,
        /// rustls' verdict, e.g. `UnknownIssuer`.
        reason: String,
    },
    /// The server's certificate has expired at the host's clock.
    #[error("certificate for {host} has expired ({detail})")]
    Expired {
        /// Server name.
        host: String,
        /// When, against when.
        detail: String,
    },
    /// The server's certificate is not valid yet at the host's clock.
    #[error("certificate for {host} is not valid yet ({detail})")]
    NotYetValid {
        /// Server name.
        host: String,
        /// When, against when.
        detail: String,
    },
    /// The server's certificate is for other names.
    #[error("certificate for {host} does not cover that name ({detail})")]
    WrongName {
        /// Server name.
        host: String,
        /// The names it does cover.
        detail: String,
    },
    /// The server's certificate is unusable for another reason.
    #[error("certificate for {host} is not valid ({detail})")]
    BadCertificate {
        /// Server name.
        host: String,
        /// rustls' verdict.
        detail: String,
    },
    /// The server answered with something other than TLS.
    #[error("{} did not answer with TLS ({detail})", endpoint(host, *port))]
    NotTls {
        /// Server name.
        host: String,
        /// Port.
        port: u16,
        /// What rustls saw.
        detail: String,
    },
    /// The server ended the handshake with an alert.
    #[error("{host} refused the TLS handshake with alert {alert}")]
    TlsAlert {
        /// Server name.
        host: String,
        /// The alert.
        alert: String,
    },
    /// Any other TLS failure.
    #[error("TLS with {host} failed: {detail}")]
    Tls {
        /// Server name.
        host: String,
        /// rustls' error.
        detail: String,
    },
    /// The response broke HTTP/1.1.
    #[error("bad HTTP response from {uri}: {what}")]
    BadResponse {
        /// The URL asked.
        uri: String,
        /// What is wrong.
        what: String,
    },
    /// The connection ended before the response did.
    #[error("{uri} closed the connection early: {what}")]
    Truncated {
        /// The URL asked.
        uri: String,
        /// What was missing.
        what: String,
    },
    /// The response head is over its cap.
    #[error("response headers from {uri} are larger than {max} bytes")]
    HeadersTooLarge {
        /// The URL asked.
        uri: String,
        /// The cap.
        max: usize,
    },
    /// The body is over its cap.
    #[error("response body from {uri} is larger than {max} bytes")]
    BodyTooLarge {
        /// The URL asked.
        uri: String,
        /// The cap.
        max: u64,
    },
    /// The final status is not 2xx.
    #[error("HTTP {status} {reason} from {uri}")]
    Status {
        /// Status code.
        status: u16,
        /// Reason phrase (shortened).
        reason: String,
        /// The URL asked.
        uri: String,
    },
    /// A redirect pointed somewhere unusable.
    #[error("redirect from {from} is unusable: {reason}")]
    BadRedirect {
        /// Where the redirect came from.
        from: String,
        /// Why.
        reason: String,
    },
    /// A redirect would leave https for plain http.
    #[error("redirect from {from} to {to} refused: it leaves https for plain http")]
    Downgrade {
        /// Where the redirect came from.
        from: String,
        /// Where it pointed.
        to: String,
    },
    /// Too many redirects.
    #[error("more than {max} redirects; the last pointed to {to}")]
    TooManyRedirects {
        /// The cap.
        max: u32,
        /// Where the one over the cap pointed.
        to: String,
    },
}

/// Shortens and cleans text from the network for an error message.
fn quote(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(QUOTE_CHARS)
        .collect();
    if text.chars().count() > QUOTE_CHARS {
        out.push('…');
    }
    out
}

fn bad_uri(uri: &str, reason: impl Into<String>) -> FetchError {
    FetchError::BadUri {
        uri: quote(uri),
        reason: reason.into(),
    }
}

/// The host part of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// A DNS name, lowercase.
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// An http or https URL, without userinfo or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    secure: bool,
    host: Host,
    port: u16,
    /// Path and query, starting with `/`, percent-encoded where needed.
    target: String,
}

impl Url {
    /// Parses an absolute http or https URL.
    pub fn parse(input: &str) -> Result<Url, FetchError> {
        let uri = input.trim_matches(|c: char| c.is_ascii_whitespace());
        if uri.len() > MAX_URI_BYTES {
            return Err(bad_uri(uri, format!("longer than {MAX_URI_BYTES} bytes")));
        }
        if uri.chars().any(|c| c.is_ascii_control()) {
            return Err(bad_uri(uri, "it holds control characters"));
        }
        let Some((scheme, rest)) = split_scheme(uri) else {
            return Err(bad_uri(
                uri,
                "it has no scheme (expected http:// or https://)",
            ));
        };
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            other => {
                return Err(bad_uri(
                    uri,
                    format!("scheme {other:?} is not http or https"),
                ))
            }
        };
        let Some(rest) = rest.strip_prefix("//") else {
            return Err(bad_uri(uri, "it has no host (expected scheme://host/...)"));
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(bad_uri(uri, "it carries a user name or password"));
        }
        let (host, port) = parse_authority(authority, if secure { 443 } else { 80 })
            .map_err(|reason| bad_uri(uri, reason))?;
        Ok(Url {
            secure,
            host,
            port,
            target: normalize_target(target),
        })
    }

    /// Resolves a `Location` against this URL (RFC 3986 section 5.2).
    pub fn join(&self, location: &str) -> Result<Url, FetchError> {
        let loc = location.trim_matches(|c: char| c.is_ascii_whitespace());
        if loc.chars().any(|c| c.is_ascii_control()) {
            return Err(bad_uri(loc, "it holds control characters"));
        }
        if split_scheme(loc).is_some() {
            return Url::parse(loc);
        }
        if loc.starts_with("//") {
            return Url::parse(&format!("{}:{loc}", self.scheme()));
        }
        let loc = loc.split('#').next().unwrap_or_default();
        let path = self.target.split('?').next().unwrap_or("/");
        let target = if loc.is_empty() {
            self.target.clone()
        } else if loc.starts_with('/') {
            loc.to_owned()
        } else if loc.starts_with('?') {
            format!("{path}{loc}")
        } else {
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{loc}")
        };
        if target.len() > MAX_URI_BYTES {
            return Err(bad_uri(loc, format!("longer than {MAX_URI_BYTES} bytes")));
        }
        Ok(Url {
            target: normalize_target(&target),
            ..self.clone()
        })
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.secure {
            "https"
        } else {
            "http"
        }
    }

    /// Whether the scheme is https.
    pub fn is_https(&self) -> bool {
        self.secure
    }

    /// Host as the tunnel is asked for it: a name, or an IP literal without brackets.
    pub fn host(&self) -> String {
        match &self.host {
            Host::Name(name) => name.clone(),
            Host::V4(ip) => ip.to_string(),
            Host::V6(ip) => ip.to_string(),
        }
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path and query, from `/`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Host and, where it is not the scheme's default, port: the `Host` header.
    fn authority(&self) -> String {
        let host = match &self.host {
            Host::V6(ip) => format!("[{ip}]"),
            _ => self.host(),
        };
        let default = if self.secure { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The last path segment, when it is a plain file name.
    pub fn file_name(&self) -> Option<String> {
        let path = self.target.split('?').next()?;
        let last = path.rsplit('/').next()?;
        let name = percent_decode(last)?;
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && name.len() <= 255
            && !name.contains(['/', '\0']);
        plain.then_some(name)
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme(), self.authority(), self.target)
    }
}

/// `scheme:rest` when `s` starts with an RFC 3986 scheme.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let colon = s.find(':')?;
    let scheme = &s[..colon];
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then(|| (scheme, &s[colon + 1..]))
}

fn parse_authority(authority: &str, default_port: u16) -> Result<(Host, u16), String> {
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let Some((literal, after)) = inner.split_once(']') else {
            return Err("its IPv6 address has no closing ]".into());
        };
        if literal.contains('%') {
            return Err("IPv6 zone identifiers are not supported".into());
        }
        let ip: Ipv6Addr = literal
            .parse()
            .map_err(|_| format!("[{}] is not an IPv6 address", quote(literal)))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| "junk after the IPv6 address".to_string())?,
            ),
        };
        (Host::V6(ip), port)
    } else {
        let (name, port) = match authority.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        };
        (parse_host_name(name)?, port)
    };
    let port = match port {
        None | Some("") => default_port,
        Some(p) => parse_port(p)?,
    };
    Ok((host, port))
}

fn parse_port(p: &str) -> Result<u16, String> {
    let valid = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    match p.parse::<u16>() {
        Ok(port) if valid && port != 0 => Ok(port),
        _ => Err(format!("port {:?} is not 1 to 65535", quote(p))),
    }
}

fn parse_host_name(name: &str) -> Result<Host, String> {
    if name.is_empty() {
        return Err("it has no host".into());
    }
    if !name.is_ascii() {
        return Err("non-ASCII host names must be given in punycode (xn--...)".into());
    }
    let name = name.to_ascii_lowercase();
    if name.len() > MAX_HOST_BYTES {
        return Err(format!("its host is longer than {MAX_HOST_BYTES} bytes"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!("its host holds {bad:?}"));
    }
    let bare = name.strip_suffix('.').unwrap_or(&name);
    let labels: Vec<&str> = bare.split('.').collect();
    if labels.iter().any(|l| l.is_empty() || l.len() > 63) {
        return Err(format!("host {name:?} has an empty or over-long label"));
    }
    // A numeric last label makes it an IPv4 address to a browser; only the
    // plain dotted quad is accepted so the host's policy sees what we use.
    let last = labels.last().copied().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x") {
        return bare
            .parse::<Ipv4Addr>()
            .map(Host::V4)
            .map_err(|_| format!("host {name:?} is not a dotted-quad IPv4 address"));
    }
    Ok(Host::Name(name))
}

/// Removes dot segments from the path and percent-encodes what may not go
/// on the request line raw. Control characters were refused before.
fn normalize_target(target: &str) -> String {
    let target = if target.starts_with('/') {
        target.to_owned()
    } else {
        format!("/{target}")
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target.as_str(), None),
    };
    let mut out = encode(&remove_dot_segments(path));
    if let Some(q) = query {
        out.push('?');
        out.push_str(&encode(q));
    }
    out
}

fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match seg.to_ascii_lowercase().as_str() {
            "." | "%2e" => {}
            ".." | ".%2e" | "%2e." | "%2e%2e" => {
                out.pop();
            }
            _ => {
                out.push(seg);
                continue;
            }
        }
        if last {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'`' | b'\\' | b'{' | b'}') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Fetches `uri`, following redirects, and returns the final 2xx body.
pub fn fetch(
    tunnel: &mut dyn Tunnel,
    uri: &str,
    trust: &Trust,
    limits: &FetchLimits,
) -> Result<Fetched, FetchError> {
    let mut url = Url::parse(uri)?;
    let mut config: Option<Arc<ClientConfig>> = None;
    let mut redirects = 0u32;
    loop {
        if Instant::now() >= limits.deadline {
            return Err(FetchError::TimedOut);
        }
        let tls = match (url.is_https(), &config) {
            (false, _) => None,
            (true, Some(c)) => Some(c.clone()),
            (true, None) => {
                let c = client_config(trust)?;
                config = Some(c.clone());
                Some(c)
            }
        };
        let result = exchange(tunnel, &url, tls, limits);
        tunnel.close();
        let response = result?;
        if let (true, Some(location)) = (is_redirect(response.status), &response.location) {
            let next = url.join(location).map_err(|e| FetchError::BadRedirect {
                from: url.to_string(),
                reason: e.to_string(),
            })?;
            if url.is_https() && !next.is_https() {
                return Err(FetchError::Downgrade {
                    from: url.to_string(),
                    to: next.to_string(),
                });
            }
            if redirects >= limits.max_redirects {
                return Err(FetchError::TooManyRedirects {
                    max: limits.max_redirects,
                    to: next.to_string(),
                });
            }
            redirects += 1;
            url = next;
            continue;
        }
        let Some(body) = response.body else {
            return Err(FetchError::Status {
                status: response.status,
                reason: response.reason,
                uri: url.to_string(),
            });
        };
        return Ok(Fetched {
            final_uri: url.to_string(),
            status: response.status,
            content_type: response.content_type,
            body,
            tls: response.tls,
        });
    }
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, FetchError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (index, der) in trust.extra_roots.iter().enumerate() {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| FetchError::BadRoot {
                index,
                reason: e.to_string(),
            })?;
    }
    let clock = HostClock {
        now_unix_secs: trust.now_unix_secs,
        at: trust.at,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_details(provider, Arc::new(clock))
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls {
            host: "any host".into(),
            detail: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One response, its body read only where it will be used (2xx).
#[derive(Debug)]
struct Response {
    status: u16,
    reason: String,
    location: Option<String>,
    content_type: Option<String>,
    body: Option<Vec<u8>>,
    tls: Option<String>,
}

/// One request and response on a fresh connection.
fn exchange(
    tunnel: &mut dyn Tunnel,
    url: &Url,
    tls: Option<Arc<ClientConfig>>,
    limits: &FetchLimits,
) -> Result<Response, FetchError> {
    tunnel.open(&url.host(), url.port())?;
    let conn = match tls {
        None => None,
        Some(config) => {
            let name = ServerName::try_from(url.host()).map_err(|e| {
                bad_uri(&url.to_string(), format!("its host is not a TLS name: {e}"))
            })?;
            let conn = ClientConnection::new(config, name).map_err(|e| tls_error(url, e))?;
            Some(conn)
        }
    };
    let mut wire = Wire {
        tunnel,
        tls: conn,
        url,
        deadline: limits.deadline,
        buf: Vec::new(),
        eof: None,
        tcp_eof: false,
    };
    wire.handshake()?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: vitrine-shim/{}\r\nAccept: */*\r\n\
         Accept-Encoding: identity\r\nConnection: close\r\n\r\n",
        url.target(),
        url.authority(),
        env!("CARGO_PKG_VERSION"),
    );
    wire.send_all(request.as_bytes())?;
    let head = read_head(&mut wire, limits)?;
    let mut response = Response {
        status: head.status,
        location: head.get("location").map(str::to_owned),
        content_type: head.get("content-type").map(quote),
        reason: quote(&head.reason),
        body: None,
        tls: wire.tls_description(),
    };
    let wanted = (200..300).contains(&head.status);
    if wanted {
        response.body = Some(read_body(&mut wire, &head, limits)?);
        wire.close_notify();
    }
    Ok(response)
}

/// How the stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// TCP end, or TLS close_notify.
    Clean,
    /// TLS without close_notify: the data may have been cut.
    Cut,
}

/// A connection's plaintext, buffered.
struct Wire<'a> {
    tunnel: &'a mut dyn Tunnel,
    tls: Option<ClientConnection>,
    url: &'a Url,
    deadline: Instant,
    /// Plaintext received and not consumed yet.
    buf: Vec<u8>,
    eof: Option<End>,
    tcp_eof: bool,
}

impl Wire<'_> {
    fn recv(&mut self) -> Result<Vec<u8>, FetchError> {
        if Instant::now() >= self.deadline {
            return Err(FetchError::TimedOut);
        }
        let data = self.tunnel.recv(RECV_BYTES)?;
        if data.len() > usize::try_from(RECV_BYTES).unwrap_or(usize::MAX) {
            return Err(FetchError::Link(format!(
                "the tunnel returned {} bytes for a read of at most {RECV_BYTES}",
                data.len()
            )));
        }
        Ok(data)
    }

    fn send_raw(&mut self, data: &[u8]) -> Result<(), FetchError> {
        if Instant::now() >= self.deadline {
            return Err(FetchError::TimedOut);
        }
        for piece in data.chunks(MAX_CHUNK_BYTES) {
            self.tunnel.send(piece)?;
        }
        Ok(())
    }

    /// Sends what rustls has queued (handshake, records, alerts).
    fn flush_tls(&mut self) -> Result<(), FetchError> {
        let Some(conn) = self.tls.as_mut() else {
            return Ok(());
        };
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out)
                .map_err(|e| FetchError::Link(e.to_string()))?;
        }
        if out.is_empty() {
            return Ok(());
        }
        self.send_raw(&out)
    }

    /// Feeds received TLS bytes to rustls and moves its plaintext to `buf`.
    fn feed(&mut self, data: &[u8]) -> Result<(), FetchError> {
        let url = self.url;
        let Some(conn) = self.tls.as_mut() else {
            self.buf.extend_from_slice(data);
            return Ok(());
        };
        let mut rest = data;
        loop {
            let before = rest.len();
            if let Err(e) = conn.read_tls(&mut rest) {
                return Err(tls_error(url, rustls::Error::General(e.to_string())));
            }
            if before > 0 && rest.len() == before {
                return Err(tls_error(
                    url,
                    rustls::Error::General("rustls took no bytes".into()),
                ));
            }
            if let Err(e) = conn.process_new_packets() {
                // Let the peer see the alert, then report ours.
                let _ = self.flush_tls();
                return Err(tls_error(url, e));
            }
            drain_plaintext(conn, &mut self.buf, &mut self.eof)?;
            if rest.is_empty() {
                break;
            }
        }
        Ok(())
    }

    fn handshake(&mut self) -> Result<(), FetchError> {
        while self.tls.as_ref().is_some_and(|c| c.is_handshaking()) {
            self.flush_tls()?;
            if !self.tls.as_ref().is_some_and(|c| c.is_handshaking()) {
                break;
            }
            let data = self.recv()?;
            if data.is_empty() {
                return Err(FetchError::NotTls {
                    host: self.url.host(),
                    port: self.url.port(),
                    detail: "the connection closed during the handshake".into(),
                });
            }
            self.feed(&data)?;
        }
        self.flush_tls()
    }

    fn send_all(&mut self, data: &[u8]) -> Result<(), FetchError> {
        match self.tls.as_mut() {
            None => self.send_raw(data),
            Some(conn) => {
                conn.writer()
                    .write_all(data)
                    .map_err(|e| FetchError::Link(e.to_string()))?;
                self.flush_tls()
            }
        }
    }

    /// Receives more plaintext into `buf`; 0 at the end of the stream
    /// (`eof` says how it ended).
    fn fill(&mut self) -> Result<usize, FetchError> {
        let before = self.buf.len();
        loop {
            if self.buf.len() > before {
                return Ok(self.buf.len() - before);
            }
            if self.eof.is_some() {
                return Ok(0);
            }
            if self.tcp_eof {
                // rustls had all there was and still wants more.
                self.eof = Some(End::Cut);
                return Ok(0);
            }
            let data = self.recv()?;
            if data.is_empty() {
                self.tcp_eof = true;
                match self.tls.as_mut() {
                    None => self.eof = Some(End::Clean),
                    Some(_) => self.feed(&[])?,
                }
                continue;
            }
            self.feed(&data)?;
        }
    }

    fn tls_description(&self) -> Option<String> {
        let conn = self.tls.as_ref()?;
        let version = conn.protocol_version()?;
        let suite = conn.negotiated_cipher_suite()?;
        Some(format!("{version:?} {:?}", suite.suite()))
    }

    /// Best effort: the response is complete either way.
    fn close_notify(&mut self) {
        if let Some(conn) = self.tls.as_mut() {
            conn.send_close_notify();
            let _ = self.flush_tls();
        }
    }

    fn truncated(&self, what: impl Into<String>) -> FetchError {
        FetchError::Truncated {
            uri: self.url.to_string(),
            what: what.into(),
        }
    }

    fn bad(&self, what: impl Into<String>) -> FetchError {
        FetchError::BadResponse {
            uri: self.url.to_string(),
            what: what.into(),
        }
    }
}

fn drain_plaintext(
    conn: &mut ClientConnection,
    buf: &mut Vec<u8>,
    eof: &mut Option<End>,
) -> Result<(), FetchError> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match conn.reader().read(&mut chunk) {
            Ok(0) => {
                *eof = Some(End::Clean);
                return Ok(());
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                *eof = Some(End::Cut);
                return Ok(());
            }
            Err(e) => return Err(FetchError::Link(e.to_string())),
        }
    }
}

/// A parsed response head.
#[derive(Debug)]
struct Head {
    status: u16,
    reason: String,
    /// Names lowercase, values trimmed.
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header, comma lists split, trimmed, empty ones dropped.
    fn list(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .collect()
    }
}

/// Position after the blank line that ends a head, searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1..) {
            Some([b'\n', ..]) => return Some(nl + 2),
            Some([b'\r', b'\n', ..]) => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Reads the final response head, skipping interim 1xx responses.
fn read_head(wire: &mut Wire<'_>, limits: &FetchLimits) -> Result<Head, FetchError> {
    let max = limits.max_header_bytes;
    let mut used = 0usize;
    loop {
        let mut scanned = 0usize;
        let end = loop {
            if let Some(end) = head_end(&wire.buf, scanned) {
                break end;
            }
            scanned = wire.buf.len().saturating_sub(2);
            if used + wire.buf.len() > max {
                return Err(FetchError::HeadersTooLarge {
                    uri: wire.url.to_string(),
                    max,
                });
            }
            if wire.fill()? == 0 {
                return Err(if wire.buf.is_empty() && used == 0 {
                    wire.truncated("no response at all")
                } else {
                    wire.truncated("in the middle of the response headers")
                });
            }
        };
        used += end;
        if used > max {
            return Err(FetchError::HeadersTooLarge {
                uri: wire.url.to_string(),
                max,
            });
        }
        let head = parse_head(&wire.buf[..end]).map_err(|what| wire.bad(what))?;
        wire.buf.drain(..end);
        match head.status {
            101 => return Err(wire.bad("it switched protocols (101), which was not asked")),
            100..=199 => continue,
            _ => return Ok(head),
        }
    }
}

fn parse_head(bytes: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .take_while(|l| !l.is_empty());
    let status_line = lines.next().unwrap_or_default();
    let (status, reason) = parse_status_line(status_line)
        .ok_or_else(|| format!("status line {:?} is not HTTP/1.x", quote(status_line)))?;
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err("it uses obsolete folded header lines".into());
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line {:?} has no colon", quote(line)));
        };
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(format!("header name {:?} is not a token", quote(name)));
        }
        headers.push((
            name.to_ascii_lowercase(),
            value.trim_matches([' ', '\t']).to_owned(),
        ));
    }
    Ok(Head {
        status,
        reason: reason.to_owned(),
        headers,
    })
}

fn parse_status_line(line: &str) -> Option<(u16, &str)> {
    let rest = line.strip_prefix("HTTP/1.")?;
    let rest = rest.strip_prefix(['0', '1'])?;
    let rest = rest.strip_prefix(' ')?;
    let code = rest.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let status: u16 = code.parse().ok()?;
    if !(100..=599).contains(&status) {
        return None;
    }
    let reason = match rest.get(3..)? {
        "" => "",
        r => r.strip_prefix(' ')?,
    };
    Some((status, reason))
}

/// How the body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

fn framing(head: &Head) -> Result<Framing, String> {
    if matches!(head.status, 204 | 304) {
        return Ok(Framing::Length(0));
    }
    let codings = head.list("transfer-encoding");
    if !codings.is_empty() {
        return if codings == ["chunked"] {
            Ok(Framing::Chunked)
        } else {
            Err(format!(
                "transfer coding {:?} is not supported (only chunked)",
                quote(&codings.join(", "))
            ))
        };
    }
    let lengths = head.list("content-length");
    let Some(first) = lengths.first() else {
        return Ok(Framing::UntilClose);
    };
    if lengths.iter().any(|l| l != first) {
        return Err("it has conflicting Content-Length headers".into());
    }
    let valid = first.len() <= 19 && first.bytes().all(|b| b.is_ascii_digit());
    match first.parse::<u64>() {
        Ok(n) if valid => Ok(Framing::Length(n)),
        _ => Err(format!("Content-Length {:?} is not a number", quote(first))),
    }
}

fn read_body(
    wire: &mut Wire<'_>,
    head: &Head,
    limits: &FetchLimits,
) -> Result<Vec<u8>, FetchError> {
    let max = limits.max_body_bytes;
    let url = wire.url;
    let too_large = || FetchError::BodyTooLarge {
        uri: url.to_string(),
        max,
    };
    let encodings = head.list("content-encoding");
    if encodings.iter().any(|e| e != "identity") {
        return Err(wire.bad(format!(
            "the body is {}-encoded, which the guest does not decode",
            quote(&encodings.join(", "))
        )));
    }
    match framing(head).map_err(|what| wire.bad(what))? {
        Framing::Length(n) => {
            if n > max {
                return Err(too_large());
            }
            let n = usize::try_from(n).map_err(|_| too_large())?;
            while wire.buf.len() < n {
                if wire.fill()? == 0 {
                    return Err(
                        wire.truncated(format!("after {} of {n} body bytes", wire.buf.len()))
                    );
                }
            }
            let mut body = std::mem::take(&mut wire.buf);
            body.truncate(n);
            Ok(body)
        }
        Framing::UntilClose => {
            loop {
                if u64::try_from(wire.buf.len()).unwrap_or(u64::MAX) > max {
                    return Err(too_large());
                }
                if wire.fill()? == 0 {
                    break;
                }
            }
            if wire.eof == Some(End::Cut) {
                return Err(
                    wire.truncated("TLS ended without close_notify, so the body may be cut short")
                );
            }
            Ok(std::mem::take(&mut wire.buf))
        }
        Framing::Chunked => read_chunked(wire, limits),
    }
}

/// Takes one line (without its CRLF) of at most `max` bytes.
fn read_line(wire: &mut Wire<'_>, max: usize, what: &str) -> Result<String, FetchError> {
    let mut scanned = 0;
    loop {
        if let Some(i) = wire.buf[scanned..].iter().position(|&b| b == b'\n') {
            let nl = scanned + i;
            if nl > max {
                break;
            }
            let line: Vec<u8> = wire.buf.drain(..=nl).collect();
            let line = line.strip_suffix(b"\r\n").or(line.strip_suffix(b"\n"));
            return Ok(String::from_utf8_lossy(line.unwrap_or_default()).into_owned());
        }
        scanned = wire.buf.len();
        if scanned > max {
            break;
        }
        if wire.fill()? == 0 {
            return Err(wire.truncated(format!("in a {what}")));
        }
    }
    Err(wire.bad(format!("a {what} is longer than {max} bytes")))
}

fn read_chunked(wire: &mut Wire<'_>, limits: &FetchLimits) -> Result<Vec<u8>, FetchError> {
    let max = limits.max_body_bytes;
    let url = wire.url;
    let too_large = || FetchError::BodyTooLarge {
        uri: url.to_string(),
        max,
    };
    let mut body = Vec::new();
    loop {
        let line = read_line(wire, MAX_CHUNK_LINE, "chunk size line")?;
        let size_text = line.split(';').next().unwrap_or_default();
        let size_text = size_text.trim_matches([' ', '\t']);
        let valid = !size_text.is_empty()
            && size_text.len() <= 16
            && size_text.bytes().all(|b| b.is_ascii_hexdigit());
        let size = match u64::from_str_radix(size_text, 16) {
            Ok(size) if valid => size,
            _ => {
                return Err(wire.bad(format!("chunk size {:?} is not hex", quote(size_text))));
            }
        };
        if size == 0 {
            break;
        }
        let total = u64::try_from(body.len())
            .unwrap_or(u64::MAX)
            .saturating_add(size);
        if total > max {
            return Err(too_large());
        }
        let size = usize::try_from(size).map_err(|_| too_large())?;
        while wire.buf.len() < size + 2 {
            if wire.fill()? == 0 {
                return Err(wire.truncated(format!(
                    "in a chunk of {size} bytes, after {} body bytes",
                    body.len()
                )));
            }
        }
        if &wire.buf[size..size + 2] != b"\r\n" {
            return Err(wire.bad("chunk data is not followed by CRLF"));
        }
        body.extend_from_slice(&wire.buf[..size]);
        wire.buf.drain(..size + 2);
    }
    // Trailers are read (within the head cap) and dropped.
    let mut trailer_bytes = 0usize;
    loop {
        let line = read_line(wire, limits.max_header_bytes, "trailer line")?;
        if line.is_empty() {
            return Ok(body);
        }
        trailer_bytes += line.len() + 2;
        if trailer_bytes > limits.max_header_bytes {
            return Err(FetchError::HeadersTooLarge {
                uri: wire.url.to_string(),
                max: limits.max_header_bytes,
            });
        }
    }
}

/// A rustls error as a line a user can act on.
fn tls_error(url: &Url, e: rustls::Error) -> FetchError {
    use rustls::Error as E;
    let host = url.host();
    match e {
        E::InvalidCertificate(cert) => cert_error(host, cert),
        E::AlertReceived(alert) => FetchError::TlsAlert {
            host,
            alert: format!("{alert:?}"),
        },
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => FetchError::NotTls {
            host,
            port: url.port(),
            detail: e.to_string(),
        },
        other => FetchError::Tls {
            host,
            detail: other.to_string(),
        },
    }
}

fn cert_error(host: String, cert: CertificateError) -> FetchError {
    use CertificateError as C;
    match cert {
        C::UnknownIssuer | C::BadSignature | C::Revoked => FetchError::Untrusted {
            host,
            reason: format!("{cert:?}"),
        },
        C::Expired => FetchError::Expired {
            host,
            detail: "at the host's clock".into(),
        },
        C::ExpiredContext { time, not_after } => FetchError::Expired {
            host,
            detail: format!(
                "not valid after {}; the host's clock says {}",
                utc(not_after.as_secs()),
                utc(time.as_secs())
            ),
        },
        C::NotValidYet => FetchError::NotYetValid {
            host,
            detail: "at the host's clock".into(),
        },
        C::NotValidYetContext { time, not_before } => FetchError::NotYetValid {
            host,
            detail: format!(
                "not valid before {}; the host's clock says {}",
                utc(not_before.as_secs()),
                utc(time.as_secs())
            ),
        },
        C::NotValidForName => FetchError::WrongName {
            host,
            detail: "it names other hosts".into(),
        },
        C::NotValidForNameContext { presented, .. } => FetchError::WrongName {
            host,
            detail: format!("it is for {}", quote(&presented.join(", "))),
        },
        other => FetchError::BadCertificate {
            host,
            detail: other.to_string(),
        },
    }
}

/// `YYYY-MM-DD hh:mm:ss UTC` (civil-from-days, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `host:port` as a URL writes it: an IPv6 address in brackets.
fn endpoint(host: &str, port: u16) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::ServerConnection;

    type Handler = Box<dyn Fn(&str) -> Vec<u8>>;

    /// A server at one host:port: answers each request target.
    struct Site {
        host: &'static str,
        port: u16,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Handler,
    }

    struct OpenConn {
        site: usize,
        server: Option<ServerConnection>,
        request: Vec<u8>,
        out: Vec<u8>,
        responded: bool,
    }

    /// An in-memory tunnel: scripted sites, `step` bytes per receive at most.
    struct MemTunnel {
        sites: Vec<Site>,
        conn: Option<OpenConn>,
        step: usize,
        opened: Vec<(String, u16)>,
        requests: Vec<String>,
        closes: usize,
    }

    impl MemTunnel {
        fn new(sites: Vec<Site>) -> Self {
            Self {
                sites,
                conn: None,
                step: usize::MAX,
                opened: Vec::new(),
                requests: Vec::new(),
                closes: 0,
            }
        }

        fn one(response: &[u8]) -> Self {
            let response = response.to_vec();
            Self::new(vec![plain_site("example.test", move |_| response.clone())])
        }
    }

    fn plain_site(host: &'static str, handler: impl Fn(&str) -> Vec<u8> + 'static) -> Site {
        Site {
            host,
            port: 80,
            tls: None,
            handler: Box::new(handler),
        }
    }

    impl Tunnel for MemTunnel {
        fn open(&mut self, host: &str, port: u16) -> Result<(), FetchError> {
            self.opened.push((host.to_owned(), port));
            let site = self
                .sites
                .iter()
                .position(|s| s.host == host && s.port == port)
                .ok_or_else(|| FetchError::Connect {
                    host: host.into(),
                    port,
                    reason: "no such test site".into(),
                })?;
            let server = self.sites[site]
                .tls
                .clone()
                .map(|c| ServerConnection::new(c).unwrap());
            self.conn = Some(OpenConn {
                site,
                server,
                request: Vec::new(),
                out: Vec::new(),
                responded: false,
            });
            Ok(())
        }

        fn send(&mut self, data: &[u8]) -> Result<(), FetchError> {
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| FetchError::Link("not open".into()))?;
            match conn.server.as_mut() {
                None => conn.request.extend_from_slice(data),
                Some(server) => {
                    let mut rest = data;
                    while !rest.is_empty() {
                        server.read_tls(&mut rest).unwrap();
                        if server.process_new_packets().is_err() {
                            break;
                        }
                        let _ = server.reader().read_to_end(&mut conn.request);
                    }
                }
            }
            if !conn.responded {
                if let Some(end) = head_end(&conn.request, 0) {
                    let head = String::from_utf8_lossy(&conn.request[..end]).into_owned();
                    let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
                    let response = (self.sites[conn.site].handler)(&target);
                    match conn.server.as_mut() {
                        None => conn.out.extend_from_slice(&response),
                        Some(server) => {
                            server.writer().write_all(&response).unwrap();
                            server.send_close_notify();
                        }
                    }
                    conn.responded = true;
                    self.requests.push(head);
                }
            }
            if let Some(server) = conn.server.as_mut() {
                while server.wants_write() {
                    server.write_tls(&mut conn.out).unwrap();
                }
            }
            Ok(())
        }

        fn recv(&mut self, max: u32) -> Result<Vec<u8>, FetchError> {
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| FetchError::Link("not open".into()))?;
            let n = conn
                .out
                .len()
                .min(self.step)
                .min(usize::try_from(max).unwrap());
            Ok(conn.out.drain(..n).collect())
        }

        fn close(&mut self) {
            self.conn = None;
            self.closes += 1;
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn limits() -> FetchLimits {
        FetchLimits::until(Instant::now() + Duration::from_secs(30))
    }

    fn trust() -> Trust {
        Trust::new(NOW, Vec::new())
    }

    fn get(tunnel: &mut MemTunnel, uri: &str) -> Result<Fetched, FetchError> {
        fetch(tunnel, uri, &trust(), &limits())
    }

    /// A CA and a server config for `host` signed by it.
    fn tls_server(host: &str) -> (Vec<u8>, Arc<rustls::ServerConfig>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "fetch unit test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![host.to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        (ca.der().to_vec(), Arc::new(config))
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn redirect(status: &str, location: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n")
            .into_bytes()
    }

    #[test]
    fn url_parse_keeps_scheme_host_port_target_and_drops_fragment() {
        let url = Url::parse("HTTPS://Example.COM:8443/a/b?x=1#frag").unwrap();

        assert!(url.is_https());
        assert_eq!(url.host(), "example.com");
        assert_eq!(url.port(), 8443);
        assert_eq!(url.target(), "/a/b?x=1");
        assert_eq!(url.to_string(), "https://example.com:8443/a/b?x=1");
    }

    #[test]
    fn url_parse_fills_default_ports_paths_and_ip_literals() {
        let cases = [
            (
                "http://example.com",
                "example.com",
                80,
                "/",
                "http://example.com/",
            ),
            (
                "https://example.com?q",
                "example.com",
                443,
                "/?q",
                "https://example.com/?q",
            ),
            (
                "https://example.com:443/",
                "example.com",
                443,
                "/",
                "https://example.com/",
            ),
            ("https://[::1]/x", "::1", 443, "/x", "https://[::1]/x"),
            (
                "http://[2001:db8::1]:8080",
                "2001:db8::1",
                8080,
                "/",
                "http://[2001:db8::1]:8080/",
            ),
            (
                "http://192.0.2.7:81/p",
                "192.0.2.7",
                81,
                "/p",
                "http://192.0.2.7:81/p",
            ),
            ("  https://a.test/  ", "a.test", 443, "/", "https://a.test/"),
        ];
        for (input, host, port, target, shown) in cases {
            let url = Url::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (
                    url.host().as_str(),
                    url.port(),
                    url.target(),
                    url.to_string().as_str()
                ),
                (host, port, target, shown),
                "{input}"
            );
        }
    }

    #[test]
    fn url_parse_refuses_links_the_guest_must_not_fetch() {
        let cases = [
            ("ftp://example.com/", "scheme \"ftp\" is not http or https"),
            ("javascript:alert(1)", "scheme \"javascript\""),
            ("file:///etc/passwd", "scheme \"file\""),
            ("example.com/path", "no scheme"),
            ("https:example.com", "no host"),
            ("https://", "no host"),
            ("https://user:pw@example.com/", "user name or password"),
            ("https://example.com@evil.test/", "user name or password"),
            ("https://exa mple.com/", "holds ' '"),
            ("https://example.com:0/", "port \"0\""),
            ("https://example.com:99999/", "port \"99999\""),
            ("https://example.com:8o/", "port \"8o\""),
            ("https://[::1/", "no closing ]"),
            ("https://[fe80::1%25eth0]/", "zone"),
            ("https://[not-ip]/", "not an IPv6 address"),
            ("https://b\u{fc}cher.example/", "punycode"),
            ("https://a..b/", "empty or over-long label"),
            ("https://1.2.3/", "not a dotted-quad"),
            ("https://0x7f.1/", "not a dotted-quad"),
            ("https://a.test/\r\nX-Evil: 1", "control characters"),
        ];
        for (input, expected) in cases {
            let err = Url::parse(input).expect_err(input).to_string();
            assert!(err.contains(expected), "{input}: {err}");
            assert!(err.contains("is not a link the guest can fetch"), "{err}");
        }
    }

    #[test]
    fn url_target_is_encoded_and_dot_segments_removed() {
        let url = Url::parse("http://h.test/a/../b c/./d\u{e9}?q=<x>&r=\"").unwrap();

        assert_eq!(url.target(), "/b%20c/d%C3%A9?q=%3Cx%3E&r=%22");
    }

    #[test]
    fn relative_locations_resolve_against_the_current_url() {
        let base = Url::parse("https://h.test/dir/page?x=1").unwrap();
        let cases = [
            ("other", "https://h.test/dir/other"),
            ("../up", "https://h.test/up"),
            ("./same/./x", "https://h.test/dir/same/x"),
            ("/abs?y=2#frag", "https://h.test/abs?y=2"),
            ("?y=2", "https://h.test/dir/page?y=2"),
            ("", "https://h.test/dir/page?x=1"),
            ("//other.test:8443/p", "https://other.test:8443/p"),
            ("http://plain.test/", "http://plain.test/"),
        ];
        for (location, expected) in cases {
            assert_eq!(
                base.join(location).unwrap().to_string(),
                expected,
                "{location}"
            );
        }
        assert!(base.join("mailto:x@y").is_err());
    }

    #[test]
    fn file_name_is_the_last_plain_path_segment() {
        let name = |u: &str| Url::parse(u).unwrap().file_name();

        assert_eq!(
            name("https://h/docs/report.pdf?x=1").as_deref(),
            Some("report.pdf")
        );
        assert_eq!(name("https://h/a%20b.txt").as_deref(), Some("a b.txt"));
        assert_eq!(name("https://h/dir/"), None);
        assert_eq!(name("https://h/x%2Fy"), None);
        assert_eq!(name("https://h/x%00y"), None);
    }

    #[test]
    fn content_length_body_is_read_exactly_with_the_expected_request() {
        let mut response = ok("<p>hello</p>");
        response.extend_from_slice(b"junk after the body");
        let mut tunnel = MemTunnel::one(&response);
        tunnel.step = 3;

        let got = get(&mut tunnel, "http://example.test/page?q=1").unwrap();

        assert_eq!(got.body, b"<p>hello</p>");
        assert_eq!(got.status, 200);
        assert_eq!(got.content_type.as_deref(), Some("text/html"));
        assert_eq!(got.tls, None);
        assert_eq!(got.final_uri, "http://example.test/page?q=1");
        assert_eq!(tunnel.opened, [("example.test".to_string(), 80)]);
        assert_eq!(tunnel.closes, 1);
        assert_eq!(
            tunnel.requests,
            [format!(
                "GET /page?q=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: vitrine-shim/{}\r\n\
                 Accept: */*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )]
        );
    }

    #[test]
    fn chunked_body_is_reassembled_across_small_reads() {
        let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n";
        let mut tunnel = MemTunnel::one(response);
        tunnel.step = 2;

        let got = get(&mut tunnel, "http://example.test/").unwrap();

        assert_eq!(got.body, b"hello 0123456789");
        assert_eq!(got.content_type, None);
    }

    #[test]
    fn hostile_chunk_framing_fails_with_a_clear_error() {
        let long_line = format!("{}\r\n", "1".repeat(5000));
        let cases: [(&str, &str); 7] = [
            (
                "fffffffffffffffff\r\n",
                "chunk size \"fffffffffffffffff\" is not hex",
            ),
            ("ffffffffffffffff\r\n", "larger than 33554432 bytes"),
            ("-5\r\n", "chunk size \"-5\" is not hex"),
            ("0x10\r\n", "chunk size \"0x10\" is not hex"),
            (
                "5\r\nhelloXX0\r\n\r\n",
                "chunk data is not followed by CRLF",
            ),
            (
                "10\r\nshort",
                "closed the connection early: in a chunk of 16 bytes",
            ),
            (&long_line, "chunk size line is longer than 4096 bytes"),
        ];
        for (chunks, expected) in cases {
            let mut response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            response.extend_from_slice(chunks.as_bytes());
            let mut tunnel = MemTunnel::one(&response);

            let err = get(&mut tunnel, "http://example.test/")
                .unwrap_err()
                .to_string();

            assert!(err.contains(expected), "{chunks:?}: {err}");
        }
    }

    #[test]
    fn body_without_length_is_read_until_close() {
        let mut tunnel =
            MemTunnel::one(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it");
        tunnel.step = 4;

        let got = get(&mut tunnel, "http://example.test/").unwrap();

        assert_eq!(got.body, b"all of it");
        assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn short_content_length_body_is_reported_as_truncated() {
        let mut tunnel = MemTunnel::one(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this");

        let err = get(&mut tunnel, "http://example.test/x").unwrap_err();

        assert_eq!(
            err.to_string(),
            "http://example.test/x closed the connection early: after 9 of 100 body bytes"
        );
    }

    #[test]
    fn headers_over_the_cap_fail() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..2000 {
            big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(30)).as_bytes());
        }
        big.extend_from_slice(b"\r\nbody");
        let endless = [b"HTTP/1.1 200 OK\r\n".as_slice(), &[b'a'; 100_000]].concat();
        for response in [big, endless] {
            let mut tunnel = MemTunnel::one(&response);

            let err = get(&mut tunnel, "http://example.test/").unwrap_err();

            assert_eq!(
                err.to_string(),
                "response headers from http://example.test/ are larger than 65536 bytes"
            );
        }
    }

    #[test]
    fn bodies_over_the_cap_fail_for_every_framing() {
        let cases = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n".to_vec(),
            [b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), &[b'x'; 1001]].concat(),
            [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n".as_slice(),
                &[b'x'; 1000],
                b"\r\n2\r\nxx\r\n0\r\n\r\n",
            ]
            .concat(),
        ];
        for response in cases {
            let mut tunnel = MemTunnel::one(&response);
            let limits = FetchLimits {
                max_body_bytes: 1000,
                ..limits()
            };

            let err = fetch(&mut tunnel, "http://example.test/", &trust(), &limits).unwrap_err();

            assert_eq!(
                err.to_string(),
                "response body from http://example.test/ is larger than 1000 bytes"
            );
        }
    }

    fn counting_site() -> MemTunnel {
        MemTunnel::new(vec![plain_site("example.test", |target| {
            let n: u32 = target.trim_start_matches('/').parse().unwrap();
            if n == 5 {
                ok("five")
            } else {
                redirect("302 Found", &format!("/{}", n + 1))
            }
        })])
    }

    #[test]
    fn redirects_up_to_the_limit_are_followed() {
        let mut tunnel = counting_site();

        let got = get(&mut tunnel, "http://example.test/0").unwrap();

        assert_eq!(got.body, b"five");
        assert_eq!(got.final_uri, "http://example.test/5");
        assert_eq!(tunnel.requests.len(), 6);
        assert_eq!(tunnel.closes, 6);
    }

    #[test]
    fn redirects_past_the_limit_fail() {
        let mut tunnel = counting_site();
        let limits = FetchLimits {
            max_redirects: 4,
            ..limits()
        };

        let err = fetch(&mut tunnel, "http://example.test/0", &trust(), &limits).unwrap_err();

        assert_eq!(
            err.to_string(),
            "more than 4 redirects; the last pointed to http://example.test/5"
        );
        assert_eq!(tunnel.requests.len(), 5);
    }

    #[test]
    fn relative_location_is_resolved_against_the_request() {
        let mut tunnel = MemTunnel::new(vec![plain_site("example.test", |target| match target {
            "/dir/a" => redirect("301 Moved Permanently", "b?x=1#top"),
            "/dir/b?x=1" => ok("landed"),
            other => panic!("unexpected {other}"),
        })]);

        let got = get(&mut tunnel, "http://example.test/dir/a").unwrap();

        assert_eq!(got.body, b"landed");
        assert_eq!(got.final_uri, "http://example.test/dir/b?x=1");
    }

    #[test]
    fn tls_site_in_memory_serves_over_tls13() {
        let (ca, server) = tls_server("secure.test");
        let mut tunnel = MemTunnel::new(vec![Site {
            host: "secure.test",
            port: 443,
            tls: Some(server),
            handler: Box::new(|_| ok("secret")),
        }]);

        let got = fetch(
            &mut tunnel,
            "https://secure.test/",
            &Trust::new(NOW, vec![ca]),
            &limits(),
        )
        .unwrap();

        assert_eq!(got.body, b"secret");
        assert!(
            got.tls.as_deref().unwrap().starts_with("TLSv1_3 TLS13_"),
            "{:?}",
            got.tls
        );
    }

    #[test]
    fn https_to_http_redirect_is_refused() {
        let (ca, server) = tls_server("secure.test");
        let mut tunnel = MemTunnel::new(vec![
            Site {
                host: "secure.test",
                port: 443,
                tls: Some(server),
                handler: Box::new(|_| redirect("302 Found", "http://plain.test/")),
            },
            plain_site("plain.test", |_| ok("should not be fetched")),
        ]);

        let err = fetch(
            &mut tunnel,
            "https://secure.test/start",
            &Trust::new(NOW, vec![ca]),
            &limits(),
        )
        .unwrap_err();

        assert_eq!(
            err.to_string(),
            "redirect from https://secure.test/start to http://plain.test/ refused: \
             it leaves https for plain http"
        );
        assert_eq!(tunnel.opened, [("secure.test".to_string(), 443)]);
    }

    #[test]
    fn non_2xx_final_status_names_status_and_url() {
        let mut tunnel = MemTunnel::one(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop");

        let err = get(&mut tunnel, "http://example.test/missing").unwrap_err();

        assert_eq!(
            err.to_string(),
            "HTTP 404 Not Found from http://example.test/missing"
        );
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut tunnel = MemTunnel::one(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        );

        let got = get(&mut tunnel, "http://example.test/").unwrap();

        assert_eq!(got.body, b"ok");
    }

    #[test]
    fn malformed_responses_fail_with_what_is_wrong() {
        let cases: [(&[u8], &str); 7] = [
            (
                b"SSH-2.0-OpenSSH\r\n\r\n",
                "status line \"SSH-2.0-OpenSSH\" is not HTTP/1.x",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "is not HTTP/1.x"),
            (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "has no colon"),
            (b"HTTP/1.1 200 OK\r\nA: 1\r\n folded\r\n\r\n", "folded"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                "conflicting Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "transfer coding \"gzip, chunked\" is not supported",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\n\r\n",
                "br-encoded",
            ),
        ];
        for (response, expected) in cases {
            let mut tunnel = MemTunnel::one(response);

            let err = get(&mut tunnel, "http://example.test/")
                .unwrap_err()
                .to_string();

            assert!(
                err.starts_with("bad HTTP response from http://example.test/"),
                "{err}"
            );
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn empty_answer_and_refusal_read_clearly() {
        let mut empty = MemTunnel::one(b"");
        let mut nowhere = MemTunnel::new(Vec::new());

        let empty = get(&mut empty, "http://example.test/").unwrap_err();
        let nowhere = get(&mut nowhere, "http://example.test:8080/").unwrap_err();

        assert_eq!(
            empty.to_string(),
            "http://example.test/ closed the connection early: no response at all"
        );
        assert_eq!(
            nowhere.to_string(),
            "could not connect to example.test:8080: no such test site"
        );
    }

    #[test]
    fn a_passed_deadline_stops_the_fetch() {
        let mut tunnel = MemTunnel::one(&ok("late"));
        let limits = FetchLimits::until(Instant::now());

        let err = fetch(&mut tunnel, "http://example.test/", &trust(), &limits).unwrap_err();

        assert_eq!(err, FetchError::TimedOut);
    }

    #[test]
    fn utc_formats_unix_seconds_as_a_calendar_date() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    proptest::proptest! {
        #[test]
        fn any_response_bytes_end_in_a_result_not_a_panic(
            head in proptest::sample::select(vec![
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n",
                "HTTP/1.1 200 OK\r\n\r\n",
                "HTTP/1.1 302 Found\r\nLocation: ",
                "",
            ]),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            step in 1usize..64,
        ) {
            let response = [head.as_bytes(), &tail].concat();
            let mut tunnel = MemTunnel::one(&response);
            tunnel.step = step;
            let _ = get(&mut tunnel, "http://example.test/");
        }

        #[test]
        fn any_link_text_parses_or_fails_without_panic(text in "\\PC{0,80}") {
            let _ = Url::parse(&text);
            let _ = Url::parse(&format!("https://{text}"));
            let base = Url::parse("https://h.test/a/b").unwrap();
            let _ = base.join(&text);
        }
    }

    #[test]
    fn an_ipv6_endpoint_is_written_in_brackets() {
        let refused = FetchError::Refused {
            host: "::1".into(),
            port: 443,
            reason: "not allowed".into(),
        };

        assert_eq!(
            refused.to_string(),
            "the host's egress policy refused [::1]:443: not allowed"
        );
    }
}
