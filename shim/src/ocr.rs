//! Text recognition for safe copies: tesseract from the read-only
//! application disk (too big for the initramfs), run on one page at a time
//! under the renderers' limits, its TSV output cut to the protocol's caps.
//!
//! The disk's layout (built by `shim/image/lib/appdisk.sh`):
//! `bin/tesseract`, its libraries and the disk's own loader under `lib/`,
//! and `share/tessdata/<lang>.traineddata`.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use crate::init::APP_DISK_MOUNT;
use crate::protocol::{OcrWord, MAX_WORDS_PER_PAGE, MAX_WORD_BYTES};
use crate::sandbox::{
    describe, limited_command, tail_of, ChildLimits, ChildStdio, Identity, RunOutcome,
    SandboxError, Supervised,
};

/// The loader the app disk carries: its libraries need not match the
/// initramfs's.
const DISK_LOADER: &str = "lib/ld-linux-x86-64.so.2";
/// Environment for a shim run as a local process (tests): a tesseract
/// binary to run directly instead of the disk's. Ignored in the guest.
pub const TESSERACT_ENV: &str = "VITRINE_TESSERACT";
/// With `TESSERACT_ENV`: the directory of its `.traineddata` files.
pub const TESSDATA_ENV: &str = "VITRINE_TESSDATA";
/// Most TSV output read from one page (8,192 words of ~60 bytes fit).
const MAX_TSV_BYTES: u64 = 4 << 20;

