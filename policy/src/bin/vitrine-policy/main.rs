//! `vitrine-policy`: the admin CLI for Vitrine's mandatory policy.
//!
//! Exit codes: 0 success; 1 the policy is invalid (validate), differs
//! (diff), or the operation failed; 2 usage errors.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vitrine_policy::diff;
use vitrine_policy::profile::format_duration;
use vitrine_policy::{
    sniff, Action, Diagnostics, FileFacts, Origin, PolicySet, PolicyStore, Request,
    SYSTEM_POLICY_DIR,
};

#[derive(Debug, Parser)]
#[command(
    name = "vitrine-policy",
    version,
    about = "Inspect, check and install Vitrine's mandatory sandbox policy"
)]
struct Cli {
    /// The policy directory the daemon reads.
    #[arg(long, global = true, env = "VITRINE_POLICY_DIR", default_value = SYSTEM_POLICY_DIR)]
    dir: PathBuf,
    /// Machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// List the files, profiles and rules of the active policy, in order.
    List,
    /// Show a profile or rule in full (every field, defaults filled in).
    Show {
        /// Profile or rule name; all profiles when absent.
        name: Option<String>,
    },
    /// Check a policy file or directory; print path:line:col diagnostics.
    Validate { path: PathBuf },
    /// Say what the policy would decide, and why, without running anything.
    Explain(ExplainArgs),
    /// Show the effective changes from the active policy to a staged one
    /// (exit 0: none, 1: some).
    Diff { staged: PathBuf },
    /// Validate a staged directory and install it atomically.
    Apply { staged: PathBuf },
    /// Return to the version that was active before the last apply.
    Rollback,
    /// Show which versions are active and previous.
    Status,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ActionArg {
    OpenFile,
    OpenUri,
    RunProgram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OriginArg {
    Quarantined,
    Downloads,
    Local,
}

#[derive(Debug, clap::Args)]
struct ExplainArgs {
    #[arg(long, value_enum)]
    action: ActionArg,
    /// The file to open or the program to run (its content is sniffed).
    #[arg(long, alias = "program", conflicts_with = "uri")]
    file: Option<PathBuf>,
    /// The link to open.
    #[arg(long)]
    uri: Option<String>,
    /// Use this MIME type instead of sniffing the file.
    #[arg(long)]
    mime: Option<String>,
    /// Use this origin instead of detecting it (repeatable).
    #[arg(long, value_enum)]
    origin: Vec<OriginArg>,
    /// Downloads folders that mark a file's origin as `downloads`
    /// (default: $XDG_DOWNLOAD_DIR or ~/Downloads).
    #[arg(long)]
    downloads_dir: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                println!("{}", json!({ "error": format!("{e:#}") }));
            } else {
                eprintln!("vitrine-policy: error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.cmd {
        Cmd::List => list(cli),
        Cmd::Show { name } => show(cli, name.as_deref()),
        Cmd::Validate { path } => validate(cli, path),
        Cmd::Explain(args) => explain(cli, args),
        Cmd::Diff { staged } => diff_cmd(cli, staged),
        Cmd::Apply { staged } => apply(cli, staged),
        Cmd::Rollback => rollback(cli),
        Cmd::Status => status(cli),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Load the active policy the way the daemon does: fail closed, loudly.
fn load_active(cli: &Cli) -> PolicySet {
    let (policy, problems) = PolicySet::load_or_fail_closed(&cli.dir);
    if let Some(diags) = problems {
        if !cli.json {
            eprintln!(
                "vitrine-policy: WARNING: the policy in {} does not load; the daemon is FAILING CLOSED (everything sandboxed with `strict`):\n{diags}\n",
                cli.dir.display()
            );
        }
    }
    policy
}

fn list(cli: &Cli) -> Result<ExitCode> {
    let policy = load_active(cli);
    if cli.json {
        let rules: Vec<_> = policy
            .rules()
            .iter()
            .map(|r| {
                json!({
                    "index": r.source.index, "file": &*r.source.file, "line": r.source.line,
                    "name": r.source.name, "actions": r.actions().collect::<Vec<_>>(),
                    "conditions": r.conditions_text(), "decision": r.decision.to_string(),
                })
            })
            .collect();
        let files: Vec<_> = policy
            .files()
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        let profiles: Vec<_> = policy.profiles().iter().map(|p| &p.name).collect();
        print_json(&json!({
            "dir": cli.dir, "version": policy.version(), "fail_closed": policy.fail_closed_reason().map(|f| &*f.reason),
            "files": files, "profiles": profiles, "rules": rules,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "policy {}  version {}",
        cli.dir.display(),
        policy.version().short()
    );
    if let Some(fc) = policy.fail_closed_reason() {
        println!("FAIL-CLOSED: {}", fc.reason);
        return Ok(ExitCode::SUCCESS);
    }
    println!("\nfiles (read in this order):");
    for f in policy.files() {
        let n = policy
            .rules()
            .iter()
            .filter(|r| r.source.file == f.name)
            .count();
        println!("  {:<32} {n} rule(s)", f.name);
    }
    println!("\nprofiles:");
    for p in policy.profiles() {
        println!(
            "  {:<16} {:>6} MiB  {} vCPU  {:>6}  egress: {}  clipboard: {}  export: {}",
            p.name,
            p.memory_mib,
            p.vcpus,
            format_duration(p.time_limit),
            p.egress,
            p.clipboard.as_str(),
            p.export.mode.as_str()
        );
    }
    println!("\nrules (first match wins):");
    let wheres: Vec<String> = policy
        .rules()
        .iter()
        .map(|r| format!("{}:{}", r.source.file, r.source.line))
        .collect();
    let ww = wheres
        .iter()
        .map(String::len)
        .chain([16])
        .max()
        .unwrap_or(16);
    let nw = policy
        .rules()
        .iter()
        .filter_map(|r| r.source.name.as_ref().map(String::len))
        .chain([4])
        .max()
        .unwrap_or(4);
    println!(
        "  {:>4}  {:<ww$}  {:<nw$}  {:<21}  {:<20}  match",
        "#", "where", "name", "action", "decision"
    );
    for (r, at) in policy.rules().iter().zip(&wheres) {
        println!(
            "  {:>4}  {at:<ww$}  {:<nw$}  {:<21}  {:<20}  {}",
            r.source.index,
            r.source.name.as_deref().unwrap_or("-"),
            r.actions_text(),
            r.decision.to_string(),
            r.conditions_text()
        );
    }
    println!(
        "  {:>4}  {:<ww$}  {:<nw$}  {:<21}  {:<20}  (nothing else matched)",
        "-", "built-in default", "-", "any", "sandbox(strict)"
    );
    for a in policy.actions_without_rules() {
        println!("\nnote: no rule mentions {a}; every {a} request gets sandbox(strict)");
    }
    Ok(ExitCode::SUCCESS)
}

fn show(cli: &Cli, name: Option<&str>) -> Result<ExitCode> {
    let policy = load_active(cli);
    let profiles: Vec<_> = match name {
        None => policy.profiles().to_vec(),
        Some(n) => match policy.profile(n) {
            Some(p) => vec![p.clone()],
            None => {
                let Some(rule) = policy.rule(n) else {
                    bail!("no profile or rule named `{n}` in {}", cli.dir.display());
                };
                if cli.json {
                    print_json(&json!({
                        "rule": &*rule.source, "actions": rule.actions().collect::<Vec<_>>(),
                        "conditions": rule.conditions_text(), "decision": rule.decision.to_string(),
                    }))?;
                } else {
                    println!("{}", rule.source);
                    println!("  actions     {}", rule.actions_text());
                    println!("  conditions  {}", rule.conditions_text());
                    println!("  decision    {}", rule.decision);
                }
                return Ok(ExitCode::SUCCESS);
            }
        },
    };
    if cli.json {
        print_json(&profiles)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (i, p) in profiles.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("[profile.{}]", p.name);
        if let Some(d) = &p.description {
            println!("  # {d}");
        }
        for (k, v) in p.fields() {
            println!("  {k:<20} {v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(cli: &Cli, path: &Path) -> Result<ExitCode> {
    let result = if path.is_dir() {
        PolicySet::load_dir(path)
    } else {
        PolicySet::load_file(path)
    };
    let (ok, diags, summary): (bool, Diagnostics, serde_json::Value) = match &result {
        Ok(p) => (
            true,
            p.warnings().clone(),
            json!({ "version": p.version(), "files": p.files().len(), "rules": p.rules().len(), "profiles": p.profiles().len() }),
        ),
        Err(d) => (false, d.clone(), serde_json::Value::Null),
    };
    if cli.json {
        print_json(&json!({ "path": path, "valid": ok, "diagnostics": diags, "policy": summary }))?;
    } else {
        for d in &diags {
            println!("{d}\n");
        }
        match &result {
            Ok(p) => println!(
                "{}: valid ({} file(s), {} rule(s), {} profile(s), {} warning(s)); version {}",
                path.display(),
                p.files().len(),
                p.rules().len(),
                p.profiles().len(),
                diags.warning_count(),
                p.version().short()
            ),
            Err(d) => println!(
                "{}: invalid: {} error(s), {} warning(s)",
                path.display(),
                d.error_count(),
                d.warning_count()
            ),
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn default_downloads_dirs() -> Vec<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_DOWNLOAD_DIR") {
        return vec![PathBuf::from(d)];
    }
    std::env::var_os("HOME")
        .map(|h| vec![PathBuf::from(h).join("Downloads")])
        .unwrap_or_default()
}

fn explain(cli: &Cli, args: &ExplainArgs) -> Result<ExitCode> {
    let action = match args.action {
        ActionArg::OpenFile => Action::OpenFile,
        ActionArg::OpenUri => Action::OpenUri,
        ActionArg::RunProgram => Action::RunProgram,
    };
    let req = if action == Action::OpenUri {
        let Some(uri) = &args.uri else {
            bail!("--action open-uri needs --uri URI");
        };
        Request::open_uri(uri)?
    } else {
        let Some(file) = &args.file else {
            bail!("--action {action} needs --file PATH");
        };
        let abs =
            std::path::absolute(file).with_context(|| format!("resolving {}", file.display()))?;
        let mime = match &args.mime {
            Some(m) => m.clone(),
            None => {
                let f = std::fs::File::open(&abs)
                    .with_context(|| format!("opening {} to sniff it", abs.display()))?;
                sniff::sniff_file(&f)
                    .with_context(|| format!("reading {}", abs.display()))?
                    .to_owned()
            }
        };
        let origin = if args.origin.is_empty() {
            let dirs = if args.downloads_dir.is_empty() {
                default_downloads_dirs()
            } else {
                args.downloads_dir.clone()
            };
            Origin::detect(&abs, &dirs)
        } else {
            Origin {
                quarantined: args.origin.contains(&OriginArg::Quarantined),
                downloads: args.origin.contains(&OriginArg::Downloads),
            }
        };
        Request::file(
            action,
            FileFacts {
                mime,
                name: None,
                path: Some(abs),
                origin,
            },
        )?
    };
    let policy = load_active(cli);
    let explanation = policy.explain(&req);
    if cli.json {
        print_json(&explanation)?;
    } else {
        print!("{explanation}");
    }
    Ok(ExitCode::SUCCESS)
}

fn diff_cmd(cli: &Cli, staged: &Path) -> Result<ExitCode> {
    let new = match PolicySet::load_dir(staged) {
        Ok(p) => p,
        Err(d) => bail!("the staged policy {} is invalid:\n{d}", staged.display()),
    };
    let active = load_active(cli);
    let d = diff::diff(&active, &new);
    if cli.json {
        print_json(&d)?;
    } else {
        print!("{d}");
    }
    Ok(if d.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn apply(cli: &Cli, staged: &Path) -> Result<ExitCode> {
    let store = PolicyStore::new(&cli.dir);
    let switch = match store.apply(staged) {
        Ok(s) => s,
        Err(vitrine_policy::store::StoreError::Invalid(d)) => {
            if cli.json {
                print_json(&json!({ "applied": false, "diagnostics": d }))?;
            } else {
                eprintln!("{d}\n\nvitrine-policy: not applied: {} is invalid; the active policy is unchanged", staged.display());
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    if cli.json {
        print_json(&switch)?;
    } else if switch.changed {
        println!(
            "applied: {} is now version {}",
            cli.dir.display(),
            switch.active.short()
        );
        if let Some(p) = switch.previous {
            println!(
                "previous version {} is kept; `vitrine-policy rollback` returns to it",
                p.short()
            );
        }
        println!("a running daemon picks the change up by itself");
    } else {
        println!(
            "unchanged: version {} is already active",
            switch.active.short()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rollback(cli: &Cli) -> Result<ExitCode> {
    let switch = PolicyStore::new(&cli.dir).rollback()?;
    if cli.json {
        print_json(&switch)?;
    } else {
        println!(
            "rolled back: {} is now version {}",
            cli.dir.display(),
            switch.active.short()
        );
        if let Some(p) = switch.previous {
            println!("rollback again to return to {}", p.short());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(cli: &Cli) -> Result<ExitCode> {
    let s = PolicyStore::new(&cli.dir).status();
    if cli.json {
        print_json(&s)?;
    } else {
        println!("{}: {}", s.path.display(), s.state);
        println!("  active:   {}", s.active.as_deref().unwrap_or("-"));
        println!("  previous: {}", s.previous.as_deref().unwrap_or("-"));
    }
    Ok(ExitCode::SUCCESS)
}
