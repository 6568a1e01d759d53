//! The one config loader shared by every banger process and the CLI.
//!
//! Where things live is decided once, here:
//! - `--home DIR` / `BANGER_HOME=DIR`: config `DIR/banger.toml` (if present),
//!   sockets and pid files in `DIR/run/`, state in `DIR/state/`. Tests,
//!   benchmarks and the all-in-one dev mode run this way.
//! - otherwise `--config FILE`, else `/etc/banger/banger.toml` (if present),
//!   with `[paths]` defaulting to `/run/banger` and `/var/lib/banger`.
//!
//! Each service reads its own `[section]` through [`Config::section`], so
//! the loader never needs to know every service's settings; it knows only
//! their names ([`SECTIONS`]) and refuses any other top-level section, so a
//! misspelled `[vmmm]` is an error instead of silently ignored defaults.
//! Unknown keys inside a section are refused by that section's own type
//! (`#[serde(deny_unknown_fields)]`) when its service reads it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Environment variable that relocates everything under one folder.
pub const HOME_ENV: &str = "BANGER_HOME";
/// System config file.
pub const SYSTEM_CONFIG: &str = "/etc/banger/banger.toml";
/// System run dir (sockets, pid files).
pub const SYSTEM_RUN_DIR: &str = "/run/banger";
/// System state dir.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/banger";
/// The kernel of a VM when neither the request nor its image names one
/// (`[vmm] default_kernel`): Debian's signed cloud kernel, which a fresh
/// host pulls with no build step. vmm and the CLI (which pulls it when
/// missing) both read it from here.
pub const DEFAULT_KERNEL: &str = "debian-6.12";

/// Env var naming the guest bundle dir (`banger-agent`, first-boot, units).
pub const GUEST_DIR_ENV: &str = "BANGER_GUEST_DIR";
/// Where packages install the guest bundle.
pub const SYSTEM_GUEST_DIR: &str = "/usr/lib/banger/guest";

/// The candidate guest bundle dirs in order: the configured one
/// (`[imagestore] guest_dir`, `[kernelcat] guest_dir`), `$BANGER_GUEST_DIR`,
/// `<dir of the running binary>/guest`, `/usr/lib/banger/guest`. One home,
/// so imagestore (which injects the agent into images) and kernelcat
/// (whose generated initramfs runs the agent as `/init`) agree.
pub fn guest_dir_candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = configured {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(GUEST_DIR_ENV).filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join("guest"));
    }
    out.push(PathBuf::from(SYSTEM_GUEST_DIR));
    out
}

/// The first candidate that is a directory.
pub fn find_guest_dir(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_dir()).cloned()
}

/// The URLs to try for `upstream`, in order: its configured mirrors
/// (`[imagestore.mirrors]`, `[kernelcat.archive_mirrors]`: upstream →
/// list), then the upstream itself. Trailing slashes are dropped.
pub fn mirrors_then_upstream(
    mirrors: &std::collections::BTreeMap<String, Vec<String>>,
    upstream: &str,
) -> Vec<String> {
    let key = upstream.trim_end_matches('/');
    let mut out: Vec<String> = mirrors
        .iter()
        .filter(|(k, _)| k.trim_end_matches('/') == key)
        .flat_map(|(_, v)| v.iter())
        .map(|m| m.trim_end_matches('/').to_owned())
        .collect();
    out.push(key.to_owned());
    out
}

/// The top-level sections of banger.toml: `[paths]` and one per service
/// ([`Service::short_name`]), and `[guest]` (read by vmm: how guests reach
/// package mirrors). A new section is added here.
pub const SECTIONS: &[&str] = &["paths", "kernelcat", "imagestore", "netd", "vmm", "guest"];

/// Errors while loading configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file exists but cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has wrong types.
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    /// A top-level section banger does not know (a typo, most likely).
    #[error(
        "invalid config file {path}: unknown section [{section}]; the sections are {}",
        SECTIONS.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(", ")
    )]
    UnknownSection { path: String, section: String },
}

/// The banger services, in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    KernelCat,
    ImageStore,
    Netd,
    Vmm,
}

impl Service {
    /// Every service, in the order `banger up` starts them.
    pub const ALL: [Service; 4] = [
        Service::KernelCat,
        Service::ImageStore,
        Service::Netd,
        Service::Vmm,
    ];