/// OCR of a page failed.
#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    /// A language's traineddata is not on the disk.
    #[error(
        "OCR language {lang:?} is not on the application disk (no {lang}.traineddata in {}): \
         build the image with VITRINE_OCR_LANGS=\"eng {lang}\" shim/image/build.sh \
         (needs the Debian package tesseract-ocr-{lang})",
        .dir.display()
    )]
    MissingLanguage {
        /// The language.
        lang: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The child could not run.
    #[error("cannot run tesseract")]
    Sandbox(#[from] SandboxError),
    /// Its output file could not be made or read.
    #[error("tesseract output")]
    Io(#[from] std::io::Error),
    /// Tesseract failed.
    #[error("tesseract failed ({status}): {stderr}")]
    Failed {
        /// Exit description.
        status: String,
        /// End of its stderr.
        stderr: String,
    },
    /// The deadline passed.
    #[error("tesseract ran out of time")]
    TimedOut,
    /// Its output has no TSV header: it printed something else.
    #[error("tesseract printed no TSV (its output begins {0:?})")]
    NotTsv(String),
}

/// How to start tesseract and where its languages are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tesseract {
    /// What is executed: the disk's loader, or a local tesseract.
    program: PathBuf,
    /// Arguments before tesseract's own.
    lead: Vec<OsString>,
    /// `TESSDATA_PREFIX`.
    tessdata: PathBuf,
}

impl Tesseract {
    /// The app disk's tesseract, if the disk is mounted and holds it and
    /// its language directory. A local process (not the guest's agent) may
    /// name a host tesseract in `VITRINE_TESSERACT`/`VITRINE_TESSDATA`.
    pub fn find(in_guest: bool) -> Option<Self> {
        if !in_guest {
            if let (Some(bin), Some(data)) = (
                std::env::var_os(TESSERACT_ENV),
                std::env::var_os(TESSDATA_ENV),
            ) {
                let (bin, data) = (PathBuf::from(bin), PathBuf::from(data));
                return (bin.is_file() && data.is_dir()).then_some(Self {
                    program: bin,
                    lead: Vec::new(),
                    tessdata: data,
                });
            }
        }
        Self::on_disk(Path::new(APP_DISK_MOUNT))
    }

    /// Tesseract on an app disk mounted at `root`.
    pub fn on_disk(root: &Path) -> Option<Self> {
        let loader = root.join(DISK_LOADER);
        let binary = root.join("bin/tesseract");
        let tessdata = root.join("share/tessdata");
        if !(loader.is_file() && binary.is_file() && tessdata.is_dir()) {
            return None;
        }
        Some(Self {
            program: loader,
            lead: vec![
                "--library-path".into(),
                root.join("lib").into(),
                binary.into(),
            ],
            tessdata,
        })
    }

    /// Fails naming the first language of `langs` (`eng+deu`) whose
    /// traineddata is missing.
    pub fn check_languages(&self, langs: &str) -> Result<(), OcrError> {
        match langs
            .split('+')
            .find(|l| !self.tessdata.join(format!("{l}.traineddata")).is_file())
        {
            Some(lang) => Err(OcrError::MissingLanguage {
                lang: lang.to_owned(),
                dir: self.tessdata.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Recognises the words of the PNM image `page` (`width` x `height`)
    /// in a limited child; `dir` (writable by `identity`) takes its output.
    #[allow(clippy::too_many_arguments)]
    pub fn words(
        &self,
        page: &Path,
        (width, height): (u32, u32),
        langs: &str,
        dir: &Path,
        limits: ChildLimits,
        identity: Identity,
        deadline: Instant,
    ) -> Result<Page, OcrError> {
        self.check_languages(langs)?;
        let mut args = self.lead.clone();
        args.extend(
            [
                page.as_os_str(),
                "stdout".as_ref(),
                "-l".as_ref(),
                langs.as_ref(),
                "--psm".as_ref(),
                "3".as_ref(),
                // Not the `tsv` config file: the disk carries no configs.
                "-c".as_ref(),
                "tessedit_create_tsv=1".as_ref(),
            ]
            .map(OsString::from),
        );
        let out = dir.join("ocr.tsv");
        let err = dir.join("ocr.stderr");
        let mut cmd = limited_command(limits, identity, ChildStdio::Plain, &self.program, &args)?;
        // One thread: OpenMP's would count against the sandbox's nproc.
        cmd.env("TESSDATA_PREFIX", &self.tessdata)
            .env("OMP_THREAD_LIMIT", "1")
            .current_dir(dir)
            .stdout(Stdio::from(std::fs::File::create(&out)?))
            .stderr(Stdio::from(std::fs::File::create(&err)?));
        let outcome = Supervised::spawn(cmd, identity, deadline)?.wait()?;
        let result = match outcome {
            RunOutcome::TimedOut => Err(OcrError::TimedOut),
            RunOutcome::Exited(s) if !s.success() => Err(OcrError::Failed {
                status: describe(s),
                stderr: tail_of(&err, 400),
            }),
            RunOutcome::Exited(_) => {
                let mut tsv = String::new();
                std::fs::File::open(&out)?
                    .take(MAX_TSV_BYTES)
                    .read_to_string(&mut tsv)
                    .map_err(OcrError::from)
                    .and_then(|_| parse_tsv(&tsv, width, height))
            }
        };
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&err);
        result
    }
}

/// The words of one page.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Words in reading order, at most `MAX_WORDS_PER_PAGE`.
    pub words: Vec<OcrWord>,
    /// Words left out past the cap.
    pub dropped: usize,
}

/// Reads tesseract's TSV (`level page block par line word left top width
/// height conf text`): the word rows (level 5) with a confidence, their
/// text without spaces or control characters and cut to `MAX_WORD_BYTES`,
/// their boxes cut to the `width` x `height` page. Output without TSV's
/// header line is an error, not a page without words.
pub fn parse_tsv(tsv: &str, width: u32, height: u32) -> Result<Page, OcrError> {
    if !tsv.starts_with("level\t") {
        return Err(OcrError::NotTsv(tsv.chars().take(60).collect()));
    }
    let mut page = Page::default();
    for line in tsv.lines() {
        let Some(word) = parse_word(line, width, height) else {
            continue;
        };
        if page.words.len() >= MAX_WORDS_PER_PAGE {
            page.dropped += 1;
        } else {
            page.words.push(word);
        }
    }
    Ok(page)
}

fn parse_word(line: &str, width: u32, height: u32) -> Option<OcrWord> {
    let cols: Vec<&str> = line.splitn(12, '\t').collect();
    let [level, _, _, _, _, _, left, top, w, h, conf, text] = cols[..] else {
        return None;
    };
    if level != "5" || conf.trim().parse::<f32>().ok()? < 0.0 {
        return None;
    }
    let num = |s: &str| s.trim().parse::<u32>().ok();
    let (x, y, w, h) = (num(left)?, num(top)?, num(w)?, num(h)?);
    if x >= width || y >= height || w == 0 || h == 0 {
        return None;
    }
    let mut text: String = text
        .chars()
        .filter(|c| !c.is_control() && !c.is_whitespace())
        .collect();
    if text.is_empty() {
        return None;
    }
    if text.len() > MAX_WORD_BYTES {
        let mut end = MAX_WORD_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    Some(OcrWord {
        x,
        y,
        w: w.min(width - x),
        h: h.min(height - y),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext";

    #[test]
    fn word_rows_become_words_and_the_rest_is_skipped() {
        let tsv = format!(
            "{HEAD}\n1\t1\t0\t0\t0\t0\t0\t0\t800\t600\t-1\t\n\
             4\t1\t1\t1\t1\t0\t10\t10\t300\t40\t-1\t\n\
             5\t1\t1\t1\t1\t1\t10\t12\t120\t38\t96.5\tQuick\n\
             5\t1\t1\t1\t1\t2\t140\t12\t90\t38\t-1\tghost\n\
             5\t1\t1\t1\t1\t3\t240\t12\t60\t38\t91\t \n\
             5\t1\t1\t1\t1\t4\t790\t590\t60\t60\t90\tedge\n\
             5\tgarbage\n\
             5\t1\t1\t1\t1\t5\tx\t12\t60\t38\t91\tbad\n"
        );

        let page = parse_tsv(&tsv, 800, 600).unwrap();

        assert_eq!(
            page.words,
            vec![
                OcrWord {
                    x: 10,
                    y: 12,
                    w: 120,
                    h: 38,
                    text: "Quick".into()
                },
                OcrWord {
                    x: 790,
                    y: 590,
                    w: 10,
                    h: 10,
                    text: "edge".into()
                },
            ]
        );
        assert_eq!(page.dropped, 0);
    }

    #[test]
    fn long_words_are_cut_on_a_char_boundary_and_words_past_the_cap_dropped() {
        let long = "ü".repeat(MAX_WORD_BYTES);
        let row = |text: &str| format!("5\t1\t1\t1\t1\t1\t1\t1\t5\t5\t90\t{text}\n");
        let tsv = format!("{HEAD}\n") + &row(&long) + &row("w").repeat(MAX_WORDS_PER_PAGE + 2);

        let page = parse_tsv(&tsv, 100, 100).unwrap();

        assert_eq!(page.words.len(), MAX_WORDS_PER_PAGE);
        assert_eq!(page.dropped, 3);
        assert_eq!(page.words[0].text, "ü".repeat(MAX_WORD_BYTES / 2));
    }

    #[test]
    fn plain_text_instead_of_tsv_is_an_error_not_an_empty_page() {
        let err = parse_tsv("Quick brown fox\n", 100, 100).unwrap_err();

        assert!(matches!(err, OcrError::NotTsv(_)), "{err}");
        assert!(parse_tsv(&format!("{HEAD}\n"), 100, 100)
            .unwrap()
            .words
            .is_empty());
    }

    #[test]
    fn a_missing_language_names_its_traineddata_and_the_build_setting() {
        let dir = std::env::temp_dir().join(format!("vitrine-ocr-lang-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("eng.traineddata"), b"x").unwrap();
        let tess = Tesseract {
            program: "/bin/false".into(),
            lead: Vec::new(),
            tessdata: dir.clone(),
        };

        let ok = tess.check_languages("eng");
        let missing = tess.check_languages("eng+deu").unwrap_err().to_string();

        std::fs::remove_dir_all(&dir).unwrap();
        assert!(ok.is_ok());
        assert!(missing.contains("deu.traineddata"), "{missing}");
        assert!(missing.contains("VITRINE_OCR_LANGS"), "{missing}");
        assert!(missing.contains("tesseract-ocr-deu"), "{missing}");
    }
}
