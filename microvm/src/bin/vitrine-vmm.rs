//! `vitrine-vmm`: run one microVM, or tell what this host's KVM can run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use std::os::fd::AsRawFd;
use vitrine_microvm::arch::x86_64::cpuid::CpuidMask;
use vitrine_microvm::boot::BootProtocol;
use vitrine_microvm::devices::serial::SerialSink;
use vitrine_microvm::lifecycle::{GuestExit, GuestFault};
use vitrine_microvm::memory::sealed_file;
use vitrine_microvm::probe::{self, error_chain};
use vitrine_microvm::resident::Resident;
use vitrine_microvm::test_guests;
use vitrine_microvm::vmm::{Vm, VmConfig, VmError};

/// Exit status when the guest ran past --time-limit (as timeout(1) does).
const EXIT_TIMED_OUT: u8 = 124;
/// Exit status when the guest faulted (triple fault, KVM internal error).
const EXIT_GUEST_FAULT: u8 = 2;

#[derive(Parser)]
#[command(name = "vitrine-vmm", version, about = "Vitrine's KVM microVM monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel and run it until it stops.
    Run(RunArgs),
    /// Say what this host's KVM can run, and why not. Exits 0 either way.
    Probe {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel: vmlinux ELF (with or without a PVH note) or bzImage.
    #[arg(
        long,
        required_unless_present = "test_guest",
        conflicts_with = "test_guest"
    )]
    kernel: Option<PathBuf>,
    /// Boot one of the built-in integer-only test guests instead of a
    /// kernel file (hello, mmio_script, triple_fault, endless, halt, probe_*).
    #[arg(long)]
    test_guest: Option<String>,
    /// Initramfs to load.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=1")]
    cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128)]
    mem_mib: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Boot protocol.
    #[arg(long, value_enum, default_value_t = BootProtocol::Auto)]
    boot: BootProtocol,
    /// CPUID features to hide, comma-separated (`nested-safe` for the set
    /// this project's nested-KVM hosts need).
    #[arg(long, default_value = "")]
    cpuid_mask: String,
    /// Stop the guest after this many seconds (exit status 124).
    #[arg(long)]
    time_limit: Option<f64>,
    /// Write guest serial output here instead of stdout.
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Run without the in-kernel irqchip, so HLT ends the run.
    #[arg(long)]
    no_irqchip: bool,
    /// Print resident memory and timing to stderr at exit.
    #[arg(long)]
    stats: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe { json } => probe_command(json),
        Command::Run(args) => match run_command(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("vitrine-vmm: error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn probe_command(json: bool) -> ExitCode {
    let report = probe::run();
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("vitrine-vmm: error: {e}"),
        }
        return ExitCode::SUCCESS;
    }
    match &report.kvm {
        Ok(()) => println!("kvm: available"),
        Err(e) => println!("kvm: no: {e}"),
    }
    for c in &report.checks {
        let verdict = if c.ok { "yes" } else { "no" };
        println!("  {:<17} {verdict:<3}  {} — {}", c.name, c.what, c.detail);
    }
    let yes_no = |b| if b { "yes" } else { "no" };
    println!("integer-only guests: {}", yes_no(report.integer_guests));
    match report.full_linux_reason() {
        None => println!("full Linux guests: yes"),
        Some(why) => println!("full Linux guests: no ({why})"),
    }
    ExitCode::SUCCESS
}

fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mask: CpuidMask = args.cpuid_mask.parse()?;
    let time_limit = match args.time_limit {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => anyhow::bail!("--time-limit must be a positive number of seconds, not {s}"),
        None => None,
    };
    let sink = match &args.serial_log {
        Some(p) => SerialSink::file(
            std::fs::File::create(p)
                .map_err(|e| anyhow::anyhow!("cannot create serial log {}: {e}", p.display()))?,
        ),
        None => SerialSink::stdout(),
    };
    // Keeps a built-in guest's in-memory file open until the VM has loaded it.
    let mut _guest_file = None;
    let kernel = match (args.kernel, args.test_guest) {
        (Some(k), _) => k,
        (None, Some(name)) => {
            let image = test_guests::image(&name).ok_or_else(|| {
                let names: Vec<_> = test_guests::ALL.iter().map(|(n, _)| *n).collect();
                anyhow::anyhow!("no test guest '{name}' (there are: {})", names.join(", "))
            })?;
            let f = sealed_file(&name, image)?;
            let path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
            _guest_file = Some(f);
            path
        }
        (None, None) => anyhow::bail!("give --kernel or --test-guest"),
    };
    let config = VmConfig {
        kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem_mib: args.mem_mib,
        vcpus: args.vcpus,
        boot: args.boot,
        cpuid_mask: mask,
        time_limit,
        irqchip: !args.no_irqchip,
    };
    let mut vm = Vm::new(config, sink).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    vm.boot().map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let result = vm.run();
    if args.stats {
        // Read while guest RAM is still mapped, so it shows as shmem.
        let r = Resident::read().unwrap_or_default();
        eprintln!(
            "vitrine-vmm: stats: vmm_rss_kib={} guest_rss_kib={} wall_ms={:.3}",
            r.vmm_kib(),
            r.shmem_kib,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(match result {
        Ok(GuestExit::DebugExit(code)) => ExitCode::from(code),
        Ok(GuestExit::Reset | GuestExit::PowerOff | GuestExit::Halted) => ExitCode::SUCCESS,
        Err(VmError::Guest(fault @ GuestFault::TimedOut(_))) => {
            eprintln!("vitrine-vmm: error: {fault}");
            ExitCode::from(EXIT_TIMED_OUT)
        }
        Err(VmError::Guest(fault)) => {
            eprintln!("vitrine-vmm: error: {fault}");
            ExitCode::from(EXIT_GUEST_FAULT)
        }
        Err(e) => anyhow::bail!(error_chain(&e)),
    })
}
