//! Importing a `docker save` or OCI archive the client streamed. The
//! archive is never unpacked onto the host: its members are read as a tar
//! stream (twice: once to hash them and keep the small JSON documents in
//! memory, once to copy the layers the manifest names into the blob cache,
//! verified), symlinks and hardlinks between members are resolved by name
//! inside the archive only, and the image is then built from the cached
//! blobs exactly like a pulled one (the same flattening stream). So no
//! member can make imagestore open a host path, a FIFO or a device.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use oci_client::manifest::OciDescriptor;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::blobs::{BlobCache, sha256_hex};
use crate::error::Error;
use crate::registry::Platform;

/// Members at most this big are kept in memory (manifests, configs, indexes).
const SMALL: u64 = 4 << 20;
/// Links followed from one member name.
const MAX_LINKS: usize = 16;

/// An image found in an archive, its layers already in the blob cache.
#[derive(Debug)]
pub struct Found {
    /// Manifest digest (OCI) or image id = config digest (docker save).
    pub digest: String,
    pub config_digest: String,
    pub layers: Vec<OciDescriptor>,
}

/// What one pass over the archive learnt.
#[derive(Default)]
struct Members {
    /// Regular members: name → (digest, size).
    files: HashMap<String, (String, u64)>,
    /// Small regular members' bytes.
    small: HashMap<String, Vec<u8>>,
    /// Symlink and hardlink members: name → target member name.
    links: HashMap<String, String>,
}

/// A member name made relative and lexically normal; `None` if it climbs out.
fn normal(name: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

impl Members {
    /// Follows links by name inside the archive to a regular member.
    fn resolve(&self, name: &str) -> Result<String, Error> {
        let mut name = normal(name)
            .ok_or_else(|| Error::BadArchive(format!("{name:?} points outside the archive")))?;
        for _ in 0..MAX_LINKS {
            if self.files.contains_key(&name) {
                return Ok(name);
            }
            let Some(target) = self.links.get(&name) else {
                return Err(Error::BadArchive(format!(
                    "{name} is missing (or not a regular file)"
                )));
            };
            name = target.clone();
        }
        Err(Error::BadArchive(format!("{name}: too many links")))
    }

    fn bytes(&self, name: &str) -> Result<&[u8], Error> {
        let name = self.resolve(name)?;
        self.small
            .get(&name)
            .map(Vec::as_slice)
            .ok_or_else(|| Error::BadArchive(format!("{name} is too large for a JSON document")))
    }

    fn json(&self, name: &str) -> Result<Value, Error> {
        serde_json::from_slice(self.bytes(name)?)
            .map_err(|e| Error::BadArchive(format!("{name} is not JSON: {e}")))
    }
}

fn members(archive: &Path) -> Result<Members, Error> {
    let bad = |m: String| Error::BadArchive(m);
    let file = fs::File::open(archive).map_err(Error::io("cannot open", archive))?;
    let mut tar = tar::Archive::new(file);
    let mut out = Members::default();
    for entry in tar
        .entries()
        .map_err(|e| bad(format!("cannot read it: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("cannot read it: {e}")))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(name) = normal(&raw) else {
            return Err(bad(format!("member {raw:?} escapes the archive")));
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                let mut hash = Sha256::new();
                let mut keep = (size <= SMALL).then(Vec::new);
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = entry
                        .read(&mut buf)
                        .map_err(|e| bad(format!("cannot read {name}: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    if let Some(k) = &mut keep {
                        k.extend_from_slice(&buf[..n]);
                    }
                }
                let digest = format!("sha256:{}", hex::encode(hash.finalize()));
                out.links.remove(&name);
                out.files.insert(name.clone(), (digest, size));
                match keep {
                    Some(k) => out.small.insert(name, k),
                    None => out.small.remove(&name),
                };
            }
            kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                // A symlink is relative to its own directory, a hardlink to
                // the archive's root; absolute targets are archive paths.
                let base = if kind == tar::EntryType::Symlink && !target.starts_with('/') {
                    name.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
                } else {
                    ""
                };
                let target = normal(&format!("{base}/{target}"))
                    .ok_or_else(|| bad(format!("link {name} points outside the archive")))?;
                out.files.remove(&name);
                out.links.insert(name, target);
            }
            // Directories and anything else are not needed.
            _ => {}
        }
    }
    Ok(out)
}

/// Copies the members named in `wanted` (name → digest) into the cache,
/// each verified against its digest; small ones come from memory.
fn store(
    archive: &Path,
    m: &Members,
    wanted: &HashMap<String, String>,
    cache: &BlobCache,
) -> Result<(), Error> {
    let mut large = HashMap::new();
    for (name, digest) in wanted {
        if cache.has(digest) {
            continue;
        }
        if let Some(bytes) = m.small.get(name) {
            let mut w = cache.writer(digest)?;
            w.write(bytes)?;
            w.commit()?;
        } else {
            large.insert(name.clone(), digest.clone());
        }
    }
    if large.is_empty() {
        return Ok(());
    }
    let file = fs::File::open(archive).map_err(Error::io("cannot open", archive))?;
    let mut tar = tar::Archive::new(file);
    let bad = |m: String| Error::BadArchive(m);
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(digest) = normal(&raw).and_then(|n| large.remove(&n)) else {
            continue;
        };
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        let mut w = cache.writer(&digest)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf).map_err(|e| bad(e.to_string()))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n])?;
        }
        w.commit()?;
    }
    if let Some(name) = large.keys().next() {
        return Err(bad(format!("{name} changed while it was read")));
    }
    Ok(())
}

