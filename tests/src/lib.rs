//! Support for the whole-system tests in `tests/tests/`: finding the guest
//! image, building inputs, driving one task over the protocol, and checking
//! the pixels that come back.
//!
//! Test files are named by the tier they need: `guest_qemu_*.rs` boot the
//! real guest image under QEMU (TCG).

pub mod fixtures;
pub mod fresh_guest;
pub mod guest_image;
pub mod ocr;
pub mod page_image;
pub mod task_run;
