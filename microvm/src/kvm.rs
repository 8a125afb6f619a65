//! The one module that issues KVM ioctls.
//!
//! Everything else in the crate talks to [`Hypervisor`], [`VmHandle`] and
//! [`VcpuHandle`], and gets KVM exits as the crate's own [`Exit`] type.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_pit_config, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
    KVM_MAX_MSR_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use std::sync::Arc;

use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Where the in-kernel irqchip needs its private pages (below the 4 GiB MMIO
/// gap's end, out of RAM).
const TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not the supported 12")]
    ApiVersion(i32),
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    #[error("KVM ioctl {op} failed")]
    Ioctl {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn ioctl<T>(op: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, KvmError> {
    r.map_err(|source| KvmError::Ioctl { op, source })
}

/// An open `/dev/kvm`.
#[derive(Debug)]
pub struct Hypervisor {
    kvm: Kvm,
}

impl Hypervisor {
    pub fn open() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(KvmError::ApiVersion(version));
        }
        for (cap, name) in [
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCap(name));
            }
        }
        Ok(Self { kvm })
    }

    /// The CPUID leaves KVM can present to a guest on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        ioctl(
            "KVM_GET_SUPPORTED_CPUID",
            self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
        )
    }

    /// The MSR indices that KVM saves and restores for a vCPU.
    pub fn msr_index_list(&self) -> Result<Vec<u32>, KvmError> {
        let list = ioctl("KVM_GET_MSR_INDEX_LIST", self.kvm.get_msr_index_list())?;
        Ok(list.as_slice().to_vec())
    }

    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    pub fn create_vm(&self) -> Result<VmHandle, KvmError> {
        let msr_indices = self.msr_index_list()?.into();
        let fd = ioctl("KVM_CREATE_VM", self.kvm.create_vm())?;
        Ok(VmHandle {
            fd,
            slots: 0,
            irqchip: false,
            msr_indices,
        })
    }
}

/// One KVM VM.
#[derive(Debug)]
pub struct VmHandle {
    fd: VmFd,
    slots: u32,
    irqchip: bool,
    /// The MSRs KVM saves for a vCPU on this host (for snapshots).
    msr_indices: Arc<[u32]>,
}

