//! One microVM: built from a [`VmConfig`] or restored from a snapshot,
//! run to its end or to a pause, and snapshotted when paused.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::cpuid::{self, CpuidMask};
use crate::arch::x86_64::layout::{
    COM1_IRQ, COM1_PORT, DEBUG_EXIT_PORT, I8042_COMMAND_PORT, MMIO_GAP_END, READY_PORT,
    VIRTIO_FIRST_IRQ, VIRTIO_MMIO_SLOT, VIRTIO_MMIO_START,
};
use crate::arch::x86_64::regs::{self, RegsError};
use crate::boot::{self, BootError, BootProtocol, BootSpec, LoadedKernel};
use crate::bus::{Bus, BusError, SharedDevice};
use crate::devices::debug_exit::DebugExit;
use crate::devices::i8042::I8042;
use crate::devices::ready::ReadyPort;
use crate::devices::serial::{SerialDevice, SerialPersistError, SerialSink, SerialWatch};
use crate::devices::virtio::block::{BlockConstructorArgs, BlockDevice, BlockError};
use crate::devices::virtio::mmio::{MmioConstructorArgs, MmioError, MMIO_SIZE, NOTIFY_REG_OFFSET};
use crate::devices::virtio::rng::{RngConstructorArgs, RngDevice};
use crate::devices::virtio::vsock::{VsockConstructorArgs, VsockDevice, VsockError};
use crate::devices::virtio::{MmioTransport, VirtioDevice, VirtioDeviceState};
use crate::kvm::{Hypervisor, KvmError, VcpuHandle, VmHandle};
use crate::lifecycle::{GuestExit, GuestFault, Lifecycle, Outcome};
use crate::memory::{self, GuestRam, MemoryError};
use crate::snapshot::file::{self as snapshot_file, SnapshotFileError};
use crate::snapshot::identity::CloneIdentity;
use crate::snapshot::memory::{self as snapshot_memory, SnapshotMemoryError};
use crate::snapshot::{
    IrqchipState, Persist, VirtioSlotState, VmState, MEMORY_FILE, STATE_FILE, WORKING_SET_FILE,
};
use crate::vcpu::{VcpuContext, VcpuThread};

