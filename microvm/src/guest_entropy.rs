//! The two `/dev/random` ioctls a guest needs to become unlike the template
//! it was cloned from: credit host-drawn bytes to the input pool
//! (`RNDADDENTROPY`) and reseed the CRNG from it now (`RNDRESEEDCRNG`),
//! as Firecracker's snapshot notes advise. A clone otherwise keeps
//! producing the template's random stream until its next timed reseed.
//!
//! They live here because this crate holds all of the project's `unsafe`;
//! the guest's shim calls them.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// Most bytes one call credits (the kernel's own limit is larger).
pub const MAX_SEED_BYTES: usize = 64;

/// `struct rand_pool_info` with room for [`MAX_SEED_BYTES`].
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_SEED_BYTES],
}

/// Mixes `seed` into the kernel's input pool of `random` (an open
/// `/dev/random` or `/dev/urandom`) and credits it as full entropy. Needs
/// CAP_SYS_ADMIN.
pub fn add_entropy(random: &File, seed: &[u8]) -> io::Result<()> {
    if seed.is_empty() || seed.len() > MAX_SEED_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a seed is 1 to {MAX_SEED_BYTES} bytes, not {}", seed.len()),
        ));
    }
    let mut info = RandPoolInfo {
        entropy_count: 0,
        buf_size: 0,
        buf: [0; MAX_SEED_BYTES],
    };
    info.buf[..seed.len()].copy_from_slice(seed);
    // Both fit an int: the length is at most MAX_SEED_BYTES.
    info.buf_size = libc::c_int::try_from(seed.len()).unwrap_or(0);
    info.entropy_count = info.buf_size.saturating_mul(8);
    // SAFETY: `random` is an open file for the whole call; RNDADDENTROPY
    // reads a `struct rand_pool_info` header and `buf_size` bytes after it,
    // all inside `info`, which outlives the call; the kernel writes nothing.
    let rc = unsafe {
        libc::ioctl(
            random.as_raw_fd(),
            RNDADDENTROPY,
            &info as *const RandPoolInfo,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes the kernel reseed its CRNG from the input pool at once. Needs
/// CAP_SYS_ADMIN.
pub fn reseed_crng(random: &File) -> io::Result<()> {
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no user memory;
    // `random` is an open file for the whole call.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_longer_than_the_buffer_is_refused_before_any_ioctl() {
        let random = File::open("/dev/urandom").unwrap();

        let err = add_entropy(&random, &[0; MAX_SEED_BYTES + 1]).unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn as_root_the_seed_is_credited_and_the_crng_reseeds() {
        // SAFETY: geteuid only reads the process credentials.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED as_root_the_seed_is_credited_and_the_crng_reseeds: needs root");
            return;
        }
        // Real random bytes: this credits the host's own pool.
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        let random = File::open("/dev/urandom").unwrap();

        add_entropy(&random, &seed).unwrap();
        reseed_crng(&random).unwrap();
    }
}