    /// Short name, used for sockets, pid files, state dirs and config sections.
    pub fn short_name(self) -> &'static str {
        match self {
            Service::KernelCat => "kernelcat",
            Service::ImageStore => "imagestore",
            Service::Netd => "netd",
            Service::Vmm => "vmm",
        }
    }

    /// Binary name, e.g. `banger-netd`.
    pub fn binary(self) -> &'static str {
        match self {
            Service::KernelCat => "banger-kernelcat",
            Service::ImageStore => "banger-imagestore",
            Service::Netd => "banger-netd",
            Service::Vmm => "banger-vmm",
        }
    }

    /// Fully qualified gRPC name of the service's API.
    pub fn api_service(self) -> &'static str {
        match self {
            Service::KernelCat => "banger.kernelcat.v1.KernelCat",
            Service::ImageStore => "banger.imagestore.v1.ImageStore",
            Service::Netd => "banger.netd.v1.Netd",
            Service::Vmm => "banger.vmm.v1.Vmm",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// `[paths]` of banger.toml.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PathsSection {
    run_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    socket_group: Option<String>,
}

/// Where one banger installation keeps its sockets and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Sockets and pid files.
    pub run_dir: PathBuf,
    /// Per-service state folders.
    pub state_dir: PathBuf,
    /// Group that owns the sockets (mode 0660); `None` keeps the process's group.
    pub socket_group: Option<String>,
}

impl Paths {
    /// The unix socket a service listens on.
    pub fn socket(&self, service: Service) -> PathBuf {
        self.run_dir.join(format!("{}.sock", service.short_name()))
    }

    /// The pid file of a service started by `banger up`.
    pub fn pid_file(&self, service: Service) -> PathBuf {
        self.run_dir.join(format!("{}.pid", service.short_name()))
    }

    /// Log file of a service started by `banger up`.
    pub fn log_file(&self, service: Service) -> PathBuf {
        self.state_dir
            .join("logs")
            .join(format!("{}.log", service.short_name()))
    }

    /// The state folder a service alone owns (DESIGN §2): `kernels`,
    /// `images` (imagestore also owns [`Paths::blobs`]), `netd`, `vms`.
    pub fn state(&self, service: Service) -> PathBuf {
        self.state_dir.join(match service {
            Service::KernelCat => "kernels",
            Service::ImageStore => "images",
            Service::Netd => "netd",
            Service::Vmm => "vms",
        })
    }

    /// The content-addressed blob cache, owned by imagestore.
    pub fn blobs(&self) -> PathBuf {
        self.state_dir.join("blobs")
    }
}

/// A loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Resolved paths.
    pub paths: Paths,
    /// The home folder, when running under `--home` / `BANGER_HOME`.
    pub home: Option<PathBuf>,
    /// The file the configuration came from, if any existed.
    pub source: Option<PathBuf>,
    table: toml::Table,
}

/// How to find the configuration, usually straight from command-line flags.
#[derive(Debug, Clone, Default)]
pub struct ConfigLocation {
    /// `--home DIR`; falls back to `BANGER_HOME`.
    pub home: Option<PathBuf>,
    /// `--config FILE`; ignored under a home.
    pub config: Option<PathBuf>,
}

