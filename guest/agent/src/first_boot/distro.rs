//! The distribution → package manager table, as data: which os-release IDs
//! belong to which family, and per family the manager(s), their quiet,
//! non-interactive update / install / clean commands, the packages that give
//! an init and an SSH server, and where the proxy and package sources live.

use super::os_release::OsRelease;

/// A family of distributions sharing a package manager. [`Family::name`]
/// is also the key of `GuestNetwork::mirrors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Debian,
    Fedora,
    Alpine,
    Arch,
    Suse,
}

/// How a manager is told about an HTTP(S) proxy (every one also gets the
/// `http_proxy`/`https_proxy`/`no_proxy` environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyConfig {
    /// `/etc/apt/apt.conf.d/80banger-proxy`.
    Apt,
    /// `proxy=` in the `[main]` section of this file.
    MainSection(&'static str),
    /// The environment is enough.
    Env,
}

/// Where the package sources are, and in which syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sources {
    /// `/etc/apt/sources.list`, `sources.list.d/*.list` (one-line) and `*.sources` (deb822).
    Apt,
    /// `/etc/apk/repositories`: one URL a line.
    Apk,
    /// `*.repo` INI files in this directory (`baseurl=`).
    RepoDir(&'static str),
    /// `/etc/pacman.d/mirrorlist`: `Server = URL`.
    Pacman,
}

/// One package manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manager {
    /// What the `Installing` event names.
    pub name: &'static str,
    /// The program (looked up in the image's `PATH` directories).
    pub program: &'static str,
    /// Refreshes the package index; empty: the install does it.
    pub update: &'static [&'static str],
    /// The install command; the packages follow.
    pub install: &'static [&'static str],
    /// Empties the package caches (preparation).
    pub clean: &'static [&'static str],
    /// Environment for every command.
    pub env: &'static [(&'static str, &'static str)],
    /// The packages giving an init (systemd or openrc).
    pub init_packages: &'static [&'static str],
    /// The packages giving an SSH server.
    pub ssh_packages: &'static [&'static str],
    /// apt's `APT::Status-Fd` progress lines on stdout (`-o APT::Status-Fd=1`).
    pub status_lines: bool,
    pub proxy: ProxyConfig,
    pub sources: Sources,
}

/// apt without colours, progress bars or a pty for dpkg (both apt rows
/// carry these; the test checks).
#[cfg(test)]
const APT_QUIET: [&str; 6] = [
    "-o",
    "APT::Color=0",
    "-o",
    "Dpkg::Progress-Fancy=0",
    "-o",
    "Dpkg::Use-Pty=0",
];

const APT: Manager = Manager {
    name: "apt",
    program: "apt-get",
    update: &[
        "apt-get",
        "update",
        "--error-on=any",
        "-qq",
        "-o",
        "APT::Color=0",
        "-o",
        "Dpkg::Progress-Fancy=0",
        "-o",
        "Dpkg::Use-Pty=0",
    ],
    install: &[
        "apt-get",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "-o",
        "APT::Status-Fd=1",
        "-o",
        "APT::Color=0",
        "-o",
        "Dpkg::Progress-Fancy=0",
        "-o",
        "Dpkg::Use-Pty=0",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ],
    clean: &["apt-get", "clean"],
    env: &[
        ("DEBIAN_FRONTEND", "noninteractive"),
        ("DEBCONF_NONINTERACTIVE_SEEN", "true"),
    ],
    init_packages: &["systemd-sysv"],
    ssh_packages: &["openssh-server"],
    status_lines: true,
    proxy: ProxyConfig::Apt,
    sources: Sources::Apt,
};

const DNF: Manager = Manager {
    name: "dnf",
    program: "dnf",
    update: &[],
    install: &[
        "dnf",
        "install",
        "-y",
        "-q",
        "--setopt=install_weak_deps=False",
        "--setopt=color=never",
    ],
    clean: &["dnf", "clean", "all", "-q"],
    env: &[],
    init_packages: &["systemd"],
    ssh_packages: &["openssh-server"],
    status_lines: false,
    proxy: ProxyConfig::MainSection("/etc/dnf/dnf.conf"),
    sources: Sources::RepoDir("/etc/yum.repos.d"),
};

