//! What this host's KVM can run, found by booting small test guests.
//!
//! Each check is a real guest run on this VMM; a "no" carries the guest's
//! own failure (KVM exit, RIP and instruction bytes), not a guess from CPUID.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::arch::x86_64::cpuid::CpuidMask;
use crate::devices::serial::SerialSink;
use crate::lifecycle::GuestExit;
use crate::test_guests;
use crate::vmm::{Vm, VmConfig, VmError};

/// A guest that cannot finish its few instructions in this time is stuck.
const CHECK_LIMIT: Duration = Duration::from_secs(5);

/// One capability check.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub what: &'static str,
    pub ok: bool,
    /// Why not, when `ok` is false; the guest's output when true.
    pub detail: String,
}

/// The answer to "what can this host run?".
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub kvm: Result<(), String>,
    pub checks: Vec<Check>,
    /// Whether KVM_SET_CPUID2 decides what the guest's CPUID returns. Where
    /// it does not (a nested KVM that does not trap CPUID), features must
    /// also be hidden with `clearcpuid=` on the kernel command line.
    pub cpuid_masking: Option<Check>,
    pub integer_guests: bool,
    pub full_linux_guests: bool,
}

impl Report {
    /// Why full Linux guests cannot run, in one line; `None` if they can.
    pub fn full_linux_reason(&self) -> Option<String> {
        if let Err(e) = &self.kvm {
            return Some(format!("KVM unavailable: {e}"));
        }
        let failed: Vec<_> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }
}

const CHECKS: &[(&str, &str, &str)] = &[
    ("integer", "hello", "64-bit ring-0 integer code, port I/O"),
    (
        "sse",
        "probe_sse",
        "SSE instructions (every Linux user space)",
    ),
    (
        "xsave",
        "probe_xsave",
        "XSAVE/XRSTOR (Linux's FPU context switch)",
    ),
    (
        "usermode-syscall",
        "probe_usermode",
        "IRETQ to ring 3 and SYSCALL back",
    ),
];

/// Runs every check. Never fails: a broken host is a report, not an error.
pub fn run() -> Report {
    if let Err(e) = crate::kvm::Hypervisor::open() {
        return Report {
            kvm: Err(error_chain(&e)),
            checks: Vec::new(),
            cpuid_masking: None,
            integer_guests: false,
            full_linux_guests: false,
        };
    }
    let checks: Vec<Check> = CHECKS
        .iter()
        .map(|(name, guest, what)| check(name, guest, what))
        .collect();
    let integer_guests = checks.first().is_some_and(|c| c.ok);
    let full_linux_guests = checks.iter().all(|c| c.ok);
    Report {
        kvm: Ok(()),
        checks,
        cpuid_masking: Some(cpuid_masking_check()),
        integer_guests,
        full_linux_guests,
    }
}

/// `probe_xsave` exits 3 when CPUID hides XSAVE; run it with XSAVE masked.
fn cpuid_masking_check() -> Check {
    const HIDDEN: u8 = 3;
    let mask: CpuidMask = "xsave".parse().unwrap_or_default();
    let (ok, detail) = match boot_guest("probe_xsave", mask) {
        Ok((GuestExit::DebugExit(HIDDEN), _)) => (true, "a masked feature is hidden from the guest".into()),
        Ok((exit, out)) => (
            false,
            format!(
                "the guest still sees XSAVE after masking it ({exit:?}, {}): this KVM does not trap \
                 CPUID, so hide features with clearcpuid= on the kernel command line too",
                out.trim()
            ),
        ),
        Err(e) if e.contains("emulation failure") => (
            false,
            "the guest still saw XSAVE after masking it and ran it: this KVM does not trap CPUID, \
             so hide features with clearcpuid= on the kernel command line too"
                .into(),
        ),
        Err(e) => (false, e),
    };
    Check {
        name: "cpuid-masking",
        what: "KVM_SET_CPUID2 decides what CPUID returns",
        ok,
        detail,
    }
}

fn check(name: &'static str, guest: &str, what: &'static str) -> Check {
    let (ok, detail) = match boot_guest(guest, CpuidMask::none()) {
        Ok((GuestExit::DebugExit(0), out)) => (true, out.trim().to_string()),
        Ok((exit, out)) => (false, format!("guest ended with {exit:?}: {}", out.trim())),
        Err(e) => (false, e),
    };
    Check {
        name,
        what,
        ok,
        detail,
    }
}

/// Boots built-in guest `name`; the error is the whole cause chain.
fn boot_guest(name: &str, cpuid_mask: CpuidMask) -> Result<(GuestExit, String), String> {
    let image = test_guests::image(name).ok_or_else(|| format!("no built-in guest {name}"))?;
    // The loader wants a path; an in-memory file needs no cleanup.
    let file = crate::memory::sealed_file(name, image).map_err(|e| error_chain(&e))?;
    let mut config = VmConfig::new(format!("/proc/self/fd/{}", file.as_raw_fd()));
    config.mem_mib = 16;
    config.time_limit = Some(CHECK_LIMIT);
    config.cpuid_mask = cpuid_mask;
    let out = Arc::new(Mutex::new(Vec::new()));
    let run = || -> Result<GuestExit, VmError> {
        let mut vm = Vm::new(config, SerialSink::Capture(out.clone()))?;
        vm.boot()?;
        vm.run()
    };
    let exit = run().map_err(|e| error_chain(&e))?;
    let text = String::from_utf8_lossy(&out.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    Ok((exit, text))
}

/// An error and its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
