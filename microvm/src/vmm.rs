//! One microVM: builds it from a [`VmConfig`], boots it, runs it to its end.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::cpuid::{self, CpuidMask};
use crate::arch::x86_64::layout::{
    COM1_IRQ, COM1_PORT, DEBUG_EXIT_PORT, I8042_COMMAND_PORT, VIRTIO_FIRST_IRQ, VIRTIO_MMIO_SLOT,
    VIRTIO_MMIO_START,
};
use crate::arch::x86_64::regs::{self, RegsError};
use crate::boot::{self, BootError, BootProtocol, BootSpec, LoadedKernel};
use crate::bus::{Bus, BusError, SharedDevice};
use crate::devices::debug_exit::DebugExit;
use crate::devices::i8042::I8042;
use crate::devices::serial::{SerialDevice, SerialSink};
use crate::kvm::{Hypervisor, KvmError, VcpuHandle, VmHandle};
use crate::lifecycle::{GuestExit, GuestFault, Lifecycle};
use crate::memory::{self, GuestRam, MemoryError};
use crate::vcpu::{VcpuContext, VcpuThread};

pub const MAX_VCPUS: u8 = 32;

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
    #[error("a vCPU thread panicked")]
    VcpuPanicked,
    #[error(transparent)]
    Guest(#[from] GuestFault),
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
        }
    }
}

/// A built VM, not yet running.
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
    loaded: Option<LoadedKernel>,
    next_mmio_slot: u64,
    next_irq: u32,
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
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        if config.irqchip {
            vm.register_irqfd(&serial_irq, COM1_IRQ)?;
        }
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, serial_sink)));
        let mut pio = Bus::new();
        pio.insert(serial.clone(), u64::from(COM1_PORT), 8)?;
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
            loaded: None,
            next_mmio_slot: 0,
            next_irq: VIRTIO_FIRST_IRQ,
        })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.ram.mem
    }

    pub fn ram(&self) -> &GuestRam {
        &self.ram
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

    /// Appends to the kernel command line (before [`Vm::boot`]).
    pub fn push_cmdline(&mut self, arg: impl Into<String>) {
        self.extra_cmdline.push(arg.into());
    }

    /// Loads the kernel and sets the boot vCPU's registers.
    pub fn boot(&mut self) -> Result<LoadedKernel, VmError> {
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
        regs::setup_boot_vcpu(
            &self.vcpus[0],
            &self.ram.mem,
            loaded.entry,
            self.config.irqchip,
        )?;
        self.loaded = Some(loaded);
        Ok(loaded)
    }

    /// Runs the guest until it ends or the time limit passes, then stops
    /// every vCPU. The stopped VM (memory, vCPU state) stays inspectable.
    pub fn run(&mut self) -> Result<GuestExit, VmError> {
        if self.loaded.is_none() {
            return Err(VmError::NotBooted);
        }
        if self.lifecycle.should_stop() {
            return Err(VmError::AlreadyRan);
        }
        let ctx = VcpuContext {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            mem: self.ram.mem.clone(),
            lifecycle: self.lifecycle.clone(),
        };
        let deadline = self.config.time_limit.map(|d| Instant::now() + d);
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
        let outcome = self.lifecycle.wait(deadline).unwrap_or_else(|| {
            let limit = self.config.time_limit.unwrap_or_default();
            self.lifecycle.finish(Err(GuestFault::TimedOut(limit)));
            Err(GuestFault::TimedOut(limit))
        });
        let spawned = threads.len();
        self.vcpus
            .extend(threads.into_iter().filter_map(VcpuThread::stop_and_join));
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
        if let Some(e) = spawn_error {
            return Err(VmError::Spawn(e));
        }
        if self.vcpus.len() != spawned {
            return Err(VmError::VcpuPanicked);
        }
        Ok(outcome?)
    }
}
