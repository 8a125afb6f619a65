//! Guest RAM in a snapshot: written sparse, mapped `MAP_PRIVATE` by every
//! clone, and optionally pre-faulted from a recorded working set.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use crate::memory::ram_ranges;

const PAGE: usize = 4096;
/// Read guest RAM this much at a time while saving.
const CHUNK: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotMemoryError {
    #[error("cannot write guest memory to {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot read guest memory")]
    ReadGuest(#[source] vm_memory::GuestMemoryError),
    #[error("cannot open snapshot memory {}", .0.display())]
    Open(PathBuf, #[source] std::io::Error),
    #[error("snapshot memory {} is {found} bytes; the state says {expected}", .path.display())]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("cannot map snapshot memory")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    #[error("cannot record the working set")]
    WorkingSet(#[source] std::io::Error),
}

/// Writes guest RAM to `path` as a sparse file: all-zero pages stay holes,
/// so a mostly idle guest's snapshot costs only what it touched.
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> Result<u64, SnapshotMemoryError> {
    let err = |e| SnapshotMemoryError::Write(path.to_path_buf(), e);
    let file = File::create(path).map_err(err)?;
    let mut offset = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for region in mem.iter() {
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from((len - done).min(CHUNK as u64)).unwrap_or(CHUNK);
            region
                .read_slice(&mut buf[..n], MemoryRegionAddress(done))
                .map_err(SnapshotMemoryError::ReadGuest)?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|b| *b != 0) {
                    let at = offset + done + (i * PAGE) as u64;
                    file.write_all_at(page, at).map_err(err)?;
                }
            }
            done += n as u64;
        }
        offset += len;
    }
    file.set_len(offset).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(offset)
}

/// Maps `size` bytes of snapshot RAM from `path` copy-on-write: clones
/// share the page cache, and nothing a clone writes reaches the file.
pub fn map_private(path: &Path, size: u64) -> Result<(GuestMemoryMmap, File), SnapshotMemoryError> {
    let file = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| SnapshotMemoryError::Open(path.to_path_buf(), e))?;
    let found = file
        .metadata()
        .map_err(|e| SnapshotMemoryError::Open(path.to_path_buf(), e))?
        .len();
    if found != size {
        return Err(SnapshotMemoryError::SizeMismatch {
            path: path.to_path_buf(),
            expected: size,
            found,
        });
    }
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (addr, len) in ram_ranges(size) {
        let clone = file
            .try_clone()
            .map_err(|e| SnapshotMemoryError::Open(path.to_path_buf(), e))?;
        let len_usize = usize::try_from(len).map_err(|_| SnapshotMemoryError::SizeMismatch {
            path: path.to_path_buf(),
            expected: size,
            found,
        })?;
        let mapping = MmapRegionBuilder::new(len_usize)
            .with_file_offset(FileOffset::new(clone, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(SnapshotMemoryError::Map)?;
        regions.push(GuestRegionMmap::new(mapping, addr).ok_or(
            SnapshotMemoryError::SizeMismatch {
                path: path.to_path_buf(),
                expected: size,
                found,
            },
        )?);
        offset += len;
    }
    let mem =
        GuestMemoryMmap::from_regions(regions).map_err(|_| SnapshotMemoryError::SizeMismatch {
            path: path.to_path_buf(),
            expected: size,
            found,
        })?;
    Ok((mem, file))
}

/// A guest-physical page range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRange {
    pub gpa: u64,
    pub pages: u64,
}

/// The pages of `mem` that this process has mapped: after a clone has
/// run, what its guest touched (KVM faults pages in through our mapping).
/// Read from `/proc/self/pagemap`'s present bit.
pub fn working_set(mem: &GuestMemoryMmap) -> Result<Vec<PageRange>, SnapshotMemoryError> {
    let pagemap = File::open("/proc/self/pagemap").map_err(SnapshotMemoryError::WorkingSet)?;
    let mut out: Vec<PageRange> = Vec::new();
    let mut entries = vec![0u8; 8 * 512];
    for region in mem.iter() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(SnapshotMemoryError::ReadGuest)? as u64;
        let pages = region.len() / PAGE as u64;
        let mut page = 0u64;
        while page < pages {
            let n = (pages - page).min(512);
            let bytes = &mut entries[..usize::try_from(n * 8).unwrap_or(0)];
            pagemap
                .read_exact_at(bytes, (host / PAGE as u64 + page) * 8)
                .map_err(SnapshotMemoryError::WorkingSet)?;
            for (i, e) in bytes.chunks_exact(8).enumerate() {
                let entry = u64::from_le_bytes(e.try_into().unwrap_or_default());
                if entry & (1 << 63) == 0 {
                    continue;
                }
                let gpa = region.start_addr().0 + (page + i as u64) * PAGE as u64;
                match out.last_mut() {
                    Some(r) if r.gpa + r.pages * PAGE as u64 == gpa => r.pages += 1,
                    _ => out.push(PageRange { gpa, pages: 1 }),
                }
            }
            page += n;
        }
    }
    Ok(out)
}

/// Saves a working set as text lines `gpa pages` (hex gpa).
pub fn write_working_set(path: &Path, set: &[PageRange]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(File::create(path)?);
    for r in set {
        writeln!(f, "{:#x} {}", r.gpa, r.pages)?;
    }
    f.flush()
}

/// Reads a working set written by [`write_working_set`]; malformed lines
/// are errors, not guesses.
pub fn read_working_set(path: &Path) -> std::io::Result<Vec<PageRange>> {
    let f = std::io::BufReader::new(File::open(path)?);
    let bad = |l: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad working-set line '{l}'"),
        )
    };
    let mut out = Vec::new();
    for line in f.lines() {
        let line = line?;
        let mut it = line.split_whitespace();
        let (Some(g), Some(p), None) = (it.next(), it.next(), it.next()) else {
            return Err(bad(&line));
        };
        let gpa = u64::from_str_radix(g.trim_start_matches("0x"), 16).map_err(|_| bad(&line))?;
        let pages = p.parse().map_err(|_| bad(&line))?;
        out.push(PageRange { gpa, pages });
    }
    Ok(out)
}

/// Faults the working set into this process's page tables before the
/// guest runs (REAP-style), so the guest's first touches do not each take
/// a host page fault. Ranges outside guest RAM are ignored.
pub fn prefault(mem: &GuestMemoryMmap, set: &[PageRange]) -> u64 {
    let mut touched = 0u64;
    for r in set {
        for p in 0..r.pages {
            let gpa = GuestAddress(r.gpa + p * PAGE as u64);
            // A read is enough: it maps the shared page-cache page; a guest
            // write then copies it once.
            if mem.read_obj::<u8>(gpa).is_ok() {
                touched += 1;
            }
        }
    }
    touched
}
