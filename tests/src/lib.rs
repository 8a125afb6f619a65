//! Support for the whole-system tests in `tests/tests/`: finding the guest
//! image (or saying why a test skips), building inputs, and reading text
//! back out of pixels. Running a task in a fresh guest and the pages it
//! sends back are the daemon's own code (`vitrine_daemon::fresh_guest`,
//! `task`, `pages`), which the tests drive as the product does.
//!
//! Test files are named by the tier they need: `guest_qemu_*.rs` boot the
//! real guest image under QEMU (TCG).

pub mod fixtures;
pub mod fuzz_harness;
pub mod guest_image;
pub mod ocr;
