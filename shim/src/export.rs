//! Files the guest offers for export: snapshot, hash, offer, stream.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::protocol::{
    ExportId, ExportOffer, MAX_CHUNK_BYTES, MAX_EXPORTS, MAX_EXPORT_BYTES, MAX_MIME_BYTES,
};

/// Bytes per `ExportChunk`.
pub const CHUNK: usize = 1024 * 1024;
const _: () = assert!(CHUNK <= MAX_CHUNK_BYTES);

/// An export could not be prepared or read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading or copying failed.
    #[error("export file I/O")]
    Io(#[from] std::io::Error),
    /// No export has this id.
    #[error("no export with id {0}")]
    UnknownId(ExportId),
}

/// The offered exports of one task.
#[derive(Debug, Default)]
pub struct Exports {
    offers: Vec<(ExportOffer, PathBuf)>,
}

impl Exports {
    /// Offers so far.
    pub fn offers(&self) -> impl Iterator<Item = &ExportOffer> {
        self.offers.iter().map(|(o, _)| o)
    }

    /// Snapshots the plain files of `dir` into `store` (so the sandboxed
    /// program cannot change them after hashing) and offers them. Skips
    /// symlinks, odd names, files over the size cap and files past the count
    /// cap. Returns the new offers.
    pub fn collect(&mut self, dir: &Path, store: &Path) -> Result<Vec<ExportOffer>, ExportError> {
        std::fs::create_dir_all(store)?;
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        let mut new = Vec::new();
        for entry in entries {
            if self.offers.len() >= usize::try_from(MAX_EXPORTS).unwrap_or(usize::MAX) {
                break;
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !meta.is_file()
                || meta.len() > MAX_EXPORT_BYTES
                || crate::protocol::check_export_name(&name).is_err()
            {
                continue;
            }
            let id = ExportId::try_from(self.offers.len()).unwrap_or(ExportId::MAX);
            let copy = store.join(id.to_string());
            let (size, sha256) = copy_and_hash(&entry.path(), &copy)?;
            let offer = ExportOffer {
                id,
                name: name.clone(),
                size,
                sha256,
                mime: guess_mime(&name).to_owned(),
            };
            self.offers.push((offer.clone(), copy));
            new.push(offer);
        }
        Ok(new)
    }

    /// The offer of export `id` and its snapshot's path.
    pub fn offer(&self, id: ExportId) -> Result<(&ExportOffer, &Path), ExportError> {
        self.offers
            .iter()
            .find(|(o, _)| o.id == id)
            .map(|(o, p)| (o, p.as_path()))
            .ok_or(ExportError::UnknownId(id))
    }

    /// Opens the snapshot of export `id`.
    pub fn open(&self, id: ExportId) -> Result<(File, u64), ExportError> {
        let (offer, path) = self
            .offers
            .iter()
            .find(|(o, _)| o.id == id)
            .ok_or(ExportError::UnknownId(id))?;
        Ok((File::open(path)?, offer.size))
    }
}

fn copy_and_hash(from: &Path, to: &Path) -> Result<(u64, [u8; 32]), ExportError> {
    // Read at most the cap even if the file grows while we copy.
    let mut src = File::open(from)?.take(MAX_EXPORT_BYTES);
    let mut dst = File::create(to)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        size += u64::try_from(n).unwrap_or(0);
    }
    Ok((size, hasher.finalize().into()))
}

/// SHA-256 of a byte slice.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn guess_mime(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    let mime = match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("pdf") => "application/pdf",
        Some("txt" | "log") => "text/plain",
        Some("html" | "htm") => "text/html",
        Some("csv") => "text/csv",
        _ => "application/octet-stream",
    };
    debug_assert!(mime.len() <= MAX_MIME_BYTES);
    mime
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_files_are_offered_with_hash_and_symlinks_are_not() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("result.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", out.join("link")).unwrap();
        std::fs::create_dir(out.join("subdir")).unwrap();
        let mut exports = Exports::default();

        // Act
        let offers = exports.collect(&out, &store).unwrap();

        // Assert
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].name, "result.txt");
        assert_eq!(offers[0].size, 5);
        assert_eq!(offers[0].sha256, sha256(b"hello"));
        assert_eq!(offers[0].mime, "text/plain");
        let (mut f, size) = exports.open(0).unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!((back.as_slice(), size), (&b"hello"[..], 5));
    }
}
