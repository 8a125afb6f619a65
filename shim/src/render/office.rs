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
    describe, limited_command, tail_of, ChildLimits, ChildStdio, Identity, RunOutcome,
    SandboxError, Supervised,
};

/// Environment for a shim run as a local process (tests): a host
/// `soffice.bin` to run instead of the disk's. Ignored in the guest.
pub const SOFFICE_ENV: &str = "VITRINE_SOFFICE";
/// Environment for a shim run as a local process (tests): `office` starts
/// LibreOffice before `Ready`, as `vitrine.preload=office` does in a VM.
pub const PRELOAD_ENV: &str = "VITRINE_PRELOAD";
/// `soffice.bin` on the app disk.
const DISK_SOFFICE: &str = "libreoffice/program/soffice.bin";
/// The disk's fontconfig file: its faces and the initramfs's.
const DISK_FONTS_CONF: &str = "fonts/fonts.conf";
/// What a LibreOffice started for a conversion printed, in its directory.
const LOG: &str = "soffice.log";
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
    /// No LibreOffice listens on its pipe (a socket left by one that died).
    #[error("no LibreOffice listens on its pipe")]
    NotListening(#[source] std::io::Error),
    /// The file is OLE2 but holds no document LibreOffice shows.
    #[error(
        "an OLE2 file (the container of Office 97-2003 documents) with no Word, Excel or \
         PowerPoint stream in it: not a document to show"
    )]
    NotADocument,
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
            (
                "application/vnd.oasis.opendocument.text",
                Family::Text,
                "odt",
            ),
            (
                "application/vnd.oasis.opendocument.spreadsheet",
                Family::Spreadsheet,
                "ods",
            ),
            (
                "application/vnd.oasis.opendocument.presentation",
                Family::Presentation,
                "odp",
            ),
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
        // Bit 3: the size follows the data (LibreOffice writes OOXML so);
        // 0xFFFFFFFF: it is in a zip64 field. Either way the next header
        // is found by its signature.
        let data = at + 30 + name_len + extra_len;
        at = if le16(6) & 0x8 != 0 || size == u32::MAX {
            head.get(data..)
                .and_then(|rest| find(rest, b"PK\x03\x04"))
                .map_or(usize::MAX / 2, |k| data + k)
        } else {
            at + 30 + name_len + extra_len + usize::try_from(size).ok()?
        };
        Some(name)
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Like [`sniff`], and for an OLE2 file the application its directory
/// names (`WordDocument`, `Workbook`, `PowerPoint Document`); one that
/// names none stays `Family::Unknown`.
pub fn sniff_file(path: &Path) -> std::io::Result<Option<Format>> {
    let mut file = File::open(path)?;
    let mut head = Vec::new();
    (&mut file).take(64 * 1024).read_to_end(&mut head)?;
    let Some(format) = sniff(&head) else {
        return Ok(None);
    };
    if format.family != Family::Unknown {
        return Ok(Some(format));
    }
    let names = ole2_stream_names(&mut file, &head).unwrap_or_default();
    for (stream, family, ext) in [
        ("WordDocument", Family::Text, "doc"),
        ("Workbook", Family::Spreadsheet, "xls"),
        ("Book", Family::Spreadsheet, "xls"),
        ("PowerPoint Document", Family::Presentation, "ppt"),
    ] {
        if names.iter().any(|n| n == stream) {
            return Ok(Some(Format { family, ext }));
        }
    }
    Ok(Some(format))
}

/// Most directory sectors of an OLE2 file read (a document's directory
/// is one or two).
const MAX_OLE2_DIR_SECTORS: usize = 64;

