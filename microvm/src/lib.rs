//! Vitrine's VMM: one process per microVM, on KVM.
//!
//! All of the project's `unsafe` lives in this crate, and all KVM ioctls go
//! through [`kvm`].

pub mod arch;
pub mod boot;
pub mod bus;
pub mod devices;
pub mod guest_entropy;
pub mod jail;
pub mod kvm;
pub mod lifecycle;
pub mod memory;
pub mod probe;
pub mod resident;
pub mod seccomp;
pub mod snapshot;
pub mod status;
pub mod test_guests;
pub mod vcpu;
pub mod vmm;
