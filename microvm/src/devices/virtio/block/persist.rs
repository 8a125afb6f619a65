//! What a block device needs to come back after a snapshot. The backing
//! file itself is reopened by the VMM (it cannot be serialised).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub read_only: bool,
    pub capacity_sectors: u64,
    pub disk_id: Vec<u8>,
    pub acked_features: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_serde() {
        let state = BlockState {
            read_only: true,
            capacity_sectors: 2048,
            disk_id: b"vitrine-disk".to_vec(),
            acked_features: 1 << 32 | 1 << 5,
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<BlockState>(&json).unwrap(), state);
    }
}
