//! A link shown in a real browser tab: Chromium from the application disk,
//! its network only through the shim's proxy and the host's tunnel
//! streams. The first frame is the page after its load event; a live task
//! (a window shows it) then keeps the tab: the screencast brings damage,
//! the user's pointer and keys go back into the page.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::{chain, cut, failed, Agent, Event, Stop};
use crate::browser::cdp::Incoming;
use crate::browser::input;
use crate::browser::proxy::{self, ProxyEvent};
use crate::browser::{Engine, Session};
use crate::protocol::{
    EgressReply, GuestMessage, HostMessage, InputEvent, LogLevel, PixelBudget, Rect, StreamData,
    StreamId, StreamReply, Task, TaskStatus, MAX_STREAMS,
};
use crate::raster::Raster;
use crate::sandbox::{ChildLimits, Identity};

/// The viewport when the profile's page size allows it.
const VIEWPORT: (u32, u32) = (1024, 768);
/// How long a poll may hold the host: short, since the host forwards the
/// user's input only between guest messages.
const POLL_WAIT_MS: u32 = 25;
/// The wait for an event between two polls.
const TICK: Duration = Duration::from_millis(10);
/// Largest HTML file the browser lays out (it goes in as a `data:` URL,
/// and Chromium caps a URL at 2 MiB).
const MAX_HTML_FILE: usize = 1536 * 1024;
/// How long an aborted navigation waits for the download that explains it.
const DOWNLOAD_GRACE: Duration = Duration::from_secs(3);

/// One browser connection through the proxy.
struct Conn {
    stream: StreamId,
    client: TcpStream,
    target: String,
    /// The host answered `Connected`.
    open: bool,
    /// Bytes from the browser before the host answered.
    held: Vec<u8>,
    /// Plain http: the request head, sent once open.
    first: Option<Vec<u8>>,
}

/// The browser tab of one task.
pub(super) struct Tab {
    task: u64,
    session: Session,
    viewport: (u32, u32),
    shown: Option<Raster>,
    pointer: (u32, u32),
    conns: HashMap<u64, Conn>,
    by_stream: BTreeMap<StreamId, u64>,
    poll_out: bool,
    /// Calls whose replies matter, by id.
    calls: HashMap<u64, Call>,
    /// The last refusal of the host's egress policy, for the error page.
    refused: Option<String>,
    /// The first navigation failed: why.
    nav_error: Option<String>,
    /// The renderer crashed.
    crashed: bool,
    location: (String, String),
    screencast: bool,
    frames_sent: u32,
    /// A download began (the link is a file, not a page).
    downloading: bool,
    /// The navigation was aborted, which a download that begins after it
    /// explains: when, and why.
    aborted: Option<(Instant, String)>,
    /// A download finished: the file, in the browser's download folder.
    pub(super) downloaded: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Navigate,
    Screenshot,
    ErrorPage,
    /// `document.title` of the page at this address.
    Title(String),
}

/// What the first part of a task waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// A first frame of the loaded page (or of its error page).
    FirstFrame,
    /// Nothing: serve the live tab until `Shutdown`.
    Live,
}

/// A browser started before `Ready`, with its proxy: a template's clones
/// find it running and idle on a blank tab.
pub(super) struct Preloaded {
    session: Session,
    reader: crate::browser::Messages,
}

/// The preloaded browser's time: it idles in the template for as long as
/// the template is kept.
const PRELOAD_CPU: Duration = Duration::from_secs(3600);

impl Agent {
    /// Starts the browser and its proxy before `Ready`. A failure is
    /// logged: a task then starts its own.
    pub(super) fn preload_browser(&mut self) {
        let Some(engine) = Engine::find(self.config.in_guest, &self.config.work_root) else {
            eprintln!(
                "vitrine-shim: preload: {}",
                crate::browser::BrowserError::Missing
            );
            return;
        };
        let started = Instant::now();
        let far = started + Duration::from_secs(365 * 24 * 3600);
        match self.start_browser(&engine, VIEWPORT, ChildLimits::browser(PRELOAD_CPU), far) {
            Ok((session, reader)) => {
                eprintln!(
                    "vitrine-shim: preload: the browser is up and idle after {} ms",
                    started.elapsed().as_millis()
                );
                self.browser = Some(Preloaded { session, reader });
            }
            Err(e) => eprintln!("vitrine-shim: preload: {e}"),
        }
    }

