//! `[imagestore]` settings: registries (mirrors, insecure hosts, CA),
//! unpack limits, ext4 sizing and where the guest bundle lives.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// `[imagestore]` of banger.toml. Every field has a default.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ImageStoreConfig {
    /// Registries (`host[:port]`) reached over plain HTTP instead of HTTPS.
    pub insecure_registries: Vec<String>,
    /// Per-registry mirrors, tried in order before the upstream, e.g.
    /// `"docker.io" = ["http://127.0.0.1:5000"]`. An `http://` mirror is
    /// reached over plain HTTP; `https://` or a bare host over HTTPS.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Extra PEM CA bundle trusted for HTTPS registries (besides the system roots).
    pub ca_file: Option<PathBuf>,
    /// Refuse an image whose unpacked content exceeds this many bytes.
    pub max_unpacked_bytes: u64,
    /// Refuse an image with more tar members than this (all layers summed).
    pub max_entries: u64,
    /// Refuse an image with more entries than this in one directory.
    pub max_entries_per_dir: u64,
    /// Refuse an image whose directories' entry counts, squared and summed,
    /// exceed this: mke2fs's time grows with the square of a directory's
    /// size (the default allows one directory of ~23k entries, ~1 min).
    pub max_dir_work: u64,
    /// File content a pull may keep in memory while it flattens layers, so
    /// a layer that fits is decompressed once instead of twice (per pull,
    /// per layer all or nothing).
    pub flatten_memory_bytes: u64,
    /// Refuse an image whose filesystem (content + headroom) exceeds this.
    pub max_image_bytes: u64,
    /// What writes the ext4: `builtin` (in-process, linear in the number
    /// of entries) or `mke2fs` (`mke2fs -d -` fed the flattened tar, then
    /// debugfs for what its tar reader drops).
    pub ext4_writer: Ext4Writer,
    /// Free space added to the ext4 image, as a percentage of the content.
    pub ext4_headroom_percent: u64,
    /// Minimum free space added to the ext4 image, in MiB.
    pub ext4_min_headroom_mib: u64,
    /// Layers downloaded at once.
    pub max_parallel_layers: usize,
    /// Folder with the guest bundle (`banger-agent`, `banger-first-boot`,
    /// and their units). Default: `$BANGER_GUEST_DIR`, else `guest/` next
    /// to the binary, else `/usr/lib/banger/guest`.
    pub guest_dir: Option<PathBuf>,
}

impl Default for ImageStoreConfig {
    fn default() -> Self {
        ImageStoreConfig {
            insecure_registries: Vec::new(),
            mirrors: BTreeMap::new(),
            ca_file: None,
            max_unpacked_bytes: 16 << 30,
            max_entries: 1_000_000,
            max_entries_per_dir: 65_536,
            max_dir_work: 1 << 29,
            flatten_memory_bytes: 256 << 20,
            max_image_bytes: 32 << 30,
            ext4_writer: Ext4Writer::default(),
            ext4_headroom_percent: 20,
            ext4_min_headroom_mib: 64,
            max_parallel_layers: 3,
            guest_dir: None,
        }
    }
}

/// The ext4 writer ([`ImageStoreConfig::ext4_writer`]).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ext4Writer {
    /// [`crate::ext4w`].
    #[default]
    Builtin,
    /// e2fsprogs ≥ 1.47.1 with libarchive.
    Mke2fs,
}

/// One endpoint to try for a registry: where, and whether over plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP.
    pub plain_http: bool,
}

impl ImageStoreConfig {
    /// The endpoints to try for `registry`, in order: its mirrors, then
    /// the registry itself.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut order = banger_proto::config::mirrors_then_upstream(&self.mirrors, registry);
        // The last one is the registry itself: a host, not a URL.
        order.pop();
        let mut out: Vec<Endpoint> = order
            .iter()
            .map(|m| {
                let (plain_http, rest) = if let Some(rest) = m.strip_prefix("http://") {
                    (true, rest)
                } else if let Some(rest) = m.strip_prefix("https://") {
                    (false, rest)
                } else {
                    (false, m.as_str())
                };
                let host = rest.to_owned();
                let plain_http = plain_http || self.insecure_registries.contains(&host);
                Endpoint { host, plain_http }
            })
            .collect();
        out.push(Endpoint {
            host: registry.to_owned(),
            plain_http: self.insecure_registries.iter().any(|r| r == registry),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_absent() {
        let cfg = banger_proto::config::Config::parse("", "t").unwrap();
        let s: ImageStoreConfig = cfg.section("imagestore").unwrap();
        assert_eq!(s, ImageStoreConfig::default());
        assert_eq!(s.max_unpacked_bytes, 16 << 30);
        assert_eq!(s.max_parallel_layers, 3);
    }

    #[test]
    fn mirrors_then_upstream() {
        let cfg = banger_proto::config::Config::parse(
            "[imagestore]\ninsecure_registries = [\"127.0.0.1:5001\"]\n\
             [imagestore.mirrors]\n\"docker.io\" = [\"http://127.0.0.1:5000\", \"https://m.example\"]\n",
            "t",
        )
        .unwrap();
        let s: ImageStoreConfig = cfg.section("imagestore").unwrap();
        assert_eq!(
            s.endpoints("docker.io"),
            vec![
                Endpoint {
                    host: "127.0.0.1:5000".into(),
                    plain_http: true
                },
                Endpoint {
                    host: "m.example".into(),
                    plain_http: false
                },
                Endpoint {
                    host: "docker.io".into(),
                    plain_http: false
                },
            ]
        );
        assert_eq!(
            s.endpoints("127.0.0.1:5001"),
            vec![Endpoint {
                host: "127.0.0.1:5001".into(),
                plain_http: true
            }]
        );
    }

    #[test]
    fn the_shipped_config_states_the_defaults() {
        let shipped = include_str!("../../../configs/banger.toml");
        let cfg = banger_proto::config::Config::parse(shipped, "banger.toml").unwrap();
        let s: ImageStoreConfig = cfg.section("imagestore").unwrap();
        assert_eq!(s, ImageStoreConfig::default());
    }

    #[test]
    fn the_ext4_writer_is_one_of_two() {
        let parse = |v: &str| {
            banger_proto::config::Config::parse(&format!("[imagestore]\next4_writer = {v}\n"), "t")
                .unwrap()
                .section::<ImageStoreConfig>("imagestore")
                .map(|s| s.ext4_writer)
        };
        assert_eq!(parse("\"builtin\"").unwrap(), Ext4Writer::Builtin);
        assert_eq!(parse("\"mke2fs\"").unwrap(), Ext4Writer::Mke2fs);
        assert!(parse("\"mkfs\"").is_err());
        assert!(parse("1").is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let cfg = banger_proto::config::Config::parse("[imagestore]\nnope = 1\n", "t").unwrap();
        assert!(cfg.section::<ImageStoreConfig>("imagestore").is_err());
    }
}
