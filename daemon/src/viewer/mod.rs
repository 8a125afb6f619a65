//! The viewer: a window that shows a task's pages and sends input back.
//!
//! The daemon holds a [`ViewerLink`] per task; it starts `vitrine-viewer`
//! with one socketpair as its only channel. Over it go damage rectangles of
//! raw pixels and status lines one way, input the other way, in the tiny
//! bounded format of [`wire`]. The viewer parses nothing else: never the
//! payload, never the guest's protocol.

pub mod canvas;
mod link;
mod pointer;
pub mod window;
pub mod wire;

pub use link::{viewer_binary, window_title, ViewerError, ViewerLink};
