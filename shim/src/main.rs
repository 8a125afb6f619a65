//! `vitrine-shim`: PID 1 and agent of the Vitrine guest.
//!
//! Modes (first argument):
//! - none / `--socket PATH`: the agent. As PID 1 it mounts, re-executes
//!   itself as the agent child, reaps orphans and powers off at the end.
//! - `exec-limited ... -- PROGRAM ARGS`: apply limits, then exec (internal).
//! - `render-worker KIND W H FIRST COUNT INPUT`: stream pages to stdout (internal).
//! - `kill-uid UID`: become UID and kill every process of it (internal).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vitrine_shim::agent::{self, AgentConfig};
use vitrine_shim::render::office::PRELOAD_ENV;
use vitrine_shim::{init, render, sandbox, transport};

/// Uid of sandboxed children in the guest unless the cmdline says otherwise.
const DEFAULT_SANDBOX_UID: u32 = 65534;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some("exec-limited") => {
            let err = sandbox::exec_limited(&args[1..]);
            eprintln!("vitrine-shim exec-limited: {:#}", anyhow::Error::new(err));
            ExitCode::from(126)
        }
        Some("render-worker") => match render::worker_main(&args[1..]) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{:#}", anyhow::Error::new(e));
                ExitCode::from(2)
            }
        },
        Some("kill-uid") => {
            let uid = args.get(1).and_then(|a| a.to_str()?.parse::<u32>().ok());
            match uid.map(sandbox::kill_all_of_uid) {
                Some(Ok(())) => ExitCode::SUCCESS,
                Some(Err(e)) => {
                    eprintln!("vitrine-shim kill-uid: {:#}", anyhow::Error::new(e));
                    ExitCode::from(126)
                }
                None => {
                    eprintln!("vitrine-shim kill-uid: usage: kill-uid UID");
                    ExitCode::from(2)
                }
            }
        }
        Some("--version") => {
            println!("vitrine-shim {}", agent::SHIM_VERSION);
            ExitCode::SUCCESS
        }
        _ => {
            if init::is_pid1() && std::env::var_os(init::AGENT_ROLE_ENV).is_none() {
                init::run_as_init(&args);
            }
            match run_agent(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vitrine-shim: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_agent(args: &[OsString]) -> anyhow::Result<()> {
    let mut socket = std::env::var_os("VITRINE_SHIM_SOCKET").map(PathBuf::from);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("--socket") => {
                socket = Some(PathBuf::from(it.next().context("--socket needs a path")?));
            }
            _ => anyhow::bail!("unknown argument {arg:?}"),
        }
    }
    let kernel = transport::KernelArgs::from_proc();
    let sandbox_uid = std::env::var("VITRINE_SHIM_UID")
        .ok()
        .and_then(|v| v.parse().ok())
        .or(kernel.uid)
        .unwrap_or(DEFAULT_SANDBOX_UID);
    let endpoints = transport::endpoints(socket, &kernel);
    let (conn, skipped) = transport::connect_first(&endpoints).map_err(|errors| {
        let all: Vec<String> = errors
            .iter()
            .map(|e| format!("{:#}", anyhow::anyhow!("{e}")))
            .collect();
        anyhow::anyhow!("no transport to the host: {}", all.join("; "))
    })?;
    for e in skipped {
        eprintln!("vitrine-shim: skipped transport: {e}");
    }
    eprintln!("vitrine-shim: connected over {:?}", conn.endpoint);
    let work_root = std::env::var_os("VITRINE_SHIM_WORKDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    agent::serve(
        conn,
        AgentConfig {
            work_root,
            sandbox_uid,
            in_guest: init::started_by_init(),
            // A local process (tests) may ask for it too.
            preload: match std::env::var(PRELOAD_ENV) {
                Ok(v) if kernel.preload == init::Preload::None => init::Preload::parse(&v),
                _ => kernel.preload,
            },
        },
    )
    .context("session with the host")
}
