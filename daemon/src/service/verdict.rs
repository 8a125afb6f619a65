//! The verdict of a task that reached `Done`: the words `TaskFinished`
//! carries and `vitrine` turns into its exit status. A program's end is its
//! result, so a run is clean only when the program exited 0; a document cut
//! short by the task's limits is clean and says so.
//!
//! Verdicts of a finished run (each a prefix the CLI matches):
//! - `clean` (a program: it exited 0)
//! - `exited: code N`
//! - `killed: signal N (SIGNAME)`
//! - `out of memory: ...` (the guest's kernel killed the program)
//! - `failed: REASON`, `timed-out`, `error: ...`

use vitrine_shim::protocol::{Limits, TaskStatus};

use crate::guest_log::{CutBy, PagesCut};
use crate::task::TaskRun;

/// The verdict of `run`, a task sent with `limits`.
pub fn of_run(run: &TaskRun, limits: &Limits) -> String {
    match &run.status {
        Some(TaskStatus::Ok) => {}
        Some(TaskStatus::Failed(reason)) => return format!("failed: {reason}"),
        Some(TaskStatus::TimedOut) => return "timed-out".to_owned(),
        None => return "error: the guest ended the task without a status".to_owned(),
    }
    if let Some((code, signal)) = run.program_exit {
        return program_end(code, signal, run.program_oom);
    }
    match run.pages_cut {
        Some(cut) => format!("clean, {}", cut_words(cut, limits)),
        None => "clean".to_owned(),
    }
}

fn program_end(code: Option<i32>, signal: Option<i32>, oom: bool) -> String {
    match (code, signal) {
        (Some(0), _) => "clean".to_owned(),
        _ if oom => "out of memory: the guest's kernel killed the program (SIGKILL) when \
                     the VM's memory ran out"
            .to_owned(),
        (Some(code), _) => format!("exited: code {code}"),
        (None, Some(signal)) => format!("killed: signal {signal} ({})", signal_name(signal)),
        (None, None) => "error: the program ended without an exit code or a signal".to_owned(),
    }
}

/// What the guest's LibreOffice did, in words.
pub fn office_words(run: crate::guest_log::OfficeRun) -> String {
    format!(
        "{} converted to PDF in the VM by {} in {:.1} s; macros did not run (nothing was \
         written outside LibreOffice's output)",
        run.format,
        if run.preloaded {
            "the LibreOffice preloaded in its template"
        } else {
            "a LibreOffice started for it"
        },
        run.ms as f64 / 1000.0
    )
}

/// "showing N of M pages; the rest are past ..." in words.
pub fn cut_words(cut: PagesCut, limits: &Limits) -> String {
    let limit = match cut.by {
        CutBy::PageCap => format!("the task's page cap of {} pages", limits.max_pages),
        CutBy::PixelBudget => format!(
            "the task's pixel budget of {} MiB",
            limits.max_pixel_bytes >> 20
        ),
    };
    format!(
        "showing {} of {} pages; the rest are past {limit}",
        cut.shown,
        total_words(cut)
    )
}

/// How many pages a cut document has: "1724", "more than 200" (the guest
/// converted one page past what it showed), or "at least 250".
pub fn total_words(cut: PagesCut) -> String {
    if !cut.at_least {
        cut.total.to_string()
    } else if cut.total == cut.shown.saturating_add(1) {
        format!("more than {}", cut.shown)
    } else {
        format!("at least {}", cut.total)
    }
}

/// The name of Linux signal `n` (x86-64 numbering).
fn signal_name(n: i32) -> &'static str {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(n - 1)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("a real-time signal")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(code: Option<i32>, signal: Option<i32>, oom: bool) -> TaskRun {
        TaskRun {
            status: Some(TaskStatus::Ok),
            program_exit: Some((code, signal)),
            program_oom: oom,
            ..TaskRun::default()
        }
    }

    #[test]
    fn a_program_is_clean_only_when_it_exits_zero() {
        let limits = Limits::default();

        assert_eq!(of_run(&program(Some(0), None, false), &limits), "clean");
        assert_eq!(
            of_run(&program(Some(3), None, false), &limits),
            "exited: code 3"
        );
        assert_eq!(
            of_run(&program(None, Some(11), false), &limits),
            "killed: signal 11 (SIGSEGV)"
        );
        assert_eq!(
            of_run(&program(None, Some(9), true), &limits),
            "out of memory: the guest's kernel killed the program (SIGKILL) when the VM's \
             memory ran out"
        );
    }

    #[test]
    fn a_document_cut_by_a_limit_is_clean_and_names_the_limit() {
        let limits = Limits::default();
        let cut = |by| TaskRun {
            status: Some(TaskStatus::Ok),
            pages_cut: Some(PagesCut {
                shown: 135,
                total: 1724,
                at_least: false,
                by,
            }),
            ..TaskRun::default()
        };

        assert_eq!(
            of_run(&cut(CutBy::PixelBudget), &limits),
            "clean, showing 135 of 1724 pages; the rest are past the task's pixel budget of \
             512 MiB"
        );
        assert_eq!(
            of_run(&cut(CutBy::PageCap), &limits),
            "clean, showing 135 of 1724 pages; the rest are past the task's page cap of 500 pages"
        );
    }

    #[test]
    fn a_document_known_only_to_pass_the_cap_says_more_than() {
        let limits = Limits {
            max_pages: 200,
            ..Limits::default()
        };
        let cut = |total| PagesCut {
            shown: 200,
            total,
            at_least: true,
            by: CutBy::PageCap,
        };

        assert_eq!(
            cut_words(cut(201), &limits),
            "showing 200 of more than 200 pages; the rest are past the task's page cap of \
             200 pages"
        );
        assert_eq!(
            cut_words(cut(250), &limits),
            "showing 200 of at least 250 pages; the rest are past the task's page cap of \
             200 pages"
        );
    }
}
