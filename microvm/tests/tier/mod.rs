//! Which test tiers this host can run. A test that cannot run says so, with
//! the reason, and returns; it never passes silently.

use std::io::Write;

use vitrine_microvm::kvm::Hypervisor;
use vitrine_microvm::probe::error_chain;

/// Reports a skipped test on the real stderr. The test harness captures
/// `eprintln!` of passing tests; a direct write is always shown.
pub fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// True if `/dev/kvm` is usable; otherwise reports why `test` was skipped.
#[allow(dead_code)] // not every test file has a KVM-tier test
pub fn kvm_or_skip(test: &str) -> bool {
    match Hypervisor::open() {
        Ok(_) => true,
        Err(e) => {
            skip(
                test,
                &format!("the KVM tier needs a usable /dev/kvm: {}", error_chain(&e)),
            );
            false
        }
    }
}
