//! What `/proc` says about the process behind an event: its executable,
//! real uid, command line and working directory.
//!
//! Only procfs is read (no watched filesystem is ever opened from the event
//! thread), and the reads are made before the event is answered, while the
//! process still waits in `execve`/`open`.

use std::path::{Component, Path, PathBuf};

/// Longest command line read.
const MAX_CMDLINE: usize = 64 * 1024;

/// `/proc/PID/exe`, resolved.
pub fn exe(pid: i32) -> Option<String> {
    link(&format!("/proc/{pid}/exe"))
}

/// `/proc/PID/cwd`, resolved.
pub fn cwd(pid: i32) -> Option<String> {
    link(&format!("/proc/{pid}/cwd"))
}

/// The real uid from `/proc/PID/status`.
pub fn real_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    real_uid_of_status(&status)
}

/// `/proc/PID/cmdline`, split at its NULs.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    use std::io::Read;
    let file = std::fs::File::open(format!("/proc/{pid}/cmdline")).ok()?;
    let mut raw = Vec::new();
    file.take(MAX_CMDLINE as u64).read_to_end(&mut raw).ok()?;
    let raw = raw.strip_suffix(b"\0").unwrap_or(&raw);
    Some(
        raw.split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The path an fd resolves to: `/proc/self/fd/N` (a readlink, no open).
pub fn fd_path(fd: i32) -> Option<String> {
    link(&format!("/proc/self/fd/{fd}"))
}

fn link(proc_path: &str) -> Option<String> {
    std::fs::read_link(proc_path)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn real_uid_of_status(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line["Uid:".len()..].split_whitespace().next()?.parse().ok()
}

/// The arguments after the script in an interpreter's command line: the
/// first argument after `argv[0]` that names `script` (relative ones taken
/// from `cwd`). `None` when no argument names it (`sh < file`, `-c`).
pub fn args_after_script(
    cmdline: &[String],
    cwd: Option<&str>,
    script: &str,
) -> Option<Vec<String>> {
    let script = Path::new(script);
    let at = cmdline.iter().skip(1).position(|arg| {
        let arg = Path::new(arg);
        let full = match cwd {
            Some(cwd) if arg.is_relative() => Path::new(cwd).join(arg),
            _ => arg.to_owned(),
        };
        normalized(&full) == script
    })?;
    Some(cmdline[at + 2..].to_vec())
}

/// `a/./b/../c` as `a/c`, without looking at the filesystem.
fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args_after_a_relative_script_are_found_from_the_cwd() {
        let cmdline = strings(&["python3", "-u", "./in/../run.py", "--fast", "a b"]);

        let args = args_after_script(&cmdline, Some("/home/u/dl"), "/home/u/dl/run.py");

        assert_eq!(args, Some(strings(&["--fast", "a b"])));
    }

    #[test]
    fn args_after_an_absolute_script_and_none_without_it() {
        let cmdline = strings(&["sh", "/tmp/x.sh"]);

        assert_eq!(args_after_script(&cmdline, None, "/tmp/x.sh"), Some(vec![]));
        assert_eq!(args_after_script(&cmdline, None, "/tmp/y.sh"), None);
        assert_eq!(
            args_after_script(&strings(&["/tmp/x.sh"]), None, "/tmp/x.sh"),
            None
        );
    }

    #[test]
    fn real_uid_is_the_first_uid_field() {
        let status = "Name:\tsh\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";

        assert_eq!(real_uid_of_status(status), Some(1000));
        assert_eq!(real_uid_of_status("Name:\tsh\n"), None);
    }

    #[test]
    fn own_process_is_read_from_proc() {
        let pid = i32::try_from(std::process::id()).unwrap();

        assert_eq!(real_uid(pid), Some(rustix::process::getuid().as_raw()));
        assert!(cmdline(pid).unwrap()[0].contains("vitrine_daemon"));
        assert_eq!(
            cwd(pid).unwrap(),
            std::env::current_dir().unwrap().display().to_string()
        );
    }
}
