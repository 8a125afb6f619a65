//! The daemon/viewer wire: arbitrary bytes decoded as the viewer reads its
//! socket, and every decoded frame drawn on a canvas.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vitrine_tests::fuzz_harness::viewer_decode(data);
});
