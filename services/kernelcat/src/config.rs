//! `[kernelcat]` of banger.toml: where the catalog comes from and how much a
//! bundle may unpack to. Every setting has a default, so the section may be
//! absent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Default time allowed to fetch the remote catalog.
pub const DEFAULT_CATALOG_TIMEOUT_SECS: u64 = 10;
/// Default seconds a Debian archive server may stall (connect, or no
/// byte read) before the next mirror is tried.
pub const DEFAULT_ARCHIVE_TIMEOUT_SECS: u64 = 30;
/// Default cap on the uncompressed size of a kernel bundle (512 MiB).
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 512 * 1024 * 1024;

/// The `[kernelcat]` settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct KernelCatConfig {
    /// URL of a remote catalog (JSON) whose entries are added to the
    /// embedded ones; fetched with a timeout and cached in the state dir.
    pub catalog_url: Option<String>,
    /// Seconds allowed to fetch `catalog_url`.
    pub catalog_timeout_secs: u64,
    /// Refuse bundles (and downloads, and imports) larger than this.
    pub max_unpacked_bytes: u64,
    /// Registries (`host:port`) spoken to over plain HTTP for `oci://` entries.
    pub insecure_registries: Vec<String>,
    /// Per-archive mirrors for Debian-archive entries, tried in order,
    /// then the archive itself, e.g.
    /// `"http://deb.debian.org/debian-security" = ["http://127.0.0.1:8080/debian-security"]`
    /// (the shape of `[imagestore.mirrors]`). HTTP proxies come from the
    /// usual `http_proxy`/`https_proxy`/`no_proxy` environment variables.
    pub archive_mirrors: BTreeMap<String, Vec<String>>,
    /// Seconds an archive server may stall before the next one is tried.
    pub archive_timeout_secs: u64,
    /// The OpenPGP keyring Debian archive signatures are checked against
    /// (only the pinned Debian keys in it are accepted).
    pub archive_keyring: PathBuf,
    /// Folder of the guest bundle whose `banger-agent` becomes a generated
    /// initramfs's `/init`. Default: `$BANGER_GUEST_DIR`, else `guest/`
    /// next to the binary, else `/usr/lib/banger/guest`.
    pub guest_dir: Option<PathBuf>,
}

impl Default for KernelCatConfig {
    fn default() -> Self {
        KernelCatConfig {
            catalog_url: None,
            catalog_timeout_secs: DEFAULT_CATALOG_TIMEOUT_SECS,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            insecure_registries: Vec::new(),
            archive_mirrors: BTreeMap::new(),
            archive_timeout_secs: DEFAULT_ARCHIVE_TIMEOUT_SECS,
            archive_keyring: PathBuf::from(crate::archive::DEBIAN_KEYRING),
            guest_dir: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::config::Config;

    #[test]
    fn absent_section_is_defaults() {
        let cfg = Config::parse("", "t.toml").unwrap();
        let kc: KernelCatConfig = cfg.section("kernelcat").unwrap();
        assert_eq!(kc, KernelCatConfig::default());
        assert_eq!(kc.max_unpacked_bytes, 536_870_912);
        assert_eq!(kc.catalog_timeout_secs, 10);
    }

    #[test]
    fn partial_section_keeps_other_defaults() {
        let cfg = Config::parse(
            "[kernelcat]\ncatalog_url = \"http://127.0.0.1:1/c.json\"\ninsecure_registries = [\"127.0.0.1:5000\"]\n",
            "t.toml",
        )
        .unwrap();
        let kc: KernelCatConfig = cfg.section("kernelcat").unwrap();
        assert_eq!(kc.catalog_url.as_deref(), Some("http://127.0.0.1:1/c.json"));
        assert_eq!(kc.insecure_registries, vec!["127.0.0.1:5000".to_owned()]);
        assert_eq!(kc.max_unpacked_bytes, DEFAULT_MAX_UNPACKED_BYTES);
    }

    #[test]
    fn shipped_config_is_the_defaults_and_mirrors_parse() {
        let text = include_str!("../../../configs/banger.toml");
        let cfg = Config::parse(text, "banger.toml").unwrap();
        let kc: KernelCatConfig = cfg.section("kernelcat").unwrap();
        assert_eq!(kc, KernelCatConfig::default());
        let cfg = Config::parse(
            "[kernelcat.archive_mirrors]\n\"http://deb.debian.org/debian-security\" = \
             [\"http://127.0.0.1:8080/debian-security/\", \"http://m2/ds\"]\n",
            "t.toml",
        )
        .unwrap();
        let kc: KernelCatConfig = cfg.section("kernelcat").unwrap();
        assert_eq!(
            banger_proto::config::mirrors_then_upstream(
                &kc.archive_mirrors,
                "http://deb.debian.org/debian-security"
            ),
            [
                "http://127.0.0.1:8080/debian-security",
                "http://m2/ds",
                "http://deb.debian.org/debian-security"
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let cfg = Config::parse("[kernelcat]\ncatalog = 1\n", "t.toml").unwrap();
        assert!(cfg.section::<KernelCatConfig>("kernelcat").is_err());
    }
}
