//! The VM's fresh identity, applied before its task. A VM cloned from a
//! template wakes with the template's kernel CRNG state and clock, so two
//! clones would draw the same "random" bytes (TLS randoms, keys) until the
//! kernel's next timed reseed. The host's seed is credited to the input
//! pool and the CRNG reseeded from it at once, then the clock is set.

use std::fs::File;
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use vitrine_microvm::guest_entropy;

use crate::protocol::{Identity, IdentityApplied};

/// The identity could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// `/dev/urandom` could not be opened.
    #[error("cannot open /dev/urandom")]
    Random(#[source] std::io::Error),
    /// The seed was not taken (needs CAP_SYS_ADMIN).
    #[error("cannot credit the seed to the kernel's pool")]
    AddEntropy(#[source] std::io::Error),
    /// The CRNG was not reseeded.
    #[error("cannot reseed the kernel's CRNG")]
    Reseed(#[source] std::io::Error),
    /// The clock was not set (needs CAP_SYS_TIME).
    #[error("cannot set the clock")]
    Clock(#[source] nix::Error),
    /// `getrandom` failed after the reseed.
    #[error("getrandom failed after the reseed")]
    GetRandom(#[source] std::io::Error),
}

/// Credits the seed, reseeds the CRNG, sets the wall clock, and returns
/// the digest of the first random bytes drawn after that. For the guest's
/// init only: it changes the clock of the kernel it runs on.
pub fn apply(identity: &Identity) -> Result<IdentityApplied, IdentityError> {
    reseed(&identity.seed)?;
    set_clock(identity.clock_unix_ns)?;
    digest_after_reseed()
}

/// The digest without touching the kernel: for a shim that runs as a
/// local process (tests), which must not reseed or set the host's clock.
pub fn digest_after_reseed() -> Result<IdentityApplied, IdentityError> {
    let mut first = [0u8; 32];
    getrandom::fill(&mut first).map_err(|e| IdentityError::GetRandom(std::io::Error::other(e)))?;
    let clock_unix_ns = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Ok(IdentityApplied {
        random_digest: Sha256::digest(first).into(),
        clock_unix_ns,
    })
}

fn reseed(seed: &[u8; 32]) -> Result<(), IdentityError> {
    let random = File::open("/dev/urandom").map_err(IdentityError::Random)?;
    guest_entropy::add_entropy(&random, seed).map_err(IdentityError::AddEntropy)?;
    guest_entropy::reseed_crng(&random).map_err(IdentityError::Reseed)
}

fn set_clock(unix_ns: u64) -> Result<(), IdentityError> {
    let since = Duration::from_nanos(unix_ns);
    let spec = nix::sys::time::TimeSpec::from(since);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, spec).map_err(IdentityError::Clock)
}
