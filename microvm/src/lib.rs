//! Vitrine's VMM: one process per microVM, on KVM.
//!
//! All of the project's `unsafe` lives in this crate, and all KVM ioctls go
//! through [`kvm`].

pub mod bus;
pub mod devices;
