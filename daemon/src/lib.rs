//! daemon

pub mod backend;
