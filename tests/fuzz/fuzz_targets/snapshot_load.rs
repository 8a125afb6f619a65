//! The snapshot loader up to KVM: state file, memory file, working set and
//! the restore of every saved virtio device and transport.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vitrine_tests::fuzz_harness::snapshot_load(data);
});
