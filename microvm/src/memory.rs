//! Guest RAM: one memfd, mapped shared, split around the MMIO gap.
//!
//! A memfd rather than anonymous memory, so that a snapshot can write the
//! guest's RAM out (or a restore map a file) through the same fd, and so that
//! guest pages show up as shmem, apart from the VMM's own memory.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// The smallest guest this VMM builds: room for the boot structures and a
/// kernel at 1 MiB.
pub const MIN_MEM_MIB: u32 = 2;
/// Above this the e820 map and the KVM slots still work, but it is far past
/// any task VM's needs; it stops a typo from reserving a host's worth of RAM.
pub const MAX_MEM_MIB: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {0} MiB is outside {MIN_MEM_MIB}..={MAX_MEM_MIB} MiB")]
    Size(u32),
    #[error("cannot create the guest memory memfd")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size the guest memory memfd to {0} bytes")]
    Resize(u64, #[source] std::io::Error),
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// Guest memory and the memfd behind it.
#[derive(Debug)]
pub struct GuestRam {
    pub mem: GuestMemoryMmap,
    pub file: File,
    pub size: u64,
}

/// The guest-physical ranges holding `size` bytes of RAM.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// The end of RAM below the MMIO gap.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

pub fn create(mem_mib: u32) -> Result<GuestRam, MemoryError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mem_mib) {
        return Err(MemoryError::Size(mem_mib));
    }
    let size = u64::from(mem_mib) << 20;
    let file = memfd(c"vitrine-guest-ram")?;
    file.set_len(size)
        .map_err(|e| MemoryError::Resize(size, e))?;
    let mem = map(&file, size)?;
    Ok(GuestRam { mem, file, size })
}

/// Maps `size` bytes of RAM from `file`, laid out by [`ram_ranges`].
pub fn map(file: &File, size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mut offset = 0;
    let mut ranges = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let clone = file.try_clone().map_err(MemoryError::Memfd)?;
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::Size(u32::MAX))?;
        ranges.push((addr, len_usize, Some(FileOffset::new(clone, offset))));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)
}

/// An in-memory file holding `bytes`, for images that have no path (the
/// probe's built-in guests); `/proc/self/fd/N` names it.
pub fn sealed_file(name: &str, bytes: &[u8]) -> std::io::Result<File> {
    use std::io::Write;
    let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    let mut f = memfd(&cname).map_err(|e| match e {
        MemoryError::Memfd(io) => io,
        other => std::io::Error::other(other.to_string()),
    })?;
    f.write_all(bytes)?;
    Ok(f)
}

fn memfd(name: &CStr) -> Result<File, MemoryError> {
    // SAFETY: `name` is a valid NUL-terminated string and the flags are
    // constants; memfd_create has no other memory-safety preconditions.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid, and nothing
    // else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn small_guests_fit_below_the_mmio_gap() {
        assert_eq!(ram_ranges(64 << 20), vec![(GuestAddress(0), 64 << 20)]);
    }

    #[test]
    fn large_guests_continue_above_4_gib() {
        let r = ram_ranges(4 << 30);

        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(
            r[1],
            (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
        );
    }

    #[test]
    fn guest_writes_land_in_the_memfd() {
        let ram = create(4).unwrap();

        ram.mem
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();

        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&ram.file, &mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(ram.mem.num_regions(), 1);
    }

    #[test]
    fn sizes_outside_the_supported_range_are_refused() {
        assert!(matches!(create(1), Err(MemoryError::Size(1))));
        assert!(matches!(create(MAX_MEM_MIB + 1), Err(MemoryError::Size(_))));
    }
}
