//! Emulated devices. Each sits on a [`crate::bus::Bus`].
