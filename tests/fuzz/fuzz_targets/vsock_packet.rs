//! Guest packets on the vsock tx queue (fuzzed headers, payloads and
//! descriptor layouts) mixed with host programs connecting, writing and
//! disappearing. The harness asserts the device's promises.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../../microvm/tests/virtio_driver/mod.rs"]
mod virtio_driver;

fuzz_target!(|data: &[u8]| {
    virtio_driver::fuzz_case::run_vsock_case(data);
});
