//! Office documents (Word, Excel, PowerPoint, OpenDocument, RTF): LibreOffice
//! from the application disk converts them to PDF, which then renders as any
//! PDF does. The format is told from the content, never from the name.
//!
//! Macros never run: the profile LibreOffice starts with sets the macro
//! security level to its highest, turns macro execution off and keeps VBA
//! from being loaded or run, and after each conversion the shim checks that
//! nothing was written outside LibreOffice's own directories.
//!
//! A VM whose kernel command line says `vitrine.preload=office` starts a
//! headless LibreOffice before it tells the host `Ready` ([`Office::preload`]),
//! so a template snapshotted there holds it loaded and idle. A conversion
//! then goes to it over its own single-instance pipe ([`ipc_convert`]), the
//! request a second `soffice` would forward, without starting one.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use md5::{Digest, Md5};

use crate::init::APP_DISK_MOUNT;
use crate::sandbox::{
    describe, limited_command, tail_of, ChildLimits, Identity, RunOutcome, SandboxError,
    Supervised,
};

/// Environment for a shim run as a local process (tests): a host
/// `soffice.bin` to run instead of the disk's. Ignored in the guest.
pub const SOFFICE_ENV: &str = "VITRINE_SOFFICE";
/// `soffice.bin` on the app disk.
const DISK_SOFFICE: &str = "libreoffice/program/soffice.bin";
/// The disk's fontconfig file: its faces and the initramfs's.
const DISK_FONTS_CONF: &str = "fonts/fonts.conf";
/// LibreOffice's exit code after it made a new profile: start it again.
const EXIT_RESTART: i32 = 81;
/// Directory (under the work root) of LibreOffice's profile and home.
const OFFICE_HOME: &str = "vitrine-office";
/// Where a running LibreOffice listens for a second instance's arguments.
const PIPE_DIR: &str = "/tmp";
const SEND_ARGUMENTS: &[u8] = b"InternalIPC::SendArguments";
const PROCESSING_DONE: &[u8] = b"InternalIPC::ProcessingDone";
const ARGUMENT_PREFIX: &[u8] = b"InternalIPC::Arguments";
/// Longest answer read from LibreOffice's pipe.
const MAX_PIPE_ANSWER: usize = 256;

/// The settings LibreOffice starts with: macro security at its highest
/// ("very high": only trusted places, and there are none), macro execution
/// off, and VBA neither loaded nor run in Writer, Calc and Impress.
const REGISTRY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="MacroSecurityLevel" oor:op="fuse"><value>3</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="DisableMacrosExecution" oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="SecureURL" oor:op="fuse"><value></value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="BlockUntrustedRefererLinks" oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Writer/Filter/Import/VBA"><prop oor:name="Load" oor:op="fuse"><value>false</value></prop></item>
<item oor:path="/org.openoffice.Office.Writer/Filter/Import/VBA"><prop oor:name="Executable" oor:op="fuse"><value>false</value></prop></item>
<item oor:path="/org.openoffice.Office.Calc/Filter/Import/VBA"><prop oor:name="Load" oor:op="fuse"><value>false</value></prop></item>
<item oor:path="/org.openoffice.Office.Calc/Filter/Import/VBA"><prop oor:name="Executable" oor:op="fuse"><value>false</value></prop></item>
<item oor:path="/org.openoffice.Office.Impress/Filter/Import/VBA"><prop oor:name="Load" oor:op="fuse"><value>false</value></prop></item>
</oor:items>
"#;

/// An office document could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum OfficeError {
    /// The VM has no LibreOffice.
    #[error(
        "this VM has no application disk with LibreOffice (no {APP_DISK_MOUNT}/{DISK_SOFFICE}): \
         build the image with shim/image/build.sh, which puts it there"
    )]
    Missing,
    /// The child could not run.
    #[error("cannot run LibreOffice")]
    Sandbox(#[from] SandboxError),
    /// A file or the pipe failed.
    #[error("LibreOffice's files")]
    Io(#[from] std::io::Error),
    /// LibreOffice ended badly.
    #[error("LibreOffice failed ({status}){}", stderr_suffix(.stderr))]
    Failed {
        /// Exit description.
        status: String,
        /// End of its output.
        stderr: String,
    },
    /// It ended well but wrote no PDF: it could not read the document.
    #[error("LibreOffice could not read the document as {format} (it wrote no PDF){}", stderr_suffix(.stderr))]
    NoPdf {
        /// What the content was sniffed as.
        format: &'static str,
        /// End of its output.
        stderr: String,
    },
    /// The deadline passed.
    #[error("LibreOffice ran out of time")]
    TimedOut,
    /// The running LibreOffice broke off the request.
    #[error("the running LibreOffice broke off the conversion: {0}")]
    Pipe(String),
    /// Something was written outside LibreOffice's directories.
    #[error(
        "the document wrote files while it was converted (a macro or other active content): {0}"
    )]
    Wrote(String),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

