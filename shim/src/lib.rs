//! Vitrine shim: the guest agent (PID 1 of the guest) and the host/guest
//! protocol that the daemon shares.
//!
//! The protocol module is all the host needs. The rest is the guest side:
//! `init` (PID 1 duties), `transport` (vsock, virtio-serial, Unix socket),
//! `agent` (the session), `render` (renderers), `sandbox` (limited children),
//! `raster` (pixels and PPM), `export` (files offered back), `fetch` (links
//! over the host's egress tunnel; TLS ends in the guest), `ocr` (tesseract
//! from the application disk, for safe copies).

pub mod agent;
pub mod browser;
pub mod export;
pub mod fetch;
pub mod identity;
pub mod init;
pub mod ocr;
pub mod protocol;
pub mod raster;
pub mod render;
pub mod sandbox;
pub mod transport;
