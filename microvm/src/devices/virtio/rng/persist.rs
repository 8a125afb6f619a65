//! What an rng device needs to come back after a snapshot.
//!
//! Nothing but the negotiated features: the device keeps no entropy of its
//! own. Every request is served from the host's getrandom at the time it
//! is made, so each clone's guest gets fresh bytes from its first request
//! after restore, never bytes another clone also saw. (The guest's own
//! pool is reseeded from the identity page's seed; see
//! [`crate::snapshot::identity`].)

use std::convert::Infallible;

use serde::{Deserialize, Serialize};

use super::RngDevice;
use crate::snapshot::Persist;

/// The rng has no state of its own beyond what the driver negotiated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub acked_features: u64,
}

/// An rng needs no host resources to come back.
#[derive(Clone, Copy, Debug, Default)]
pub struct RngConstructorArgs;

impl Persist<'_> for RngDevice {
    type State = RngState;
    type ConstructorArgs = RngConstructorArgs;
    type Error = Infallible;

    fn save(&self) -> Result<RngState, Infallible> {
        Ok(RngState {
            acked_features: self.acked_features,
        })
    }

    /// An inactive device; the transport activates it again if it was.
    fn restore(_: RngConstructorArgs, state: &RngState) -> Result<Self, Infallible> {
        let mut device = RngDevice::new();
        device.acked_features = state.acked_features;
        Ok(device)
    }
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

    #[test]
    fn state_round_trips_through_restore_and_save() {
        let state = RngState {
            acked_features: 1 << 32 | 1 << 29,
        };

        let device = RngDevice::restore(RngConstructorArgs, &state).unwrap();

        assert_eq!(device.save().unwrap(), state);
    }
}
