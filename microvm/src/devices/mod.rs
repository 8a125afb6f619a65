//! Emulated devices. Each sits on a [`crate::bus::Bus`].

pub mod debug_exit;
pub mod i8042;
pub mod ready;
pub mod serial;
pub mod virtio;
