//! The content-addressed blob cache, `blobs/sha256/<hex>`: a blob lands
//! there only after its bytes hashed to its digest (written to a temp file,
//! verified, renamed), so whatever is present is trusted and never fetched
//! again. Concurrent fetches of one digest are serialized by a per-digest
//! lock, so the second waits and then finds the blob cached.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::error::Error;

/// The blob cache rooted at `$STATE/imagestore/blobs`.
#[derive(Debug)]
pub struct BlobCache {
    dir: PathBuf,
    tmp: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Splits `sha256:<64 hex>` into its hex, refusing anything else (the digest
/// becomes a file name, so it must not carry path characters).
pub fn sha256_hex(digest: &str) -> Result<&str, Error> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(hex)
        }
        _ => Err(Error::Unsupported {
            reference: digest.to_owned(),
            what: "digest algorithm (only sha256 is supported)".into(),
        }),
    }
}

impl BlobCache {
    /// Opens (creating) the cache under `dir`, discarding half-written temp files.
    pub fn open(dir: &Path) -> Result<BlobCache, Error> {
        let blobs = dir.join("sha256");
        let tmp = dir.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        for d in [&blobs, &tmp] {
            std::fs::create_dir_all(d).map_err(Error::io("cannot create", d))?;
        }
        Ok(BlobCache {
            dir: blobs,
            tmp,
            locks: Mutex::default(),
        })
    }

    /// Where the blob with `digest` lives (whether or not present).
    pub fn path(&self, digest: &str) -> Result<PathBuf, Error> {
        Ok(self.dir.join(sha256_hex(digest)?))
    }

    /// Whether a verified copy of `digest` is cached.
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// The lock that serializes fetches of `digest`.
    pub fn lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("blob lock table poisoned");
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(digest.to_owned()).or_default().clone()
    }

    /// A writer that hashes as it writes and lands the blob only if it matches.
    pub fn writer(&self, digest: &str) -> Result<BlobWriter, Error> {
        let target = self.path(digest)?;
        let file = tempfile::NamedTempFile::new_in(&self.tmp)
            .map_err(Error::io("cannot create a temp file in", &self.tmp))?;
        Ok(BlobWriter {
            digest: digest.to_owned(),
            target,
            file,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Every cached blob: digest and size.
    pub fn list(&self) -> Result<Vec<(String, u64)>, Error> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(Error::io("cannot list", &self.dir))? {
            let entry = entry.map_err(Error::io("cannot list", &self.dir))?;
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((
                format!("sha256:{}", entry.file_name().to_string_lossy()),
                size,
            ));
        }
        Ok(out)
    }

    /// Removes a cached blob.
    pub fn remove(&self, digest: &str) -> Result<(), Error> {
        let path = self.path(digest)?;
        std::fs::remove_file(&path).map_err(Error::io("cannot remove", &path))
    }
}

/// A blob being written: bytes are hashed on the way to a temp file.
#[derive(Debug)]
pub struct BlobWriter {
    digest: String,
    target: PathBuf,
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    written: u64,
}

impl BlobWriter {
    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.file
            .write_all(bytes)
            .map_err(Error::io("cannot write", self.file.path().to_path_buf()))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The digest of what was written so far.
    pub fn actual_digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// Verifies the digest and renames the blob into place; on mismatch the
    /// temp file is dropped and nothing is kept.
    pub fn commit(self) -> Result<PathBuf, Error> {
        let actual = self.actual_digest();
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                digest: self.digest,
                actual,
            });
        }
        self.file
            .as_file()
            .sync_all()
            .map_err(Error::io("cannot sync", self.file.path().to_path_buf()))?;
        let target = self.target;
        self.file
            .persist(&target)
            .map_err(|e| Error::io("cannot store blob", target.clone())(e.error))?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_blobs_land_bad_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let data = b"hello";
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let mut w = cache.writer(&digest).unwrap();
        w.write(data).unwrap();
        w.commit().unwrap();
        assert!(cache.has(&digest));
        assert_eq!(std::fs::read(cache.path(&digest).unwrap()).unwrap(), data);

        let other = format!("sha256:{}", "0".repeat(64));
        let mut w = cache.writer(&other).unwrap();
        w.write(data).unwrap();
        assert!(matches!(w.commit(), Err(Error::DigestMismatch { .. })));
        assert!(!cache.has(&other));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        assert!(sha256_hex("sha256:../../etc").is_err());
        assert!(sha256_hex("md5:abc").is_err());
        assert!(sha256_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }
}