impl Config {
    /// Loads configuration from the flags, `BANGER_HOME` and the default paths.
    pub fn load(location: &ConfigLocation) -> Result<Config, ConfigError> {
        let home = location
            .home
            .clone()
            .or_else(|| {
                std::env::var_os(HOME_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .map(|h| absolute(&h));
        let (file, required) = match (&home, &location.config) {
            (Some(home), _) => (home.join("banger.toml"), false),
            (None, Some(file)) => (file.clone(), true),
            (None, None) => (PathBuf::from(SYSTEM_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => None,
            Err(source) => return Err(ConfigError::Read { path: file, source }),
        };
        let source = text.as_ref().map(|_| file.clone());
        let mut config = Config::parse(text.as_deref().unwrap_or(""), &file.display().to_string())?;
        config.source = source;
        if let Some(home) = home {
            config.paths.run_dir = home.join("run");
            config.paths.state_dir = home.join("state");
            config.home = Some(home);
        }
        Ok(config)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: origin.to_owned(),
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        if let Some(section) = table.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
            return Err(ConfigError::UnknownSection {
                path: origin.to_owned(),
                section: section.clone(),
            });
        }
        let paths: PathsSection = match table.get("paths") {
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| parse_err(format!("[paths]: {e}")))?,
            None => PathsSection::default(),
        };
        Ok(Config {
            paths: Paths {
                run_dir: paths.run_dir.unwrap_or_else(|| SYSTEM_RUN_DIR.into()),
                state_dir: paths.state_dir.unwrap_or_else(|| SYSTEM_STATE_DIR.into()),
                socket_group: paths.socket_group,
            },
            home: None,
            source: None,
            table,
        })
    }

    /// Deserializes `[name]` into a service's own settings type; an absent
    /// section yields `T::default()`, so every setting must have a default.
    pub fn section<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, ConfigError> {
        match self.table.get(name) {
            None => Ok(T::default()),
            Some(value) => {
                value
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: self
                            .source
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "<defaults>".into()),
                        message: format!("[{name}]: {e}"),
                    })
            }
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        bridge: String,
        count: u32,
    }

    #[test]
    fn home_relocates_everything() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("banger.toml"),
            "[paths]\nrun_dir = \"/nope\"\n[netd]\nbridge = \"br9\"\n",
        )
        .unwrap();
        let cfg = Config::load(&ConfigLocation {
            home: Some(dir.path().into()),
            config: Some("/does/not/matter".into()),
        })
        .unwrap();
        assert_eq!(cfg.paths.run_dir, dir.path().join("run"));
        assert_eq!(cfg.paths.state_dir, dir.path().join("state"));
        assert_eq!(
            cfg.paths.socket(Service::Netd),
            dir.path().join("run/netd.sock")
        );
        let demo: Demo = cfg.section("netd").unwrap();
        assert_eq!(
            demo,
            Demo {
                bridge: "br9".into(),
                count: 0
            }
        );
    }

    #[test]
    fn missing_home_config_is_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::load(&ConfigLocation {
            home: Some(dir.path().into()),
            config: None,
        })
        .unwrap();
        assert!(cfg.source.is_none());
        assert_eq!(cfg.section::<Demo>("netd").unwrap(), Demo::default());
    }

    #[test]
    fn explicit_config_must_exist() {
        let err = Config::load(&ConfigLocation {
            home: None,
            config: Some("/nonexistent/banger.toml".into()),
        });
        // BANGER_HOME may be set by the environment running the tests.
        if std::env::var_os(HOME_ENV).is_none() {
            assert!(matches!(err, Err(ConfigError::Read { .. })), "{err:?}");
        }
    }

    #[test]
    fn type_errors_name_the_section() {
        let cfg = Config::parse("[netd]\ncount = \"x\"\n", "t.toml").unwrap();
        let err = cfg.section::<Demo>("netd").unwrap_err().to_string();
        assert!(err.contains("[netd]"), "{err}");
    }

    #[test]
    fn unknown_sections_are_refused_naming_the_valid_ones() {
        let err = Config::parse("[vmmm]\ndefault_vcpus = 2\n", "t.toml").unwrap_err();
        assert!(
            matches!(&err, ConfigError::UnknownSection { section, .. } if section == "vmmm"),
            "{err:?}"
        );
        let message = err.to_string();
        for needle in [
            "t.toml",
            "[vmmm]",
            "[paths]",
            "[kernelcat]",
            "[imagestore]",
            "[netd]",
            "[vmm]",
        ] {
            assert!(message.contains(needle), "{needle} missing from: {message}");
        }
        // A top-level key outside any section is refused the same way.
        assert!(matches!(
            Config::parse("bridge = \"br0\"\n", "t.toml"),
            Err(ConfigError::UnknownSection { .. })
        ));
    }

    #[test]
    fn the_shipped_config_and_every_section_parse() {
        let shipped = include_str!("../../configs/banger.toml");
        let cfg = Config::parse(shipped, "configs/banger.toml").unwrap();
        assert_eq!(cfg.paths.run_dir, PathBuf::from(SYSTEM_RUN_DIR));
        // Every service has its section in the list.
        for service in Service::ALL {
            assert!(SECTIONS.contains(&service.short_name()), "{service}");
        }
    }
}
