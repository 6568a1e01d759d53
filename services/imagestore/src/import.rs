//! Importing a `docker save` or OCI archive the client streamed: the
//! archive is unpacked into a staging dir, its layers go into the blob
//! cache (verified against their digests where the archive names them),
//! and the image is built like a pulled one.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_client::manifest::OciDescriptor;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::blobs::{BlobCache, sha256_hex};
use crate::error::Error;
use crate::registry::Platform;

/// An image found in an archive, its layers already in the blob cache.
#[derive(Debug)]
pub struct Found {
    /// Manifest digest (OCI) or image id = config digest (docker save).
    pub digest: String,
    pub config_digest: String,
    pub layers: Vec<OciDescriptor>,
}

/// Reads the archive at `archive` (in `work`, a scratch dir) and stores
/// its blobs in `cache`.
pub fn read_archive(
    archive: &Path,
    work: &Path,
    platform: &Platform,
    cache: &BlobCache,
) -> Result<Found, Error> {
    let bad = |m: String| Error::BadArchive(m);
    let file = fs::File::open(archive).map_err(Error::io("cannot open", archive))?;
    // The tar crate refuses members that would escape `work`.
    tar::Archive::new(file)
        .unpack(work)
        .map_err(|e| bad(format!("cannot unpack it: {e}")))?;
    if work.join("index.json").is_file() {
        read_oci(work, platform, cache)
    } else if work.join("manifest.json").is_file() {
        read_docker(work, cache)
    } else {
        Err(bad(
            "it has neither index.json (OCI) nor manifest.json (docker save)".into(),
        ))
    }
}

fn json(path: &Path) -> Result<Value, Error> {
    let bytes = fs::read(path)
        .map_err(|e| Error::BadArchive(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::BadArchive(format!("{} is not JSON: {e}", path.display())))
}

fn blob_path(work: &Path, digest: &str) -> Result<PathBuf, Error> {
    Ok(work.join("blobs/sha256").join(sha256_hex(digest)?))
}

/// Copies `src` into the cache as `digest`, verifying it.
fn store(cache: &BlobCache, src: &Path, digest: &str) -> Result<(), Error> {
    if cache.has(digest) {
        return Ok(());
    }
    let mut w = cache.writer(digest)?;
    let mut f = fs::File::open(src).map_err(Error::io("cannot open", src))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(Error::io("cannot read", src))?;
        if n == 0 {
            break;
        }
        w.write(&buf[..n])?;
    }
    w.commit()?;
    Ok(())
}

fn file_digest(path: &Path) -> Result<(String, u64), Error> {
    let mut f = fs::File::open(path).map_err(Error::io("cannot open", path))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(Error::io("cannot read", path))?;
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

fn read_oci(work: &Path, platform: &Platform, cache: &BlobCache) -> Result<Found, Error> {
    let bad = |m: &str| Error::BadArchive(m.to_owned());
    let mut desc = json(&work.join("index.json"))?["manifests"]
        .get(0)
        .cloned()
        .ok_or_else(|| bad("index.json lists no manifest"))?;
    // Descend through nested indexes to the platform's manifest.
    for _ in 0..4 {
        let digest = desc["digest"]
            .as_str()
            .ok_or_else(|| bad("a descriptor has no digest"))?
            .to_owned();
        let doc = json(&blob_path(work, &digest)?)?;
        if let Some(manifests) = doc.get("manifests").and_then(Value::as_array) {
            desc = manifests
                .iter()
                .find(|m| {
                    m["platform"]["os"] == platform.os.as_str()
                        && m["platform"]["architecture"] == platform.arch.as_str()
                })
                .cloned()
                .ok_or_else(|| Error::NoPlatform {
                    reference: "the archive".into(),
                    platform: platform.to_string(),
                })?;
            continue;
        }
        store(cache, &blob_path(work, &digest)?, &digest)?;
        let config_digest = doc["config"]["digest"]
            .as_str()
            .ok_or_else(|| bad("manifest has no config"))?
            .to_owned();
        store(cache, &blob_path(work, &config_digest)?, &config_digest)?;
        let mut layers = Vec::new();
        for l in doc["layers"]
            .as_array()
            .ok_or_else(|| bad("manifest has no layers"))?
        {
            let d: OciDescriptor = serde_json::from_value(l.clone())
                .map_err(|e| Error::BadArchive(format!("bad layer descriptor: {e}")))?;
            store(cache, &blob_path(work, &d.digest)?, &d.digest)?;
            layers.push(d);
        }
        return Ok(Found {
            digest,
            config_digest,
            layers,
        });
    }
    Err(bad("indexes nested too deeply"))
}

fn read_docker(work: &Path, cache: &BlobCache) -> Result<Found, Error> {
    let bad = |m: &str| Error::BadArchive(m.to_owned());
    let manifest = json(&work.join("manifest.json"))?;
    let entry = manifest
        .get(0)
        .ok_or_else(|| bad("manifest.json lists no image"))?;
    let inside = |v: &Value| -> Result<PathBuf, Error> {
        let rel = v
            .as_str()
            .ok_or_else(|| bad("manifest.json has a non-string path"))?;
        let p = Path::new(rel);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad("manifest.json points outside the archive"));
        }
        Ok(work.join(p))
    };
    let config = inside(&entry["Config"])?;
    let (config_digest, _) = file_digest(&config)?;
    store(cache, &config, &config_digest)?;
    let mut layers = Vec::new();
    for l in entry["Layers"]
        .as_array()
        .ok_or_else(|| bad("manifest.json has no Layers"))?
    {
        let path = inside(l)?;
        let (digest, size) = file_digest(&path)?;
        store(cache, &path, &digest)?;
        layers.push(OciDescriptor {
            media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
            digest,
            size: size as i64,
            ..OciDescriptor::default()
        });
    }
    Ok(Found {
        digest: config_digest.clone(),
        config_digest,
        layers,
    })
}