    /// Starts the browser's proxy, then the browser with it as its only
    /// route out.
    fn start_browser(
        &self,
        engine: &Engine,
        viewport: (u32, u32),
        limits: ChildLimits,
        deadline: Instant,
    ) -> Result<(Session, crate::browser::Messages), String> {
        let events = self.events_tx.clone();
        let port = proxy::start(move |ev| events.send(Event::Proxy(ev)).is_ok())
            .map_err(|e| format!("the browser's proxy: {e}"))?;
        engine
            .start(
                self.browser_identity(),
                Some(port),
                viewport,
                limits,
                deadline,
            )
            .map_err(|e| chain(&e))
    }

    /// Shows `uri` in a browser tab; returns after its first frame, with
    /// the tab kept in `tab` for a live task.
    pub(super) fn open_in_browser(
        &mut self,
        task: &Task,
        uri: &str,
        extra_roots: &[Vec<u8>],
        deadline: Instant,
        budget: &mut PixelBudget,
    ) -> Result<Tab, Stop> {
        let engine = Engine::find(self.config.in_guest, &self.config.work_root)
            .ok_or_else(|| failed(crate::browser::BrowserError::Missing))?;
        let identity = self.browser_identity();
        engine
            .trust_roots(identity, extra_roots)
            .map_err(|e| failed(chain(&e)))?;
        let viewport = (
            VIEWPORT.0.min(task.limits.max_width),
            VIEWPORT.1.min(task.limits.max_height),
        );
        let started = Instant::now();
        let (session, reader, how) = match self.browser.take() {
            Some(p) => (p.session, p.reader, "preloaded in the template"),
            None => {
                let limits =
                    ChildLimits::browser(deadline.saturating_duration_since(Instant::now()));
                let (session, reader) = self
                    .start_browser(&engine, viewport, limits, deadline)
                    .map_err(failed)?;
                (session, reader, "started for the task")
            }
        };
        let events = self.events_tx.clone();
        reader.forward(move |msg| events.send(Event::Cdp(msg)).is_ok());
        self.log(
            LogLevel::Info,
            format!(
                "browser: {how}, ready in {} ms; opening {uri}",
                started.elapsed().as_millis()
            ),
        )?;
        let mut tab = Tab {
            task: task.id,
            session,
            viewport,
            shown: None,
            pointer: (viewport.0 / 2, viewport.1 / 2),
            conns: HashMap::new(),
            by_stream: BTreeMap::new(),
            poll_out: false,
            calls: HashMap::new(),
            refused: None,
            nav_error: None,
            crashed: false,
            location: (String::new(), String::new()),
            screencast: false,
            frames_sent: 0,
            downloading: false,
            aborted: None,
            downloaded: None,
        };
        if viewport != VIEWPORT {
            tab.set_viewport(viewport)?;
        }
        let id = tab
            .session
            .call("Page.navigate", json!({ "url": uri }))
            .map_err(|e| failed(chain(&e)))?;
        tab.calls.insert(id, Call::Navigate);
        let loaded_at = Instant::now();
        match self.pump(&mut tab, Goal::FirstFrame, deadline, budget) {
            Ok(()) => {}
            Err(stop) => {
                tab.session.kill();
                return Err(stop);
            }
        }
        self.log(
            LogLevel::Info,
            format!(
                "browser: first frame of {} after {} ms",
                tab.location.0,
                loaded_at.elapsed().as_millis()
            ),
        )?;
        if let Some(why) = tab.nav_error.clone() {
            tab.session.kill();
            return Err(failed(why));
        }
        Ok(tab)
    }

