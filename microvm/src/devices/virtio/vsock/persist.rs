//! What a vsock device needs to come back after a snapshot. Connections do
//! not survive one: the guest gets a transport reset event instead.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
    pub acked_features: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_serde() {
        let state = VsockState {
            guest_cid: 3,
            uds_path: PathBuf::from("/run/vitrine/v.sock"),
            acked_features: 1 << 32,
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<VsockState>(&json).unwrap(), state);
    }
}
