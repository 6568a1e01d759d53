//! The pull of a Debian-archive catalog entry: `InRelease` (verified, see
//! [`crate::archive`]) → the `Packages` index it lists (by hash, in apt's
//! order xz, gz, plain, the next on 404) → the meta package followed to
//! the kernel image package (newest version) → its `.deb`, streamed with
//! the signed size as a hard cap and checked by SHA-256 → the vmlinux, the
//! config and a generated initramfs in a staging dir.
//!
//! Sources are the entry's archive's mirrors (`[kernelcat.archive_mirrors]`)
//! in order, then the archive itself. A source that cannot be reached,
//! stalls past the timeout or lacks a file (HTTP error) gives way to the
//! next; a source that serves something the signature chain refutes stops
//! the pull with that error (it is an attack or corruption to be seen, not
//! routed around). HTTP proxies: reqwest's client honours
//! `http_proxy`/`https_proxy`/`no_proxy` from the environment.

use std::io::Read;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::archive::{self, ArchiveTrust, Stanza};
use crate::catalog::DebianSource;
use crate::deb;
use crate::error::{Error, Result};
use crate::initramfs;
use crate::store::{self, DebianFacts, Staging};

/// Largest `InRelease` accepted (bookworm's is ~150 KiB).
const MAX_INRELEASE: u64 = 4 << 20;
/// The agent binary in the guest bundle.
pub const AGENT: &str = "banger-agent";

/// What a pull needs besides the store.
#[derive(Debug, Clone)]
pub struct Archives {
    /// Client with connect/read (stall) timeouts.
    pub http: reqwest::Client,
    /// `[kernelcat.archive_mirrors]`.
    pub mirrors: std::collections::BTreeMap<String, Vec<String>>,
    /// Keys accepted for InRelease.
    pub trust: ArchiveTrust,
    /// Cap on decompressed index, package and kernel files.
    pub max_bytes: u64,
    /// Guest bundle dirs to find `banger-agent` in.
    pub guest_candidates: Vec<PathBuf>,
}

/// The exact package a pull resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The source base URL that answered.
    pub base: String,
    /// Primary fingerprint of the signing key.
    pub fingerprint: String,
    /// The meta package stanza.
    pub meta: Stanza,
    /// The kernel image package stanza.
    pub kernel: Stanza,
}

/// What was written into the staging dir.
#[derive(Debug, Clone)]
pub struct Built {
    pub kver: String,
    pub modules: Vec<String>,
}

fn retryable(e: &Error) -> bool {
    matches!(
        e,
        Error::Transfer { .. } | Error::HttpStatus { .. } | Error::NotInArchive { .. }
    )
}

