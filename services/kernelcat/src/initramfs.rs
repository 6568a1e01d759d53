//! The generated initramfs of a Debian kernel (the contract with the
//! agent's init mode, see `/init` below): a deterministic newc cpio —
//! owners 0, mtimes 0, paths sorted with every directory before its
//! children — compressed with gzip (no name, mtime 0), so the same kernel
//! and agent always give the same bytes.
//!
//! Contents, exactly: `/init` (the static `banger-agent`, 0755), the
//! module files as the package ships them under `/lib/modules/<kver>/`,
//! `/etc/banger/modules` (one absolute path per line, load order),
//! `/etc/banger/initramfs.json` and the empty dirs
//! `/dev /proc /sys /newroot /run /tmp`.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

/// Where the init reads the module load order.
pub const MODULES_LIST: &str = "etc/banger/modules";
/// Where the init reads the kernel facts.
pub const FACTS: &str = "etc/banger/initramfs.json";
/// The empty mount-point dirs.
pub const EMPTY_DIRS: [&str; 6] = ["dev", "proc", "sys", "newroot", "run", "tmp"];

/// `/etc/banger/initramfs.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// The kernel release the modules are for.
    pub kernel_version: String,
    /// Whether the kernel configures `ip=` itself (CONFIG_IP_PNP).
    pub ip_pnp: bool,
}

/// One member of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { mode: u32, data: Vec<u8> },
}

/// Builds the initramfs (gzip-compressed cpio): `agent` becomes `/init`,
/// `modules` are `(path inside the package, bytes)` in load order.
pub fn build(agent: &[u8], facts: &Facts, modules: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    tree.insert(
        "init".into(),
        Node::File {
            mode: 0o755,
            data: agent.to_vec(),
        },
    );
    let mut list = String::new();
    for (path, data) in modules {
        let path = path.trim_start_matches('/').to_owned();
        list.push('/');
        list.push_str(&path);
        list.push('\n');
        tree.insert(
            path,
            Node::File {
                mode: 0o644,
                data: data.clone(),
            },
        );
    }
    tree.insert(
        MODULES_LIST.into(),
        Node::File {
            mode: 0o644,
            data: list.into_bytes(),
        },
    );
    let mut json = serde_json::to_vec(facts).expect("facts serialize");
    json.push(b'\n');
    tree.insert(
        FACTS.into(),
        Node::File {
            mode: 0o644,
            data: json,
        },
    );
    for d in EMPTY_DIRS {
        tree.insert(d.into(), Node::Dir);
    }
    // Every parent dir of every member.
    let parents: Vec<String> = tree
        .keys()
        .flat_map(|p| {
            let mut out = Vec::new();
            let mut cur = p.as_str();
            while let Some((parent, _)) = cur.rsplit_once('/') {
                out.push(parent.to_owned());
                cur = parent;
            }
            out
        })
        .collect();
    for p in parents {
        tree.entry(p).or_insert(Node::Dir);
    }
    let cpio = write_cpio(&tree);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&cpio).expect("write to memory");
    gz.finish().expect("write to memory")
}

/// A newc cpio of `tree` (paths without a leading `/`). BTreeMap order
/// puts a dir before its children: `a` < `a/b`, and `/` sorts before
/// every character allowed in our names except `-` and `.`, which cannot
/// split a parent from its child.
pub fn write_cpio(tree: &BTreeMap<String, Node>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 1u32;
    let mut entry = |out: &mut Vec<u8>, name: &str, mode: u32, nlink: u32, data: &[u8]| {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        ino += 1;
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    };
    // Directories first by path order; `sort_by` on components keeps a
    // parent before its children even where `-`/`.` sort before `/`.
    let mut paths: Vec<&String> = tree.keys().collect();
    paths.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    for path in paths {
        match &tree[path] {
            Node::Dir => entry(&mut out, path, 0o040755, 2, &[]),
            Node::File { mode, data } => entry(&mut out, path, 0o100000 | mode, 1, data),
        }
    }
    entry(&mut out, "TRAILER!!!", 0, 1, &[]);
    // Pad to 512 like cpio(1) does.
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
    out
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Reads a newc cpio back: path → (mode, data). For tests and `kernel show`.
pub fn read_cpio(mut data: &[u8]) -> Option<Vec<(String, u32, Vec<u8>)>> {
    let start_len = data.len();
    let mut out = Vec::new();
    loop {
        if data.len() < 110 || &data[..6] != b"070701" {
            return None;
        }
        let field = |i: usize| {
            u32::from_str_radix(std::str::from_utf8(&data[6 + i * 8..14 + i * 8]).ok()?, 16).ok()
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let namesize = field(11)? as usize;
        let name = std::str::from_utf8(data.get(110..110 + namesize - 1)?)
            .ok()?
            .to_owned();
        let consumed = start_len - data.len();
        let head = 110 + namesize;
        let head = head + (4 - (consumed + head) % 4) % 4;
        let body = data.get(head..head + size)?.to_vec();
        let next = head + size;
        let next = next + (4 - (consumed + next) % 4) % 4;
        if name == "TRAILER!!!" {
            return Some(out);
        }
        out.push((name, mode, body));
        data = data.get(next..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_sorted_and_readable() {
        let facts = Facts {
            kernel_version: "6.12.117+deb12-cloud-amd64".into(),
            ip_pnp: false,
        };
        let mods = vec![
            (
                "lib/modules/k/kernel/net/vmw_vsock/vsock.ko.xz".to_owned(),
                b"v".to_vec(),
            ),
            (
                "lib/modules/k/kernel/drivers/virtio/virtio_mmio.ko.xz".to_owned(),
                b"m".to_vec(),
            ),
        ];
        let a = build(b"AGENT", &facts, &mods);
        assert_eq!(a, build(b"AGENT", &facts, &mods), "same input, same bytes");
        let cpio = {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&a[..]), &mut out)
                .unwrap();
            out
        };
        let members = read_cpio(&cpio).unwrap();
        let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
        for (i, n) in names.iter().enumerate() {
            if let Some((parent, _)) = n.rsplit_once('/') {
                let pos = names.iter().position(|x| *x == parent).unwrap();
                assert!(pos < i, "{parent} before {n}");
            }
        }
        let get = |n: &str| members.iter().find(|m| m.0 == n).unwrap();
        assert_eq!(get("init").1, 0o100755);
        assert_eq!(get("init").2, b"AGENT");
        assert_eq!(get("newroot").1, 0o040755);
        assert_eq!(
            String::from_utf8(get(MODULES_LIST).2.clone()).unwrap(),
            "/lib/modules/k/kernel/net/vmw_vsock/vsock.ko.xz\n\
             /lib/modules/k/kernel/drivers/virtio/virtio_mmio.ko.xz\n",
            "load order kept"
        );
        let f: Facts = serde_json::from_slice(&get(FACTS).2).unwrap();
        assert_eq!(f, facts);
    }
}
