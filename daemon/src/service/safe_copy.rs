//! The safe copy of a document: a PDF the host rebuilds from the page
//! bitmaps the guest rendered, with the words its OCR found as invisible
//! text. Nothing of the original file crosses: the guest's part is bounded
//! pixels and bounded words, both checked before they were kept
//! (`task::check_print`), and the file is written by the host's own PDF
//! writer (`crate::safe_pdf`).

use std::path::{Path, PathBuf};

use vitrine_policy::profile::{ExportCheck, ExportRefusal, ExportRules};
use vitrine_shim::protocol::{Limits, SafeCopy, TaskStatus};

use super::export_gate;
use crate::pages::PageImage;
use crate::safe_pdf::{self, SafePage, SafePdfMeta, SafeWord};
use crate::task::TaskRun;

/// Long side of a safe copy's pages: A4 at 150 dpi, what Dangerzone uses.
pub const PRINT_LONG_SIDE: u32 = 1754;

/// Whether a safe copy gets a text layer, and in which language.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Ocr {
    /// As the profile's `export.ocr` says.
    #[default]
    Profile,
    /// No text layer.
    Off,
    /// OCR in these tesseract language(s) (`eng`, `eng+deu`).
    Language(String),
}

/// What a caller asked of a safe copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SafeCopyRequest {
    /// The text layer.
    pub ocr: Ocr,
    /// Folder for the copy; `None`: beside the input, else the exports folder.
    pub out_dir: Option<PathBuf>,
}

/// A safe copy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SafeCopyError {
    /// The profile's export rules let no PDF out.
    #[error("the profile `{profile}` lets no safe copy out: {why}")]
    Refused {
        /// Profile.
        profile: String,
        /// Which rule.
        why: String,
    },
    /// Only files have pages to copy.
    #[error("only a file can be saved as a safe copy")]
    NotAFile,
    /// The guest did not render every page.
    #[error("the document was not rendered whole: {0}")]
    Incomplete(String),
    /// The PDF could not be built.
    #[error("cannot build the PDF")]
    Pdf(#[from] safe_pdf::SafePdfError),
    /// The PDF is larger than the profile lets out.
    #[error("the safe copy is {size} bytes, over the profile's export limit of {max}")]
    TooLarge {
        /// Size of the PDF.
        size: u64,
        /// The profile's limit.
        max: u64,
    },
    /// The file could not be written.
    #[error("cannot write the safe copy")]
    Write(#[from] export_gate::ExportGateError),
}

/// Checks that `rules` let a PDF out: the copy is an export, flattened by
/// construction, so only the mode and the type list can refuse it.
pub fn allowed(profile: &str, rules: &ExportRules) -> Result<(), SafeCopyError> {
    let refused = |why: String| SafeCopyError::Refused {
        profile: profile.to_owned(),
        why,
    };
    match rules.check("application/pdf", 0) {
        ExportCheck::Refused(ExportRefusal::ExportDenied) => {
            Err(refused("its exports are denied".into()))
        }
        ExportCheck::Refused(ExportRefusal::TypeNotAllowed) => Err(refused(
            "application/pdf is not among its export types".into(),
        )),
        ExportCheck::Refused(ExportRefusal::TooLarge) => {
            Err(refused("its export size limit is zero".into()))
        }
        ExportCheck::AskUser { .. } | ExportCheck::Allowed { .. } => Ok(()),
    }
}

/// The guest limits of a safe-copy task: pages up to print size whatever
/// the profile's display, the same pixel budget and page cap.
pub fn print_limits(mut limits: Limits) -> Limits {
    limits.max_width = limits.max_width.max(PRINT_LONG_SIDE);
    limits.max_height = limits.max_height.max(PRINT_LONG_SIDE);
    limits
}

/// The protocol's part of a request, the profile's OCR language filled in.
pub fn protocol(request: &SafeCopyRequest, rules: &ExportRules) -> SafeCopy {
    SafeCopy {
        ocr: match &request.ocr {
            Ocr::Profile => rules.ocr.clone(),
            Ocr::Off => None,
            Ocr::Language(lang) => Some(lang.clone()),
        },
    }
}

/// The copy's `/Producer`.
pub fn producer() -> String {
    format!(
        "Vitrine {} safe copy, rebuilt from page pixels",
        env!("CARGO_PKG_VERSION")
    )
}

/// `report.pdf` -> `report-safe.pdf`; `notes` -> `notes-safe.pdf`.
pub fn copy_name(input_name: &str) -> String {
    let stem = match input_name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => input_name,
    };
    format!("{stem}-safe.pdf")
}

