//! The viewer: a window that shows a task's pages and sends input back.
//!
//! The daemon holds a [`ViewerLink`] per task; it starts `vitrine-viewer`
//! with one socketpair as its only channel. Over it go damage rectangles of
//! raw pixels, status lines and titles one way, input (keys, text, wheel,
//! pointer buttons and motion in page pixels) the other way, in the tiny
//! bounded format of [`wire`]. The viewer parses nothing else: never the
//! payload, never the guest's protocol.

pub mod canvas;
mod link;
mod pointer;
pub mod window;
pub mod wire;

pub use link::{viewer_binary, window_title, ViewerError, ViewerLink};