impl VmHandle {
    /// Registers every region of `mem` as a KVM memory slot.
    ///
    /// The caller keeps `mem` alive for as long as the VM exists: KVM holds
    /// raw pointers into the mappings.
    pub fn map_memory(&mut self, mem: &GuestMemoryMmap) -> Result<(), KvmError> {
        for region in mem.iter() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| KvmError::MissingCap("host mapping of guest region"))?;
            let slot = kvm_userspace_memory_region {
                slot: self.slots,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` is the start of a live mapping of `memory_size`
            // bytes owned by `mem`, which the caller keeps alive for the VM's
            // lifetime, and slots never overlap because regions never do.
            ioctl("KVM_SET_USER_MEMORY_REGION", unsafe {
                self.fd.set_user_memory_region(slot)
            })?;
            self.slots += 1;
        }
        Ok(())
    }

    /// Creates the in-kernel PIC, IOAPIC, LAPICs and PIT.
    pub fn create_irqchip(&mut self) -> Result<(), KvmError> {
        ioctl("KVM_SET_TSS_ADDR", self.fd.set_tss_address(TSS_ADDRESS))?;
        ioctl("KVM_CREATE_IRQCHIP", self.fd.create_irq_chip())?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        ioctl("KVM_CREATE_PIT2", self.fd.create_pit2(pit))?;
        self.irqchip = true;
        Ok(())
    }

    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// Makes a write to `evt` raise `gsi` in the in-kernel irqchip.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), KvmError> {
        ioctl("KVM_IRQFD", self.fd.register_irqfd(evt, gsi))
    }

    /// Makes a 4-byte guest write of `datamatch` to MMIO `addr` signal `evt`
    /// inside KVM, without an exit to this process.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), KvmError> {
        ioctl(
            "KVM_IOEVENTFD",
            self.fd
                .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch),
        )
    }

    /// The in-kernel PIC master, PIC slave and IOAPIC, in that order.
    pub fn irqchips(&self) -> Result<[kvm_irqchip; 3], KvmError> {
        let mut chips = [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ]
        .map(|chip_id| kvm_irqchip {
            chip_id,
            ..Default::default()
        });
        for chip in &mut chips {
            ioctl("KVM_GET_IRQCHIP", self.fd.get_irqchip(chip))?;
        }
        Ok(chips)
    }

    /// The interrupt request registers of the in-kernel PIC pair: which
    /// legacy lines (0-7 master, 8-15 slave) have a pending edge.
    pub fn pic_irr(&self) -> Result<(u8, u8), KvmError> {
        let [master, slave, _] = self.irqchips()?;
        // SAFETY: KVM filled `chip` according to `chip_id`, and chips 0 and
        // 1 are PIC_MASTER and PIC_SLAVE, so the `pic` member is the valid
        // one; kvm_pic_state is plain bytes, valid for any contents.
        let (m, s) = unsafe { (master.chip.pic.irr, slave.chip.pic.irr) };
        Ok((m, s))
    }

    pub fn set_irqchips(&self, chips: &[kvm_irqchip; 3]) -> Result<(), KvmError> {
        for chip in chips {
            ioctl("KVM_SET_IRQCHIP", self.fd.set_irqchip(chip))?;
        }
        Ok(())
    }

    pub fn pit(&self) -> Result<kvm_pit_state2, KvmError> {
        ioctl("KVM_GET_PIT2", self.fd.get_pit2())
    }

    pub fn set_pit(&self, pit: &kvm_pit_state2) -> Result<(), KvmError> {
        ioctl("KVM_SET_PIT2", self.fd.set_pit2(pit))
    }

    pub fn clock(&self) -> Result<kvm_clock_data, KvmError> {
        ioctl("KVM_GET_CLOCK", self.fd.get_clock())
    }

    pub fn set_clock(&self, clock: &kvm_clock_data) -> Result<(), KvmError> {
        // Only the clock value is restored; flags from the source host
        // (TSC-stable, realtime) are not inputs KVM accepts.
        let value = kvm_clock_data {
            clock: clock.clock,
            ..Default::default()
        };
        ioctl("KVM_SET_CLOCK", self.fd.set_clock(&value))
    }

    pub fn create_vcpu(&self, id: u8) -> Result<VcpuHandle, KvmError> {
        let fd = ioctl("KVM_CREATE_VCPU", self.fd.create_vcpu(u64::from(id)))?;
        Ok(VcpuHandle {
            fd,
            id,
            lapic: self.irqchip,
            msr_indices: self.msr_indices.clone(),
        })
    }
}

/// Guest port and MMIO accesses, answered while the exit data is still in
/// `kvm_run`.
pub trait IoHandler {
    fn pio_read(&self, port: u16, data: &mut [u8]);
    fn pio_write(&self, port: u16, data: &[u8]);
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// Why `KVM_RUN` returned, in the crate's own terms.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// A port or MMIO access, already answered by the [`IoHandler`].
    Io,
    Hlt,
    /// The guest triple-faulted (or asked for a shutdown KVM cannot model).
    Shutdown,
    /// KVM's instruction emulator or exit handling gave up.
    InternalError {
        suberror: u32,
        data: Vec<u64>,
    },
    FailEntry {
        reason: u64,
    },
    SystemEvent {
        kind: u32,
    },
    /// `KVM_RUN` was interrupted by a signal; nothing happened in the guest.
    Interrupted,
    Other(String),
}

/// One vCPU.
#[derive(Debug)]
pub struct VcpuHandle {
    fd: VcpuFd,
    id: u8,
    lapic: bool,
    msr_indices: Arc<[u32]>,
}

impl VcpuHandle {
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Whether this vCPU has an in-kernel LAPIC.
    pub fn has_lapic(&self) -> bool {
        self.lapic
    }

    /// The MSRs a snapshot of this vCPU saves.
    pub fn msr_indices(&self) -> &[u32] {
        &self.msr_indices
    }

    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<(), KvmError> {
        ioctl("KVM_SET_CPUID2", self.fd.set_cpuid2(cpuid))
    }

    pub fn set_msrs(&self, msrs: &Msrs) -> Result<(), KvmError> {
        let written = ioctl("KVM_SET_MSRS", self.fd.set_msrs(msrs))?;
        if written != msrs.as_slice().len() {
            return Err(KvmError::MissingCap(
                "every boot MSR (KVM_SET_MSRS was short)",
            ));
        }
        Ok(())
    }

    pub fn regs(&self) -> Result<kvm_regs, KvmError> {
        ioctl("KVM_GET_REGS", self.fd.get_regs())
    }

    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), KvmError> {
        ioctl("KVM_SET_REGS", self.fd.set_regs(regs))
    }

    pub fn sregs(&self) -> Result<kvm_sregs, KvmError> {
        ioctl("KVM_GET_SREGS", self.fd.get_sregs())
    }

    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), KvmError> {
        ioctl("KVM_SET_SREGS", self.fd.set_sregs(sregs))
    }

    pub fn set_fpu(&self, fpu: &kvm_fpu) -> Result<(), KvmError> {
        ioctl("KVM_SET_FPU", self.fd.set_fpu(fpu))
    }

    pub fn cpuid(&self) -> Result<Vec<kvm_cpuid_entry2>, KvmError> {
        let cpuid = ioctl("KVM_GET_CPUID2", self.fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES))?;
        Ok(cpuid.as_slice().to_vec())
    }

    pub fn set_cpuid_entries(&self, entries: &[kvm_cpuid_entry2]) -> Result<(), KvmError> {
        let cpuid = CpuId::from_entries(entries)
            .map_err(|_| KvmError::MissingCap("room for the saved CPUID entries"))?;
        self.set_cpuid(&cpuid)
    }

    /// Reads every MSR in `indices` that KVM can read for this vCPU. An
    /// index KVM refuses is dropped and the rest read again, so one
    /// host-specific MSR does not lose the others.
    pub fn msrs(&self, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, KvmError> {
        let mut out = Vec::with_capacity(indices.len());
        let mut rest: Vec<u32> = indices.to_vec();
        while !rest.is_empty() {
            let chunk: Vec<_> = rest
                .iter()
                .take(KVM_MAX_MSR_ENTRIES)
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&chunk)
                .map_err(|_| KvmError::MissingCap("room for the MSR list"))?;
            let read = ioctl("KVM_GET_MSRS", self.fd.get_msrs(&mut msrs))?;
            out.extend_from_slice(&msrs.as_slice()[..read]);
            // Skip the entry KVM stopped at, if it stopped early.
            let consumed = if read < chunk.len() { read + 1 } else { read };
            rest.drain(..consumed);
        }
        Ok(out)
    }

    pub fn set_msr_entries(&self, entries: &[kvm_msr_entry]) -> Result<(), KvmError> {
        for chunk in entries.chunks(KVM_MAX_MSR_ENTRIES) {
            let msrs = Msrs::from_entries(chunk)
                .map_err(|_| KvmError::MissingCap("room for the MSR list"))?;
            self.set_msrs(&msrs)?;
        }
        Ok(())
    }

    pub fn mp_state(&self) -> Result<kvm_mp_state, KvmError> {
        ioctl("KVM_GET_MP_STATE", self.fd.get_mp_state())
    }

    pub fn set_mp_state(&self, state: kvm_mp_state) -> Result<(), KvmError> {
        ioctl("KVM_SET_MP_STATE", self.fd.set_mp_state(state))
    }

    pub fn xsave(&self) -> Result<kvm_xsave, KvmError> {
        ioctl("KVM_GET_XSAVE", self.fd.get_xsave())
    }

    pub fn set_xsave(&self, xsave: &kvm_xsave) -> Result<(), KvmError> {
        // SAFETY: `xsave` is a whole kvm_xsave read back by KVM_GET_XSAVE on
        // a vCPU with the same CPUID (the snapshot restores CPUID first), so
        // its size matches what KVM expects and no extra region is read.
        ioctl("KVM_SET_XSAVE", unsafe { self.fd.set_xsave(xsave) })
    }

    pub fn xcrs(&self) -> Result<kvm_xcrs, KvmError> {
        ioctl("KVM_GET_XCRS", self.fd.get_xcrs())
    }

    pub fn set_xcrs(&self, xcrs: &kvm_xcrs) -> Result<(), KvmError> {
        ioctl("KVM_SET_XCRS", self.fd.set_xcrs(xcrs))
    }

    pub fn debug_regs(&self) -> Result<kvm_debugregs, KvmError> {
        ioctl("KVM_GET_DEBUGREGS", self.fd.get_debug_regs())
    }

    pub fn set_debug_regs(&self, regs: &kvm_debugregs) -> Result<(), KvmError> {
        ioctl("KVM_SET_DEBUGREGS", self.fd.set_debug_regs(regs))
    }

    pub fn vcpu_events(&self) -> Result<kvm_vcpu_events, KvmError> {
        ioctl("KVM_GET_VCPU_EVENTS", self.fd.get_vcpu_events())
    }

    pub fn set_vcpu_events(&self, events: &kvm_vcpu_events) -> Result<(), KvmError> {
        ioctl("KVM_SET_VCPU_EVENTS", self.fd.set_vcpu_events(events))
    }

    /// Tells the guest's kvmclock that the vCPU was paused, so its
    /// watchdogs do not fire for the time spent in a snapshot. Returns
    /// false when the guest never set up kvmclock (KVM answers EINVAL).
    pub fn kvmclock_ctrl(&self) -> Result<bool, KvmError> {
        match self.fd.kvmclock_ctrl() {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == libc::EINVAL => Ok(false),
            Err(source) => Err(KvmError::Ioctl {
                op: "KVM_KVMCLOCK_CTRL",
                source,
            }),
        }
    }

    /// Lets KVM finish an instruction whose I/O this process answered
    /// (an IN or MMIO read completes on the next entry) without running the
    /// guest further, so that saved registers are past it.
    pub fn complete_pending_io(&mut self) -> Result<(), KvmError> {
        self.fd.set_kvm_immediate_exit(1);
        let result = match self.fd.run() {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(source) => Err(KvmError::Ioctl {
                op: "KVM_RUN",
                source,
            }),
        };
        self.fd.set_kvm_immediate_exit(0);
        result
    }

    pub fn lapic(&self) -> Result<kvm_lapic_state, KvmError> {
        ioctl("KVM_GET_LAPIC", self.fd.get_lapic())
    }

    pub fn set_lapic(&self, lapic: &kvm_lapic_state) -> Result<(), KvmError> {
        ioctl("KVM_SET_LAPIC", self.fd.set_lapic(lapic))
    }

    /// Guest-physical address of guest-virtual `gva` under the vCPU's
    /// current paging mode, if KVM can translate it.
    pub fn translate(&self, gva: u64) -> Option<u64> {
        let t = self.fd.translate_gva(gva).ok()?;
        (t.valid != 0).then_some(t.physical_address)
    }

    /// Runs the vCPU until the next exit that needs this process.
    pub fn run(&mut self, io: &dyn IoHandler) -> Result<Exit, KvmError> {
        let exit = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                io.pio_read(port, data);
                Exit::Io
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                io.pio_write(port, data);
                Exit::Io
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                io.mmio_read(addr, data);
                Exit::Io
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                io.mmio_write(addr, data);
                Exit::Io
            }
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::FailEntry(reason, _cpu)) => Exit::FailEntry { reason },
            Ok(VcpuExit::SystemEvent(kind, _)) => Exit::SystemEvent { kind },
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::InternalError) => Exit::InternalError {
                suberror: 0,
                data: Vec::new(),
            },
            Ok(other) => Exit::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(source) => {
                return Err(KvmError::Ioctl {
                    op: "KVM_RUN",
                    source,
                })
            }
        };
        if let Exit::InternalError { .. } = exit {
            return Ok(self.internal_error());
        }
        Ok(exit)
    }

    fn internal_error(&mut self) -> Exit {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the exit union, since
        // the last exit_reason was KVM_EXIT_INTERNAL_ERROR.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = usize::try_from(internal.ndata)
            .unwrap_or(0)
            .min(internal.data.len());
        Exit::InternalError {
            suberror: internal.suberror,
            data: internal.data[..n].to_vec(),
        }
    }
}
