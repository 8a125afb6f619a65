//! `vitrine-guard`: the root service that holds every exec of an untrusted
//! file (fanotify permission events) and tells the owning user's `vitrined`
//! to run it in a VM instead. [`wire`] is what the guard and the daemons
//! say to each other.

pub mod wire;
