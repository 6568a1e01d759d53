//! Tar archives for tests: a builder that sets every header field
//! explicitly (layers, imports), and raw-name members for crafted hostile
//! archives (`..`, absolute names) that the tar crate's setters refuse.

/// One member of a crafted archive, its name written raw.
#[derive(Debug, Clone, Copy)]
pub enum Member<'a> {
    /// A regular file and its bytes.
    File(&'a str, &'a [u8]),
    /// A directory.
    Dir(&'a str),
    /// A symlink and its target.
    Symlink(&'a str, &'a str),
    /// A hard link and its target.
    Hardlink(&'a str, &'a str),
    /// A FIFO.
    Fifo(&'a str),
    /// A character device.
    CharDevice(&'a str),
}

/// A tar of `members` with raw GNU names (mode 0644).
pub fn tar_raw(members: &[Member]) -> Vec<u8> {
    use ::tar::EntryType;
    let mut builder = ::tar::Builder::new(Vec::new());
    for m in members {
        let mut header = ::tar::Header::new_gnu();
        let (name, kind, link, data): (&str, EntryType, Option<&str>, &[u8]) = match *m {
            Member::File(n, d) => (n, EntryType::Regular, None, d),
            Member::Dir(n) => (n, EntryType::Directory, None, b""),
            Member::Symlink(n, t) => (n, EntryType::Symlink, Some(t), b""),
            Member::Hardlink(n, t) => (n, EntryType::Link, Some(t), b""),
            Member::Fifo(n) => (n, EntryType::Fifo, None, b""),
            Member::CharDevice(n) => (n, EntryType::Char, None, b""),
        };
        let gnu = header.as_gnu_mut().expect("a GNU header");
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).expect("append to a Vec");
    }
    builder.into_inner().expect("finish a Vec")
}

/// [`tar_raw`], zstd-compressed (kernel bundles).
pub fn tar_zst(members: &[Member]) -> Vec<u8> {
    zstd::encode_all(&tar_raw(members)[..], 1).expect("zstd into a Vec")
}

/// A tar of everything under `dir`, names relative to it (`./...`).
pub fn tar_dir(dir: &std::path::Path) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir)
        .unwrap_or_else(|e| panic!("tar {}: {e}", dir.display()));
    b.into_inner().expect("finish a Vec")
}

/// A tar builder with helpers that set every header field explicitly.
#[allow(missing_debug_implementations)]
pub struct TarBuilder(pub ::tar::Builder<Vec<u8>>);

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    /// An empty archive.
    pub fn new() -> Self {
        TarBuilder(::tar::Builder::new(Vec::new()))
    }

    fn header(kind: ::tar::EntryType, mode: u32, uid: u64, gid: u64) -> ::tar::Header {
        let mut h = ::tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        h
    }

    /// A directory.
    pub fn dir(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = Self::header(::tar::EntryType::Directory, mode, uid, gid);
        self.0.append_data(&mut h, path, &b""[..]).unwrap();
        self
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> &mut Self {
        let mut h = Self::header(::tar::EntryType::Regular, mode, uid, gid);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    /// A file with extended attributes (`SCHILY.xattr.*` PAX records).
    pub fn file_xattrs(
        &mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let keys: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.0
            .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        self.file(path, mode, 0, 0, data)
    }

    /// A file with raw PAX records (e.g. `mtime` with a fraction).
    pub fn file_pax(
        &mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        pax: &[(&str, &[u8])],
    ) -> &mut Self {
        self.0.append_pax_extensions(pax.iter().copied()).unwrap();
        self.file(path, mode, 0, 0, data)
    }

    /// A symlink.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(::tar::EntryType::Symlink, 0o777, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    /// A hard link to an earlier member.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(::tar::EntryType::Link, 0o755, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    /// A device node (`kind` char or block) or FIFO.
    pub fn node(
        &mut self,
        path: &str,
        kind: ::tar::EntryType,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = Self::header(kind, 0o660, 0, 6);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, &b""[..]).unwrap();
        self
    }

    /// The archive so far; the builder starts over.
    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, ::tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}