    /// Lays out an HTML file with the browser, offline (no route out at
    /// all; the file goes in as a `data:` URL, so its relative references
    /// resolve to nothing and `file:` ones are refused to it), and prints
    /// it to a PDF that renders as any PDF does.
    pub(super) fn html_to_pdf(
        &mut self,
        input: &Path,
        work: &Path,
        deadline: Instant,
    ) -> Result<PathBuf, Stop> {
        let engine = Engine::find(self.config.in_guest, &self.config.work_root)
            .ok_or_else(|| failed(crate::browser::BrowserError::Missing))?;
        let html = std::fs::read(input).map_err(failed)?;
        if html.len() > MAX_HTML_FILE {
            return Err(failed(format!(
                "an HTML file of {} bytes; the browser takes at most {MAX_HTML_FILE}",
                html.len()
            )));
        }
        let url = format!(
            "data:text/html;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&html)
        );
        let left = deadline.saturating_duration_since(Instant::now());
        let (mut session, mut reader) = engine
            .start(
                self.browser_identity(),
                None,
                VIEWPORT,
                ChildLimits::browser(left),
                deadline,
            )
            .map_err(|e| failed(chain(&e)))?;
        let result = (|| {
            let nav = session
                .call("Page.navigate", json!({ "url": url }))
                .map_err(|e| failed(chain(&e)))?;
            let mut print = None;
            loop {
                if Instant::now() >= deadline {
                    return Err(Stop::Task(TaskStatus::TimedOut));
                }
                let Some(msg) = reader.next_until(deadline) else {
                    return Err(Stop::Task(TaskStatus::TimedOut));
                };
                match msg.map_err(|e| failed(chain(&e)))? {
                    None => {
                        return Err(failed(format!("the browser ended: {}", session.log_tail())))
                    }
                    Some(Incoming::Event { method, .. }) if method == "Page.loadEventFired" => {
                        if print.is_none() {
                            print = Some(
                                session
                                    .call("Page.printToPDF", json!({ "printBackground": true }))
                                    .map_err(|e| failed(chain(&e)))?,
                            );
                        }
                    }
                    Some(Incoming::Event { method, .. }) if method == "Inspector.targetCrashed" => {
                        return Err(failed("the browser's renderer crashed on this HTML"))
                    }
                    Some(Incoming::Reply { id, result }) if Some(id) == print => {
                        let v = result.map_err(|e| failed(format!("printing the page: {e}")))?;
                        let data = v["data"].as_str().unwrap_or_default();
                        let pdf = base64::engine::general_purpose::STANDARD
                            .decode(data)
                            .map_err(|e| failed(format!("the printed page: {e}")))?;
                        let path = work.join("html.pdf");
                        std::fs::write(&path, pdf).map_err(failed)?;
                        return Ok(path);
                    }
                    Some(Incoming::Reply { id, result: Err(e) }) if id == nav => {
                        return Err(failed(format!("the HTML did not load: {e}")))
                    }
                    Some(_) => {}
                }
            }
        })();
        session.kill();
        result
    }

    /// Serves a live tab after `Done` until `Shutdown` or the host goes.
    pub(super) fn serve_live_tab(
        &mut self,
        tab: &mut Tab,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        tab.start_screencast()?;
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        let result = self.pump(tab, Goal::Live, far, budget);
        tab.session.kill();
        result
    }

    /// Who the browser runs as: a uid of its own, like LibreOffice's, since
    /// its threads count against the process limit.
    fn browser_identity(&self) -> Identity {
        Identity::for_sandbox(self.config.sandbox_uid.saturating_add(2))
    }