pub const MAX_VCPUS: u8 = 32;
/// The guest's vsock CID unless told otherwise (2 is the host).
pub const DEFAULT_GUEST_CID: u64 = 3;
/// Highest GSI a virtio device may use: the IOAPIC's last pin.
const MAX_VIRTIO_GSI: u32 = 23;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("cannot set up the boot vCPU state")]
    Regs(#[from] RegsError),
    #[error("cannot place a device")]
    Bus(#[from] BusError),
    #[error("{0} vCPUs requested; this VMM supports 1..={MAX_VCPUS} and KVM here {1}")]
    VcpuCount(u8, usize),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot start a vCPU thread")]
    Spawn(#[source] std::io::Error),
    #[error("the kernel must be loaded before the VM runs")]
    NotBooted,
    #[error("this VM has already run; a run is one-shot")]
    AlreadyRan,
    #[error(
        "only a paused VM (ready port, run_for, or restored and not yet run) can be snapshotted"
    )]
    NotPaused,
    #[error("a vCPU thread panicked")]
    VcpuPanicked,
    #[error(transparent)]
    SnapshotFile(#[from] SnapshotFileError),
    #[error(transparent)]
    SnapshotMemory(#[from] SnapshotMemoryError),
    #[error("cannot restore the serial device")]
    Serial(#[from] SerialPersistError),
    #[error("snapshot {}: {}", .0.display(), .1)]
    Snapshot(PathBuf, String),
    #[error("cannot write the clone identity page")]
    Identity(#[source] std::io::Error),
    #[error("cannot attach a virtio device")]
    Virtio(#[from] MmioError),
    #[error("devices are attached before boot, so the kernel command line lists them")]
    DeviceAfterBoot,
    #[error("the snapshot has a {kind} device; the restore options must give {need}")]
    RestoreArgMissing {
        kind: &'static str,
        need: &'static str,
    },
    #[error("the restore options give {given} disks; the snapshot has {expected} block devices")]
    DiskCount { expected: usize, given: usize },
    #[error("the snapshot has {0} vsock devices; a VM has at most one")]
    VsockCount(usize),
    #[error("the snapshot places a virtio device at {base:#x} on GSI {gsi}, outside the virtio-mmio slots and lines or on one already used")]
    VirtioPlacement { base: u64, gsi: u32 },
    #[error("cannot restore the virtio-blk device")]
    Block(#[from] BlockError),
    #[error("cannot restore the virtio-vsock device")]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Guest(#[from] GuestFault),
}

/// A virtio device attached to a VM.
#[derive(Debug, Clone)]
pub struct VirtioSlot {
    pub base: u64,
    pub irq: u32,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Everything needed to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_mib: u32,
    pub vcpus: u8,
    pub boot: BootProtocol,
    pub cpuid_mask: CpuidMask,
    /// Wall-clock limit for [`Vm::run`]; `None` runs until the guest ends.
    pub time_limit: Option<Duration>,
    /// Without an in-kernel irqchip HLT exits to the VMM and ends the run;
    /// Linux guests need the irqchip.
    pub irqchip: bool,
    pub vsock_cid: u64,
}

impl VmConfig {
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            mem_mib: 128,
            vcpus: 1,
            boot: BootProtocol::Auto,
            cpuid_mask: CpuidMask::none(),
            time_limit: None,
            irqchip: true,
            vsock_cid: DEFAULT_GUEST_CID,
        }
    }
}

/// The backing file of a restored block device.
#[derive(Debug)]
pub struct DiskBacking {
    /// The disk image the template had, reopened: same size.
    pub file: File,
    /// Must match how the template's disk was attached.
    pub read_only: bool,
}

/// How a VM is restored from a snapshot.
#[derive(Debug)]
pub struct RestoreOptions {
    pub serial: SerialSink,
    pub time_limit: Option<Duration>,
    /// The clone's own vsock CID: in the identity page and, if the
    /// snapshot has a vsock device, in its config space.
    pub vsock_cid: u64,
    /// The clone's own vsock host socket path (it must not exist yet);
    /// required when the snapshot has a vsock device.
    pub vsock_uds: Option<PathBuf>,
    /// One backing file per block device in the snapshot, in the order
    /// the devices were attached.
    pub disks: Vec<DiskBacking>,
    /// Fault in the snapshot's recorded working set before running.
    pub prefault: bool,
}

impl RestoreOptions {
    pub fn new(serial: SerialSink) -> Self {
        Self {
            serial,
            time_limit: None,
            vsock_cid: DEFAULT_GUEST_CID,
            vsock_uds: None,
            disks: Vec::new(),
            prefault: false,
        }
    }
}

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Built,
    Booted,
    Restored,
    Stopped(Option<GuestExit>),
}

/// Sizes of a written snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub state_bytes: u64,
    pub memory_bytes: u64,
}

/// A VM.
#[derive(Debug)]
pub struct Vm {
    config: VmConfig,
    vm: VmHandle,
    ram: GuestRam,
    vcpus: Vec<VcpuHandle>,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    lifecycle: Arc<Lifecycle>,
    extra_cmdline: Vec<String>,
    phase: Phase,
    identity: Option<CloneIdentity>,
    virtio: Vec<VirtioSlot>,
    next_mmio_slot: u64,
    next_irq: u32,
}

/// The legacy port devices every VM has, on a fresh bus.
fn legacy_pio_bus(lifecycle: &Arc<Lifecycle>, serial: SharedDevice) -> Result<Bus, BusError> {
    let mut pio = Bus::new();
    pio.insert(serial, u64::from(COM1_PORT), 8)?;
    pio.insert(
        Arc::new(Mutex::new(DebugExit::new(lifecycle.clone()))),
        u64::from(DEBUG_EXIT_PORT),
        4,
    )?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(lifecycle.clone()))),
        u64::from(I8042_COMMAND_PORT),
        1,
    )?;
    pio.insert(
        Arc::new(Mutex::new(ReadyPort::new(lifecycle.clone()))),
        u64::from(READY_PORT),
        1,
    )?;
    Ok(pio)
}

