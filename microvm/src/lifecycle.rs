//! How a VM run ends: the first vCPU or device to decide wins, everyone
//! else is told to stop, and the VMM thread waits for that decision.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A clean end of a guest run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest wrote this code to the debug-exit port.
    DebugExit(u8),
    /// The guest reset the machine (i8042 reset line or a reset system event).
    Reset,
    /// A vCPU halted with nothing left to wake it (only seen without an
    /// in-kernel irqchip, where HLT exits to the VMM).
    Halted,
    /// The guest asked for power-off.
    PowerOff,
    /// The guest wrote the ready port; vCPUs are paused, ready to snapshot.
    Ready,
    /// The VMM paused the guest at a deadline (`Vm::run_for`).
    Paused,
}

/// Why a guest run ended badly. Each carries what a person needs to debug it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestFault {
    #[error("vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN) at rip {rip:#x}")]
    TripleFault { vcpu: u8, rip: u64 },
    #[error(
        "vCPU {vcpu}: KVM internal error (suberror {suberror}{}) at rip {rip:#x}, instruction bytes [{}]",
        if *.suberror == 1 { ": emulation failure" } else { "" },
        hex_bytes(.bytes)
    )]
    InternalError {
        vcpu: u8,
        suberror: u32,
        rip: u64,
        bytes: Vec<u8>,
    },
    #[error("vCPU {vcpu}: KVM refused to enter the guest (hardware reason {reason:#x})")]
    FailEntry { vcpu: u8, reason: u64 },
    #[error("vCPU {vcpu}: unexpected exit {what}")]
    UnexpectedExit { vcpu: u8, what: String },
    #[error("vCPU {vcpu}: {what}")]
    Kvm { vcpu: u8, what: String },
    #[error("guest ran past its {0:?} limit and was stopped")]
    TimedOut(Duration),
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub type Outcome = Result<GuestExit, GuestFault>;

/// Shared between the VMM thread, vCPU threads and devices.
#[derive(Debug, Default)]
pub struct Lifecycle {
    outcome: Mutex<Option<Outcome>>,
    decided: Condvar,
    stop: AtomicBool,
}

impl Lifecycle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `outcome` unless another one came first, and asks every vCPU
    /// to stop.
    pub fn finish(&self, outcome: Outcome) {
        let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(outcome);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.decided.notify_all();
    }

    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Waits until some party finishes the run, or `deadline` passes.
    pub fn wait(&self, deadline: Option<Instant>) -> Option<Outcome> {
        let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(o) = slot.as_ref() {
                return Some(o.clone());
            }
            match deadline {
                None => slot = self.decided.wait(slot).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    slot = self
                        .decided
                        .wait_timeout(slot, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_outcome_wins_and_stops_everyone() {
        let l = Lifecycle::new();

        l.finish(Ok(GuestExit::DebugExit(0)));
        l.finish(Err(GuestFault::TimedOut(Duration::from_secs(1))));

        assert!(l.should_stop());
        assert_eq!(l.wait(None), Some(Ok(GuestExit::DebugExit(0))));
    }

    #[test]
    fn wait_returns_none_at_the_deadline() {
        let l = Lifecycle::new();

        let got = l.wait(Some(Instant::now() + Duration::from_millis(20)));

        assert_eq!(got, None);
        assert!(!l.should_stop());
    }

    #[test]
    fn wait_wakes_when_another_thread_finishes() {
        let l = Arc::new(Lifecycle::new());
        let l2 = l.clone();

        let t = std::thread::spawn(move || l2.finish(Ok(GuestExit::Reset)));
        let got = l.wait(Some(Instant::now() + Duration::from_secs(5)));
        t.join().unwrap();

        assert_eq!(got, Some(Ok(GuestExit::Reset)));
    }

    #[test]
    fn internal_error_message_names_rip_and_bytes() {
        let e = GuestFault::InternalError {
            vcpu: 0,
            suberror: 1,
            rip: 0x100040,
            bytes: vec![0x66, 0x0f, 0xef, 0xc0],
        };

        let msg = e.to_string();

        assert!(msg.contains("emulation failure"), "{msg}");
        assert!(msg.contains("rip 0x100040"), "{msg}");
        assert!(msg.contains("[66 0f ef c0]"), "{msg}");
    }
}
