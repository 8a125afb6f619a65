//! Vitrine shim: the guest agent (PID 1 of the guest) and the host/guest
//! protocol that the daemon shares.

pub mod protocol;
