//! `vitrine-vmm`: run one microVM, snapshot it at its ready point, restore
//! clones from a snapshot, or tell what this host's KVM can run.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use vitrine_microvm::arch::x86_64::cpuid::CpuidMask;
use vitrine_microvm::boot::BootProtocol;
use vitrine_microvm::devices::serial::SerialSink;
use vitrine_microvm::devices::virtio::block::BlockDevice;
use vitrine_microvm::devices::virtio::rng::RngDevice;
use vitrine_microvm::devices::virtio::vsock::VsockDevice;
use vitrine_microvm::jail::cli::{self as jail_cli, JailArgs, SelfTest};
use vitrine_microvm::lifecycle::{GuestExit, GuestFault};
use vitrine_microvm::memory::sealed_file;
use vitrine_microvm::probe::{self, error_chain};
use vitrine_microvm::resident::Resident;
use vitrine_microvm::status::{GuestReport, StatusError, StatusFd};
use vitrine_microvm::test_guests;
use vitrine_microvm::vmm::{DiskBacking, RestoreOptions, Vm, VmConfig, VmError, DEFAULT_GUEST_CID};

/// Exit status when the guest ran past --time-limit (as timeout(1) does).
const EXIT_TIMED_OUT: u8 = 124;
/// Exit status when the guest faulted (triple fault, KVM internal error).
const EXIT_GUEST_FAULT: u8 = 2;

