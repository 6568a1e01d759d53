//! `[kernelcat]` of banger.toml: where the catalog comes from and how much a
//! bundle may unpack to. Every setting has a default, so the section may be
//! absent.

use serde::Deserialize;

/// Default time allowed to fetch the remote catalog.
pub const DEFAULT_CATALOG_TIMEOUT_SECS: u64 = 10;
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
}

impl Default for KernelCatConfig {
    fn default() -> Self {
        KernelCatConfig {
            catalog_url: None,
            catalog_timeout_secs: DEFAULT_CATALOG_TIMEOUT_SECS,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            insecure_registries: Vec::new(),
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
    fn unknown_keys_are_refused() {
        let cfg = Config::parse("[kernelcat]\ncatalog = 1\n", "t.toml").unwrap();
        assert!(cfg.section::<KernelCatConfig>("kernelcat").is_err());
    }
}
