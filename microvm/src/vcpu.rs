//! The vCPU run loop: one thread per vCPU, dispatching exits to the buses
//! until the guest or the VMM ends the run.

use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::kvm::{Exit, IoHandler, VcpuHandle};
use crate::lifecycle::{GuestExit, GuestFault, Lifecycle};
use crate::seccomp::{self, ThreadKind};

/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;
const X86_CR0_PG: u64 = 1 << 31;

/// What every vCPU thread shares.
#[derive(Clone, Debug)]
pub struct VcpuContext {
    pub pio: Bus,
    pub mmio: Bus,
    pub mem: GuestMemoryMmap,
    pub lifecycle: Arc<Lifecycle>,
}

/// The signal that knocks a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process, so the signal
/// interrupts KVM_RUN with EINTR instead of killing the process.
fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuThread {
    handle: JoinHandle<VcpuHandle>,
}

impl VcpuThread {
    pub fn spawn(mut vcpu: VcpuHandle, ctx: VcpuContext) -> std::io::Result<Self> {
        install_kick_handler()?;
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.id()))
            .spawn(move || {
                // Jail hook: this thread's seccomp list, if the binary armed it.
                seccomp::on_thread_start(ThreadKind::Vcpu, &format!("vcpu{}", vcpu.id()));
                run_loop(&mut vcpu, &ctx);
                vcpu
            })?;
        Ok(Self { handle })
    }

    /// Interrupts KVM_RUN until the thread notices the stop flag and ends,
    /// and gives the vCPU back. Kicks repeat because a signal that lands
    /// just before KVM_RUN is lost. `None` if the thread panicked (a VMM
    /// bug, already reported on stderr by the panic hook).
    pub fn stop_and_join(self) -> Option<VcpuHandle> {
        while !self.handle.is_finished() {
            // ESRCH only if the thread has just exited, which ends the loop.
            let _ = self.handle.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
        self.handle.join().ok()
    }
}

impl IoHandler for VcpuContext {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            data.fill(0xff);
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio.write(u64::from(port), data);
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            data.fill(0xff);
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio.write(addr, data);
    }
}

fn run_loop(vcpu: &mut VcpuHandle, ctx: &VcpuContext) {
    let id = vcpu.id();
    while !ctx.lifecycle.should_stop() {
        let fault = match vcpu.run(ctx) {
            Ok(Exit::Io | Exit::Interrupted) => continue,
            Ok(Exit::Hlt) => {
                ctx.lifecycle.finish(Ok(GuestExit::Halted));
                return;
            }
            Ok(Exit::SystemEvent { kind }) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => {
                    ctx.lifecycle.finish(Ok(GuestExit::PowerOff));
                    return;
                }
                KVM_SYSTEM_EVENT_RESET => {
                    ctx.lifecycle.finish(Ok(GuestExit::Reset));
                    return;
                }
                KVM_SYSTEM_EVENT_CRASH => Fault::Unexpected("system event: guest crash".into()),
                other => Fault::Unexpected(format!("system event {other}")),
            },
            Ok(Exit::Shutdown) => Fault::Triple,
            Ok(Exit::InternalError { suberror, .. }) => Fault::Internal(suberror),
            Ok(Exit::FailEntry { reason }) => Fault::FailEntry(reason),
            Ok(Exit::Other(what)) => Fault::Unexpected(what),
            Err(e) => Fault::Kvm(e.to_string()),
        };
        ctx.lifecycle
            .finish(Err(describe(vcpu, &ctx.mem, id, fault)));
        return;
    }
}

/// A fault before the vCPU state has been read for the report.
enum Fault {
    Triple,
    Internal(u32),
    FailEntry(u64),
    Unexpected(String),
    Kvm(String),
}

fn describe(vcpu: &VcpuHandle, mem: &GuestMemoryMmap, id: u8, fault: Fault) -> GuestFault {
    let rip = vcpu.regs().map(|r| r.rip).unwrap_or(0);
    match fault {
        Fault::Triple => GuestFault::TripleFault { vcpu: id, rip },
        Fault::Internal(suberror) => GuestFault::InternalError {
            vcpu: id,
            suberror,
            rip,
            bytes: instruction_bytes(vcpu, mem, rip),
        },
        Fault::FailEntry(reason) => GuestFault::FailEntry { vcpu: id, reason },
        Fault::Unexpected(what) => GuestFault::UnexpectedExit { vcpu: id, what },
        Fault::Kvm(what) => GuestFault::Kvm { vcpu: id, what },
    }
}

/// The bytes at the guest's RIP, for the error report. Empty if the address
/// cannot be resolved.
fn instruction_bytes(vcpu: &VcpuHandle, mem: &GuestMemoryMmap, rip: u64) -> Vec<u8> {
    let Ok(sregs) = vcpu.sregs() else {
        return Vec::new();
    };
    let linear = sregs.cs.base.wrapping_add(rip);
    let gpa = if sregs.cr0 & X86_CR0_PG == 0 {
        Some(linear)
    } else {
        vcpu.translate(linear)
    };
    let Some(gpa) = gpa else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(MAX_INSN_LEN);
    for i in 0..MAX_INSN_LEN as u64 {
        match mem.read_obj::<u8>(GuestAddress(gpa.wrapping_add(i))) {
            Ok(b) => out.push(b),
            Err(_) => break,
        }
    }
    out
}