    fn pump(
        &mut self,
        tab: &mut Tab,
        goal: Goal,
        deadline: Instant,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        loop {
            if goal == Goal::FirstFrame && (tab.frames_sent > 0 || tab.downloaded.is_some()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Stop::Task(TaskStatus::TimedOut));
            }
            if let Some((at, why)) = tab.aborted.clone() {
                if tab.downloading {
                    tab.aborted = None;
                } else if at.elapsed() >= DOWNLOAD_GRACE {
                    tab.aborted = None;
                    tab.nav_error = Some(why.clone());
                    self.show_error_page(tab, &why)?;
                }
            }
            if tab.crashed {
                return Err(failed(
                    "the page's renderer crashed: it ran out of memory or hit a limit",
                ));
            }
            let want_poll = !tab.conns.is_empty() || goal == Goal::Live;
            if want_poll && !tab.poll_out {
                self.send(GuestMessage::StreamPoll {
                    wait_ms: POLL_WAIT_MS,
                })?;
                tab.poll_out = true;
            }
            let event = match self.events.recv_timeout(TICK) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Err(Stop::Shutdown),
            };
            match event {
                Event::Host(Ok(Some(msg))) => self.web_host(tab, msg)?,
                Event::Host(Ok(None)) => return Err(Stop::Shutdown),
                Event::Host(Err(e)) => return Err(Stop::Link(e.into())),
                Event::Cdp(Ok(Some(msg))) => self.web_cdp(tab, msg, budget)?,
                Event::Cdp(Ok(None)) => {
                    return Err(failed(format!(
                        "the browser ended: {}",
                        tab.session.log_tail()
                    )))
                }
                Event::Cdp(Err(e)) => return Err(failed(chain(&e))),
                Event::Proxy(ev) => self.web_proxy(tab, ev)?,
                Event::PtyOutput(_) | Event::PtyClosed => {}
            }
        }
    }

    fn web_host(&mut self, tab: &mut Tab, msg: HostMessage) -> Result<(), Stop> {
        match msg {
            HostMessage::Stream(StreamReply::Opened { stream, outcome }) => {
                self.stream_opened(tab, stream, outcome)
            }
            HostMessage::Stream(StreamReply::Data(list)) => {
                tab.poll_out = false;
                for data in list {
                    stream_data(tab, data);
                }
                Ok(())
            }
            HostMessage::Input(event) => self.web_input(tab, &event),
            HostMessage::Shutdown => Err(Stop::Shutdown),
            other => Ok(self.log(
                LogLevel::Warn,
                format!("ignored in a browser task: {other:?}"),
            )?),
        }
    }

    fn stream_opened(
        &mut self,
        tab: &mut Tab,
        stream: StreamId,
        outcome: EgressReply,
    ) -> Result<(), Stop> {
        let Some(&conn_id) = tab.by_stream.get(&stream) else {
            return Ok(());
        };
        let Some(conn) = tab.conns.get_mut(&conn_id) else {
            return Ok(());
        };
        match outcome {
            EgressReply::Connected => {
                conn.open = true;
                let mut out = conn.first.take().unwrap_or_default();
                if out.is_empty() && proxy::accept(&mut conn.client).is_err() {
                    return self.close_conn(tab, conn_id);
                }
                out.append(&mut conn.held);
                if !out.is_empty() {
                    self.send(GuestMessage::StreamSend { stream, data: out })?;
                }
                Ok(())
            }
            EgressReply::Refused(why) | EgressReply::Failed(why) => {
                let why = format!("{}: {why}", conn.target);
                proxy::refuse(&mut conn.client, &why);
                self.log(LogLevel::Info, format!("browser: {why}"))?;
                tab.refused = Some(why);
                tab.conns.remove(&conn_id);
                tab.by_stream.remove(&stream);
                Ok(())
            }
            EgressReply::Data(_) => Ok(()),
        }
    }

    fn web_proxy(&mut self, tab: &mut Tab, ev: ProxyEvent) -> Result<(), Stop> {
        match ev {
            ProxyEvent::Open {
                conn,
                host,
                port,
                mut client,
                first,
            } => {
                let Some(stream) = (0..=MAX_STREAMS).find(|s| !tab.by_stream.contains_key(s))
                else {
                    proxy::refuse(&mut client, "too many connections at once");
                    return Ok(());
                };
                let target = format!("{host}:{port}");
                tab.by_stream.insert(stream, conn);
                tab.conns.insert(
                    conn,
                    Conn {
                        stream,
                        client,
                        target,
                        open: false,
                        held: Vec::new(),
                        first,
                    },
                );
                self.send(GuestMessage::StreamOpen { stream, host, port })?;
            }
            ProxyEvent::Data { conn, data } => {
                let Some(c) = tab.conns.get_mut(&conn) else {
                    return Ok(());
                };
                if c.open {
                    let stream = c.stream;
                    for piece in data.chunks(crate::protocol::MAX_CHUNK_BYTES) {
                        self.send(GuestMessage::StreamSend {
                            stream,
                            data: piece.to_vec(),
                        })?;
                    }
                } else {
                    c.held.extend_from_slice(&data);
                }
            }
            ProxyEvent::Closed { conn } => self.close_conn(tab, conn)?,
        }
        Ok(())
    }

    fn close_conn(&mut self, tab: &mut Tab, conn: u64) -> Result<(), Stop> {
        if let Some(c) = tab.conns.remove(&conn) {
            let _ = c.client.shutdown(Shutdown::Both);
            tab.by_stream.remove(&c.stream);
            self.send(GuestMessage::StreamClose { stream: c.stream })?;
        }
        Ok(())
    }

    fn web_cdp(
        &mut self,
        tab: &mut Tab,
        msg: Incoming,
        budget: &mut PixelBudget,
    ) -> Result<(), Stop> {
        match msg {
            Incoming::Reply { id, result } => match (tab.calls.remove(&id), result) {
                (Some(Call::Navigate), Ok(v)) => {
                    // A file, not a page: the download carries it.
                    let err = v.get("errorText").and_then(Value::as_str);
                    if let (Some(err), false) = (err, tab.downloading) {
                        let why = match &tab.refused {
                            Some(r) => format!("the page did not load ({err}): {r}"),
                            None => format!("the page did not load: {err}"),
                        };
                        if err == "net::ERR_ABORTED" {
                            tab.aborted = Some((Instant::now(), why));
                        } else {
                            tab.nav_error = Some(why.clone());
                            self.show_error_page(tab, &why)?;
                        }
                    }
                }
                (Some(Call::Screenshot), Ok(v)) => {
                    let data = v.get("data").and_then(Value::as_str).unwrap_or_default();
                    self.show_png(tab, data, budget)?;
                }
                (Some(Call::ErrorPage), Ok(_)) => self.screenshot(tab)?,
                (Some(Call::Title(url)), Ok(v)) => {
                    // Only for the page it was asked of (a later navigation
                    // has its own), and never for a page with no address to
                    // show (an HTML file, laid out from a data: URL).
                    if !url.is_empty() && url == tab.location.0 {
                        let title = v["result"]["value"].as_str().unwrap_or_default();
                        self.set_location(tab, url, title.to_owned())?;
                    }
                }
                (Some(call), Err(e)) => {
                    self.log(LogLevel::Warn, format!("browser: {call:?}: {e}"))?;
                    if call == Call::Navigate {
                        tab.nav_error = Some(format!("the page did not load: {e}"));
                        self.show_error_page(tab, &format!("the page did not load: {e}"))?;
                    }
                }
                (None, _) => {}
            },
            Incoming::Event { method, params, .. } => match method.as_str() {
                // Live, the screencast brings the loaded page.
                "Page.loadEventFired" if !tab.screencast => self.screenshot(tab)?,
                "Page.frameNavigated" => {
                    let frame = &params["frame"];
                    if frame.get("parentId").is_none() {
                        let url = frame["url"].as_str().unwrap_or_default().to_owned();
                        if let Some(unreachable) =
                            frame.get("unreachableUrl").and_then(Value::as_str)
                        {
                            let why = match &tab.refused {
                                Some(r) => format!("{unreachable} was not loaded: {r}"),
                                None => format!("{unreachable} could not be loaded"),
                            };
                            if tab.frames_sent > 0 {
                                self.show_error_page(tab, &why)?;
                            }
                        } else if !url.starts_with("data:") {
                            // A new page: its title comes with its DOM.
                            self.set_location(tab, url, String::new())?;
                        }
                    }
                }
                "Page.domContentEventFired" => {
                    if let Ok(id) = tab.session.call(
                        "Runtime.evaluate",
                        json!({ "expression": "document.title", "returnByValue": true }),
                    ) {
                        tab.calls.insert(id, Call::Title(tab.location.0.clone()));
                    }
                }
                "Page.screencastFrame" => {
                    if let Some(ack) = params.get("sessionId").and_then(Value::as_u64) {
                        let _ = tab
                            .session
                            .call("Page.screencastFrameAck", json!({ "sessionId": ack }));
                    }
                    let data = params["data"].as_str().unwrap_or_default().to_owned();
                    self.show_png(tab, &data, budget)?;
                }
                "Inspector.targetCrashed" => tab.crashed = true,
                "Browser.downloadWillBegin" => {
                    tab.downloading = true;
                    let name = params["suggestedFilename"].as_str().unwrap_or_default();
                    self.log(LogLevel::Info, format!("browser: downloading {name}"))?;
                }
                "Browser.downloadProgress" => match params["state"].as_str() {
                    Some("completed") => {
                        let file = params["filePath"].as_str().map(PathBuf::from);
                        tab.downloaded = file.or_else(|| newest_file(&tab.session.downloads));
                    }
                    Some("canceled") => {
                        tab.downloading = false;
                        tab.nav_error = Some("the download was cancelled".into());
                        self.show_error_page(tab, "the download was cancelled")?;
                    }
                    _ => {}
                },
                "Page.javascriptDialogOpening" => {
                    let _ = tab
                        .session
                        .call("Page.handleJavaScriptDialog", json!({ "accept": false }));
                }
                _ => {}
            },
        }
        Ok(())
    }

    fn set_location(
        &mut self,
        tab: &mut Tab,
        mut url: String,
        mut title: String,
    ) -> Result<(), Stop> {
        cut(&mut url, crate::protocol::MAX_URI_BYTES);
        cut(&mut title, crate::protocol::MAX_TEXT_BYTES);
        if (url.as_str(), title.as_str()) != (tab.location.0.as_str(), tab.location.1.as_str()) {
            tab.location = (url.clone(), title.clone());
            self.send(GuestMessage::Location { url, title })?;
        }
        Ok(())
    }

    fn screenshot(&mut self, tab: &mut Tab) -> Result<(), Stop> {
        let id = tab
            .session
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .map_err(|e| failed(chain(&e)))?;
        tab.calls.insert(id, Call::Screenshot);
        Ok(())
    }

    /// Replaces the tab's page with Vitrine's own, saying why the page is
    /// not there (a host the profile does not allow, a network error).
    fn show_error_page(&mut self, tab: &mut Tab, why: &str) -> Result<(), Stop> {
        let html = format!(
            "<!doctype html><html><head><meta charset=utf-8><title>Not loaded</title></head>\
             <body style=\"font:18px sans-serif;margin:48px;color:#222\">\
             <h1 style=\"color:#a40000\">Vitrine did not load this page</h1><p>{}</p>\
             <p>Only the hosts this profile allows are reachable from the sandbox.</p>\
             </body></html>",
            escape_html(why)
        );
        let id = tab
            .session
            .call(
                "Runtime.evaluate",
                json!({ "expression": format!("document.open();document.write({});document.close()",
                        serde_json::to_string(&html).unwrap_or_default()) }),
            )
            .map_err(|e| failed(chain(&e)))?;
        tab.calls.insert(id, Call::ErrorPage);
        Ok(())
    }

    /// Decodes a PNG of the viewport and sends what changed.
    fn show_png(&mut self, tab: &mut Tab, b64: &str, budget: &mut PixelBudget) -> Result<(), Stop> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| failed(format!("a screenshot that is not base64: {e}")))?;
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .map_err(|e| failed(format!("a screenshot that is not a PNG: {e}")))?
            .to_rgba8();
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 || w > tab.viewport.0.max(1) * 2 || h > tab.viewport.1.max(1) * 2 {
            return Ok(());
        }
        let raster = Raster::from_rgba(w, h, img.into_raw()).map_err(failed)?;
        let damage = match &tab.shown {
            Some(old) if old.width() == w && old.height() == h => {
                match changed_rect(old.rgba(), raster.rgba(), w, h) {
                    Some(r) => r,
                    None => return Ok(()),
                }
            }
            _ => Rect { x: 0, y: 0, w, h },
        };
        if tab.frames_sent == 0 {
            self.send(GuestMessage::PageInfo {
                task: tab.task,
                count: 1,
            })?;
        }
        self.send_raster(0, &raster, damage, budget)?;
        tab.frames_sent += 1;
        tab.shown = Some(raster);
        Ok(())
    }

    fn web_input(&mut self, tab: &mut Tab, event: &InputEvent) -> Result<(), Stop> {
        let call = |tab: &mut Tab, method: &str, params: Value| {
            tab.session
                .call(method, params)
                .map(|_| ())
                .map_err(|e| failed(chain(&e)))
        };
        match event {
            InputEvent::Resize { width, height } => {
                tab.set_viewport((*width, *height))?;
                if tab.screencast {
                    call(tab, "Page.stopScreencast", json!({}))?;
                    tab.start_screencast()?;
                }
                Ok(())
            }
            InputEvent::PageChange { .. } => Ok(()),
            _ => {
                for (method, params) in input::calls(event, &mut tab.pointer) {
                    call(tab, method, params)?;
                }
                Ok(())
            }
        }
    }
}

