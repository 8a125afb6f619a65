//! The real `vitrine-guard` on a tmpfs mounted for each test, with real
//! execs: marked programs and scripts fail with EPERM and the subscribed
//! daemon is told; unmarked ones run; the kernel's answer when the guard
//! dies; a guard run from the filesystem it watches. Root only (each test
//! says SKIPPED otherwise).

mod guard_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guard_support::{busybox_as, root_or_skip, run, set_xattr, RunningGuard, Subscriber, Tmpfs};
use vitrine_daemon::guard::wire::{DenyKind, GuardMessage};

const GUARD: &str = env!("CARGO_BIN_EXE_vitrine-guard");
const UNTRUSTED: &str = "user.vitrine.untrusted";

/// Field order is drop order: the guard goes before its mount.
struct Setup {
    guard: RunningGuard,
    sub: Subscriber,
    fs: Tmpfs,
    dir: tempfile::TempDir,
}

fn setup(test: &str, extra_config: &str) -> Option<Setup> {
    if !root_or_skip(test) {
        return None;
    }
    let fs = Tmpfs::mount(test)?;
    let dir = tempfile::tempdir().unwrap();
    let config = fs.config(dir.path(), extra_config);
    let socket = dir.path().join("guard.sock");
    let guard = RunningGuard::start(test, Path::new(GUARD), &config, &socket)?;
    let sub = Subscriber::connect(&socket);
    Some(Setup {
        guard,
        sub,
        fs,
        dir,
    })
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_eperm(result: &std::io::Result<std::process::Output>) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::EPERM))
}

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn marked_static_program_fails_with_eperm_and_its_daemon_is_told() {
    const T: &str = "marked_static_program_fails_with_eperm_and_its_daemon_is_told";
    let Some(mut s) = setup(T, "") else { return };
    let Some(prog) = busybox_as(T, &s.fs.mnt, "echo") else {
        return;
    };
    set_xattr(&prog, UNTRUSTED, b"1");
    let meta = std::fs::metadata(&prog).unwrap();

    let direct = run({
        let mut c = Command::new(&prog);
        c.arg("hi");
        c
    });
    let direct_denial = s.sub.denied();
    let via_sh = Command::new("/bin/sh")
        .args(["-c", "exec \"$0\" hi"])
        .arg(&prog)
        .output_with_pid();
    let sh_denial = s.sub.denied();

    assert_eq!(
        s.sub.hello,
        GuardMessage::Hello {
            version: 1,
            guard_pid: s.guard.child.id(),
            uid: 0
        }
    );
    assert!(is_eperm(&direct), "{direct:?}");
    assert_eq!(direct_denial.path, prog.display().to_string());
    assert_eq!(
        (direct_denial.dev, direct_denial.ino),
        (meta.dev(), meta.ino())
    );
    assert_eq!(direct_denial.size, meta.len());
    assert_eq!(direct_denial.uid, 0);
    assert_eq!(direct_denial.how, DenyKind::Exec);
    assert_eq!(direct_denial.reason, UNTRUSTED);
    assert_eq!(direct_denial.args, None);
    let (sh_pid, sh_out) = via_sh;
    assert_eq!(sh_denial.pid, sh_pid);
    // The shell is a listed interpreter, but the exec event comes first.
    assert_eq!(sh_denial.how, DenyKind::Exec);
    assert_eq!(sh_denial.path, direct_denial.path);
    assert!(!sh_out.status.success());
    assert!(
        String::from_utf8_lossy(&sh_out.stderr).contains("not permitted"),
        "{sh_out:?}"
    );
    assert_eq!(sh_out.stdout, b"");
}

/// `output()` that also says which pid ran.
trait OutputWithPid {
    fn output_with_pid(&mut self) -> (u32, std::process::Output);
}

impl OutputWithPid for Command {
    fn output_with_pid(&mut self) -> (u32, std::process::Output) {
        let child = self
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        (pid, child.wait_with_output().unwrap())
    }
}

#[test]
fn unmarked_static_program_runs_on_the_host() {
    const T: &str = "unmarked_static_program_runs_on_the_host";
    let Some(s) = setup(T, "") else { return };
    let Some(prog) = busybox_as(T, &s.fs.mnt, "echo") else {
        return;
    };

    let out = run({
        let mut c = Command::new(&prog);
        c.arg("hello from the host");
        c
    })
    .unwrap();

    assert!(out.status.success());
    assert_eq!(stdout(&out), "hello from the host\n");
    assert!(!s.guard.log_has("denied"), "{:?}", s.guard.log());
}

#[test]
fn marked_shebang_script_is_denied_as_an_exec() {
    const T: &str = "marked_shebang_script_is_denied_as_an_exec";
    let Some(mut s) = setup(T, "") else { return };
    let path = script(&s.fs.mnt, "setup.sh", "#!/bin/sh\necho ran\n");
    set_xattr(&path, UNTRUSTED, b"1");

    let result = run(Command::new(&path));
    let denial = s.sub.denied();

    assert!(is_eperm(&result), "{result:?}");
    assert_eq!(denial.path, path.display().to_string());
    assert_eq!(denial.how, DenyKind::Exec);
}

