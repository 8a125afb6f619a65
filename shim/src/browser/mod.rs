//! A real browser engine in the guest: Debian's `chromium-headless-shell`
//! from the application disk, driven over the DevTools protocol on a pipe.
//!
//! The VM is the sandbox, so Chromium runs without its own (`--no-sandbox`),
//! with the GPU off, as a uid of its own under the shim's limits. Its only
//! route out is [`proxy`], on the guest's loopback, whose every connection
//! is a tunnel stream the host's egress policy decides on.

pub mod cdp;
pub mod input;
pub mod proxy;

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::init::APP_DISK_MOUNT;
use crate::sandbox::{
    limited_command, tail_of, ChildLimits, ChildStdio, Identity, SandboxError, Supervised,
};
use cdp::{CdpError, Incoming, Reader, Writer};

/// Test hook: the Chromium a shim run as a local process uses.
pub const CHROMIUM_ENV: &str = "VITRINE_CHROMIUM";
/// The program on the application disk.
const DISK_CHROMIUM: &str = "chromium/chromium-headless-shell";
/// The disk's NSS tool, for a task's extra trust roots.
const DISK_CERTUTIL: &str = "bin/certutil";
/// The disk's fontconfig file.
const DISK_FONTS_CONF: &str = "fonts/fonts.conf";
/// The browser's log, in its home.
pub const LOG: &str = "chromium.log";
/// V8's heap cap, MiB: a page that allocates without end crashes its own
/// renderer there, long before the VM runs out of memory.
const JS_HEAP_MIB: u32 = 384;
/// Longest wait for the browser's first answers.
const START_WAIT: Duration = Duration::from_secs(120);