impl Tab {
    /// Ends the browser.
    pub(super) fn kill(&mut self) {
        self.session.kill();
    }

    /// Lays the page out for a viewport of this size.
    fn set_viewport(&mut self, viewport: (u32, u32)) -> Result<(), Stop> {
        self.viewport = viewport;
        self.session
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": viewport.0, "height": viewport.1,
                        "deviceScaleFactor": 1, "mobile": false }),
            )
            .map_err(|e| failed(chain(&e)))?;
        Ok(())
    }

    /// Has the browser send a frame of the viewport on each change.
    fn start_screencast(&mut self) -> Result<(), Stop> {
        self.session
            .call(
                "Page.startScreencast",
                json!({ "format": "png", "maxWidth": self.viewport.0,
                        "maxHeight": self.viewport.1, "everyNthFrame": 1 }),
            )
            .map_err(|e| failed(chain(&e)))?;
        self.screencast = true;
        Ok(())
    }
}

/// Hands the bytes of one poll answer to the browser's connection.
fn stream_data(tab: &mut Tab, data: StreamData) {
    let Some(&conn) = tab.by_stream.get(&data.stream) else {
        return;
    };
    let Some(c) = tab.conns.get_mut(&conn) else {
        return;
    };
    let broken = !data.data.is_empty() && c.client.write_all(&data.data).is_err();
    if data.end || broken {
        let _ = c.client.shutdown(Shutdown::Write);
        if broken {
            let _ = c.client.shutdown(Shutdown::Both);
        }
        tab.by_stream.remove(&data.stream);
        tab.conns.remove(&conn);
    }
}