#[test]
fn listed_interpreters_are_denied_a_marked_script_with_the_args_after_it() {
    const T: &str = "listed_interpreters_are_denied_a_marked_script_with_the_args_after_it";
    let Some(mut s) = setup(T, "") else { return };
    let sh_script = script(&s.fs.mnt, "marked.sh", "echo ran \"$@\"\n");
    let py_script = script(&s.fs.mnt, "marked.py", "print('ran')\n");
    set_xattr(&sh_script, UNTRUSTED, b"1");
    set_xattr(&py_script, UNTRUSTED, b"1");
    let python = Path::new("/usr/bin/python3");

    let sh_out = run({
        let mut c = Command::new("sh");
        c.args(["marked.sh", "a", "b c"]).current_dir(&s.fs.mnt);
        c
    })
    .unwrap();
    let sh_denial = s.sub.denied();
    let py = python.exists().then(|| {
        let out = run({
            let mut c = Command::new(python);
            c.arg(&py_script).arg("--fast");
            c
        })
        .unwrap();
        (out, s.sub.denied())
    });
    // python3 opens its script twice: one denial, one task.
    s.sub.nothing_within(Duration::from_millis(300));

    assert!(!sh_out.status.success());
    assert_eq!(stdout(&sh_out), "");
    assert_eq!(
        sh_denial.how,
        DenyKind::Interpreter {
            interpreter: std::fs::canonicalize("/bin/sh")
                .unwrap()
                .display()
                .to_string()
        }
    );
    assert_eq!(sh_denial.path, sh_script.display().to_string());
    assert_eq!(
        sh_denial.args,
        Some(vec!["a".to_string(), "b c".to_string()])
    );
    assert_eq!(sh_denial.cwd, Some(s.fs.mnt.display().to_string()));
    match py {
        Some((out, denial)) => {
            assert!(!out.status.success());
            assert_eq!(stdout(&out), "");
            assert_eq!(
                denial.how,
                DenyKind::Interpreter {
                    interpreter: std::fs::canonicalize(python).unwrap().display().to_string()
                }
            );
            assert_eq!(denial.args, Some(vec!["--fast".to_string()]));
        }
        None => guard_support::loud(&format!("SKIPPED part of {T}: no /usr/bin/python3")),
    }
}

#[test]
fn file_marked_after_the_guard_started_is_caught_and_so_is_an_origin_url() {
    const T: &str = "file_marked_after_the_guard_started_is_caught_and_so_is_an_origin_url";
    let Some(mut s) = setup(T, "") else { return };
    let Some(prog) = busybox_as(T, &s.fs.mnt, "echo") else {
        return;
    };
    let echo = |prog: &Path| {
        let mut c = Command::new(prog);
        c.arg("x");
        run(c)
    };
    let before = echo(&prog);

    set_xattr(&prog, "user.xdg.origin.url", b"https://dl.example/echo");
    let after = echo(&prog);
    let denial = s.sub.denied();

    assert_eq!(stdout(&before.unwrap()), "x\n");
    assert!(is_eperm(&after), "{after:?}");
    assert_eq!(denial.reason, "user.xdg.origin.url=https://dl.example/echo");
}

#[test]
fn plain_cp_drops_the_mark_and_cp_preserve_xattr_keeps_it() {
    const T: &str = "plain_cp_drops_the_mark_and_cp_preserve_xattr_keeps_it";
    let Some(mut s) = setup(T, "") else { return };
    let downloads = s.fs.mnt.join("Downloads");
    let elsewhere = s.fs.mnt.join("elsewhere");
    std::fs::create_dir(&downloads).unwrap();
    std::fs::create_dir(&elsewhere).unwrap();
    let Some(prog) = busybox_as(T, &downloads, "echo") else {
        return;
    };
    set_xattr(&prog, UNTRUSTED, b"1");
    let plain = elsewhere.join("plain/echo");
    let kept = elsewhere.join("kept/echo");
    for copy in [&plain, &kept] {
        std::fs::create_dir(copy.parent().unwrap()).unwrap();
    }

    let cp = |args: &[&str], to: &Path| {
        let mut c = Command::new("cp");
        c.args(args).arg(&prog).arg(to);
        assert!(run(c).unwrap().status.success());
    };
    cp(&[], &plain);
    cp(&["--preserve=xattr"], &kept);
    let run_plain = run({
        let mut c = Command::new(&plain);
        c.arg("copy");
        c
    });
    let run_kept = run({
        let mut c = Command::new(&kept);
        c.arg("copy");
        c
    });
    let denial = s.sub.denied();

    assert_eq!(stdout(&run_plain.unwrap()), "copy\n");
    assert!(is_eperm(&run_kept), "{run_kept:?}");
    assert_eq!(denial.path, kept.display().to_string());
}

