//! The host side of Vitrine: backends that start guest VMs, the task runner
//! that drives one task over the protocol, the pages that come back, and the
//! open-file job that the `vitrine` CLI (and later the daemon) runs.

pub mod backend;
pub mod desktop;
pub mod downloads_watch;
pub mod egress;
pub mod fresh_guest;
pub mod guard;
pub mod guest_log;
pub mod image_cache;
pub mod open_file;
pub mod pages;
pub mod remote_admin;
pub mod safe_pdf;
pub mod service;
pub mod task;
pub mod toml_config;
pub mod viewer;
pub mod vmm_jail;