const YUM: Manager = Manager {
    name: "yum",
    program: "yum",
    update: &[],
    install: &["yum", "install", "-y", "-q"],
    clean: &["yum", "clean", "all", "-q"],
    env: &[],
    init_packages: &["systemd"],
    ssh_packages: &["openssh-server"],
    status_lines: false,
    proxy: ProxyConfig::MainSection("/etc/yum.conf"),
    sources: Sources::RepoDir("/etc/yum.repos.d"),
};

const APK: Manager = Manager {
    name: "apk",
    program: "apk",
    update: &[],
    install: &["apk", "add", "--no-cache", "--quiet", "--no-progress"],
    clean: &[],
    env: &[],
    init_packages: &["openrc"],
    ssh_packages: &["openssh"],
    status_lines: false,
    proxy: ProxyConfig::Env,
    sources: Sources::Apk,
};

const PACMAN: Manager = Manager {
    name: "pacman",
    program: "pacman",
    update: &[
        "pacman",
        "-Sy",
        "--noconfirm",
        "--noprogressbar",
        "--color=never",
    ],
    install: &[
        "pacman",
        "-S",
        "--noconfirm",
        "--needed",
        "--noprogressbar",
        "--color=never",
    ],
    clean: &["pacman", "-Scc", "--noconfirm"],
    env: &[],
    init_packages: &["systemd"],
    ssh_packages: &["openssh"],
    status_lines: false,
    proxy: ProxyConfig::Env,
    sources: Sources::Pacman,
};

const ZYPPER: Manager = Manager {
    name: "zypper",
    program: "zypper",
    update: &["zypper", "--non-interactive", "--quiet", "refresh"],
    install: &[
        "zypper",
        "--non-interactive",
        "--quiet",
        "install",
        "--no-recommends",
    ],
    clean: &["zypper", "--non-interactive", "clean", "--all"],
    env: &[],
    init_packages: &["systemd"],
    ssh_packages: &["openssh-server"],
    status_lines: false,
    proxy: ProxyConfig::Env,
    sources: Sources::RepoDir("/etc/zypp/repos.d"),
};

/// The programs of every manager: an image with none of them and no init
/// is a busybox/scratch-like image (first boot supervises the agent).
pub const ALL_PROGRAMS: [&str; 6] = ["apt-get", "dnf", "yum", "apk", "pacman", "zypper"];

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Debian => "debian",
            Family::Fedora => "fedora",
            Family::Alpine => "alpine",
            Family::Arch => "arch",
            Family::Suse => "suse",
        }
    }

    /// The managers to try, preferred first.
    pub fn managers(self) -> &'static [Manager] {
        match self {
            Family::Debian => &[APT],
            Family::Fedora => &[DNF, YUM],
            Family::Alpine => &[APK],
            Family::Arch => &[PACMAN],
            Family::Suse => &[ZYPPER],
        }
    }

    /// The family of a name in the shared table
    /// ([`banger_proto::guest::family_of`]: the host decides with it which
    /// images need preparing, so both sides agree).
    fn of_name(name: &str) -> Option<Family> {
        Some(match name {
            "debian" => Family::Debian,
            "fedora" => Family::Fedora,
            "alpine" => Family::Alpine,
            "arch" => Family::Arch,
            "suse" => Family::Suse,
            _ => return None,
        })
    }

    /// `ID` first, then each `ID_LIKE` word in order.
    pub fn of(os: &OsRelease) -> Option<Family> {
        banger_proto::guest::family_of(&os.id, &os.id_like).and_then(Family::of_name)
    }
}

/// Where programs are looked for in the image (PID 1 has no `PATH`).
pub const PATH_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// `PATH` for the commands first boot runs.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[cfg(test)]
mod tests {
    use super::*;