#[derive(Parser)]
#[command(name = "vitrine-vmm", version, about = "Vitrine's KVM microVM monitor")]
struct Cli {
    #[command(flatten)]
    jail: JailArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks run inside a jailed VMM by the jail tests.
    #[command(hide = true)]
    SelfTest {
        #[command(subcommand)]
        test: SelfTest,
    },
    /// Enter the jail given with --jail (its spec with seccomp off), then
    /// execve PROGRAM inside it: how the daemon runs QEMU jailed.
    #[command(hide = true)]
    Exec {
        /// Absolute path of the program inside the jail, and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "PROGRAM"
        )]
        argv: Vec<std::ffi::OsString>,
    },
    /// Boot a kernel and run it until it stops.
    Run {
        #[command(flatten)]
        boot: BootArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Boot a kernel, run it until it writes the ready port (or
    /// --pause-after), and save a snapshot of it to --out.
    Snapshot {
        #[command(flatten)]
        boot: BootArgs,
        /// Snapshot directory to write (state, mem).
        #[arg(long)]
        out: PathBuf,
        /// Pause after this many seconds instead of waiting for ready.
        #[arg(long, conflicts_with = "snapshot_on_serial")]
        pause_after: Option<f64>,
        /// Pause as soon as the guest's serial console prints this text
        /// (within one line) instead of waiting for ready.
        #[arg(long, value_name = "TEXT")]
        snapshot_on_serial: Option<String>,
        /// Give up (exit status 124, no snapshot) if the ready point or
        /// the serial text has not come after this many seconds.
        #[arg(long, conflicts_with = "pause_after")]
        time_limit: Option<f64>,
        /// Write guest serial output here instead of stdout.
        #[arg(long)]
        serial_log: Option<PathBuf>,
    },
    /// Restore a clone from a snapshot and run it until it stops.
    Restore {
        /// Snapshot directory written by `snapshot`.
        #[arg(long)]
        snapshot: PathBuf,
        /// The clone's vsock CID.
        #[arg(long, default_value_t = DEFAULT_GUEST_CID)]
        cid: u64,
        /// The clone's vsock host socket (must not exist yet); needed when
        /// the snapshot has a vsock device.
        #[arg(long)]
        vsock_uds: Option<PathBuf>,
        /// Disk image for the snapshot's block devices, opened read-only;
        /// once per device, in the order they were attached.
        #[arg(long)]
        disk: Vec<PathBuf>,
        /// Fault in the snapshot's recorded working set first.
        #[arg(long)]
        prefault: bool,
        /// After the run, record the pages this clone touched into the
        /// snapshot's working set (for later --prefault).
        #[arg(long)]
        record_working_set: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Say what this host's KVM can run, and why not. Exits 0 either way.
    Probe {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct BootArgs {
    /// Kernel: vmlinux ELF (with or without a PVH note) or bzImage.
    #[arg(
        long,
        required_unless_present = "test_guest",
        conflicts_with = "test_guest"
    )]
    kernel: Option<PathBuf>,
    /// Boot one of the built-in integer-only test guests instead of a
    /// kernel file (hello, counter, mmio_script, triple_fault, ...).
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
    /// Run without the in-kernel irqchip, so HLT ends the run.
    #[arg(long)]
    no_irqchip: bool,
    /// The guest's vsock CID.
    #[arg(long, default_value_t = DEFAULT_GUEST_CID)]
    cid: u64,
    #[command(flatten)]
    devices: DeviceArgs,
}

/// Virtio devices to give the guest, each on the kernel command line as a
/// `virtio_mmio.device=` entry.
#[derive(clap::Args, Default)]
struct DeviceArgs {
    /// Add a virtio-vsock device whose host side is this Unix socket (it
    /// must not exist yet); guest connections to host port P go to
    /// `<path>_P`.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// Add a virtio-rng device.
    #[arg(long)]
    rng: bool,
    /// Add a read-only virtio-blk device backed by this image; repeat for
    /// more disks.
    #[arg(long, value_name = "IMAGE")]
    disk: Vec<PathBuf>,
}

impl DeviceArgs {
    /// Attaches the devices, in a fixed order (disks, rng, vsock), so a
    /// snapshot's slots line up with the same flags on restore.
    fn attach(&self, vm: &mut Vm, cid: u64) -> anyhow::Result<()> {
        for path in &self.disk {
            let file = File::open(path)
                .with_context(|| format!("cannot open disk image {}", path.display()))?;
            let dev = BlockDevice::new(file, true)
                .with_context(|| format!("cannot use disk image {}", path.display()))?;
            vm.add_virtio_device(Arc::new(Mutex::new(dev)))
                .map_err(vm_err)?;
        }
        if self.rng {
            vm.add_virtio_device(Arc::new(Mutex::new(RngDevice::new())))
                .map_err(vm_err)?;
        }
        if let Some(uds) = &self.vsock_uds {
            let dev = VsockDevice::new(cid, uds)
                .with_context(|| format!("cannot listen on vsock socket {}", uds.display()))?;
            vm.add_virtio_device(Arc::new(Mutex::new(dev)))
                .map_err(vm_err)?;
        }
        Ok(())
    }
}

#[derive(clap::Args)]
struct OutputArgs {
    /// Stop the guest after this many seconds (exit status 124).
    #[arg(long)]
    time_limit: Option<f64>,
    /// Write guest serial output here instead of stdout.
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Print resident memory and timing to stderr at exit.
    #[arg(long)]
    stats: bool,
    /// Write the guest's result as one JSON line to this inherited fd as
    /// soon as the guest stops, before the VM is torn down (1, stdout, is
    /// allowed with --serial-log).
    #[arg(long, value_name = "FD")]
    status_fd: Option<i32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Exec { argv } = &cli.command {
        let e = jail_cli::exec_in_jail(&cli.jail, argv);
        eprintln!("vitrine-vmm: error: {}", error_chain(&e));
        return ExitCode::FAILURE;
    }
    if let Err(e) = jail_cli::enter_if_asked(&cli.jail) {
        eprintln!("vitrine-vmm: error: {}", error_chain(&e));
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let mut status = match status_fd(&cli.command) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vitrine-vmm: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Probe { json } => return probe_command(json),
        Command::SelfTest { test } => return jail_cli::run_self_test(test),
        // Dispatched before the jail above; exec only returns on failure.
        Command::Exec { .. } => return ExitCode::FAILURE,
        Command::Run { boot, out } => run_command(boot, out, started, &mut status),
        Command::Snapshot {
            boot,
            out,
            pause_after,
            snapshot_on_serial,
            time_limit,
            serial_log,
        } => {
            let point = match (pause_after, snapshot_on_serial) {
                (Some(s), _) => SnapshotPoint::After(s),
                (None, Some(text)) => SnapshotPoint::Serial(text),
                (None, None) => SnapshotPoint::Ready,
            };
            let serial = OutputArgs {
                time_limit,
                serial_log,
                stats: false,
                status_fd: None,
            };
            snapshot_command(boot, out, point, serial)
        }
        Command::Restore {
            snapshot,
            cid,
            vsock_uds,
            disk,
            prefault,
            record_working_set,
            out,
        } => {
            let hosts = CloneHosts {
                cid,
                vsock_uds,
                disks: disk,
            };
            let run = RunFlags {
                prefault,
                record_working_set,
                started,
            };
            restore_command(snapshot, hosts, run, out, &mut status)
        }
    };
    result.unwrap_or_else(|e| {
        if let Some(s) = status.take() {
            let report = GuestReport::Error {
                detail: format!("{e:#}"),
            };
            s.send(&report, started.elapsed());
        }
        eprintln!("vitrine-vmm: error: {e:#}");
        ExitCode::FAILURE
    })
}

/// Adopts the `--status-fd` of a run or restore.
fn status_fd(command: &Command) -> Result<Option<StatusFd>, StatusError> {
    let out = match command {
        Command::Run { out, .. } | Command::Restore { out, .. } => out,
        Command::Snapshot { .. }
        | Command::Probe { .. }
        | Command::SelfTest { .. }
        | Command::Exec { .. } => return Ok(None),
    };
    let stdout_free = out.serial_log.is_some();
    out.status_fd
        .map(|fd| StatusFd::adopt(fd, stdout_free))
        .transpose()
}

/// Tells the caller the result while the VM still exists; the slow part of
/// teardown (the kernel destroying the VM) comes after.
fn report(status: &mut Option<StatusFd>, result: &Result<GuestExit, VmError>, started: Instant) {
    if let Some(s) = status.take() {
        s.send(&GuestReport::of(result), started.elapsed());
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
    if let Some(c) = &report.cpuid_masking {
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

fn seconds(flag: &str, value: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match value {
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => bail!("{flag} must be a positive number of seconds, not {s}"),
        None => Ok(None),
    }
}

fn serial_sink(out: &OutputArgs) -> anyhow::Result<SerialSink> {
    Ok(match &out.serial_log {
        Some(p) => SerialSink::file(
            File::create(p).with_context(|| format!("cannot create serial log {}", p.display()))?,
        ),
        None => SerialSink::stdout(),
    })
}

/// A VM from the boot arguments, with its devices, booted and ready to run.
/// The kernel file of a built-in guest only needs to live until boot.
fn booted_vm(
    mut args: BootArgs,
    time_limit: Option<Duration>,
    serial: SerialSink,
) -> anyhow::Result<Vm> {
    let devices = std::mem::take(&mut args.devices);
    let (mut config, _guest_file) = vm_config(args)?;
    config.time_limit = time_limit;
    let cid = config.vsock_cid;
    let mut vm = Vm::new(config, serial).map_err(vm_err)?;
    devices.attach(&mut vm, cid)?;
    vm.boot().map_err(vm_err)?;
    Ok(vm)
}

/// A VM config from the boot arguments. The returned file, if any, holds a
/// built-in guest and must stay open until the VM has booted.
fn vm_config(args: BootArgs) -> anyhow::Result<(VmConfig, Option<File>)> {
    let mask: CpuidMask = args.cpuid_mask.parse()?;
    let (kernel, file) = match (args.kernel, args.test_guest) {
        (Some(k), _) => (k, None),
        (None, Some(name)) => {
            let image = test_guests::image(&name).ok_or_else(|| {
                let names: Vec<_> = test_guests::ALL.iter().map(|(n, _)| *n).collect();
                anyhow!("no test guest '{name}' (there are: {})", names.join(", "))
            })?;
            let f = sealed_file(&name, image)?;
            (
                PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())),
                Some(f),
            )
        }
        (None, None) => bail!("give --kernel or --test-guest"),
    };
    let config = VmConfig {
        kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem_mib: args.mem_mib,
        vcpus: args.vcpus,
        boot: args.boot,
        cpuid_mask: mask,
        time_limit: None,
        irqchip: !args.no_irqchip,
        vsock_cid: args.cid,
    };
    Ok((config, file))
}

fn vm_err(e: VmError) -> anyhow::Error {
    anyhow!(error_chain(&e))
}

fn run_command(
    boot: BootArgs,
    out: OutputArgs,
    started: Instant,
    status: &mut Option<StatusFd>,
) -> anyhow::Result<ExitCode> {
    let limit = seconds("--time-limit", out.time_limit)?;
    let mut vm = booted_vm(boot, limit, serial_sink(&out)?)?;
    jail_cli::guest_about_to_run()?;
    let result = vm.run();
    report(status, &result, started);
    finish(result, out.stats, started)
}

/// Restore-time choices.
struct RunFlags {
    prefault: bool,
    record_working_set: bool,
    started: Instant,
}

/// What a clone gets of its own: vsock identity and disks.
struct CloneHosts {
    cid: u64,
    vsock_uds: Option<PathBuf>,
    disks: Vec<PathBuf>,
}

fn restore_command(
    snapshot: PathBuf,
    hosts: CloneHosts,
    run: RunFlags,
    out: OutputArgs,
    status: &mut Option<StatusFd>,
) -> anyhow::Result<ExitCode> {
    let mut options = RestoreOptions::new(serial_sink(&out)?);
    options.time_limit = seconds("--time-limit", out.time_limit)?;
    options.vsock_cid = hosts.cid;
    options.vsock_uds = hosts.vsock_uds;
    for path in &hosts.disks {
        let file = File::open(path)
            .with_context(|| format!("cannot open disk image {}", path.display()))?;
        options.disks.push(DiskBacking {
            file,
            read_only: true,
        });
    }
    options.prefault = run.prefault;
    let mut vm = Vm::restore(&snapshot, options).map_err(vm_err)?;
    jail_cli::guest_about_to_run()?;
    let result = vm.run();
    report(status, &result, run.started);
    if run.record_working_set {
        let ranges = vm.record_working_set(&snapshot).map_err(vm_err)?;
        eprintln!("vitrine-vmm: recorded a working set of {ranges} page ranges");
    }
    finish(result, out.stats, run.started)
}

/// Where `snapshot` pauses the guest.
enum SnapshotPoint {
    /// The guest writes the ready port.
    Ready,
    /// This many seconds after the start.
    After(f64),
    /// The serial console prints this text.
    Serial(String),
}

fn snapshot_command(
    boot: BootArgs,
    out: PathBuf,
    point: SnapshotPoint,
    run: OutputArgs,
) -> anyhow::Result<ExitCode> {
    let limit = seconds("--time-limit", run.time_limit)?;
    let mut vm = booted_vm(boot, limit, serial_sink(&run)?)?;
    if let SnapshotPoint::Serial(text) = &point {
        if text.is_empty() || text.contains('\n') {
            bail!("--snapshot-on-serial needs a non-empty text within one line");
        }
        vm.pause_on_serial(text.as_bytes());
    }
    jail_cli::guest_about_to_run()?;
    let on_serial = matches!(point, SnapshotPoint::Serial(_));
    let result = match point {
        SnapshotPoint::After(s) => {
            let d = seconds("--pause-after", Some(s))?.unwrap_or_default();
            vm.run_for(d)
        }
        SnapshotPoint::Ready | SnapshotPoint::Serial(_) => vm.run(),
    };
    let exit = match result {
        Err(VmError::Guest(fault @ GuestFault::TimedOut(_))) => {
            eprintln!("vitrine-vmm: error: {fault}; nothing to snapshot");
            return Ok(ExitCode::from(EXIT_TIMED_OUT));
        }
        r => r.map_err(vm_err)?,
    };
    if !matches!(exit, GuestExit::Ready | GuestExit::Paused) {
        bail!("guest ended ({exit:?}) before it reached its snapshot point; nothing to snapshot");
    }
    if on_serial && !vm.serial_watch_fired() {
        bail!("guest paused ({exit:?}) before it printed the --snapshot-on-serial text; nothing to snapshot");
    }
    let info = vm.snapshot(&out).map_err(vm_err)?;
    eprintln!(
        "vitrine-vmm: snapshot written to {}: state {} bytes, memory {} MiB (sparse)",
        out.display(),
        info.state_bytes,
        info.memory_bytes >> 20
    );
    Ok(ExitCode::SUCCESS)
}

fn finish(
    result: Result<GuestExit, VmError>,
    stats: bool,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    if stats {
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
        Ok(_) => ExitCode::SUCCESS,
        Err(VmError::Guest(fault @ GuestFault::TimedOut(_))) => {
            eprintln!("vitrine-vmm: error: {fault}");
            ExitCode::from(EXIT_TIMED_OUT)
        }
        Err(VmError::Guest(fault)) => {
            eprintln!("vitrine-vmm: error: {fault}");
            ExitCode::from(EXIT_GUEST_FAULT)
        }
        Err(e) => bail!(error_chain(&e)),
    })
}
