//! PDF through poppler's `pdfinfo` and `pdftoppm`, each in a limited child.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use crate::sandbox::{
    describe, find_tool, limited_command, tail_of, ChildLimits, ChildStdio, Identity, RunOutcome,
    SandboxError, Supervised,
};

/// A PDF could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum PdfError {
    /// poppler-utils is not installed.
    #[error("{0} is not installed (Debian package poppler-utils)")]
    Missing(&'static str),
    /// The child could not run.
    #[error("cannot run poppler")]
    Sandbox(#[from] SandboxError),
    /// The child failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// Tool.
        tool: &'static str,
        /// Exit description.
        status: String,
        /// End of its stderr.
        stderr: String,
    },
    /// The deadline passed.
    #[error("{0} ran out of time")]
    TimedOut(&'static str),
    /// pdfinfo printed no page count.
    #[error("pdfinfo reported no page count")]
    NoPageCount,
    /// A log file could not be made.
    #[error("cannot create a log file")]
    Io(#[from] std::io::Error),
    /// The output page is missing.
    #[error("pdftoppm produced no page {0}")]
    MissingPage(u32),
}

/// True when pdftoppm and pdfinfo are installed.
pub fn available() -> bool {
    find_tool("pdftoppm").is_some() && find_tool("pdfinfo").is_some()
}

/// How to run poppler for one task.
#[derive(Debug, Clone)]
pub struct PdfJob {
    /// The PDF.
    pub input: PathBuf,
    /// Where pages and logs go (writable by the sandbox identity).
    pub out_dir: PathBuf,
    /// Limits of each child.
    pub limits: ChildLimits,
    /// Who the children run as.
    pub identity: Identity,
    /// Kill time.
    pub deadline: Instant,
    /// Long side of a rendered page, in pixels.
    pub scale_to: u32,
}

impl PdfJob {
    fn run(
        &self,
        tool: &'static str,
        args: &[OsString],
        stdout: Option<&Path>,
    ) -> Result<(), PdfError> {
        let program = find_tool(tool).ok_or(PdfError::Missing(tool))?;
        let stderr_path = self.out_dir.join(format!("{tool}.stderr"));
        let mut cmd = limited_command(
            self.limits,
            self.identity,
            ChildStdio::Plain,
            &program,
            args,
        )?;
        cmd.current_dir(&self.out_dir)
            .stderr(Stdio::from(std::fs::File::create(&stderr_path)?))
            .stdout(match stdout {
                Some(p) => Stdio::from(std::fs::File::create(p)?),
                None => Stdio::null(),
            });
        let mut child = Supervised::spawn(cmd, self.identity, self.deadline)?;
        match child.wait()? {
            RunOutcome::TimedOut => Err(PdfError::TimedOut(tool)),
            RunOutcome::Exited(status) if status.success() => Ok(()),
            RunOutcome::Exited(status) => Err(PdfError::Failed {
                tool,
                status: describe(status),
                stderr: tail_of(&stderr_path, 400),
            }),
        }
    }

    /// Number of pages, from pdfinfo.
    pub fn page_count(&self) -> Result<u32, PdfError> {
        self.page_info(None).map(|info| info.pages)
    }

    /// Number of pages and, with `sizes_to`, the sizes of pages
    /// `1..=sizes_to` (pdfinfo stops at the last page).
    pub fn page_info(&self, sizes_to: Option<u32>) -> Result<PdfInfo, PdfError> {
        let out = self.out_dir.join("pdfinfo.txt");
        let mut args: Vec<OsString> = Vec::new();
        if let Some(last) = sizes_to {
            args.extend([
                "-f".into(),
                "1".into(),
                "-l".into(),
                last.to_string().into(),
            ]);
        }
        args.push(self.input.clone().into());
        self.run("pdfinfo", &args, Some(&out))?;
        // Two lines a page with sizes: room for the page cap's worth.
        let text = tail_of(&out, 1 << 20);
        Ok(PdfInfo {
            pages: parse_page_count(&text).ok_or(PdfError::NoPageCount)?,
            long_sides: parse_long_sides(&text),
        })
    }

    /// Renders pages `first..=last` to PPM files; returns their paths in order.
    pub fn render(&self, first: u32, last: u32) -> Result<Vec<PathBuf>, PdfError> {
        let prefix = format!("pages-{first}");
        let args: Vec<OsString> = vec![
            "-f".into(),
            first.to_string().into(),
            "-l".into(),
            last.to_string().into(),
            "-scale-to".into(),
            self.scale_to.to_string().into(),
            self.input.clone().into(),
            self.out_dir.join(&prefix).into(),
        ];
        self.run("pdftoppm", &args, None)?;
        // pdftoppm names pages PREFIX-N.ppm with N zero-padded to the width
        // of the document's page count; match on the parsed number.
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(&self.out_dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let num = name
                    .strip_prefix(&prefix)?
                    .strip_prefix('-')?
                    .strip_suffix(".ppm")?
                    .parse()
                    .ok()?;
                Some((num, e.path()))
            })
            .collect();
        found.sort();
        (first..=last)
            .map(|n| {
                found
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, p)| p.clone())
                    .ok_or(PdfError::MissingPage(n))
            })
            .collect()
    }
}

/// What pdfinfo says of a document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PdfInfo {
    /// Pages in the document.
    pub pages: u32,
    /// Long side in points of each page asked for, by page number from 1.
    pub long_sides: std::collections::BTreeMap<u32, f64>,
}

/// `Page    N size: W x H pts ...` lines as page number -> max(W, H).
fn parse_long_sides(info: &str) -> std::collections::BTreeMap<u32, f64> {
    info.lines()
        .filter_map(|l| {
            let (num, size) = l.strip_prefix("Page ")?.split_once(" size:")?;
            let mut it = size.split_whitespace();
            let w: f64 = it.next()?.parse().ok()?;
            let h: f64 = it.nth(1)?.parse().ok()?;
            let long = w.max(h);
            (long.is_finite() && long > 0.0).then_some((num.trim().parse().ok()?, long))
        })
        .collect()
}

fn parse_page_count(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_count_is_read_from_pdfinfo_output() {
        let info = "Title:  x\nPages:          3\nEncrypted:      no\n";

        assert_eq!(parse_page_count(info), Some(3));
        assert_eq!(parse_page_count("Pages: many"), None);
    }

    #[test]
    fn page_sizes_are_read_as_long_sides_and_odd_lines_skipped() {
        let info = "Pages:          3\nPage    1 size: 595.276 x 841.89 pts (A4)\n\
                    Page    1 rot:  0\nPage    2 size: 842 x 595 pts\nPage    3 size: 0 x 0 pts\n\
                    Page size:      595 x 842 pts\n";

        let sides = parse_long_sides(info);

        assert_eq!(sides.len(), 2);
        assert_eq!(sides[&1], 841.89);
        assert_eq!(sides[&2], 842.0);
    }
}
