//! The content-addressed blob cache, `blobs/sha256/<hex>`: a blob lands
//! there only after its bytes hashed to its digest (written to a temp file,
//! verified, renamed), so whatever is present is trusted and never fetched
//! again. Concurrent fetches of one digest are serialized by a per-digest
//! lock, so the second waits and then finds the blob cached.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use sha2::{Digest, Sha256};

use crate::error::Error;

/// The blob cache rooted at `$STATE/blobs`.
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
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
            live: None,
        })
    }

    /// Refuses when the cache's filesystem has less than `bytes` free.
    pub fn ensure_room(&self, bytes: u64) -> Result<(), Error> {
        banger_proto::fsutil::ensure_room(&self.tmp, bytes).map_err(Error::NoSpace)
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
    file: Option<tempfile::NamedTempFile>,
    hasher: Sha256,
    written: u64,
    live: Option<Arc<LiveBlob>>,
}

impl BlobWriter {
    fn file(&self) -> &tempfile::NamedTempFile {
        self.file.as_ref().expect("file present until commit")
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        let file = self.file.as_mut().expect("file present until commit");
        file.write_all(bytes)
            .map_err(Error::io("cannot write", file.path().to_path_buf()))?;
        if let Some(live) = &self.live {
            live.update(self.written, None);
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The digest of what was written so far.
    pub fn actual_digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// A handle to read the blob while it is being written.
    pub fn live(&mut self) -> Result<Arc<LiveBlob>, Error> {
        if let Some(live) = &self.live {
            return Ok(live.clone());
        }
        // Opened now, while the temp file exists: it is renamed or removed
        // when the writer ends, possibly before a reader starts.
        let path = self.file().path().to_path_buf();
        let file = std::fs::File::open(&path).map_err(Error::io("cannot open", path))?;
        let live = Arc::new(LiveBlob {
            file,
            state: Mutex::new((self.written, None)),
            cond: Condvar::new(),
        });
        self.live = Some(live.clone());
        Ok(live)
    }

    /// Verifies the digest and renames the blob into place; on mismatch the
    /// temp file is dropped and nothing is kept.
    pub fn commit(mut self) -> Result<PathBuf, Error> {
        let actual = self.actual_digest();
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                digest: self.digest.clone(),
                actual,
            });
        }
        if let Some(live) = &self.live {
            live.update(self.written, Some(true));
        }
        let file = self.file.take().expect("file present until commit");
        file.as_file()
            .sync_all()
            .map_err(Error::io("cannot sync", file.path().to_path_buf()))?;
        let target = self.target.clone();
        file.persist(&target)
            .map_err(|e| Error::io("cannot store blob", target.clone())(e.error))?;
        Ok(target)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // A writer dropped before a verified commit (error, abort) fails its readers.
        if let Some(live) = &self.live {
            live.update(self.written, Some(false));
        }
    }
}

/// How a layer's bytes become available to the unpacker.
#[derive(Debug)]
pub enum Started {
    /// Already verified in the cache.
    Cached,
    /// Being downloaded; readable as it grows.
    Live(Arc<LiveBlob>),
}

/// A blob still being downloaded, readable as it grows, so unpacking runs
/// concurrently with the download. Its readers end when the writer
/// verified it, and fail when the writer was dropped without verifying;
/// whoever reads must still check the download's result.
#[derive(Debug)]
pub struct LiveBlob {
    file: std::fs::File,
    /// Bytes written, and how it ended (`Some(true)` verified).
    state: Mutex<(u64, Option<bool>)>,
    cond: Condvar,
}

impl LiveBlob {
    fn update(&self, written: u64, end: Option<bool>) {
        let mut state = self.state.lock().expect("live blob state poisoned");
        state.0 = written;
        if state.1.is_none() {
            state.1 = end;
        }
        self.cond.notify_all();
    }

    /// A blocking reader from the start of the blob.
    pub fn reader(self: &Arc<Self>) -> FollowReader {
        FollowReader {
            live: self.clone(),
            pos: 0,
        }
    }
}

/// Reads a [`LiveBlob`], waiting for bytes the download has not written yet.
#[derive(Debug)]
pub struct FollowReader {
    live: Arc<LiveBlob>,
    pos: u64,
}

impl Read for FollowReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut state = self.live.state.lock().expect("live blob state poisoned");
        loop {
            let available = state.0.saturating_sub(self.pos);
            if available > 0 {
                drop(state);
                let want = buf
                    .len()
                    .min(usize::try_from(available).unwrap_or(usize::MAX));
                let n = std::os::unix::fs::FileExt::read_at(
                    &self.live.file,
                    &mut buf[..want],
                    self.pos,
                )?;
                self.pos += n as u64;
                return Ok(n);
            }
            match state.1 {
                Some(true) => return Ok(0),
                Some(false) => {
                    return Err(std::io::Error::other("the layer download failed"));
                }
                None => {
                    state = self
                        .live
                        .cond
                        .wait(state)
                        .expect("live blob state poisoned");
                }
            }
        }
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

#[cfg(test)]
mod live_tests {
    use super::*;

    #[test]
    fn live_readers_follow_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        let mut w = cache.writer(&digest).unwrap();
        let mut reader = w.live().unwrap().reader();
        let consumer = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).map(|_| got)
        });
        for chunk in data.chunks(7000) {
            w.write(chunk).unwrap();
        }
        w.commit().unwrap();
        assert_eq!(consumer.join().unwrap().unwrap(), data);

        // A writer dropped half-way fails its reader instead of hanging it.
        let mut w = cache.writer(&format!("sha256:{}", "1".repeat(64))).unwrap();
        let mut reader = w.live().unwrap().reader();
        w.write(b"partial").unwrap();
        drop(w);
        let mut got = Vec::new();
        assert!(reader.read_to_end(&mut got).is_err());
    }
}
