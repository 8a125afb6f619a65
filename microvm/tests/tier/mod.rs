//! Which test tiers this host can run. A test that cannot run says so on
//! stderr, with the reason, and returns; it never passes silently.

use vitrine_microvm::kvm::Hypervisor;
use vitrine_microvm::probe::error_chain;

/// True if `/dev/kvm` is usable; otherwise prints why `test` was skipped.
pub fn kvm_or_skip(test: &str) -> bool {
    match Hypervisor::open() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED {test}: KVM tier needs a usable /dev/kvm: {}", error_chain(&e));
            false
        }
    }
}