/// Which LibreOffice application reads a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Writer.
    Text,
    /// Calc.
    Spreadsheet,
    /// Impress.
    Presentation,
    /// An OLE2 file whose streams name no application: LibreOffice decides.
    Unknown,
}

impl Family {
    /// The PDF export filter, which takes the page range.
    fn pdf_filter(self) -> Option<&'static str> {
        match self {
            Family::Text => Some("writer_pdf_Export"),
            Family::Spreadsheet => Some("calc_pdf_Export"),
            Family::Presentation => Some("impress_pdf_Export"),
            Family::Unknown => None,
        }
    }
}

/// An office format, as sniffed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Its application.
    pub family: Family,
    /// Its usual extension, given to LibreOffice's copy of the file.
    pub ext: &'static str,
}

const OLE2_MAGIC: &[u8] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1";

/// The office format of content starting with `head`; OLE2 files get
/// `Family::Unknown` here ([`sniff_file`] reads their directory).
pub fn sniff(head: &[u8]) -> Option<Format> {
    let format = |family, ext| Some(Format { family, ext });
    if head.starts_with(b"{\\rtf") {
        return format(Family::Text, "rtf");
    }
    if head.starts_with(OLE2_MAGIC) {
        return format(Family::Unknown, "doc");
    }
    if !head.starts_with(b"PK\x03\x04") {
        return None;
    }
    // ODF: a first, stored entry `mimetype` holding the type.
    if head.get(30..38) == Some(b"mimetype") {
        let rest = &head[38..head.len().min(38 + 128)];
        for (mime, family, ext) in [
            ("application/vnd.oasis.opendocument.text", Family::Text, "odt"),
            ("application/vnd.oasis.opendocument.spreadsheet", Family::Spreadsheet, "ods"),
            ("application/vnd.oasis.opendocument.presentation", Family::Presentation, "odp"),
        ] {
            if find(rest, mime.as_bytes()).is_some() {
                return format(family, ext);
            }
        }
        return None;
    }
    // OOXML: its part names, which every local header carries in clear.
    for (part, family, ext) in [
        (&b"word/"[..], Family::Text, "docx"),
        (b"xl/", Family::Spreadsheet, "xlsx"),
        (b"ppt/", Family::Presentation, "pptx"),
    ] {
        if zip_names(head).any(|name| name.starts_with(part)) {
            return format(family, ext);
        }
    }
    None
}

