//! What an rng device needs to come back after a snapshot.

use serde::{Deserialize, Serialize};

/// The rng has no state of its own beyond what the driver negotiated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub acked_features: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_serde() {
        let state = RngState {
            acked_features: 1 << 32,
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<RngState>(&json).unwrap(), state);
    }
}