/// Why the browser could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// No Chromium on this VM.
    #[error("no browser engine on this VM's application disk ({DISK_CHROMIUM})")]
    Missing,
    /// Starting it failed.
    #[error("starting the browser")]
    Start(#[from] SandboxError),
    /// The pipe or a file.
    #[error("browser I/O")]
    Io(#[from] std::io::Error),
    /// The DevTools pipe broke.
    #[error("DevTools")]
    Cdp(#[from] CdpError),
    /// It ended or did not answer in time; the tail of its log.
    #[error("the browser did not start: {0}")]
    NoAnswer(String),
    /// A DevTools call failed.
    #[error("{method}: {error}")]
    Call {
        /// Method.
        method: String,
        /// The browser's error.
        error: String,
    },
    /// An extra trust root could not be added.
    #[error("adding a trust root: {0}")]
    Root(String),
}

/// Where Chromium is and how it runs.
#[derive(Debug, Clone)]
pub struct Engine {
    program: PathBuf,
    env: Vec<(OsString, OsString)>,
    certutil: Option<PathBuf>,
    /// Its home: profile, NSS database, downloads.
    pub home: PathBuf,
}

impl Engine {
    /// The application disk's Chromium; a local shim (tests) may name one
    /// in [`CHROMIUM_ENV`].
    pub fn find(in_guest: bool, work_root: &Path) -> Option<Engine> {
        let home = work_root.join("vitrine-browser");
        if !in_guest {
            if let Some(bin) = std::env::var_os(CHROMIUM_ENV) {
                let program = PathBuf::from(bin);
                let certutil = Path::new("/usr/bin/certutil");
                return program.is_file().then(|| Engine {
                    program,
                    env: Vec::new(),
                    certutil: certutil.is_file().then(|| certutil.to_path_buf()),
                    home,
                });
            }
        }
        let root = Path::new(APP_DISK_MOUNT);
        let program = root.join(DISK_CHROMIUM);
        let certutil = root.join(DISK_CERTUTIL);
        program.is_file().then(|| Engine {
            program,
            env: vec![
                ("LD_LIBRARY_PATH".into(), root.join("lib").into()),
                ("FONTCONFIG_FILE".into(), root.join(DISK_FONTS_CONF).into()),
            ],
            certutil: certutil.is_file().then_some(certutil),
            home,
        })
    }

    /// Starts the browser as `identity`: `proxy` is the port of its only
    /// route out (`None`: no network at all). Returns once it answers.
    pub fn start(
        &self,
        identity: Identity,
        proxy: Option<u16>,
        viewport: (u32, u32),
        limits: ChildLimits,
        deadline: Instant,
    ) -> Result<(Session, Messages), BrowserError> {
        identity.make_dir(&self.home)?;
        let downloads = self.home.join("downloads");
        identity.make_dir(&downloads)?;
        if self.certutil.is_some() {
            self.nss_db(identity)?;
        }
        // A proxy on a closed port: no route at all.
        let route = proxy.map_or_else(
            || "--proxy-server=http://127.0.0.1:9".to_owned(),
            |p| format!("--proxy-server=http://127.0.0.1:{p}"),
        );
        let args: Vec<OsString> = [
            "--headless",
            "--no-sandbox",
            "--no-zygote",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-breakpad",
            "--disable-domain-reliability",
            "--metrics-recording-only",
            "--mute-audio",
            "--force-color-profile=srgb",
            "--lang=en-US",
            // Loopback goes through the proxy too: it is the host's, not ours.
            "--proxy-bypass-list=<-loopback>",
        ]
        .map(OsString::from)
        .into_iter()
        .chain([
            route.into(),
            format!("--user-data-dir={}", self.home.join("profile").display()).into(),
            format!("--js-flags=--max-old-space-size={JS_HEAP_MIB}").into(),
            format!("--window-size={},{}", viewport.0, viewport.1).into(),
            "about:blank".into(),
        ])
        .collect();
        let (to_read, to_write) = nix::unistd::pipe().map_err(std::io::Error::from)?;
        let (from_read, from_write) = nix::unistd::pipe().map_err(std::io::Error::from)?;
        let mut cmd = limited_command(limits, identity, ChildStdio::CdpPipe, &self.program, &args)?;
        cmd.stdin(Stdio::from(to_read))
            .stdout(Stdio::from(from_write));
        let log = File::create(self.home.join(LOG))?;
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HOME", &self.home)
            .env("TMPDIR", &self.home)
            .current_dir(&self.home)
            .stderr(Stdio::from(log));
        let child = Supervised::spawn(cmd, identity, deadline)?;
        let mut session = Session {
            child,
            writer: Writer::new(File::from(to_write)),
            target: String::new(),
            home: self.home.clone(),
            downloads,
        };
        let mut reader = Messages::spawn(Reader::new(File::from(from_read)));
        let wait = (Instant::now() + START_WAIT).min(deadline);
        let created = session.call_now(
            &mut reader,
            None,
            "Target.createTarget",
            json!({ "url": "about:blank" }),
            wait,
        )?;
        let target = created["targetId"].as_str().unwrap_or_default().to_owned();
        let attached = session.call_now(
            &mut reader,
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
            wait,
        )?;
        session.target = attached["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for (method, params) in [
            ("Page.enable", json!({})),
            ("Inspector.enable", json!({})),
            ("Page.setLifecycleEventsEnabled", json!({ "enabled": true })),
        ] {
            let s = session.target.clone();
            session.call_now(&mut reader, Some(&s), method, params, wait)?;
        }
        session.call_now(
            &mut reader,
            None,
            "Browser.setDownloadBehavior",
            json!({ "behavior": "allow", "downloadPath": session.downloads.to_string_lossy(),
                    "eventsEnabled": true }),
            wait,
        )?;
        Ok((session, reader))
    }

    /// Adds DER certificates as trusted roots in the browser's NSS database
    /// (a task's extra roots, such as an organisation's own CA). A running
    /// browser reads the database at each verification, so a preloaded one
    /// trusts them too.
    pub fn trust_roots(&self, identity: Identity, roots: &[Vec<u8>]) -> Result<(), BrowserError> {
        if roots.is_empty() {
            return Ok(());
        }
        self.nss_db(identity)?;
        for (i, der) in roots.iter().enumerate() {
            let file = self.home.join(format!("root-{i}.der"));
            std::fs::write(&file, der)?;
            self.certutil(
                identity,
                vec![
                    "-A".into(),
                    "-n".into(),
                    format!("vitrine-task-root-{i}").into(),
                    "-t".into(),
                    "C,,".into(),
                    "-i".into(),
                    file.into(),
                ],
            )?;
        }
        Ok(())
    }

    /// Makes the empty NSS database at `$HOME/.pki/nssdb`, before the
    /// browser starts: Chromium uses that place only if it exists.
    fn nss_db(&self, identity: Identity) -> Result<(), BrowserError> {
        let db = self.home.join(".pki").join("nssdb");
        if db.join("cert9.db").exists() {
            return Ok(());
        }
        identity.make_dir(&self.home.join(".pki"))?;
        identity.make_dir(&db)?;
        self.certutil(identity, vec!["-N".into(), "--empty-password".into()])
    }

    fn certutil(&self, identity: Identity, args: Vec<OsString>) -> Result<(), BrowserError> {
        let certutil = self.certutil.as_ref().ok_or_else(|| {
            BrowserError::Root("no certutil on this VM's application disk".into())
        })?;
        let db = format!("sql:{}", self.home.join(".pki").join("nssdb").display());
        let mut all: Vec<OsString> = vec!["-d".into(), db.into()];
        all.extend(args);
        // The browser's limits: its uid's process count includes a running
        // browser's threads.
        let limits = ChildLimits::browser(Duration::from_secs(30));
        let mut cmd = limited_command(limits, identity, ChildStdio::Plain, certutil, &all)?;
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HOME", &self.home)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let out = cmd.output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(BrowserError::Root(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ))
        }
    }
}

/// The browser's messages, read on a thread of their own so that a
/// browser that hangs never blocks past a deadline.
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<Result<Option<Incoming>, CdpError>>,
}