/// One page of a finished run with its print data.
#[derive(Debug)]
pub struct PrintedPage<'a> {
    /// Pixels.
    pub image: &'a PageImage,
    /// Pixels per inch.
    pub dpi: u32,
    /// OCR words.
    pub words: Vec<SafeWord>,
}

/// The pages of a finished run, checked whole: every announced page came,
/// fully painted, with its print data.
pub fn pages_of(run: &TaskRun) -> Result<Vec<PrintedPage<'_>>, SafeCopyError> {
    let incomplete = |why: String| SafeCopyError::Incomplete(why);
    match &run.status {
        Some(TaskStatus::Ok) => {}
        other => return Err(incomplete(format!("the guest ended with {other:?}"))),
    }
    if let Some(cut) = run.pages_cut {
        return Err(incomplete(format!(
            "{} of {} pages fit the task's limits ({:?})",
            cut.shown,
            super::verdict::total_words(cut),
            cut.by
        )));
    }
    let count = run
        .page_count
        .ok_or_else(|| incomplete("no page count came".into()))?;
    if count == 0 {
        return Err(incomplete("the document has no pages".into()));
    }
    let mut pages = Vec::new();
    for index in 0..count {
        let missing = |what: &str| incomplete(format!("page {} has no {what}", index + 1));
        let image: &PageImage = run.pages.get(&index).ok_or_else(|| missing("pixels"))?;
        let area = u64::from(image.width) * u64::from(image.height);
        if run.painted.get(&index).copied().unwrap_or(0) < area {
            return Err(incomplete(format!(
                "page {} was not painted whole",
                index + 1
            )));
        }
        let print = run
            .prints
            .get(&index)
            .ok_or_else(|| missing("print data"))?;
        pages.push((image, print));
    }
    Ok(pages
        .into_iter()
        .map(|(image, print)| PrintedPage {
            image,
            dpi: print.dpi,
            words: print
                .words
                .iter()
                .map(|w| SafeWord {
                    x: w.x,
                    y: w.y,
                    w: w.w,
                    h: w.h,
                    text: w.text.clone(),
                })
                .collect(),
        })
        .collect())
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Pages.
    pub pages: usize,
    /// OCR words placed.
    pub words: usize,
}

/// Builds the PDF of `run` and writes it as `dir/NAME-safe.pdf` (or
/// `NAME-safe (2).pdf`, ...: never over a file), atomically.
pub fn write(
    run: &TaskRun,
    input_name: &str,
    dir: &Path,
    rules: &ExportRules,
    meta: &SafePdfMeta,
) -> Result<Written, SafeCopyError> {
    let printed = pages_of(run)?;
    let pages: Vec<SafePage<'_>> = printed
        .iter()
        .map(|p| SafePage {
            image: p.image,
            dpi: p.dpi,
            words: &p.words,
        })
        .collect();
    let words = pages.iter().map(|p| p.words.len()).sum();
    let pdf = safe_pdf::write_safe_pdf(&pages, meta)?;
    let size = u64::try_from(pdf.len()).unwrap_or(u64::MAX);
    if size > rules.max_bytes {
        return Err(SafeCopyError::TooLarge {
            size,
            max: rules.max_bytes,
        });
    }
    let sha256 = export_gate::data_hash_hex(&pdf);
    let path = export_gate::write_new(dir, &copy_name(input_name), &pdf, &sha256)?;
    Ok(Written {
        path,
        bytes: size,
        sha256,
        pages: pages.len(),
        words,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_named_after_the_input_without_its_extension() {
        assert_eq!(copy_name("report.pdf"), "report-safe.pdf");
        assert_eq!(copy_name("scan.final.png"), "scan.final-safe.pdf");
        assert_eq!(copy_name("notes"), "notes-safe.pdf");
        assert_eq!(copy_name(".hidden"), ".hidden-safe.pdf");
    }

    #[test]
    fn print_limits_raise_the_page_size_and_keep_the_budget() {
        let limits = Limits {
            max_width: 1920,
            max_height: 1200,
            ..Limits::default()
        };

        let print = print_limits(limits);

        assert_eq!((print.max_width, print.max_height), (1920, PRINT_LONG_SIDE));
        assert_eq!(print.max_pixel_bytes, limits.max_pixel_bytes);
        assert_eq!(print.max_pages, limits.max_pages);
    }
}