#[test]
fn sigkill_of_a_stopped_guard_allows_the_waiting_exec_and_a_restarted_guard_denies_again() {
    const T: &str =
        "sigkill_of_a_stopped_guard_allows_the_waiting_exec_and_a_restarted_guard_denies_again";
    let Some(s) = setup(T, "") else { return };
    let Some(prog) = busybox_as(T, &s.fs.mnt, "echo") else {
        return;
    };
    set_xattr(&prog, UNTRUSTED, b"1");
    let Setup {
        guard,
        sub,
        fs,
        dir,
    } = s;
    drop(sub);

    guard.signal("STOP");
    let waiting = std::thread::spawn({
        let prog = prog.clone();
        move || Command::new(prog).arg("ran anyway").output()
    });
    std::thread::sleep(Duration::from_millis(500));
    let held = !waiting.is_finished();
    guard.signal("KILL");
    drop(guard);
    let released = waiting.join().unwrap();
    // The supervisor: what systemd's Restart=always does.
    let config = dir.path().join("guard.toml");
    let socket = dir.path().join("guard.sock");
    let restarted = RunningGuard::start(T, Path::new(GUARD), &config, &socket).unwrap();
    let mut sub = Subscriber::connect(&socket);
    let again = run({
        let mut c = Command::new(&prog);
        c.arg("again");
        c
    });
    let denial = sub.denied();

    assert!(held, "the exec did not wait for the stopped guard");
    // Closing the group answers its pending events with allow.
    assert_eq!(stdout(&released.unwrap()), "ran anyway\n");
    assert!(is_eperm(&again), "{again:?}");
    assert_eq!(denial.path, prog.display().to_string());
    drop(restarted);
    drop(fs);
}

#[test]
fn guard_run_from_the_filesystem_it_watches_answers_and_stops_on_sigterm() {
    const T: &str = "guard_run_from_the_filesystem_it_watches_answers_and_stops_on_sigterm";
    if !root_or_skip(T) {
        return;
    }
    let Some(fs) = Tmpfs::mount(T) else { return };
    let binary = fs.mnt.join("vitrine-guard");
    std::fs::copy(GUARD, &binary).unwrap();
    let config = fs.config(&fs.mnt, "");
    let socket = fs.mnt.join("guard.sock");
    let Some(mut guard) = RunningGuard::start(T, &binary, &config, &socket) else {
        return;
    };
    let mut sub = Subscriber::connect(&socket);
    let Some(prog) = busybox_as(T, &fs.mnt, "echo") else {
        return;
    };
    set_xattr(&prog, UNTRUSTED, b"1");
    let denied = run(Command::new(&prog));
    let denial = sub.denied();

    guard.signal("TERM");
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = guard.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "no exit 2 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = asked.elapsed();
    std::thread::sleep(Duration::from_millis(100));

    eprintln!("{T}: exited {took:?} after SIGTERM");
    assert!(is_eperm(&denied), "{denied:?}");
    assert_eq!(denial.path, prog.display().to_string());
    assert!(status.success(), "{status}");
    assert!(
        guard.log().iter().any(|l| l.contains(" 1 denied")),
        "no summary: {:?}",
        guard.log()
    );
    drop(guard);
    drop(fs);
}

#[test]
fn a_process_connected_as_a_daemon_still_cannot_exec_a_marked_file() {
    const T: &str = "a_process_connected_as_a_daemon_still_cannot_exec_a_marked_file";
    let Some(s) = setup(T, "") else { return };
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        guard_support::loud(&format!("SKIPPED {T}: no /usr/bin/python3"));
        return;
    }
    let Some(prog) = busybox_as(T, &s.fs.mnt, "echo") else {
        return;
    };
    set_xattr(&prog, UNTRUSTED, b"1");
    // Connects like a daemon, reads Hello, then execs in place (same pid).
    let code = "import os, socket, sys\n\
                s = socket.socket(socket.AF_UNIX)\n\
                s.connect(sys.argv[1])\n\
                s.recv(4096)\n\
                os.execv(sys.argv[2], [sys.argv[2], 'ran'])\n";

    let out = run({
        let mut c = Command::new(python);
        c.args(["-c", code]).arg(&s.guard.socket).arg(&prog);
        c
    })
    .unwrap();

    assert_eq!(stdout(&out), "");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionError"),
        "{out:?}"
    );
}

#[test]
fn a_wrong_config_stops_the_guard_with_the_file_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("guard.toml");
    std::fs::write(
        &config,
        "watch = [\"/tmp\"]\ninterpreters = [\"/usr/bin/[sh\"]\n",
    )
    .unwrap();

    let missing = Command::new(GUARD)
        .args(["--config", "/nonexistent/guard.toml"])
        .output()
        .unwrap();
    let wrong = Command::new(GUARD)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();

    let missing_err = String::from_utf8_lossy(&missing.stderr);
    let wrong_err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!missing.status.success());
    assert!(
        missing_err.contains("cannot read /nonexistent/guard.toml"),
        "{missing_err}"
    );
    assert!(!wrong.status.success());
    assert!(
        wrong_err.contains(&format!("{}:2:", config.display()))
            && wrong_err.contains("write one like"),
        "{wrong_err}"
    );
}
