//! The snapshot state file: magic, version, length, a postcard body and a
//! CRC32 of everything before it. A loader reads at most [`MAX_BODY`]
//! bytes and refuses anything it cannot vouch for.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::VmState;

pub const MAGIC: [u8; 8] = *b"VITRSNAP";
/// 2: virtio devices (transport registers, queue positions, device state).
pub const VERSION: u16 = 2;
const HEADER_LEN: usize = 16;
const CRC_LEN: usize = 4;
/// State without RAM is kilobytes per vCPU; this bounds what a hostile or
/// corrupt file can make the loader allocate.
pub const MAX_BODY: u32 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("cannot read snapshot state {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write snapshot state {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("not a Vitrine snapshot (bad magic)")]
    BadMagic,
    #[error("snapshot format version {found} is not supported (this build reads {VERSION})")]
    UnknownVersion { found: u16 },
    #[error("snapshot state declares {len} bytes, over the {MAX_BODY}-byte limit")]
    TooLarge { len: u32 },
    #[error("snapshot state is truncated: {got} of {expected} bytes")]
    Truncated { expected: usize, got: usize },
    #[error("snapshot state has {0} bytes after its checksum")]
    TrailingBytes(usize),
    #[error("snapshot state checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc { stored: u32, computed: u32 },
    #[error("snapshot state does not decode")]
    Decode(#[source] postcard::Error),
}

/// Serialises `state` into the file format.
pub fn encode(state: &VmState) -> Result<Vec<u8>, postcard::Error> {
    let body = postcard::to_stdvec(state)?;
    let len = u32::try_from(body.len()).map_err(|_| postcard::Error::SerializeBufferFull)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 2]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Parses the file format. Every check happens before the body is decoded.
pub fn decode(bytes: &[u8]) -> Result<VmState, SnapshotFileError> {
    let truncated = |expected| SnapshotFileError::Truncated {
        expected,
        got: bytes.len(),
    };
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| truncated(HEADER_LEN))?;
    if header[..8] != MAGIC {
        return Err(SnapshotFileError::BadMagic);
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != VERSION {
        return Err(SnapshotFileError::UnknownVersion { found: version });
    }
    let len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if len > MAX_BODY {
        return Err(SnapshotFileError::TooLarge { len });
    }
    let body_end = HEADER_LEN + len as usize;
    let total = body_end + CRC_LEN;
    if bytes.len() < total {
        return Err(truncated(total));
    }
    if bytes.len() > total {
        return Err(SnapshotFileError::TrailingBytes(bytes.len() - total));
    }
    let stored = u32::from_le_bytes(bytes[body_end..total].try_into().unwrap_or_default());
    let computed = crc32fast::hash(&bytes[..body_end]);
    if stored != computed {
        return Err(SnapshotFileError::BadCrc { stored, computed });
    }
    postcard::from_bytes(&bytes[HEADER_LEN..body_end]).map_err(SnapshotFileError::Decode)
}

/// Writes `state` to `path` atomically (a temporary file, then rename).
pub fn write(path: &Path, state: &VmState) -> Result<(), SnapshotFileError> {
    let err = |e| SnapshotFileError::Write(path.to_path_buf(), e);
    let bytes = encode(state).map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Reads and checks the state file at `path`, never reading more than the
/// format allows.
pub fn read(path: &Path) -> Result<VmState, SnapshotFileError> {
    let err = |e| SnapshotFileError::Read(path.to_path_buf(), e);
    let cap = HEADER_LEN as u64 + u64::from(MAX_BODY) + CRC_LEN as u64 + 1;
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(err)?
        .take(cap)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    decode(&bytes)
}