/// Reads the archive at `archive` and stores the image's blobs in `cache`.
pub fn read_archive(
    archive: &Path,
    platform: &Platform,
    cache: &BlobCache,
) -> Result<Found, Error> {
    let m = members(archive)?;
    if m.resolve("index.json").is_ok() {
        read_oci(archive, &m, platform, cache)
    } else if m.resolve("manifest.json").is_ok() {
        read_docker(archive, &m, cache)
    } else {
        Err(Error::BadArchive(
            "it has neither index.json (OCI) nor manifest.json (docker save)".into(),
        ))
    }
}

fn blob_name(digest: &str) -> Result<String, Error> {
    Ok(format!("blobs/sha256/{}", sha256_hex(digest)?))
}

fn read_oci(
    archive: &Path,
    m: &Members,
    platform: &Platform,
    cache: &BlobCache,
) -> Result<Found, Error> {
    let bad = |s: &str| Error::BadArchive(s.to_owned());
    let mut desc = m.json("index.json")?["manifests"]
        .get(0)
        .cloned()
        .ok_or_else(|| bad("index.json lists no manifest"))?;
    // Descend through nested indexes to the platform's manifest.
    for _ in 0..4 {
        let digest = desc["digest"]
            .as_str()
            .ok_or_else(|| bad("a descriptor has no digest"))?
            .to_owned();
        let doc = m.json(&blob_name(&digest)?)?;
        if let Some(manifests) = doc.get("manifests").and_then(Value::as_array) {
            desc = manifests
                .iter()
                .find(|d| {
                    d["platform"]["os"] == platform.os.as_str()
                        && d["platform"]["architecture"] == platform.arch.as_str()
                })
                .cloned()
                .ok_or_else(|| Error::NoPlatform {
                    reference: "the archive".into(),
                    platform: platform.to_string(),
                })?;
            continue;
        }
        let config_digest = doc["config"]["digest"]
            .as_str()
            .ok_or_else(|| bad("manifest has no config"))?
            .to_owned();
        let mut wanted = HashMap::new();
        for d in [&digest, &config_digest] {
            wanted.insert(m.resolve(&blob_name(d)?)?, d.clone());
        }
        let mut layers = Vec::new();
        for l in doc["layers"]
            .as_array()
            .ok_or_else(|| bad("manifest has no layers"))?
        {
            let d: OciDescriptor = serde_json::from_value(l.clone())
                .map_err(|e| Error::BadArchive(format!("bad layer descriptor: {e}")))?;
            wanted.insert(m.resolve(&blob_name(&d.digest)?)?, d.digest.clone());
            layers.push(d);
        }
        store(archive, m, &wanted, cache)?;
        return Ok(Found {
            digest,
            config_digest,
            layers,
        });
    }
    Err(bad("indexes nested too deeply"))
}

fn read_docker(archive: &Path, m: &Members, cache: &BlobCache) -> Result<Found, Error> {
    let bad = |s: &str| Error::BadArchive(s.to_owned());
    let manifest = m.json("manifest.json")?;
    let entry = manifest
        .get(0)
        .ok_or_else(|| bad("manifest.json lists no image"))?;
    let member = |v: &Value| -> Result<(String, (String, u64)), Error> {
        let rel = v
            .as_str()
            .ok_or_else(|| bad("manifest.json has a non-string path"))?;
        let name = m.resolve(rel)?;
        let found = m.files[&name].clone();
        Ok((name, found))
    };
    let mut wanted = HashMap::new();
    let (config, (config_digest, _)) = member(&entry["Config"])?;
    wanted.insert(config, config_digest.clone());
    let mut layers = Vec::new();
    for l in entry["Layers"]
        .as_array()
        .ok_or_else(|| bad("manifest.json has no Layers"))?
    {
        let (name, (digest, size)) = member(l)?;
        wanted.insert(name, digest.clone());
        layers.push(OciDescriptor {
            media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
            digest,
            size: size as i64,
            ..OciDescriptor::default()
        });
    }
    store(archive, m, &wanted, cache)?;
    Ok(Found {
        digest: config_digest.clone(),
        config_digest,
        layers,
    })
}
