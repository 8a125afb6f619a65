//! The quick companion of the libFuzzer targets in `tests/fuzz`: the same
//! harness (`virtio_driver::fuzz_case`) fed with proptest's random bytes,
//! with a bounded case count so it runs in seconds. The harness checks the
//! device's promises itself; a panic anywhere fails the case.

mod virtio_driver;

use proptest::collection::vec;
use proptest::prelude::*;
use virtio_driver::fuzz_case::{run_blk_case, run_vsock_case};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn vsock_packet_path_keeps_its_promises(data in vec(any::<u8>(), 0..1500)) {
        run_vsock_case(&data);
    }

    #[test]
    fn blk_request_path_keeps_its_promises(data in vec(any::<u8>(), 0..300)) {
        run_blk_case(&data);
    }
}

/// Inputs that once found a problem, or that reach a path random bytes
/// rarely do, kept as fixed cases.
#[test]
fn known_inputs_keep_their_promises() {
    // A valid REQUEST to a listening port, then data, all fields fixed up.
    let mut connect = vec![0x0f];
    connect.extend([0u8; 44]);
    connect.extend([0, 0]); // no payload
    connect.push(0);
    run_vsock_case(&connect);
    run_vsock_case(&[]);
    run_vsock_case(&[0xff; 600]);
    run_blk_case(&[]);
    run_blk_case(&[1, 0x07, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 2, 3, 1, 1, 0]);
    run_blk_case(&[0xff; 300]);
}
