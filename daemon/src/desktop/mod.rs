//! Desktop integration: the "Open safely" handler and file-manager actions,
//! installed into (and removed from) a user's home or a packaging prefix.

pub mod install;
pub mod thunar;