fn serial_irq(vm: &VmHandle) -> Result<EventFd, VmError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
    if vm.has_irqchip() {
        vm.register_irqfd(&irq, COM1_IRQ)?;
    }
    Ok(irq)
}

impl Vm {
    /// Creates the KVM VM, its memory, vCPUs and legacy devices.
    pub fn new(config: VmConfig, serial_sink: SerialSink) -> Result<Self, VmError> {
        let hv = Hypervisor::open()?;
        let max = hv.max_vcpus().min(usize::from(MAX_VCPUS));
        if config.vcpus == 0 || usize::from(config.vcpus) > max {
            return Err(VmError::VcpuCount(config.vcpus, max));
        }
        let mut vm = hv.create_vm()?;
        let ram = memory::create(config.mem_mib)?;
        vm.map_memory(&ram.mem)?;
        if config.irqchip {
            vm.create_irqchip()?;
        }

        let supported = hv.supported_cpuid()?;
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for id in 0..config.vcpus {
            let vcpu = vm.create_vcpu(id)?;
            let mut cpuid = supported.clone();
            cpuid::configure(&mut cpuid, id, config.vcpus, &config.cpuid_mask);
            vcpu.set_cpuid(&cpuid)?;
            vcpus.push(vcpu);
        }

        let lifecycle = Arc::new(Lifecycle::new());
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq(&vm)?, serial_sink)));
        let pio = legacy_pio_bus(&lifecycle, serial.clone())?;
        Ok(Self {
            config,
            vm,
            ram,
            vcpus,
            pio,
            mmio: Bus::new(),
            serial,
            lifecycle,
            extra_cmdline: Vec::new(),
            phase: Phase::Built,
            identity: None,
            virtio: Vec::new(),
            next_mmio_slot: 0,
            next_irq: VIRTIO_FIRST_IRQ,
        })
    }

    /// Restores a VM from the snapshot directory `dir`, with a fresh
    /// identity: a new generation, `options.vsock_cid` and a new seed.
    /// Virtio devices come back at their slots with the host resources in
    /// `options`, active ones serving from their saved queue positions.
    pub fn restore(dir: &Path, options: RestoreOptions) -> Result<Self, VmError> {
        let state = snapshot_file::read(&dir.join(STATE_FILE))?;
        let bad = |what: &str| VmError::Snapshot(dir.to_path_buf(), what.to_string());
        let vcpu_count = u8::try_from(state.vcpus.len())
            .ok()
            .filter(|n| (1..=MAX_VCPUS).contains(n))
            .ok_or_else(|| bad("vCPU count out of range"))?;
        let mem_mib =
            u32::try_from(state.mem_size >> 20).map_err(|_| bad("memory size out of range"))?;

        let hv = Hypervisor::open()?;
        let mut vm = hv.create_vm()?;
        let (mem, file) = snapshot_memory::map_private(&dir.join(MEMORY_FILE), state.mem_size)?;
        vm.map_memory(&mem)?;
        if let Some(irq) = &state.irqchip {
            vm.create_irqchip()?;
            vm.set_pit(&irq.pit)?;
            vm.set_irqchips(&irq.chips)?;
        }
        vm.set_clock(&state.clock)?;
        let mut vcpus = Vec::with_capacity(state.vcpus.len());
        for s in &state.vcpus {
            vcpus.push(VcpuHandle::restore(&vm, s)?);
        }

        let lifecycle = Arc::new(Lifecycle::new());
        let serial = SerialDevice::restore((serial_irq(&vm)?, options.serial), &state.serial)?;
        let serial = Arc::new(Mutex::new(serial));
        let pio = legacy_pio_bus(&lifecycle, serial.clone())?;
        let mut mmio = Bus::new();
        let hosts = VirtioHosts {
            vsock_cid: options.vsock_cid,
            vsock_uds: options.vsock_uds,
            disks: options.disks,
        };
        let virtio = restore_virtio(&vm, &mem, &mut mmio, &state.virtio, hosts)?;
        let next_mmio_slot = state
            .virtio
            .iter()
            .map(|v| (v.mmio_base - VIRTIO_MMIO_START) / VIRTIO_MMIO_SLOT + 1)
            .max()
            .unwrap_or(0);
        let next_irq = state
            .virtio
            .iter()
            .map(|v| v.gsi + 1)
            .max()
            .unwrap_or(VIRTIO_FIRST_IRQ);

        let identity = CloneIdentity::fresh(state.generation + 1, options.vsock_cid)
            .map_err(VmError::Identity)?;
        identity
            .write(&mem)
            .map_err(|e| VmError::Identity(std::io::Error::other(e)))?;
        if options.prefault {
            if let Ok(set) = snapshot_memory::read_working_set(&dir.join(WORKING_SET_FILE)) {
                snapshot_memory::prefault(&mem, &set);
            }
        }
        for v in &vcpus {
            v.kvmclock_ctrl()?;
        }

        let mut config = VmConfig::new(dir.join(STATE_FILE));
        config.mem_mib = mem_mib;
        config.vcpus = vcpu_count;
        config.irqchip = state.irqchip.is_some();
        config.time_limit = options.time_limit;
        config.vsock_cid = options.vsock_cid;
        Ok(Self {
            config,
            vm,
            ram: GuestRam {
                mem,
                file,
                size: state.mem_size,
            },
            vcpus,
            pio,
            mmio,
            serial,
            lifecycle,
            extra_cmdline: Vec::new(),
            phase: Phase::Restored,
            identity: Some(identity),
            virtio,
            next_mmio_slot,
            next_irq,
        })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.ram.mem
    }

    pub fn kvm(&self) -> &VmHandle {
        &self.vm
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The identity this VM was given (at boot or restore).
    pub fn identity(&self) -> Option<&CloneIdentity> {
        self.identity.as_ref()
    }

    /// Pauses the next run ([`GuestExit::Paused`]) as soon as the guest's
    /// serial console prints `text` within one line: a snapshot point named
    /// by the guest's own log rather than by a time.
    pub fn pause_on_serial(&mut self, text: impl Into<Vec<u8>>) {
        let watch = SerialWatch::new(text, self.lifecycle.clone());
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_watch(watch);
    }

    /// Whether [`Vm::pause_on_serial`]'s text has been printed.
    pub fn serial_watch_fired(&self) -> bool {
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watch_fired()
    }

    /// The attached virtio devices, in the order they were attached.
    pub fn virtio_devices(&self) -> &[VirtioSlot] {
        &self.virtio
    }

    /// Puts `device` on the MMIO bus at a fixed address (test devices).
    pub fn insert_mmio(
        &mut self,
        device: SharedDevice,
        base: u64,
        len: u64,
    ) -> Result<(), VmError> {
        Ok(self.mmio.insert(device, base, len)?)
    }

    /// Reserves the next virtio-mmio slot and interrupt line:
    /// `(mmio base, gsi)`.
    pub fn allocate_virtio_slot(&mut self) -> (u64, u32) {
        let base = VIRTIO_MMIO_START + self.next_mmio_slot * VIRTIO_MMIO_SLOT;
        let irq = self.next_irq;
        self.next_mmio_slot += 1;
        self.next_irq += 1;
        (base, irq)
    }

    /// Attaches a virtio-mmio device: its registers on the MMIO bus, its
    /// interrupt as an irqfd on the next GSI, each queue's notify register
    /// as an ioeventfd (so a notify never leaves KVM), and its
    /// `virtio_mmio.device=` entry on the kernel command line.
    pub fn add_virtio_device(
        &mut self,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<VirtioSlot, VmError> {
        if self.phase != Phase::Built {
            return Err(VmError::DeviceAfterBoot);
        }
        let transport = MmioTransport::new(self.ram.mem.clone(), device)?;
        let (base, irq) = self.allocate_virtio_slot();
        if self.vm.has_irqchip() {
            self.vm.register_irqfd(transport.interrupt_evt(), irq)?;
        }
        for (queue, evt) in (0u32..).zip(transport.queue_evts()) {
            self.vm
                .register_mmio_ioevent(evt, base + NOTIFY_REG_OFFSET, queue)?;
        }
        self.push_cmdline(transport.cmdline_entry(base, irq));
        let transport = Arc::new(Mutex::new(transport));
        self.mmio.insert(transport.clone(), base, MMIO_SIZE)?;
        let slot = VirtioSlot {
            base,
            irq,
            transport,
        };
        self.virtio.push(slot.clone());
        Ok(slot)
    }

    /// Appends to the kernel command line (before [`Vm::boot`]).
    pub fn push_cmdline(&mut self, arg: impl Into<String>) {
        self.extra_cmdline.push(arg.into());
    }

    /// Loads the kernel, writes the first identity page and sets the boot
    /// vCPU's registers.
    pub fn boot(&mut self) -> Result<LoadedKernel, VmError> {
        if self.phase != Phase::Built {
            return Err(VmError::AlreadyRan);
        }
        let mut cmdline = self.config.cmdline.clone();
        for extra in &self.extra_cmdline {
            if !cmdline.is_empty() {
                cmdline.push(' ');
            }
            cmdline.push_str(extra);
        }
        let spec = BootSpec {
            kernel: &self.config.kernel,
            initrd: self.config.initrd.as_deref(),
            cmdline: &cmdline,
            protocol: self.config.boot,
        };
        let loaded = boot::load(&self.ram.mem, self.ram.size, &spec)?;
        let identity = CloneIdentity::fresh(0, self.config.vsock_cid).map_err(VmError::Identity)?;
        identity
            .write(&self.ram.mem)
            .map_err(|e| VmError::Identity(std::io::Error::other(e)))?;
        self.identity = Some(identity);
        regs::setup_boot_vcpu(
            &self.vcpus[0],
            &self.ram.mem,
            loaded.entry,
            self.config.irqchip,
        )?;
        self.phase = Phase::Booted;
        Ok(loaded)
    }

    /// Runs the guest until it ends, pauses at the ready port, or the time
    /// limit passes (an error), then stops every vCPU. The stopped VM
    /// (memory, vCPU state) stays inspectable.
    pub fn run(&mut self) -> Result<GuestExit, VmError> {
        let deadline = self.config.time_limit.map(|d| {
            let limit = Err(GuestFault::TimedOut(d));
            (Instant::now() + d, limit)
        });
        self.run_until(deadline)
    }

    /// Runs the guest for at most `duration`, then pauses it
    /// ([`GuestExit::Paused`]) so it can be snapshotted mid-run.
    pub fn run_for(&mut self, duration: Duration) -> Result<GuestExit, VmError> {
        self.run_until(Some((Instant::now() + duration, Ok(GuestExit::Paused))))
    }

    fn run_until(&mut self, deadline: Option<(Instant, Outcome)>) -> Result<GuestExit, VmError> {
        match self.phase {
            Phase::Booted | Phase::Restored => {}
            Phase::Built => return Err(VmError::NotBooted),
            Phase::Stopped(_) => return Err(VmError::AlreadyRan),
        }
        // Devices parked by a snapshot serve again before the guest runs.
        for slot in &self.virtio {
            lock_transport(&slot.transport).resume_device()?;
        }
        let ctx = VcpuContext {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            mem: self.ram.mem.clone(),
            lifecycle: self.lifecycle.clone(),
        };
        let mut threads = Vec::with_capacity(self.vcpus.len());
        let mut spawn_error = None;
        for vcpu in self.vcpus.drain(..) {
            match VcpuThread::spawn(vcpu, ctx.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    spawn_error = Some(e);
                    self.lifecycle.finish(Ok(GuestExit::PowerOff));
                    break;
                }
            }
        }
        let outcome = match deadline {
            None => self.lifecycle.wait(None),
            Some((at, on_deadline)) => self.lifecycle.wait(Some(at)).or_else(|| {
                self.lifecycle.finish(on_deadline);
                self.lifecycle.wait(None)
            }),
        }
        .unwrap_or(Ok(GuestExit::PowerOff));
        let spawned = threads.len();
        self.vcpus
            .extend(threads.into_iter().filter_map(VcpuThread::stop_and_join));
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
        self.phase = Phase::Stopped(outcome.as_ref().ok().copied());
        if let Some(e) = spawn_error {
            return Err(VmError::Spawn(e));
        }
        if self.vcpus.len() != spawned {
            return Err(VmError::VcpuPanicked);
        }
        Ok(outcome?)
    }

    /// Writes a paused VM to the snapshot directory `dir` (created if
    /// needed): `state` and a sparse `mem`. A restored VM that has not run
    /// yet counts as paused.
    pub fn snapshot(&mut self, dir: &Path) -> Result<SnapshotInfo, VmError> {
        if !matches!(
            self.phase,
            Phase::Restored | Phase::Stopped(Some(GuestExit::Ready | GuestExit::Paused))
        ) {
            return Err(VmError::NotPaused);
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| VmError::Snapshot(dir.to_path_buf(), e.to_string()))?;
        // Device workers park first, so that neither their queues nor guest
        // memory move while the rest is saved. They resume at the next run.
        for slot in &self.virtio {
            lock_transport(&slot.transport).pause_device()?;
        }
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for v in &mut self.vcpus {
            v.complete_pending_io()?;
        }
        for v in &self.vcpus {
            vcpus.push(v.save()?);
        }
        let irqchip = if self.vm.has_irqchip() {
            Some(IrqchipState {
                chips: self.vm.irqchips()?,
                pit: self.vm.pit()?,
            })
        } else {
            None
        };
        let serial = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .save()?;
        let mut virtio = Vec::with_capacity(self.virtio.len());
        for slot in &self.virtio {
            let transport = lock_transport(&slot.transport);
            let device = transport
                .device()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .device_state();
            virtio.push(VirtioSlotState {
                mmio_base: slot.base,
                gsi: slot.irq,
                transport: transport.save()?,
                device,
            });
        }
        let state = VmState {
            mem_size: self.ram.size,
            irqchip,
            clock: self.vm.clock()?,
            vcpus,
            serial,
            generation: self.identity.map_or(0, |i| i.generation),
            virtio,
        };
        let memory_bytes = snapshot_memory::save(&self.ram.mem, &dir.join(MEMORY_FILE))?;
        let state_path = dir.join(STATE_FILE);
        snapshot_file::write(&state_path, &state)?;
        let state_bytes = std::fs::metadata(&state_path).map_or(0, |m| m.len());
        Ok(SnapshotInfo {
            state_bytes,
            memory_bytes,
        })
    }

    /// Records the pages this VM's guest touched into the snapshot at
    /// `dir`, for later restores with `prefault`.
    pub fn record_working_set(&self, dir: &Path) -> Result<usize, VmError> {
        let set = snapshot_memory::working_set(&self.ram.mem)?;
        snapshot_memory::write_working_set(&dir.join(WORKING_SET_FILE), &set)
            .map_err(|e| VmError::Snapshot(dir.to_path_buf(), e.to_string()))?;
        Ok(set.len())
    }
}