impl Messages {
    fn spawn(mut reader: Reader) -> Self {
        let (tx, rx) = mpsc::sync_channel(64);
        std::thread::spawn(move || loop {
            let msg = reader.read_message();
            let end = !matches!(msg, Ok(Some(_)));
            if tx.send(msg).is_err() || end {
                return;
            }
        });
        Self { rx }
    }

    /// The next message, `None` at `deadline`; `Ok(None)` when the
    /// browser closed its end.
    pub fn next_until(&mut self, deadline: Instant) -> Option<Result<Option<Incoming>, CdpError>> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(msg) => Some(msg),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Ok(None)),
        }
    }

    /// Hands every message to `deliver` on a thread, until it refuses one
    /// or the browser closes.
    pub fn forward(
        self,
        deliver: impl Fn(Result<Option<Incoming>, CdpError>) -> bool + Send + 'static,
    ) {
        std::thread::spawn(move || {
            for msg in self.rx {
                let end = !matches!(msg, Ok(Some(_)));
                if !deliver(msg) || end {
                    return;
                }
            }
        });
    }
}

/// A running browser with one tab.
#[derive(Debug)]
pub struct Session {
    child: Supervised,
    writer: Writer,
    /// The tab's DevTools session.
    target: String,
    home: PathBuf,
    /// Where downloads land.
    pub downloads: PathBuf,
}

impl Session {
    /// Sends a call to the tab; its reply comes as an [`Incoming::Reply`].
    pub fn call(&mut self, method: &str, params: Value) -> Result<u64, BrowserError> {
        let target = self.target.clone();
        Ok(self.writer.call(Some(&target), method, params)?)
    }

    /// Sends a call and reads until its reply, dropping events: only for
    /// the start, before the tab loads anything.
    fn call_now(
        &mut self,
        reader: &mut Messages,
        session: Option<&str>,
        method: &str,
        params: Value,
        deadline: Instant,
    ) -> Result<Value, BrowserError> {
        let id = self.writer.call(session, method, params)?;
        loop {
            let Some(msg) = reader.next_until(deadline) else {
                return Err(BrowserError::NoAnswer(format!(
                    "no answer to {method} in time: {}",
                    tail_of(&self.home.join(LOG), 400)
                )));
            };
            match msg? {
                Some(Incoming::Reply { id: got, result }) if got == id => {
                    return result.map_err(|error| BrowserError::Call {
                        method: method.to_owned(),
                        error,
                    })
                }
                Some(_) => {}
                None => return Err(BrowserError::NoAnswer(tail_of(&self.home.join(LOG), 400))),
            }
        }
    }

    /// Whether the browser still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.poll(), Ok(None))
    }

    /// The tail of the browser's log.
    pub fn log_tail(&self) -> String {
        tail_of(&self.home.join(LOG), 400)
    }

    /// Ends the browser and everything of its uid.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}
