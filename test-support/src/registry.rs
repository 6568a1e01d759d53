//! A real OCI registry (Debian's `docker-registry`) on 127.0.0.1, with its
//! own config: the packaged one listens on all interfaces.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry, killed and wiped on drop.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

/// How the registry authenticates clients.
#[derive(Debug, Clone, Default)]
pub enum RegistryAuth {
    /// Anonymous access.
    #[default]
    None,
    /// Basic auth from an htpasswd file (bcrypt entries, e.g. from `htpasswd -B`).
    Htpasswd(PathBuf),
    /// Bearer tokens: the YAML `auth.token` block (realm, service, issuer,
    /// rootcertbundle) is inserted verbatim.
    TokenYaml(String),
}

impl Registry {
    /// Starts an anonymous registry on a free port and waits until it answers.
    pub fn start() -> Registry {
        Registry::start_with(RegistryAuth::None)
    }

    /// Starts a registry with the given authentication.
    pub fn start_with(auth: RegistryAuth) -> Registry {
        crate::require_program("/usr/bin/docker-registry", "docker-registry");
        let dir = tempfile::tempdir().expect("temp dir for the registry");
        let port = crate::free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth_yaml = match &auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd(file) => format!(
                "auth:\n  htpasswd:\n    realm: banger-test\n    path: {}\n",
                file.display()
            ),
            RegistryAuth::TokenYaml(block) => format!("auth:\n  token:\n{block}"),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
            root = dir.path().join("data").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Registry { addr, child, dir };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not listen on {} within 20s; log:\n{}",
            self.addr,
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        );
    }

    /// The registry's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's storage root (to corrupt blobs in tests).
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the registry process at once (e.g. mid-download).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Pushes an OCI layout or docker archive with skopeo, e.g.
    /// `push("oci:/tmp/layout:latest", "busybox:latest")`, without TLS.
    pub fn push(&self, source: &str, repo_tag: &str) {
        push_with_skopeo(source, &format!("docker://{}/{repo_tag}", self.addr), &[]);
    }
}

/// Runs `skopeo copy` to a plain-HTTP destination, with extra flags.
pub fn push_with_skopeo(source: &str, dest: &str, extra: &[&str]) {
    crate::require_program("/usr/bin/skopeo", "skopeo");
    let output = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .args(extra)
        .arg(source)
        .arg(dest)
        .output()
        .expect("run skopeo");
    assert!(
        output.status.success(),
        "skopeo copy {source} {dest} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}
