//! The kernel catalog: entries embedded in the binary (`configs/catalog.json`)
//! plus, when `[kernelcat] catalog_url` is set, a remote catalog fetched
//! with a timeout and cached in the state dir (the cache is used, with a
//! warning, when the remote is unreachable).
//!
//! A catalog is a JSON array of entries, an object `{"kernels": [...]}`,
//! or the format the original tool published, `{"version": N, "entries": [...]}`.
//! An entry is a bundle (`tarball_url` + `tarball_sha256`) or a Debian
//! archive source (`debian`: archive URL, suite, component, architecture and
//! a meta package), whose trust comes from the archive's signature chain.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The catalog compiled into the binary: Debian's signed cloud kernels
/// (we host no bundles, and never list a download host we cannot serve).
pub const EMBEDDED_CATALOG: &str = include_str!("../../../configs/catalog.json");

/// Origin of embedded entries.
pub const EMBEDDED: &str = "embedded";

/// Said when the catalog has no entries.
pub const EMPTY_HINT: &str = "the kernel catalog is empty. To get a kernel, either set \
    `catalog_url` in the [kernelcat] section of banger.toml to a catalog of kernel bundles, or \
    build one with scripts/make-generic-kernel.sh and add it with \
    `banger kernel import generic-6.12 --vmlinux PATH [--config PATH]`";

/// One catalog entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Kernel name (DNS label) it is stored under.
    pub name: String,
    /// Distribution or flavour.
    #[serde(default)]
    pub distro: String,
    /// Architecture, e.g. `x86_64`.
    #[serde(default)]
    pub arch: String,
    /// Kernel release.
    #[serde(default)]
    pub kernel_version: String,
    /// `http(s)://…/NAME.tar.zst` or `oci://host/repo:tag` (bundle entries).
    #[serde(default)]
    pub tarball_url: String,
    /// SHA-256 (hex) of the bundle as downloaded (for OCI: the layer digest).
    #[serde(default)]
    pub tarball_sha256: String,
    /// A Debian archive source instead of a bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian: Option<DebianSource>,
    /// Download size in bytes (informational).
    #[serde(default)]
    pub size_bytes: u64,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// `embedded` or the catalog URL; not part of the file format.
    #[serde(skip)]
    pub origin: String,
}

/// Where a Debian kernel comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DebianSource {
    /// Archive root, e.g. `http://deb.debian.org/debian-security`.
    pub archive_url: String,
    /// Suite or codename, e.g. `bookworm-security`.
    pub suite: String,
    /// Component, e.g. `main`.
    #[serde(default = "default_component")]
    pub component: String,
    /// Debian architecture, e.g. `amd64` (`arm64` later).
    #[serde(default = "default_deb_arch")]
    pub arch: String,
    /// The (meta) package followed to the kernel image, e.g.
    /// `linux-image-6.12-cloud-amd64`.
    pub package: String,
}

fn default_component() -> String {
    "main".into()
}

fn default_deb_arch() -> String {
    "amd64".into()
}

