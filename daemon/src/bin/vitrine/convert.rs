//! `vitrine convert`: safe copies of a batch of files, one VM per file,
//! through `SaveSafeCopy`. Each file's pages come back as pixels and the
//! host rebuilds a PDF of them (with OCR text when asked) beside it or in
//! `--out`. A file that fails is reported with its reason and leaves no file
//! behind; the batch goes on, and the exit status says whether any failed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use zbus::zvariant::Value;

use super::{one_line, open_regular, shown, Bus, Interrupted};

/// One file's outcome.
#[derive(Debug)]
struct Outcome {
    file: String,
    /// The safe copy, or why there is none.
    result: std::result::Result<Copy, String>,
}

#[derive(Debug)]
struct Copy {
    path: String,
    pages: String,
    words: String,
    bytes: u64,
}

/// Converts `files`; exit 0 when every one has its safe copy, else 1.
/// `ocr` is the `SaveSafeCopy` option (a language, or `false`); `None`
/// leaves it to the profile.
pub async fn run(
    files: &[PathBuf],
    ocr: Option<Value<'static>>,
    out: Option<&Path>,
) -> Result<ExitCode> {
    let out = out
        .map(|dir| {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", shown(dir)))?;
            std::path::absolute(dir).with_context(|| format!("resolving {}", shown(dir)))
        })
        .transpose()?;
    let bus = Bus::connect().await?;
    let bar = ProgressBar::new(u64::try_from(files.len()).unwrap_or(u64::MAX));
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("converting");
    let mut outcomes = Vec::with_capacity(files.len());
    for file in files {
        let name = shown(file);
        bar.set_message(name.clone());
        let result = convert_one(&bus, file, ocr.as_ref(), out.as_deref()).await;
        let result = match result {
            Ok(r) => r,
            // A stop signal ends the batch: the running task was cancelled.
            Err(e) if e.is::<Interrupted>() => {
                bar.abandon();
                return Err(e);
            }
            Err(e) => Err(one_line(&format!("{e:#}"))),
        };
        match &result {
            Ok(copy) => bar.println(format!("ok      {name} -> {}", copy.path)),
            Err(why) => bar.println(format!("FAILED  {name}: {why}")),
        }
        outcomes.push(Outcome { file: name, result });
        bar.inc(1);
    }
    bar.finish_and_clear();
    print!("{}", summary(&outcomes));
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn convert_one(
    bus: &Bus,
    file: &Path,
    ocr: Option<&Value<'static>>,
    out: Option<&Path>,
) -> Result<std::result::Result<Copy, String>> {
    let handle = match open_regular(file) {
        Ok(h) => h,
        Err(e) => return Ok(Err(one_line(&format!("{e:#}")))),
    };
    let mut options: HashMap<&str, Value<'_>> = HashMap::new();
    if let Some(ocr) = ocr {
        options.insert("ocr", ocr.try_clone()?);
    }
    if let Some(dir) = out {
        options.insert("out-dir", Value::from(dir.to_string_lossy().into_owned()));
    }
    let name = file.to_string_lossy().into_owned();
    let fd = zbus::zvariant::Fd::from(&handle);
    let task = bus
        .start("SaveSafeCopy", &(fd, name.as_str(), options))
        .await?;
    let done = bus.wait(task).await?;
    let path = done.detail("safe-copy");
    if !done.verdict.starts_with("clean") || path.is_empty() {
        return Ok(Err(reason(&done.verdict)));
    }
    Ok(Ok(Copy {
        path: one_line(&path),
        pages: done.detail("safe-copy-pages"),
        words: done.detail("safe-copy-words"),
        bytes: done.detail("safe-copy-bytes").parse().unwrap_or(0),
    }))
}

/// Longest reason the table shows.
const REASON_CHARS: usize = 160;

/// A verdict on one line of the table: its lines joined, repeats dropped,
/// cut at [`REASON_CHARS`] (the task's details keep it whole).
fn reason(verdict: &str) -> String {
    let text = vitrine_policy::diagnostics::printable(verdict);
    let mut lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.dedup();
    let joined = lines.join("; ");
    match joined.char_indices().nth(REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}

/// The batch as a table, then a count line.
fn summary(outcomes: &[Outcome]) -> String {
    let width = outcomes
        .iter()
        .map(|o| o.file.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 48);
    let mut text = format!(
        "{:<width$}  {:<6}  {:>5}  {:>6}  {:>9}  OUTPUT OR REASON\n",
        "FILE", "RESULT", "PAGES", "WORDS", "SIZE"
    );
    for o in outcomes {
        let file = one_line(&o.file);
        match &o.result {
            Ok(c) => text.push_str(&format!(
                "{file:<width$}  {:<6}  {:>5}  {:>6}  {:>9}  {}\n",
                "ok",
                c.pages,
                c.words,
                size_text(c.bytes),
                c.path
            )),
            Err(why) => text.push_str(&format!(
                "{file:<width$}  {:<6}  {:>5}  {:>6}  {:>9}  {why}\n",
                "FAILED", "-", "-", "-"
            )),
        }
    }
    let ok = outcomes.iter().filter(|o| o.result.is_ok()).count();
    text.push_str(&format!(
        "{ok} of {} converted, {} failed\n",
        outcomes.len(),
        outcomes.len() - ok
    ));
    text
}

fn size_text(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss, reason = "a size to one decimal")]
    let mib = bytes as f64 / f64::from(1u32 << 20);
    if bytes >= 1 << 20 {
        format!("{mib:.1} MiB")
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lists_each_file_and_counts_the_failures() {
        let outcomes = vec![
            Outcome {
                file: "a.pdf".into(),
                result: Ok(Copy {
                    path: "/out/a-safe.pdf".into(),
                    pages: "3".into(),
                    words: "120".into(),
                    bytes: 3 << 20,
                }),
            },
            Outcome {
                file: "bomb.docx".into(),
                result: Err("failed: pdf: not a document".into()),
            },
        ];

        let table = summary(&outcomes);

        assert!(table.contains("a.pdf"), "{table}");
        assert!(table.contains("3.0 MiB"), "{table}");
        assert!(table.contains("/out/a-safe.pdf"), "{table}");
        assert!(
            table.contains("FAILED") && table.contains("failed: pdf: not a document"),
            "{table}"
        );
        assert!(table.ends_with("1 of 2 converted, 1 failed\n"), "{table}");
    }

    #[test]
    fn a_long_guest_reason_is_one_short_line() {
        let verdict = format!(
            "failed: pdf: pdfinfo failed (exit code 1):\nSyntax Error\nSyntax Error\n\x1b[31m{}",
            "x".repeat(500)
        );

        let line = reason(&verdict);

        assert!(
            line.starts_with(
                "failed: pdf: pdfinfo failed (exit code 1):; Syntax Error; \u{fffd}[31m"
            ),
            "{line}"
        );
        assert_eq!(line.chars().count(), REASON_CHARS + 1, "{line}");
        assert!(line.ends_with('…') && !line.contains('\n'), "{line}");
    }
}
