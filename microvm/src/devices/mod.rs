//! Emulated devices. Each sits on a [`crate::bus::Bus`].

pub mod virtio;