impl CatalogEntry {
    /// Checks the fields a pull relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: &str| Error::BadCatalogEntry {
            name: self.name.clone(),
            reason: reason.into(),
        };
        crate::store::validate_name(&self.name).map_err(|e| bad(&e.to_string()))?;
        if let Some(d) = &self.debian {
            if !self.tarball_url.is_empty() {
                return Err(bad("give either tarball_url or debian, not both"));
            }
            if !(d.archive_url.starts_with("http://") || d.archive_url.starts_with("https://")) {
                return Err(bad(
                    "debian.archive_url must start with http:// or https://",
                ));
            }
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-+._".contains(&b))
                    && !s.starts_with('.')
            };
            if !(token(&d.suite) && token(&d.component) && token(&d.arch) && token(&d.package)) {
                return Err(bad(
                    "debian.suite, component, arch and package must be plain names",
                ));
            }
            if d.arch != "amd64" {
                return Err(bad(
                    "only debian.arch = \"amd64\" is supported so far (arm64 needs an Image \
                     extractor)",
                ));
            }
            return Ok(());
        }
        if self.tarball_sha256.len() != 64
            || !self.tarball_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad("tarball_sha256 must be 64 hex digits"));
        }
        let url = &self.tarball_url;
        if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("oci://"))
        {
            return Err(bad(
                "tarball_url must start with http://, https:// or oci://",
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CatalogFile {
    List(Vec<serde_json::Value>),
    Object {
        kernels: Vec<serde_json::Value>,
    },
    /// The original tool's published format.
    Versioned {
        #[allow(dead_code)] // read for the shape only
        version: u64,
        entries: Vec<serde_json::Value>,
    },
}

/// Parses catalog text; invalid entries are dropped with a warning each.
pub fn parse(
    text: &str,
    origin: &str,
) -> std::result::Result<(Vec<CatalogEntry>, Vec<String>), String> {
    let file: CatalogFile = serde_json::from_str(text).map_err(|e| {
        format!(
            "not a catalog (a JSON list of entries, {{\"kernels\": [...]}} or \
             {{\"version\": N, \"entries\": [...]}}): {e}"
        )
    })?;
    let raw = match file {
        CatalogFile::List(v)
        | CatalogFile::Object { kernels: v }
        | CatalogFile::Versioned { entries: v, .. } => v,
    };
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for value in raw {
        match serde_json::from_value::<CatalogEntry>(value) {
            Ok(mut entry) => match entry.validate() {
                Ok(()) => {
                    entry.tarball_sha256.make_ascii_lowercase();
                    entry.origin = origin.to_owned();
                    entries.push(entry);
                }
                Err(e) => warnings.push(format!("{origin}: {e}")),
            },
            Err(e) => warnings.push(format!("{origin}: skipping an invalid entry: {e}")),
        }
    }
    Ok((entries, warnings))
}

/// The cached copy of the remote catalog.
#[derive(Debug, Serialize, Deserialize)]
struct Cache {
    url: String,
    fetched_unix: i64,
    kernels: Vec<CatalogEntry>,
}

/// Entries plus the problems met while listing them.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Embedded entries, replaced by remote ones of the same name.
    pub entries: Vec<CatalogEntry>,
    /// What went wrong and what to do.
    pub warnings: Vec<String>,
}

/// The catalog source.
#[derive(Debug)]
pub struct Catalog {
    embedded: Vec<CatalogEntry>,
    embedded_warnings: Vec<String>,
    url: Option<String>,
    timeout: Duration,
    cache_path: PathBuf,
    http: reqwest::Client,
}

impl Catalog {
    /// A catalog of the embedded entries plus `url`'s, cached at `cache_path`.
    pub fn new(
        embedded_text: &str,
        url: Option<String>,
        timeout: Duration,
        cache_path: PathBuf,
        http: reqwest::Client,
    ) -> Catalog {
        let (embedded, embedded_warnings) = match parse(embedded_text, EMBEDDED) {
            Ok(parsed) => parsed,
            Err(e) => (Vec::new(), vec![format!("embedded catalog: {e}")]),
        };
        Catalog {
            embedded,
            embedded_warnings,
            url,
            timeout,
            cache_path,
            http,
        }
    }

    /// Every entry, fetching the remote catalog if one is configured.
    #[tracing::instrument(skip_all, fields(url = self.url.as_deref().unwrap_or("")))]
    pub async fn list(&self) -> Listing {
        let mut listing = Listing {
            entries: self.embedded.clone(),
            warnings: self.embedded_warnings.clone(),
        };
        let Some(url) = &self.url else {
            return listing;
        };
        let remote = match self.fetch(url).await {
            Ok((entries, warnings)) => {
                listing.warnings.extend(warnings);
                let cache = Cache {
                    url: url.clone(),
                    fetched_unix: crate::store::now_unix(),
                    kernels: entries.clone(),
                };
                if let Err(e) = banger_proto::fsutil::write_json_atomic(&self.cache_path, &cache) {
                    tracing::warn!(error = %e, "cannot cache the remote catalog");
                }
                entries
            }
            Err(problem) => {
                let cached = std::fs::read(&self.cache_path)
                    .ok()
                    .and_then(|d| serde_json::from_slice::<Cache>(&d).ok())
                    .filter(|c| &c.url == url);
                match cached {
                    Some(cache) => {
                        listing.warnings.push(format!(
                            "remote catalog {url} is unreachable ({problem}); using the copy \
                             cached {} ago",
                            ago(cache.fetched_unix)
                        ));
                        cache
                            .kernels
                            .into_iter()
                            .map(|mut e| {
                                e.origin = url.clone();
                                e
                            })
                            .collect()
                    }
                    None => {
                        listing.warnings.push(format!(
                            "remote catalog {url} is unreachable ({problem}) and there is no \
                             cached copy; only embedded entries are listed. Check \
                             [kernelcat] catalog_url and the network"
                        ));
                        Vec::new()
                    }
                }
            }
        };
        for entry in remote {
            listing.entries.retain(|e| e.name != entry.name);
            listing.entries.push(entry);
        }
        listing.entries.sort_by(|a, b| a.name.cmp(&b.name));
        for w in &listing.warnings {
            tracing::warn!("{w}");
        }
        listing
    }

    /// The entry named `name`; NOT_FOUND if no catalog has it.
    pub async fn lookup(&self, name: &str) -> Result<CatalogEntry> {
        self.list()
            .await
            .entries
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::NotInCatalog { name: name.into() })
    }

    async fn fetch(
        &self,
        url: &str,
    ) -> std::result::Result<(Vec<CatalogEntry>, Vec<String>), String> {
        let response = self
            .http
            .get(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| crate::pull::error_chain(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        // A catalog is a small JSON file: read at most MAX_CATALOG_BYTES
        // while streaming, whatever the server says or sends.
        if response
            .content_length()
            .is_some_and(|l| l > MAX_CATALOG_BYTES)
        {
            return Err(format!("it is larger than {MAX_CATALOG_BYTES} bytes"));
        }
        let mut stream = response.bytes_stream();
        let mut data = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            let chunk = chunk.map_err(|e| crate::pull::error_chain(&e))?;
            if (data.len() + chunk.len()) as u64 > MAX_CATALOG_BYTES {
                return Err(format!("it is larger than {MAX_CATALOG_BYTES} bytes"));
            }
            data.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(data).map_err(|_| "it is not UTF-8 text".to_owned())?;
        parse(&text, url)
    }
}

/// The largest remote catalog read (real ones are a few KiB).
pub const MAX_CATALOG_BYTES: u64 = 4 << 20;

fn ago(unix: i64) -> String {
    let secs = (crate::store::now_unix() - unix).max(0);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";

    #[test]
    fn embedded_catalog_ships_the_debian_kernels() {
        let (entries, warnings) = parse(EMBEDDED_CATALOG, EMBEDDED).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["debian-6.12", "debian-6.1"]);
        let d = entries[0].debian.as_ref().unwrap();
        assert_eq!(d.archive_url, "http://deb.debian.org/debian-security");
        assert_eq!(d.suite, "bookworm-security");
        assert_eq!(d.package, "linux-image-6.12-cloud-amd64");
        let d = entries[1].debian.as_ref().unwrap();
        assert_eq!(
            (d.archive_url.as_str(), d.suite.as_str(), d.package.as_str()),
            (
                "http://deb.debian.org/debian",
                "bookworm",
                "linux-image-cloud-amd64"
            )
        );
        assert!(entries.iter().all(|e| e.arch == "x86_64"));
    }

    #[test]
    fn accepts_the_original_tools_format() {
        let text = format!(
            r#"{{"version": 1, "entries": [{{"name": "generic-6.12", "distro": "generic",
              "arch": "x86_64", "kernel_version": "6.12.117",
              "tarball_url": "https://h/generic-6.12.tar.zst", "tarball_sha256": "{SHA}",
              "size_bytes": 123, "description": "d"}}]}}"#
        );
        let (entries, warnings) = parse(&text, "remote").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].size_bytes, 123);
        assert!(entries[0].debian.is_none());
        // Debian entries are validated too.
        let bad = r#"[{"name": "d", "debian": {"archive_url": "ftp://x", "suite": "s",
            "package": "p"}}]"#;
        let (entries, warnings) = parse(bad, "x").unwrap();
        assert!(entries.is_empty() && warnings.len() == 1, "{warnings:?}");
    }

    #[test]
    fn parses_both_shapes_and_drops_invalid_entries() {
        let text = format!(
            r#"{{"kernels": [
              {{"name": "ok", "tarball_url": "https://h/ok.tar.zst", "tarball_sha256": "{}"}},
              {{"name": "Bad Name", "tarball_url": "https://h/x", "tarball_sha256": "{SHA}"}},
              {{"name": "nosha", "tarball_url": "https://h/x", "tarball_sha256": "12"}},
              {{"name": "ftp", "tarball_url": "ftp://h/x", "tarball_sha256": "{SHA}"}},
              {{"name": "oci", "tarball_url": "oci://127.0.0.1:5000/k:1", "tarball_sha256": "{SHA}"}},
              {{"nonsense": true}}
            ]}}"#,
            SHA.to_uppercase()
        );
        let (entries, warnings) = parse(&text, "remote").unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["ok", "oci"]);
        assert_eq!(
            entries[0].tarball_sha256, SHA,
            "digests are normalised to lowercase"
        );
        assert_eq!(entries[0].origin, "remote");
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        let (entries, _) = parse(
            &format!(
                "[{{\"name\":\"a\",\"tarball_url\":\"http://h/a\",\"tarball_sha256\":\"{SHA}\"}}]"
            ),
            "x",
        )
        .unwrap();
        assert_eq!(entries.len(), 1);
        assert!(parse("{\"other\": 1}", "x").is_err());
    }

    #[tokio::test]
    async fn unreachable_remote_without_cache_warns() {
        let dir = tempfile::tempdir().unwrap();
        banger_proto::tls::install_crypto_provider();
        // Port 1 on loopback: nothing listens, the connection is refused.
        let catalog = Catalog::new(
            "[]",
            Some("http://127.0.0.1:1/catalog.json".into()),
            Duration::from_secs(2),
            dir.path().join("cache.json"),
            reqwest::Client::new(),
        );
        let listing = catalog.list().await;
        assert!(listing.entries.is_empty());
        assert_eq!(listing.warnings.len(), 1);
        assert!(
            listing.warnings[0].contains("unreachable"),
            "{:?}",
            listing.warnings
        );
        assert!(listing.warnings[0].contains("no cached copy"));
    }
}