impl Archives {
    /// The agent binary that becomes `/init`.
    pub fn agent(&self) -> Result<PathBuf> {
        self.guest_candidates
            .iter()
            .map(|d| d.join(AGENT))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::NoAgent {
                looked_in: self
                    .guest_candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            })
    }

    fn bases(&self, src: &DebianSource) -> Vec<String> {
        banger_proto::config::mirrors_then_upstream(&self.mirrors, &src.archive_url)
    }

    /// Resolves the entry to its exact kernel package through the first
    /// source that answers.
    pub async fn resolve(&self, src: &DebianSource, work: &Path) -> Result<Resolved> {
        let mut problems = Vec::new();
        for base in self.bases(src) {
            match self.resolve_at(&base, src, work).await {
                Ok(r) => return Ok(r),
                Err(e) if retryable(&e) => {
                    tracing::warn!(source = %base, error = %e, "archive source failed; trying the next");
                    problems.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(unreachable(src, problems))
    }

    async fn resolve_at(&self, base: &str, src: &DebianSource, work: &Path) -> Result<Resolved> {
        let dists = format!("{base}/dists/{}", src.suite);
        let url = format!("{dists}/InRelease");
        let (inrelease, _, _) = self.get(&url, None, MAX_INRELEASE, &|_| {}).await?;
        let path = work.join("InRelease");
        std::fs::write(&path, &inrelease).map_err(Error::io("cannot write", &path))?;
        let (trust, work2, url2) = (self.trust.clone(), work.to_path_buf(), url.clone());
        let (text, fingerprint) = tokio::task::spawn_blocking(move || {
            archive::verify_inrelease(&url2, &path, &work2, &trust)
        })
        .await
        .map_err(|e| Error::Internal(format!("gpgv task failed: {e}")))??;
        let release = archive::parse_release(&text).map_err(|reason| Error::Untrusted {
            url: url.clone(),
            reason,
        })?;
        archive::check_release(&url, &release, &src.suite, store::now_unix())?;
        let index = format!("{}/binary-{}", src.component, src.arch);
        let mut text = None;
        'outer: for ext in [".xz", ".gz", ""] {
            let name = format!("{index}/Packages{ext}");
            let Some(listed) = release.sha256.get(&name) else {
                continue;
            };
            let mut paths = Vec::new();
            if release.acquire_by_hash {
                paths.push(format!("{index}/by-hash/SHA256/{}", listed.sha256));
            }
            paths.push(name.clone());
            for p in paths {
                let url = format!("{dists}/{p}");
                match self
                    .get(&url, Some(listed.size), listed.size, &|_| {})
                    .await
                {
                    Ok((data, sha, _)) => {
                        if sha != listed.sha256 {
                            return Err(Error::DigestMismatch {
                                url,
                                expected: listed.sha256.clone(),
                                actual: sha,
                            });
                        }
                        let max = self.max_bytes;
                        let ext = ext.to_owned();
                        let decoded =
                            tokio::task::spawn_blocking(move || decompress_index(&ext, &data, max))
                                .await
                                .map_err(|e| Error::Internal(format!("index task failed: {e}")))?
                                .map_err(|e| match e {
                                    Error::TooLarge { limit, .. } => Error::TooLarge {
                                        what: format!("the index {url} (decompressed)"),
                                        limit,
                                    },
                                    e => e,
                                })?;
                        text = Some(decoded);
                        break 'outer;
                    }
                    Err(Error::HttpStatus { status: 404, .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        let Some(text) = text else {
            return Err(Error::NotInArchive {
                what: format!("the index {index}/Packages (xz, gz or plain)"),
                archive: dists,
            });
        };
        let stanzas = archive::parse_packages(&text, |p| p.starts_with("linux-image-"));
        let meta = archive::newest(&stanzas, &src.package, &src.arch).ok_or_else(|| {
            Error::NotInArchive {
                what: format!("package {} ({})", src.package, src.arch),
                archive: dists.clone(),
            }
        })?;
        let kernel =
            archive::follow_meta(&stanzas, meta, &src.arch).ok_or_else(|| Error::NotInArchive {
                what: format!(
                    "the kernel package {} {} depends on ({})",
                    meta.package, meta.version, meta.depends
                ),
                archive: dists.clone(),
            })?;
        let f = &kernel.filename;
        if f.is_empty()
            || f.starts_with('/')
            || f.split('/').any(|c| c == ".." || c.is_empty())
            || kernel.sha256.len() != 64
            || kernel.size == 0
        {
            return Err(Error::Untrusted {
                url: dists,
                reason: format!(
                    "the stanza of {} has no usable Filename/Size/SHA256",
                    kernel.package
                ),
            });
        }
        Ok(Resolved {
            base: base.to_owned(),
            fingerprint,
            meta: meta.clone(),
            kernel: kernel.clone(),
        })
    }

    /// Downloads the resolved `.deb` (the source that resolved first, then
    /// the others), checked against the signed size and SHA-256.
    pub async fn download_deb(
        &self,
        src: &DebianSource,
        resolved: &Resolved,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(Vec<u8>, String)> {
        let mut bases = vec![resolved.base.clone()];
        bases.extend(self.bases(src).into_iter().filter(|b| *b != resolved.base));
        let k = &resolved.kernel;
        let mut problems = Vec::new();
        for base in bases {
            let url = format!("{base}/{}", k.filename);
            match self.get(&url, Some(k.size), k.size, progress).await {
                Ok((data, sha, _)) => {
                    if sha != k.sha256 {
                        return Err(Error::DigestMismatch {
                            url,
                            expected: k.sha256.clone(),
                            actual: sha,
                        });
                    }
                    return Ok((data, base));
                }
                Err(e) if retryable(&e) => {
                    tracing::warn!(url = %url, error = %e, "archive source failed; trying the next");
                    problems.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(unreachable(src, problems))
    }

    /// GETs `url` into memory, hashing; refuses more than `declared`
    /// (or `cap`) bytes while streaming and fewer than `declared` at the end.
    async fn get(
        &self,
        url: &str,
        declared: Option<u64>,
        cap: u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(Vec<u8>, String, u64)> {
        let transfer = |message: String| Error::Transfer {
            url: url.to_owned(),
            message,
        };
        let cap = cap.min(self.max_bytes);
        let over = || match declared {
            Some(declared) => Error::LargerThanDeclared {
                url: url.to_owned(),
                declared,
            },
            None => Error::TooLarge {
                what: format!("the download of {url}"),
                limit: cap,
            },
        };
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| transfer(crate::pull::error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::HttpStatus {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        if declared.is_some_and(|d| d > self.max_bytes) {
            return Err(Error::TooLarge {
                what: format!("the download of {url}"),
                limit: self.max_bytes,
            });
        }
        if response.content_length().is_some_and(|l| l > cap) {
            return Err(over());
        }
        let mut stream = response.bytes_stream();
        let mut data = Vec::new();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let got = data.len() as u64;
                match declared {
                    Some(expected) if got < expected => Error::Truncated {
                        url: url.to_owned(),
                        got,
                        expected,
                    },
                    _ => transfer(crate::pull::error_chain(&e)),
                }
            })?;
            if (data.len() + chunk.len()) as u64 > cap {
                return Err(over());
            }
            hasher.update(&chunk);
            data.extend_from_slice(&chunk);
            progress(data.len() as u64);
        }
        let got = data.len() as u64;
        if let Some(expected) = declared
            && got != expected
        {
            return Err(Error::Truncated {
                url: url.to_owned(),
                got,
                expected,
            });
        }
        Ok((data, hex::encode(hasher.finalize()), got))
    }
}

fn unreachable(src: &DebianSource, problems: Vec<Error>) -> Error {
    // One source: its own error says it best.
    if problems.len() == 1 {
        return problems.into_iter().next().expect("one problem");
    }
    Error::Transfer {
        url: src.archive_url.clone(),
        message: format!(
            "no source answered (its mirrors in order, then the archive): {}",
            problems
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

fn decompress_index(ext: &str, data: &[u8], max: u64) -> Result<String> {
    let reader: Box<dyn Read + '_> = match ext {
        ".xz" => Box::new(liblzma::read::XzDecoder::new(data)),
        ".gz" => Box::new(flate2::read::GzDecoder::new(data)),
        _ => Box::new(data),
    };
    let mut out = Vec::new();
    reader
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::BadBundle {
            reason: format!("the Packages index does not decompress: {e}"),
        })?;
    if out.len() as u64 > max {
        return Err(Error::TooLarge {
            what: "the Packages index".into(),
            limit: max,
        });
    }
    String::from_utf8(out).map_err(|_| Error::BadBundle {
        reason: "the Packages index is not UTF-8".into(),
    })
}

/// Turns the verified `.deb` into `vmlinux`, `config` and `initrd` in the
/// staging dir (blocking work).
pub fn build(
    staging: &Staging,
    package: &str,
    deb_bytes: &[u8],
    agent: &Path,
    max: u64,
) -> Result<Built> {
    let kernel = deb::read_deb(package, deb_bytes, max)?;
    let vmlinux = deb::vmlinux_from_bzimage(&kernel.vmlinuz, max)?;
    deb::check_vmlinux(&vmlinux)?;
    let (wanted, ip_pnp) = deb::required_modules(&kernel.kver, &kernel.config)?;
    let order = deb::resolve_modules(&kernel, &wanted, max)?;
    let agent_bytes = std::fs::read(agent).map_err(Error::io("cannot read", agent))?;
    let modules: Vec<(String, Vec<u8>)> = order
        .iter()
        .map(|p| (p.clone(), kernel.modules[p].clone()))
        .collect();
    let initrd = initramfs::build(
        &agent_bytes,
        &initramfs::Facts {
            kernel_version: kernel.kver.clone(),
            ip_pnp,
        },
        &modules,
    );
    let dir = staging.path();
    for (name, data) in [
        (store::VMLINUX, &vmlinux[..]),
        (store::CONFIG, kernel.config.as_bytes()),
        (store::INITRD, &initrd[..]),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(Error::io("cannot write", &p))?;
    }
    Ok(Built {
        kver: kernel.kver,
        modules: order.iter().map(|p| format!("/{p}")).collect(),
    })
}

/// The manifest facts of a Debian kernel.
pub fn facts(src: &DebianSource, r: &Resolved, fetched_from: &str, built: &Built) -> DebianFacts {
    DebianFacts {
        package: r.kernel.package.clone(),
        version: r.kernel.version.clone(),
        meta_package: r.meta.package.clone(),
        signing_key: r.fingerprint.clone(),
        archive_url: src.archive_url.clone(),
        fetched_from: fetched_from.to_owned(),
        suite: src.suite.clone(),
        deb_sha256: r.kernel.sha256.clone(),
        modules: built.modules.clone(),
    }
}