    fn family(os_release: &str) -> Option<Family> {
        Family::of(&OsRelease::parse(os_release))
    }

    #[test]
    fn every_shared_family_has_managers() {
        for family in ["debian", "fedora", "alpine", "arch", "suse"] {
            let f = Family::of_name(family).expect(family);
            assert_eq!(f.name(), family);
            assert!(!f.managers().is_empty());
        }
    }

    #[test]
    fn ids_map_to_families() {
        for (text, want) in [
            ("ID=debian\n", Some(Family::Debian)),
            ("ID=ubuntu\nID_LIKE=debian\n", Some(Family::Debian)),
            ("ID=fedora\n", Some(Family::Fedora)),
            ("ID=\"rhel\"\n", Some(Family::Fedora)),
            ("ID=centos\n", Some(Family::Fedora)),
            (
                "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
                Some(Family::Fedora),
            ),
            ("ID=almalinux\n", Some(Family::Fedora)),
            ("ID=arch\n", Some(Family::Arch)),
            (
                "ID=\"opensuse-tumbleweed\"\nID_LIKE=\"opensuse suse\"\n",
                Some(Family::Suse),
            ),
            ("ID=\"opensuse-leap\"\n", Some(Family::Suse)),
            ("ID=alpine\n", Some(Family::Alpine)),
            // ID unknown: ID_LIKE decides, in order.
            ("ID=mydistro\nID_LIKE='debian'\n", Some(Family::Debian)),
            ("ID=myrhel\nID_LIKE=\"weird rhel\"\n", Some(Family::Fedora)),
            ("ID=plan9\n", None),
            ("ID=busybox\n", None),
            ("", None),
            // No prefix matches where none is declared.
            ("ID=debianish\n", None),
        ] {
            assert_eq!(family(text), want, "{text:?}");
        }
    }

    #[test]
    fn every_family_installs_quietly_and_non_interactively() {
        for f in [
            Family::Debian,
            Family::Fedora,
            Family::Alpine,
            Family::Arch,
            Family::Suse,
        ] {
            for m in f.managers() {
                assert_eq!(m.install[0], m.program, "{}", m.name);
                assert!(!m.init_packages.is_empty() && !m.ssh_packages.is_empty());
                let flags = m.install.join(" ");
                let non_interactive = ["-y", "--noconfirm", "--non-interactive"];
                let interactive_ok = m.name == "apk"; // apk never asks
                assert!(
                    interactive_ok || non_interactive.iter().any(|f| flags.contains(f)),
                    "{}: {flags}",
                    m.name
                );
                assert!(
                    ["-q", "-qq", "--quiet", "--noprogressbar"]
                        .iter()
                        .any(|q| m.install.contains(q)),
                    "{} is not quiet: {flags}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn debian_row_is_what_the_issue_asks() {
        let apt = Family::Debian.managers()[0];
        assert_eq!(apt.init_packages, ["systemd-sysv"]);
        assert_eq!(apt.ssh_packages, ["openssh-server"]);
        assert!(apt.install.contains(&"--no-install-recommends"));
        assert!(apt.install.contains(&"APT::Status-Fd=1"));
        assert!(apt.update.contains(&"--error-on=any"));
        assert!(apt.update.contains(&"Dpkg::Progress-Fancy=0"));
        assert_eq!(apt.env[0], ("DEBIAN_FRONTEND", "noninteractive"));
        assert_eq!(Family::Fedora.managers()[0].name, "dnf");
        assert_eq!(Family::Fedora.managers()[1].name, "yum");
        assert_eq!(Family::Alpine.managers()[0].init_packages, ["openrc"]);
    }

    #[test]
    fn quiet_apt_flags_are_shared() {
        for flag in APT_QUIET {
            assert!(APT.update.contains(&flag), "{flag}");
            assert!(APT.install.contains(&flag), "{flag}");
        }
    }
}