/// The names of the local headers that lie within `head`.
fn zip_names(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let h = head.get(at..at + 30)?;
        if &h[..4] != b"PK\x03\x04" {
            return None;
        }
        let le16 = |i: usize| usize::from(u16::from_le_bytes([h[i], h[i + 1]]));
        let size = u32::from_le_bytes([h[18], h[19], h[20], h[21]]);
        let (name_len, extra_len) = (le16(26), le16(28));
        let name = head.get(at + 30..at + 30 + name_len)?;
        // Bit 3: the size follows the data, so the next header is unknown.
        at = if le16(6) & 0x8 != 0 {
            usize::MAX / 2
        } else {
            at + 30 + name_len + extra_len + usize::try_from(size).ok()?
        };
        Some(name)
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Like [`sniff`], and for an OLE2 file the application its first
/// directory sector names (`WordDocument`, `Workbook`, `PowerPoint Document`).
pub fn sniff_file(path: &Path) -> std::io::Result<Option<Format>> {
    let mut file = File::open(path)?;
    let mut head = vec![0u8; 4096];
    let n = read_up_to(&mut file, &mut head)?;
    head.truncate(n);
    let Some(format) = sniff(&head) else {
        return Ok(None);
    };
    if format.family != Family::Unknown || head.len() < 0x34 {
        return Ok(Some(format));
    }
    let shift = u32::from(u16::from_le_bytes([head[0x1e], head[0x1f]]));
    let first_dir = u32::from_le_bytes([head[0x30], head[0x31], head[0x32], head[0x33]]);
    if !(9..=12).contains(&shift) {
        return Ok(Some(format));
    }
    let sector = 1u64 << shift;
    let at = (u64::from(first_dir) + 1).saturating_mul(sector);
    let mut dir = vec![0u8; usize::try_from(sector).unwrap_or(512)];
    if file.seek(SeekFrom::Start(at)).is_err() {
        return Ok(Some(format));
    }
    let n = read_up_to(&mut file, &mut dir)?;
    dir.truncate(n);
    let utf16 = |s: &str| s.encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>();
    for (stream, family, ext) in [
        ("WordDocument", Family::Text, "doc"),
        ("Workbook", Family::Spreadsheet, "xls"),
        ("Book", Family::Spreadsheet, "xls"),
        ("PowerPoint Document", Family::Presentation, "ppt"),
    ] {
        if find(&dir, &utf16(stream)).is_some() {
            return Ok(Some(Format { family, ext }));
        }
    }
    Ok(Some(format))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// One conversion.
#[derive(Debug)]
pub struct Convert<'a> {
    /// The document.
    pub input: &'a Path,
    /// What it was sniffed as.
    pub format: Format,
    /// A directory writable by `identity`: the PDF and LibreOffice's
    /// temporary files go there.
    pub out_dir: &'a Path,
    /// Pages to convert at most (the task's page cap and one more, which
    /// tells that the document has more).
    pub pages: u32,
    /// Limits of a LibreOffice started for it.
    pub limits: ChildLimits,
    /// Who LibreOffice runs as.
    pub identity: Identity,
    /// Kill time.
    pub deadline: Instant,
}

/// A converted document.
#[derive(Debug)]
pub struct Converted {
    /// The PDF.
    pub pdf: PathBuf,
    /// Whether a preloaded LibreOffice did it.
    pub preloaded: bool,
}

/// LibreOffice, and where its profile lives.
#[derive(Debug, Clone)]
pub struct Office {
    program: PathBuf,
    /// Extra environment (the disk's libraries and fonts).
    env: Vec<(OsString, OsString)>,
    /// Its home, holding `profile/`.
    home: PathBuf,
    /// Where a macro could leave files: the guest's writable places, or a
    /// local process's work root (the host is not ours to scan).
    writable: Vec<PathBuf>,
}

impl Office {
    /// The app disk's LibreOffice, or (a local process only) the one
    /// `VITRINE_SOFFICE` names; `work_root` holds its profile.
    pub fn find(in_guest: bool, work_root: &Path) -> Option<Self> {
        let home = work_root.join(OFFICE_HOME);
        if !in_guest {
            if let Some(bin) = std::env::var_os(SOFFICE_ENV) {
                let program = PathBuf::from(bin);
                return program.is_file().then_some(Self {
                    program,
                    env: Vec::new(),
                    home,
                    writable: vec![work_root.to_path_buf()],
                });
            }
        }
        let root = Path::new(APP_DISK_MOUNT);
        let program = root.join(DISK_SOFFICE);
        program.is_file().then(|| Self {
            program,
            env: vec![
                ("LD_LIBRARY_PATH".into(), root.join("lib").into()),
                ("FONTCONFIG_FILE".into(), root.join(DISK_FONTS_CONF).into()),
            ],
            home,
            writable: ["/tmp", "/run", "/root", "/var", "/home"]
                .map(PathBuf::from)
                .to_vec(),
        })
    }

    fn profile(&self) -> PathBuf {
        self.home.join("profile")
    }

    fn profile_url(&self) -> String {
        format!("file://{}", self.profile().display())
    }

    /// The profile's settings, written before LibreOffice first reads it.
    fn prepare(&self, identity: Identity) -> std::io::Result<()> {
        let user = self.profile().join("user");
        let registry = user.join("registrymodifications.xcu");
        if registry.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&user)?;
        std::fs::write(&registry, REGISTRY)?;
        if let Identity::Uid(uid) = identity {
            for dir in [&self.home, &self.profile(), &user, &registry] {
                std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
            }
        }
        Ok(())
    }

    /// The socket a running LibreOffice of this profile listens on.
    fn pipe(&self, identity: Identity) -> PathBuf {
        let uid = match identity {
            Identity::Uid(uid) => uid,
            Identity::Inherit => nix::unistd::geteuid().as_raw(),
        };
        let url: Vec<u8> = self
            .profile_url()
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let hash: String = Md5::digest(&url).iter().map(|b| format!("{b:x}")).collect();
        Path::new(PIPE_DIR).join(format!("OSL_PIPE_{uid}_SingleOfficeIPC_{hash}"))
    }

    fn command(
        &self,
        args: &[OsString],
        limits: ChildLimits,
        identity: Identity,
        dir: &Path,
    ) -> Result<std::process::Command, OfficeError> {
        let mut all: Vec<OsString> = [
            "--headless",
            "--invisible",
            "--nologo",
            "--norestore",
            "--nolockcheck",
            "--nodefault",
        ]
        .map(OsString::from)
        .to_vec();
        all.push(format!("-env:UserInstallation={}", self.profile_url()).into());
        all.extend_from_slice(args);
        let mut cmd = limited_command(limits, identity, false, &self.program, &all)?;
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HOME", &self.home)
            .env("TMPDIR", dir)
            .env("SAL_USE_VCLPLUGIN", "svp")
            .current_dir(dir);
        Ok(cmd)
    }

    /// Converts a document to PDF: through the preloaded LibreOffice when
    /// one listens, else in one started for it. Then checks that nothing
    /// but the PDF was written.
    pub fn convert(&self, job: &Convert<'_>) -> Result<Converted, OfficeError> {
        self.prepare(job.identity)?;
        let started = SystemTime::now();
        let doc = job.out_dir.join(format!("document.{}", job.format.ext));
        std::os::unix::fs::symlink(job.input, &doc)?;
        let pdf = job.out_dir.join("document.pdf");
        let target = match job.format.family.pdf_filter() {
            Some(filter) => format!(
                "pdf:{filter}:{{\"PageRange\":{{\"type\":\"string\",\"value\":\"1-{}\"}}}}",
                job.pages.max(1)
            ),
            None => "pdf".to_owned(),
        };
        let args: Vec<OsString> = vec![
            "--convert-to".into(),
            target.into(),
            "--outdir".into(),
            job.out_dir.into(),
            doc.clone().into(),
        ];
        let pipe = self.pipe(job.identity);
        let preloaded = pipe.exists();
        let log = job.out_dir.join("soffice.log");
        if preloaded {
            ipc_convert(&pipe, job.out_dir, &args, job.deadline)?;
        } else {
            self.run_cold(&args, job, &log)?;
        }
        if !pdf.is_file() {
            return Err(OfficeError::NoPdf {
                format: job.format.ext,
                stderr: tail_of(&log, 400),
            });
        }
        let ignore = [self.home.clone(), job.out_dir.to_path_buf()];
        let written = written_since(&self.writable, started, job.identity, &ignore);
        if !written.is_empty() {
            return Err(OfficeError::Wrote(written.join(", ")));
        }
        Ok(Converted { pdf, preloaded })
    }

    /// Runs LibreOffice for this conversion alone; a first run on a new
    /// profile ends asking for a restart, so it may run twice.
    fn run_cold(
        &self,
        args: &[OsString],
        job: &Convert<'_>,
        log: &Path,
    ) -> Result<(), OfficeError> {
        for _ in 0..2 {
            let mut cmd = self.command(args, job.limits, job.identity, job.out_dir)?;
            let out = File::create(log)?;
            cmd.stdout(Stdio::from(out.try_clone()?))
                .stderr(Stdio::from(out));
            match Supervised::spawn(cmd, job.identity, job.deadline)?.wait()? {
                RunOutcome::TimedOut => return Err(OfficeError::TimedOut),
                RunOutcome::Exited(s) if s.code() == Some(EXIT_RESTART) => {}
                RunOutcome::Exited(s) if s.success() => return Ok(()),
                RunOutcome::Exited(s) => {
                    return Err(OfficeError::Failed {
                        status: describe(s),
                        stderr: tail_of(log, 400),
                    })
                }
            }
        }
        Err(OfficeError::Failed {
            status: "asked for a restart twice".into(),
            stderr: tail_of(log, 400),
        })
    }

    /// Starts LibreOffice to stay, loaded and idle, for the conversions to
    /// come; returns once it took a first one (a one-line RTF), so that
    /// what a conversion needs is in memory. `dir` takes its files.
    pub fn preload(
        &self,
        identity: Identity,
        dir: &Path,
        deadline: Instant,
    ) -> Result<Supervised, OfficeError> {
        self.prepare(identity)?;
        let warm = dir.join("warm.rtf");
        std::fs::write(&warm, "{\\rtf1\\ansi Vitrine}\n")?;
        // Its first run makes the profile, and asks for a restart.
        let limits = ChildLimits::office(Duration::from_secs(3600));
        let convert = |out: &Path| -> Vec<OsString> {
            vec![
                "--convert-to".into(),
                "pdf".into(),
                "--outdir".into(),
                out.into(),
                warm.clone().into(),
            ]
        };
        let cold = Convert {
            input: &warm,
            format: Format {
                family: Family::Text,
                ext: "rtf",
            },
            out_dir: dir,
            pages: 1,
            limits,
            identity,
            deadline,
        };
        self.run_cold(&convert(dir), &cold, &dir.join("soffice.log"))?;
        let mut cmd = self.command(
            &["--accept=pipe,name=vitrine-office;urp;".into()],
            limits,
            identity,
            dir,
        )?;
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        // It lives as long as the VM: no deadline of its own.
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut server = Supervised::spawn(cmd, identity, far)?;
        let pipe = self.pipe(identity);
        while !pipe.exists() {
            if let Some(end) = server.poll()? {
                return Err(OfficeError::Failed {
                    status: match end {
                        RunOutcome::Exited(s) => describe(s),
                        RunOutcome::TimedOut => "timed out".into(),
                    },
                    stderr: String::new(),
                });
            }
            if Instant::now() > deadline {
                server.kill();
                return Err(OfficeError::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = dir.join("warm-out");
        std::fs::create_dir_all(&out)?;
        if let Identity::Uid(uid) = identity {
            std::os::unix::fs::chown(&out, Some(uid), Some(uid))?;
        }
        ipc_convert(&pipe, dir, &convert(&out), deadline)?;
        if !out.join("warm.pdf").is_file() {
            server.kill();
            return Err(OfficeError::NoPdf {
                format: "rtf",
                stderr: String::new(),
            });
        }
        let _ = std::fs::remove_dir_all(&out);
        Ok(server)
    }
}

/// Hands `args` to the LibreOffice listening on `pipe`, as a second
/// `soffice` would, and waits until it says they are done.
pub fn ipc_convert(
    pipe: &Path,
    cwd: &Path,
    args: &[OsString],
    deadline: Instant,
) -> Result<(), OfficeError> {
    let mut stream = UnixStream::connect(pipe)?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(OfficeError::TimedOut)
    };
    stream.set_read_timeout(Some(left()?))?;
    let hello = read_answer(&mut stream)?;
    if hello != SEND_ARGUMENTS {
        return Err(OfficeError::Pipe(format!(
            "it greeted with {:?}",
            String::from_utf8_lossy(&hello)
        )));
    }
    let mut request = ARGUMENT_PREFIX.to_vec();
    request.push(b'1');
    escape_into(&mut request, format!("file://{}", cwd.display()).as_bytes());
    for arg in args {
        request.push(b',');
        escape_into(&mut request, arg.as_encoded_bytes());
    }
    request.push(0);
    stream.write_all(&request)?;
    stream.set_read_timeout(Some(left()?))?;
    let done = read_answer(&mut stream).map_err(|e| match e {
        OfficeError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            OfficeError::TimedOut
        }
        other => other,
    })?;
    if done != PROCESSING_DONE {
        return Err(OfficeError::Pipe(format!(
            "it answered {:?}",
            String::from_utf8_lossy(&done)
        )));
    }
    Ok(())
}

/// LibreOffice's escaping of one argument: `\0`, `\,` and `\\`.
fn escape_into(out: &mut Vec<u8>, arg: &[u8]) {
    for &b in arg {
        match b {
            0 => out.extend_from_slice(b"\\0"),
            b',' => out.extend_from_slice(b"\\,"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b => out.push(b),
        }
    }
}

/// Reads up to a NUL; the pipe closing first is an error.
fn read_answer(stream: &mut UnixStream) -> Result<Vec<u8>, OfficeError> {
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte)? {
            0 => {
                return Err(OfficeError::Pipe(
                    "it closed the pipe (it crashed, or was killed for memory)".into(),
                ))
            }
            _ if byte[0] == 0 => return Ok(answer),
            _ if answer.len() >= MAX_PIPE_ANSWER => {
                return Err(OfficeError::Pipe("its answer is too long".into()))
            }
            _ => answer.push(byte[0]),
        }
    }
}