fn lock_transport(t: &Arc<Mutex<MmioTransport>>) -> std::sync::MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a saved slot is one [`Vm::allocate_virtio_slot`] could have
/// handed out: a slot-aligned window inside the virtio-mmio range, on a
/// GSI from the first virtio line to the IOAPIC's last.
fn valid_placement(base: u64, gsi: u32) -> bool {
    let in_window = base >= VIRTIO_MMIO_START
        && base
            .checked_add(MMIO_SIZE)
            .is_some_and(|end| end <= MMIO_GAP_END)
        && (base - VIRTIO_MMIO_START) % VIRTIO_MMIO_SLOT == 0;
    in_window && (VIRTIO_FIRST_IRQ..=MAX_VIRTIO_GSI).contains(&gsi)
}

/// Re-creates the snapshot's virtio devices: each device from its state
/// and this clone's host resources, its transport from the saved
/// registers (restarting an active device at its saved queue positions),
/// its irqfd, ioeventfds and MMIO window at the saved place.
/// The host resources a clone's virtio devices get (from [`RestoreOptions`]).
struct VirtioHosts {
    vsock_cid: u64,
    vsock_uds: Option<PathBuf>,
    disks: Vec<DiskBacking>,
}

fn restore_virtio(
    vm: &VmHandle,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    slots: &[VirtioSlotState],
    mut options: VirtioHosts,
) -> Result<Vec<VirtioSlot>, VmError> {
    let blocks = slots
        .iter()
        .filter(|s| matches!(s.device, VirtioDeviceState::Block(_)))
        .count();
    if blocks != options.disks.len() {
        return Err(VmError::DiskCount {
            expected: blocks,
            given: options.disks.len(),
        });
    }
    let vsocks = slots
        .iter()
        .filter(|s| matches!(s.device, VirtioDeviceState::Vsock(_)))
        .count();
    if vsocks > 1 {
        return Err(VmError::VsockCount(vsocks));
    }
    let mut disks = std::mem::take(&mut options.disks).into_iter();
    let mut gsis = HashSet::new();
    let mut restored = Vec::with_capacity(slots.len());
    for slot in slots {
        let (base, irq) = (slot.mmio_base, slot.gsi);
        if !valid_placement(base, irq) || !gsis.insert(irq) {
            return Err(VmError::VirtioPlacement { base, gsi: irq });
        }
        let mut cid_changed = false;
        let device: Arc<Mutex<dyn VirtioDevice>> = match &slot.device {
            VirtioDeviceState::Rng(s) => {
                let d = RngDevice::restore(RngConstructorArgs, s).unwrap_or_else(|n| match n {});
                Arc::new(Mutex::new(d))
            }
            VirtioDeviceState::Block(s) => {
                let disk = disks.next().ok_or(VmError::DiskCount {
                    expected: blocks,
                    given: 0,
                })?;
                let args = BlockConstructorArgs {
                    disk: disk.file,
                    read_only: disk.read_only,
                };
                Arc::new(Mutex::new(BlockDevice::restore(args, s)?))
            }
            VirtioDeviceState::Vsock(s) => {
                let uds_path = options.vsock_uds.take().ok_or(VmError::RestoreArgMissing {
                    kind: "virtio-vsock",
                    need: "the clone's vsock socket path",
                })?;
                cid_changed = s.guest_cid != options.vsock_cid;
                let args = VsockConstructorArgs {
                    guest_cid: options.vsock_cid,
                    uds_path,
                };
                Arc::new(Mutex::new(VsockDevice::restore(args, s)?))
            }
        };
        let args = MmioConstructorArgs {
            mem: mem.clone(),
            device,
        };
        let mut transport = MmioTransport::restore(args, &slot.transport)?;
        if vm.has_irqchip() {
            vm.register_irqfd(transport.interrupt_evt(), irq)?;
        }
        for (queue, evt) in (0u32..).zip(transport.queue_evts()) {
            vm.register_mmio_ioevent(evt, base + NOTIFY_REG_OFFSET, queue)?;
        }
        if cid_changed {
            transport.notify_config_change();
        }
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(transport.clone(), base, MMIO_SIZE)?;
        restored.push(VirtioSlot {
            base,
            irq,
            transport,
        });
    }
    Ok(restored)
}
