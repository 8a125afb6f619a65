//! Block requests with fuzzed headers, sectors, lengths, directions and
//! descriptor layouts, against a read-only or writable disk. The harness
//! asserts the device's promises.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../../microvm/tests/virtio_driver/mod.rs"]
mod virtio_driver;

fuzz_target!(|data: &[u8]| {
    virtio_driver::fuzz_case::run_blk_case(data);
});