/// Regular files under `roots` that LibreOffice's uid owns and changed
/// since `since`, except under `ignore`: what a macro would leave.
fn written_since(
    roots: &[PathBuf],
    since: SystemTime,
    identity: Identity,
    ignore: &[PathBuf],
) -> Vec<String> {
    let Identity::Uid(uid) = identity else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut stack = roots.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if ignore.iter().any(|i| path.starts_with(i)) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if std::os::unix::fs::MetadataExt::uid(&meta) == uid
                && meta.modified().is_ok_and(|m| m >= since)
                && !is_office_pipe(&path)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found.sort();
    found.truncate(8);
    found
}

fn is_office_pipe(path: &Path) -> bool {
    path.file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| n.starts_with("OSL_PIPE_") || n.starts_with("lu") && n.ends_with(".tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_entry(name: &str, data: &[u8]) -> Vec<u8> {
        let mut v = b"PK\x03\x04".to_vec();
        v.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let size = u32::try_from(data.len()).unwrap().to_le_bytes();
        v.extend_from_slice(&size);
        v.extend_from_slice(&size);
        v.extend_from_slice(&u16::try_from(name.len()).unwrap().to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn office_formats_are_told_from_their_content() {
        let mut docx = zip_entry("[Content_Types].xml", b"<Types/>");
        docx.extend(zip_entry("word/document.xml", b"<w/>"));
        assert_eq!(sniff(&docx).map(|f| f.ext), Some("docx"));
        let mut xlsx = zip_entry("[Content_Types].xml", b"<Types/>");
        xlsx.extend(zip_entry("xl/workbook.xml", b"<x/>"));
        assert_eq!(sniff(&xlsx).map(|f| f.family), Some(Family::Spreadsheet));
        let pptx = zip_entry("ppt/presentation.xml", b"<p/>");
        assert_eq!(sniff(&pptx).map(|f| f.ext), Some("pptx"));
        let odp = zip_entry("mimetype", b"application/vnd.oasis.opendocument.presentation");
        assert_eq!(sniff(&odp).map(|f| f.ext), Some("odp"));
        assert_eq!(sniff(b"{\\rtf1 hi}").map(|f| f.ext), Some("rtf"));
        assert_eq!(sniff(OLE2_MAGIC).map(|f| f.family), Some(Family::Unknown));
    }

    #[test]
    fn other_zips_and_text_are_not_office() {
        assert_eq!(sniff(&zip_entry("hello.txt", b"hi")), None);
        assert_eq!(sniff(&zip_entry("mimetype", b"application/epub+zip")), None);
        assert_eq!(sniff(b"word/ in a text file"), None);
    }

    #[test]
    fn an_ole2_file_is_known_by_the_streams_its_directory_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = vec![0u8; 1024];
        file[..8].copy_from_slice(OLE2_MAGIC);
        file[0x1e] = 9; // 512-byte sectors
        file[0x30..0x34].copy_from_slice(&0u32.to_le_bytes()); // directory at sector 0
        let name: Vec<u8> = "Workbook".encode_utf16().flat_map(u16::to_le_bytes).collect();
        file[512 + 128..512 + 128 + name.len()].copy_from_slice(&name);
        let path = dir.path().join("x");
        std::fs::write(&path, &file).unwrap();
        assert_eq!(
            sniff_file(&path).unwrap(),
            Some(Format {
                family: Family::Spreadsheet,
                ext: "xls"
            })
        );
        std::fs::write(&path, &file[..600]).unwrap();
        assert_eq!(sniff_file(&path).unwrap().map(|f| f.family), Some(Family::Unknown));
    }

    #[test]
    fn arguments_are_escaped_as_libreoffice_reads_them() {
        let mut out = Vec::new();
        escape_into(&mut out, b"a,b\\c\0d");
        assert_eq!(out, b"a\\,b\\\\c\\0d");
    }

    #[test]
    fn the_pipe_name_is_the_md5_of_the_profile_url_in_utf16() {
        let office = Office {
            program: PathBuf::from("/x"),
            env: Vec::new(),
            home: PathBuf::from("/tmp/lot"),
            writable: Vec::new(),
        };
        // Seen on a host: `file:///tmp/lot/profile` gave this socket.
        let pipe = office.pipe(Identity::Uid(0));
        let url: Vec<u8> = "file:///tmp/lot/profile"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let hex: String = Md5::digest(&url).iter().map(|b| format!("{b:x}")).collect();
        assert_eq!(
            pipe,
            PathBuf::from(format!("/tmp/OSL_PIPE_0_SingleOfficeIPC_{hex}"))
        );
    }
}