/// The last file written in `dir`.
fn newest_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// The smallest rectangle holding every pixel that differs.
fn changed_rect(old: &[u8], new: &[u8], w: u32, h: u32) -> Option<Rect> {
    let row = usize::try_from(w).ok()? * 4;
    let (mut top, mut bottom, mut left, mut right) = (None, 0u32, w, 0u32);
    for y in 0..h {
        let at = usize::try_from(y).ok()? * row;
        let (a, b) = (old.get(at..at + row)?, new.get(at..at + row)?);
        if a == b {
            continue;
        }
        top.get_or_insert(y);
        bottom = y;
        let first = a.chunks(4).zip(b.chunks(4)).position(|(p, q)| p != q)?;
        let last = a.chunks(4).zip(b.chunks(4)).rposition(|(p, q)| p != q)?;
        left = left.min(u32::try_from(first).ok()?);
        right = right.max(u32::try_from(last).ok()?);
    }
    let top = top?;
    Some(Rect {
        x: left,
        y: top,
        w: right - left + 1,
        h: bottom - top + 1,
    })
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_TEXT_BYTES;

    #[test]
    fn the_changed_rect_bounds_every_changed_pixel() {
        let (w, h) = (6u32, 5u32);
        let old = vec![0u8; 6 * 5 * 4];
        let mut new = old.clone();
        assert_eq!(changed_rect(&old, &new, w, h), None);
        new[(w as usize + 4) * 4] = 9; // (4, 1)
        new[(3 * w as usize + 1) * 4 + 2] = 9; // (1, 3)
        assert_eq!(
            changed_rect(&old, &new, w, h),
            Some(Rect {
                x: 1,
                y: 1,
                w: 4,
                h: 3
            })
        );
    }

    #[test]
    fn cut_keeps_whole_characters_within_the_cap() {
        let mut title = "ab\u{e9}".to_owned(); // 'é' is two bytes, at 2..4
        cut(&mut title, 3);
        assert_eq!(title, "ab");
        let mut short = "abc".to_owned();
        cut(&mut short, 3);
        assert_eq!(short, "abc");
    }

    #[test]
    fn a_failure_reason_is_cut_between_characters() {
        // 'é' straddles the cap: a plain truncate there would panic.
        let reason = format!("{}\u{e9}tail", "x".repeat(MAX_TEXT_BYTES - 5));
        let Stop::Task(TaskStatus::Failed(text)) = failed(reason) else {
            panic!("not a failure");
        };
        assert_eq!(text, "x".repeat(MAX_TEXT_BYTES - 5));
    }

    #[test]
    fn error_pages_escape_what_they_quote() {
        assert_eq!(
            escape_html("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
    }
}
