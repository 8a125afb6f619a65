//! The host/guest protocol: arbitrary bytes as a stream of frames, read as
//! the host reads a guest and as the guest reads the host; whatever decodes
//! must survive a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vitrine_tests::fuzz_harness::protocol_decode(data);
});
