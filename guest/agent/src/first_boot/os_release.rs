//! The image's os-release, read the hostile-input way: `/etc/os-release`,
//! else `/usr/lib/os-release`, each resolved inside the root, regular files
//! only, at most [`MAX_OS_RELEASE`] bytes. A bad file is logged and treated
//! as missing: first boot never hangs or reads a host file because of it.

use std::collections::BTreeMap;

use super::root::Root;

/// The most of an os-release first boot reads.
pub const MAX_OS_RELEASE: u64 = 64 * 1024;

/// What the distro table needs from os-release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    pub id: String,
    pub id_like: Vec<String>,
    pub fields: BTreeMap<String, String>,
}

impl OsRelease {
    pub fn parse(text: &str) -> OsRelease {
        let fields = crate::system::parse_os_release(text);
        OsRelease {
            id: fields.get("ID").cloned().unwrap_or_default(),
            id_like: fields
                .get("ID_LIKE")
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            fields,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Reads the root's os-release; `Err` carries why a present file was
/// refused (the caller logs it and goes on without one).
pub fn read(root: &Root) -> Result<Option<OsRelease>, String> {
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        match root.read_text(path, MAX_OS_RELEASE) {
            Ok(Some(text)) => return Ok(Some(OsRelease::parse(&text))),
            Ok(None) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
        let r = Root::new(dir.path());
        (dir, r)
    }

    #[test]
    fn parses_id_and_id_like() {
        let os = OsRelease::parse("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=9\n");
        assert_eq!(os.id, "rocky");
        assert_eq!(os.id_like, ["rhel", "centos", "fedora"]);
    }

    #[test]
    fn missing_falls_back_to_usr_lib_then_none() {
        let (dir, r) = root();
        assert_eq!(read(&r), Ok(None));
        std::fs::write(dir.path().join("usr/lib/os-release"), "ID=debian\n").unwrap();
        assert_eq!(read(&r).unwrap().unwrap().id, "debian");
        // Debian's /etc/os-release is a relative symlink to it.
        symlink("../usr/lib/os-release", dir.path().join("etc/os-release")).unwrap();
        assert_eq!(read(&r).unwrap().unwrap().id, "debian");
    }

    #[test]
    fn a_symlink_to_a_host_path_resolves_inside_the_root() {
        let (dir, r) = root();
        // The host's /etc/os-release exists; the root has no such target.
        symlink("/etc/debian_version", dir.path().join("etc/os-release")).unwrap();
        assert_eq!(read(&r), Ok(None), "read a host file through the root");
        std::fs::write(dir.path().join("etc/debian_version"), "ID=inroot\n").unwrap();
        assert_eq!(read(&r).unwrap().unwrap().id, "inroot");
    }

    #[test]
    fn fifo_and_huge_files_are_refused_without_blocking() {
        let (dir, r) = root();
        nix::unistd::mkfifo(
            &dir.path().join("etc/os-release"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert!(read(&r).unwrap_err().contains("not a regular file"));
        std::fs::remove_file(dir.path().join("etc/os-release")).unwrap();
        let mut huge = b"ID=debian\n".to_vec();
        huge.resize(MAX_OS_RELEASE as usize + 1, b'#');
        std::fs::write(dir.path().join("etc/os-release"), huge).unwrap();
        assert!(read(&r).unwrap_err().contains("larger than"));
        // /dev/zero-like: a symlink to a character device.
        std::fs::remove_file(dir.path().join("etc/os-release")).unwrap();
        symlink("/dev/zero", dir.path().join("etc/os-release")).unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        assert_eq!(read(&r), Ok(None), "no /dev/zero inside the root");
    }
}