/// The entry names of an OLE2 file's directory, following its chain in
/// the FAT; `None` where the header or the chain is broken.
fn ole2_stream_names(file: &mut File, head: &[u8]) -> Option<Vec<String>> {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let shift = u16::from_le_bytes(head.get(0x1e..0x20)?.try_into().ok()?);
    if !(9..=12).contains(&shift) {
        return None;
    }
    let size = 1usize << shift;
    let mut read_sector = |sector: u32| -> Option<Vec<u8>> {
        let at = (u64::from(sector) + 1).checked_mul(size as u64)?;
        file.seek(SeekFrom::Start(at)).ok()?;
        let mut buf = Vec::with_capacity(size);
        (&mut *file).take(size as u64).read_to_end(&mut buf).ok()?;
        (buf.len() == size).then_some(buf)
    };
    // The FAT's first 109 sectors are listed in the header.
    let next = |read: &mut dyn FnMut(u32) -> Option<Vec<u8>>, sector: u32| -> Option<u32> {
        let per = size / 4;
        let index = usize::try_from(sector).ok()? / per;
        let fat_sector = u32_at(head, 0x4c + index.checked_mul(4)?).filter(|_| index < 109)?;
        let fat = read(fat_sector)?;
        u32_at(&fat, (usize::try_from(sector).ok()? % per) * 4)
    };
    let mut names = Vec::new();
    let mut sector = u32_at(head, 0x30)?;
    for _ in 0..MAX_OLE2_DIR_SECTORS {
        // 0xFFFFFFFE ends a chain; anything past it is not a sector.
        if sector >= 0xffff_fffa {
            break;
        }
        let dir = read_sector(sector)?;
        for entry in dir.chunks_exact(128) {
            let len = usize::from(u16::from_le_bytes([entry[64], entry[65]])).min(64);
            let units: Vec<u16> = entry[..len.saturating_sub(2)]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            names.push(String::from_utf16_lossy(&units));
        }
        match next(&mut read_sector, sector) {
            Some(s) => sector = s,
            None => break,
        }
    }
    Some(names)
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

    /// The socket a running LibreOffice of this profile listens on, if
    /// one does.
    fn pipe(&self, identity: Identity) -> Option<PathBuf> {
        let uid = match identity {
            Identity::Uid(uid) => uid,
            Identity::Inherit => nix::unistd::geteuid().as_raw(),
        };
        let url = self.profile_url();
        // A uid without a passwd entry (the guest's) gets no name part.
        [pipe_of(&url, Some(uid)), pipe_of(&url, None)]
            .into_iter()
            .find(|p| p.exists())
    }

    fn command(
        &self,
        args: &[OsString],
        limits: ChildLimits,
        identity: Identity,
        dir: &Path,
    ) -> Result<std::process::Command, OfficeError> {
        let mut all: Vec<OsString> = ["--headless", "--nologo", "--norestore", "--nolockcheck"]
            .map(OsString::from)
            .to_vec();
        all.push(format!("-env:UserInstallation={}", self.profile_url()).into());
        all.extend_from_slice(args);
        let mut cmd = limited_command(limits, identity, ChildStdio::Plain, &self.program, &all)?;
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
        // An OLE2 file naming no application has no export filter either.
        let filter = job
            .format
            .family
            .pdf_filter()
            .ok_or(OfficeError::NotADocument)?;
        self.prepare(job.identity)?;
        let started = SystemTime::now();
        let doc = job.out_dir.join(format!("document.{}", job.format.ext));
        std::os::unix::fs::symlink(job.input, &doc)?;
        let pdf = job.out_dir.join("document.pdf");
        let target = format!(
            "pdf:{filter}:{{\"PageRange\":{{\"type\":\"string\",\"value\":\"1-{}\"}}}}",
            job.pages.max(1)
        );
        let args: Vec<OsString> = vec![
            "--convert-to".into(),
            target.into(),
            "--outdir".into(),
            job.out_dir.into(),
            doc.clone().into(),
        ];
        let log = job.out_dir.join(LOG);
        let pipe = self.pipe(job.identity);
        let preloaded = match pipe.map(|pipe| ipc_convert(&pipe, job.out_dir, &args, job.deadline))
        {
            Some(Ok(())) => true,
            // None listens (a socket left by one that died): start one.
            Some(Err(OfficeError::NotListening(_))) | None => {
                self.run_cold(&args, job.limits, job.identity, job.out_dir, job.deadline)?;
                false
            }
            Some(Err(e)) => return Err(e),
        };
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

    /// Runs LibreOffice for these arguments alone, in `dir`, its output in
    /// [`LOG`] in `dir`; a first run on a new profile ends asking for a
    /// restart, so it may run twice.
    fn run_cold(
        &self,
        args: &[OsString],
        limits: ChildLimits,
        identity: Identity,
        dir: &Path,
        deadline: Instant,
    ) -> Result<(), OfficeError> {
        let log = dir.join(LOG);
        let mut all: Vec<OsString> = vec!["--invisible".into(), "--nodefault".into()];
        all.extend_from_slice(args);
        for _ in 0..2 {
            let mut cmd = self.command(&all, limits, identity, dir)?;
            let out = File::create(&log)?;
            cmd.stdout(Stdio::from(out.try_clone()?))
                .stderr(Stdio::from(out));
            match Supervised::spawn(cmd, identity, deadline)?.wait()? {
                RunOutcome::TimedOut => return Err(OfficeError::TimedOut),
                RunOutcome::Exited(s) if s.code() == Some(EXIT_RESTART) => {}
                RunOutcome::Exited(s) if s.success() => return Ok(()),
                RunOutcome::Exited(s) => {
                    return Err(OfficeError::Failed {
                        status: describe(s),
                        stderr: tail_of(&log, 400),
                    })
                }
            }
        }
        Err(OfficeError::Failed {
            status: "asked for a restart twice".into(),
            stderr: tail_of(&log, 400),
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
        self.run_cold(&convert(dir), limits, identity, dir, deadline)?;
        // A LibreOffice with no document open ends after the conversion it
        // was handed: it keeps a hidden one (which also keeps Writer loaded).
        let keep = dir.join("keep.rtf");
        std::fs::write(&keep, "{\\rtf1\\ansi }\n")?;
        let mut cmd = self.command(
            &["--accept=pipe,name=vitrine-office;urp;".into(), keep.into()],
            limits,
            identity,
            dir,
        )?;
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        // It lives as long as the VM: no deadline of its own.
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut server = Supervised::spawn(cmd, identity, far)?;
        let pipe = loop {
            if let Some(pipe) = self.pipe(identity) {
                break pipe;
            }
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
        };
        let out = dir.join("warm-out");
        identity.make_dir(&out)?;
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

/// LibreOffice's single-instance socket for profile `url` and `uid` (none
/// when the uid has no passwd entry): the MD5 of the URL in UTF-16LE, each
/// byte in hex without padding.
fn pipe_of(url: &str, uid: Option<u32>) -> PathBuf {
    let url: Vec<u8> = url.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let hash: String = Md5::digest(&url).iter().map(|b| format!("{b:x}")).collect();
    let user = uid.map(|u| format!("{u}_")).unwrap_or_default();
    Path::new(PIPE_DIR).join(format!("OSL_PIPE_{user}SingleOfficeIPC_{hash}"))
}

/// Hands `args` to the LibreOffice listening on `pipe`, as a second
/// `soffice` would, and waits until it says they are done.
pub fn ipc_convert(
    pipe: &Path,
    cwd: &Path,
    args: &[OsString],
    deadline: Instant,
) -> Result<(), OfficeError> {
    let mut stream = UnixStream::connect(pipe).map_err(OfficeError::NotListening)?;
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
        let odp = zip_entry(
            "mimetype",
            b"application/vnd.oasis.opendocument.presentation",
        );
        assert_eq!(sniff(&odp).map(|f| f.ext), Some("odp"));
        assert_eq!(sniff(b"{\\rtf1 hi}").map(|f| f.ext), Some("rtf"));
        assert_eq!(sniff(OLE2_MAGIC).map(|f| f.family), Some(Family::Unknown));
    }

    #[test]
    fn ooxml_written_with_data_descriptors_is_told_by_its_parts() {
        // As LibreOffice writes a .docx: bit 3 set, sizes after the data.
        let streamed = |name: &str, data: &[u8]| {
            let mut v = zip_entry(name, &[]);
            v[6] = 0x08;
            v.extend_from_slice(data);
            v.extend_from_slice(b"PK\x07\x08");
            v.extend_from_slice(&[0; 12]);
            v
        };
        let mut docx = streamed("[Content_Types].xml", b"<Types/>");
        docx.extend(streamed("_rels/.rels", b"<Relationships/>"));
        docx.extend(streamed("word/document.xml", b"<w:document/>"));
        assert_eq!(sniff(&docx).map(|f| f.ext), Some("docx"));
        // A zip64 writer's sizes, 0xFFFFFFFF in the local header.
        let mut big = zip_entry("[Content_Types].xml", b"<Types/>");
        big[18..26].copy_from_slice(&[0xff; 8]);
        big.extend(zip_entry("word/document.xml", b"<w/>"));
        assert_eq!(sniff(&big).map(|f| f.ext), Some("docx"));
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
        // Header, directory in sector 0, the FAT in sector 1.
        let mut file = vec![0u8; 512 * 3];
        file[..8].copy_from_slice(OLE2_MAGIC);
        file[0x1e] = 9; // 512-byte sectors
        file[0x30..0x34].copy_from_slice(&0u32.to_le_bytes());
        file[0x4c..0x50].copy_from_slice(&1u32.to_le_bytes());
        file[1024..1028].copy_from_slice(&0xffff_fffe_u32.to_le_bytes());
        let entry = |file: &mut Vec<u8>, slot: usize, name: &str| {
            let units: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let at = 512 + slot * 128;
            file[at..at + units.len()].copy_from_slice(&units);
            let len = u16::try_from(units.len() + 2).unwrap().to_le_bytes();
            file[at + 64..at + 66].copy_from_slice(&len);
        };
        entry(&mut file, 0, "Root Entry");
        entry(&mut file, 1, "Workbook");
        let path = dir.path().join("x");
        std::fs::write(&path, &file).unwrap();
        assert_eq!(
            sniff_file(&path).unwrap(),
            Some(Format {
                family: Family::Spreadsheet,
                ext: "xls"
            })
        );
        // The same header with garbage for a directory names nothing.
        let garbage = [&file[..512], &[0x5a; 4096][..]].concat();
        std::fs::write(&path, garbage).unwrap();
        assert_eq!(
            sniff_file(&path).unwrap().map(|f| f.family),
            Some(Family::Unknown)
        );
    }

    #[test]
    fn files_libreoffices_uid_wrote_outside_its_places_are_found() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED files_libreoffices_uid_wrote_...: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let uid = 400_000 + std::process::id() % 10_000;
        let since = SystemTime::now() - Duration::from_secs(1);
        let own = |p: &Path| std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
        let kept = dir.path().join("profile");
        std::fs::create_dir(&kept).unwrap();
        std::fs::write(kept.join("registry.xcu"), "x").unwrap();
        own(&kept.join("registry.xcu"));
        std::fs::write(dir.path().join("macro-ran"), "x").unwrap();
        own(&dir.path().join("macro-ran"));
        std::fs::write(dir.path().join("roots-file"), "x").unwrap();

        let found = written_since(
            &[dir.path().to_path_buf()],
            since,
            Identity::Uid(uid),
            &[kept],
        );

        assert_eq!(
            found,
            vec![dir.path().join("macro-ran").display().to_string()]
        );
    }

    #[test]
    fn arguments_are_escaped_as_libreoffice_reads_them() {
        let mut out = Vec::new();
        escape_into(&mut out, b"a,b\\c\0d");
        assert_eq!(out, b"a\\,b\\\\c\\0d");
    }

    #[test]
    fn the_pipe_name_is_the_one_libreoffice_listens_on() {
        // Seen on a host: LibreOffice 7.4 of profile file:///tmp/lot/prof,
        // run as root, listened on this socket.
        assert_eq!(
            pipe_of("file:///tmp/lot/prof", Some(0)),
            PathBuf::from("/tmp/OSL_PIPE_0_SingleOfficeIPC_14788549cebb4162b64b6bf180209318")
        );
        // And as a uid without a passwd entry, as the guest's is.
        assert_eq!(
            pipe_of("file:///tmp/lot/prof", None),
            PathBuf::from("/tmp/OSL_PIPE_SingleOfficeIPC_14788549cebb4162b64b6bf180209318")
        );
    }
}
