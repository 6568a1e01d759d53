//! A Debian kernel `.deb` made bootable for a microVM: the package's
//! `data.tar.*` is read once, keeping only `boot/vmlinuz-*`,
//! `boot/config-*` and the module files; the ELF vmlinux is taken out of
//! the bzImage payload; the config is checked for what a microVM needs and
//! each required `=m` option becomes a module to load, with its
//! dependencies read from the modules' own `.modinfo` (a `.deb` ships no
//! `modules.dep`), ordered dependencies first.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use crate::error::{Error, Result};

/// What the guest needs from a kernel, as (config option, module it is
/// built as when `=m`, why). Built in (`=y`) or a module (`=m`) is fine.
pub const REQUIRED: [(&str, &str, &str); 7] = [
    ("VIRTIO_MMIO", "virtio_mmio", "virtio devices of a microVM"),
    ("VIRTIO_BLK", "virtio_blk", "the root disk"),
    ("VIRTIO_NET", "virtio_net", "the network"),
    ("VSOCKETS", "vsock", "the agent's vsock channel"),
    (
        "VIRTIO_VSOCKETS",
        "vmw_vsock_virtio_transport",
        "the agent's vsock channel",
    ),
    ("EXT4_FS", "ext4", "the root filesystem"),
    ("BLK_DEV_INITRD", "", "the generated initramfs"),
];

/// Built-in only options (a module cannot provide them before the
/// initramfs runs).
const BUILTIN: [(&str, &str); 3] = [
    ("BLK_DEV_INITRD", "the generated initramfs"),
    ("RD_GZIP", "the gzip-compressed initramfs"),
    ("DEVTMPFS", "/dev in the initramfs"),
];

/// The kernel files of a package.
#[derive(Debug, Default)]
pub struct DebKernel {
    /// Release, from `boot/vmlinuz-<kver>`.
    pub kver: String,
    /// The bzImage.
    pub vmlinuz: Vec<u8>,
    /// The build configuration text.
    pub config: String,
    /// Module files by path inside the package (`lib/modules/<kver>/…`).
    pub modules: BTreeMap<String, Vec<u8>>,
}

/// Reads a `.deb` (ar archive) and keeps the kernel files, refusing more
/// than `max` bytes of them.
pub fn read_deb(package: &str, deb: impl Read, max: u64) -> Result<DebKernel> {
    let bad = |reason: String| Error::BadBundle {
        reason: format!("package {package}: {reason}"),
    };
    let mut ar = deb;
    let mut magic = [0u8; 8];
    ar.read_exact(&mut magic)
        .map_err(|_| bad("not a .deb (too short)".into()))?;
    if &magic != b"!<arch>\n" {
        return Err(bad("not a .deb (no ar header)".into()));
    }
    loop {
        let mut header = [0u8; 60];
        match ar.read_exact(&mut header) {
            Ok(()) => {}
            Err(_) => return Err(bad("it has no data.tar member".into())),
        }
        let name = String::from_utf8_lossy(&header[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_owned();
        let size: u64 = String::from_utf8_lossy(&header[48..58])
            .trim()
            .parse()
            .map_err(|_| bad("corrupt ar member header".into()))?;
        let mut member = (&mut ar).take(size);
        if let Some(ext) = name.strip_prefix("data.tar") {
            let decoder: Box<dyn Read + '_> = match ext {
                ".xz" => Box::new(liblzma::read::XzDecoder::new(member)),
                ".zst" => Box::new(
                    zstd::stream::read::Decoder::new(member)
                        .map_err(|e| bad(format!("data.tar.zst: {e}")))?,
                ),
                ".gz" => Box::new(flate2::read::GzDecoder::new(member)),
                "" => Box::new(member),
                other => return Err(bad(format!("unsupported data.tar{other}"))),
            };
            return read_data_tar(package, decoder, max);
        }
        std::io::copy(&mut member, &mut std::io::sink())
            .map_err(|e| bad(format!("reading {name}: {e}")))?;
        if !size.is_multiple_of(2) {
            let mut pad = [0u8; 1];
            let _ = ar.read_exact(&mut pad);
        }
    }
}

fn read_data_tar(package: &str, data: impl Read, max: u64) -> Result<DebKernel> {
    let bad = |reason: String| Error::BadBundle {
        reason: format!("package {package}: {reason}"),
    };
    let mut out = DebKernel::default();
    let mut kept = 0u64;
    let mut tar = tar::Archive::new(data);
    let entries = tar.entries().map_err(|e| bad(format!("data.tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("data.tar: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| bad(format!("data.tar: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let keep = path.starts_with("boot/vmlinuz-")
            || path.starts_with("boot/config-")
            || (path.starts_with("lib/modules/") && is_module(&path))
            || (path.starts_with("usr/lib/modules/") && is_module(&path));
        if !keep {
            continue;
        }
        kept += entry.size();
        if kept > max {
            return Err(Error::TooLarge {
                what: format!("the kernel files of {package}"),
                limit: max,
            });
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("data.tar {path}: {e}")))?;
        if let Some(kver) = path.strip_prefix("boot/vmlinuz-") {
            out.kver = kver.to_owned();
            out.vmlinuz = data;
        } else if path.starts_with("boot/config-") {
            out.config = String::from_utf8_lossy(&data).into_owned();
        } else {
            let path = path.strip_prefix("usr/").unwrap_or(&path).to_owned();
            out.modules.insert(path, data);
        }
    }
    if out.vmlinuz.is_empty() {
        return Err(bad(
            "it contains no boot/vmlinuz-* (not a kernel image package)".into(),
        ));
    }
    if out.config.is_empty() {
        return Err(bad(format!("it contains no boot/config-{}", out.kver)));
    }
    Ok(out)
}

fn is_module(path: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|ext| path.ends_with(ext))
}

/// The module name of a path (`…/vmw_vsock_virtio_transport.ko.xz` →
/// `vmw_vsock_virtio_transport`; `-` and `_` are the same to modprobe).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Decompresses a module file by its extension, up to `max` bytes.
pub fn module_elf(path: &str, data: &[u8], max: u64) -> Result<Vec<u8>> {
    let reader: Box<dyn Read + '_> = if path.ends_with(".xz") {
        Box::new(liblzma::read::XzDecoder::new(data))
    } else if path.ends_with(".zst") {
        Box::new(
            zstd::stream::read::Decoder::new(data).map_err(|e| Error::BadBundle {
                reason: format!("module {path}: {e}"),
            })?,
        )
    } else if path.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(data))
    } else {
        Box::new(data)
    };
    read_capped(reader, max, &format!("module {path}"))
}

fn read_capped(reader: impl Read, max: u64, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::BadBundle {
            reason: format!("{what}: cannot decompress: {e}"),
        })?;
    if out.len() as u64 > max {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            limit: max,
        });
    }
    Ok(out)
}

/// Extracts the ELF vmlinux from a bzImage: the setup header gives the
/// payload's offset and length, the payload's magic its compression.
pub fn vmlinux_from_bzimage(bz: &[u8], max: u64) -> Result<Vec<u8>> {
    let bad = |reason: &str| Error::BadBundle {
        reason: format!("the kernel image is not a usable bzImage: {reason}"),
    };
    if bz.len() < 0x250 || &bz[0x202..0x206] != b"HdrS" {
        return Err(bad("no setup header (HdrS)"));
    }
    let version = u16::from_le_bytes([bz[0x206], bz[0x207]]);
    if version < 0x0208 {
        return Err(bad("boot protocol older than 2.08 (no payload fields)"));
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let u32_at = |o: usize| u32::from_le_bytes([bz[o], bz[o + 1], bz[o + 2], bz[o + 3]]) as usize;
    let start = (setup_sects + 1) * 512 + u32_at(0x248);
    let len = u32_at(0x24c);
    let payload = bz
        .get(start..start + len)
        .ok_or_else(|| bad("payload offset/length beyond the file"))?;
    let what = "the kernel payload";
    let elf = if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = zstd::stream::read::Decoder::new(payload)
            .map_err(|e| bad(&e.to_string()))?
            .single_frame();
        read_capped(decoder, max, what)?
    } else if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        read_capped(liblzma::read::XzDecoder::new(payload), max, what)?
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        read_capped(flate2::read::GzDecoder::new(payload), max, what)?
    } else if payload.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        lz4_legacy(payload, max)?
    } else {
        return Err(bad(&format!(
            "unsupported payload compression (magic {:02x?}); zstd, xz, gzip and lz4 are",
            &payload[..payload.len().min(6)]
        )));
    };
    if !elf.starts_with(b"\x7fELF") {
        return Err(bad("the decompressed payload is not an ELF file"));
    }
    Ok(elf)
}

/// The kernel's lz4 "legacy" format: magic, then blocks of
/// `u32 compressed size` + data, each at most 8 MiB decompressed.
fn lz4_legacy(payload: &[u8], max: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = &payload[4..];
    while rest.len() >= 4 {
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if n == 0x184c2102 {
            rest = &rest[4..];
            continue;
        }
        let Some(block) = rest.get(4..4 + n) else {
            break; // the 4-byte size trailer the kernel appends
        };
        let chunk = lz4_flex::block::decompress(block, 8 << 20).map_err(|e| Error::BadBundle {
            reason: format!("the kernel payload (lz4): {e}"),
        })?;
        out.extend_from_slice(&chunk);
        if out.len() as u64 > max {
            return Err(Error::TooLarge {
                what: "the kernel payload".into(),
                limit: max,
            });
        }
        rest = &rest[4 + n..];
    }
    Ok(out)
}

/// A 64-bit little-endian ELF file's sections and notes, as far as we read them.
struct Elf<'a> {
    data: &'a [u8],
}

impl<'a> Elf<'a> {
    fn new(data: &'a [u8]) -> Option<Elf<'a>> {
        (data.len() >= 64 && data.starts_with(b"\x7fELF") && data[4] == 2 && data[5] == 1)
            .then_some(Elf { data })
    }

    fn u16(&self, o: usize) -> Option<u16> {
        Some(u16::from_le_bytes(
            self.data.get(o..o + 2)?.try_into().ok()?,
        ))
    }

    fn u32(&self, o: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.data.get(o..o + 4)?.try_into().ok()?,
        ))
    }

    fn u64(&self, o: usize) -> Option<usize> {
        usize::try_from(u64::from_le_bytes(
            self.data.get(o..o + 8)?.try_into().ok()?,
        ))
        .ok()
    }

    /// `(type, offset, size)` of each program header.
    fn segments(&self) -> Option<Vec<(u32, usize, usize)>> {
        let (phoff, phentsize, phnum) = (self.u64(0x20)?, self.u16(0x36)?, self.u16(0x38)?);
        (0..phnum as usize)
            .map(|i| {
                let o = phoff + i * phentsize as usize;
                Some((self.u32(o)?, self.u64(o + 8)?, self.u64(o + 32)?))
            })
            .collect()
    }

    /// `(name, offset, size)` of each section.
    fn sections(&self) -> Option<Vec<(String, usize, usize)>> {
        let (shoff, shentsize, shnum, shstrndx) = (
            self.u64(0x28)?,
            self.u16(0x3a)? as usize,
            self.u16(0x3c)? as usize,
            self.u16(0x3e)? as usize,
        );
        let strtab = self.u64(shoff + shstrndx * shentsize + 0x18)?;
        (0..shnum)
            .map(|i| {
                let o = shoff + i * shentsize;
                let name_off = strtab + self.u32(o)? as usize;
                let name = self.data.get(name_off..)?;
                let end = name.iter().position(|&b| b == 0)?;
                Some((
                    String::from_utf8_lossy(&name[..end]).into_owned(),
                    self.u64(o + 0x18)?,
                    self.u64(o + 0x20)?,
                ))
            })
            .collect()
    }

    /// Whether a `PT_NOTE` segment holds a note `name` of type `kind`.
    fn has_note(&self, name: &[u8], kind: u32) -> bool {
        let Some(segments) = self.segments() else {
            return false;
        };
        for (ptype, off, size) in segments {
            if ptype != 4 {
                continue;
            }
            let mut o = off;
            while o + 12 <= off + size {
                let (Some(namesz), Some(descsz), Some(t)) =
                    (self.u32(o), self.u32(o + 4), self.u32(o + 8))
                else {
                    break;
                };
                let (namesz, descsz) = (namesz as usize, descsz as usize);
                let n = self.data.get(o + 12..o + 12 + namesz).unwrap_or_default();
                if t == kind && n.strip_suffix(b"\0").unwrap_or(n) == name {
                    return true;
                }
                o += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
            }
        }
        false
    }
}

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point Firecracker and QEMU
/// boot an uncompressed x86_64 vmlinux through.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Checks the vmlinux is an x86_64 ELF with a PVH entry note.
pub fn check_vmlinux(elf: &[u8]) -> Result<()> {
    let bad = |reason: &str| Error::BadBundle {
        reason: format!("the vmlinux {reason}"),
    };
    let e = Elf::new(elf).ok_or_else(|| bad("is not a 64-bit little-endian ELF file"))?;
    match e.u16(18) {
        Some(62) => {}
        Some(m) => {
            return Err(bad(&format!(
                "is for another architecture (ELF machine {m}, not x86_64)"
            )));
        }
        None => return Err(bad("has a truncated ELF header")),
    }
    if !e.has_note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY) {
        return Err(bad(
            "has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); it was built without CONFIG_PVH",
        ));
    }
    Ok(())
}

/// The value of `CONFIG_<option>` (`y`, `m`, a string) or `None` when unset.
pub fn config_value<'a>(config: &'a str, option: &str) -> Option<&'a str> {
    let key = format!("CONFIG_{option}=");
    config
        .lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .map(str::trim)
}

/// Checks the config and returns the module names to load (the required
/// options that are `=m`), and whether `IP_PNP` is built in.
pub fn required_modules(kver: &str, config: &str) -> Result<(Vec<String>, bool)> {
    let mut modules = Vec::new();
    for (option, module, why) in REQUIRED {
        match config_value(config, option) {
            Some("y") => {}
            Some("m") if !module.is_empty() => modules.push(module.to_owned()),
            other => {
                return Err(Error::KernelUnfit {
                    kver: kver.into(),
                    option: format!("CONFIG_{option}"),
                    reason: format!(
                        "is {} but {why} needs it built in or as a module",
                        other.map_or("not set".to_owned(), |v| format!("={v}"))
                    ),
                });
            }
        }
    }
    for (option, why) in BUILTIN {
        if config_value(config, option) != Some("y") {
            return Err(Error::KernelUnfit {
                kver: kver.into(),
                option: format!("CONFIG_{option}"),
                reason: format!("is not built in (=y) but {why} needs it"),
            });
        }
    }
    if !modules.is_empty() && config_value(config, "MODULES") != Some("y") {
        return Err(Error::KernelUnfit {
            kver: kver.into(),
            option: "CONFIG_MODULES".into(),
            reason: "is off, yet required drivers are modules".into(),
        });
    }
    Ok((modules, config_value(config, "IP_PNP") == Some("y")))
}

/// The module files to load for `wanted`, dependencies first, each
/// module's dependencies read from its `.modinfo` `depends=`.
pub fn resolve_modules(
    kernel: &DebKernel,
    wanted: &[String],
    max_module: u64,
) -> Result<Vec<String>> {
    let by_name: BTreeMap<String, &String> =
        kernel.modules.keys().map(|p| (module_name(p), p)).collect();
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    fn visit(
        name: &str,
        kernel: &DebKernel,
        by_name: &BTreeMap<String, &String>,
        max: u64,
        done: &mut BTreeSet<String>,
        visiting: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        let name = name.replace('-', "_");
        if done.contains(&name) {
            return Ok(());
        }
        if visiting.contains(&name) {
            return Err(Error::BadBundle {
                reason: format!("module dependency cycle: {} → {name}", visiting.join(" → ")),
            });
        }
        let path = by_name.get(&name).ok_or_else(|| Error::BadBundle {
            reason: format!(
                "kernel {}: module {name} is needed but not in the package",
                kernel.kver
            ),
        })?;
        let elf = module_elf(path, &kernel.modules[*path], max)?;
        visiting.push(name.clone());
        for dep in modinfo_depends(&elf) {
            visit(&dep, kernel, by_name, max, done, visiting, order)?;
        }
        visiting.pop();
        done.insert(name);
        order.push((*path).clone());
        Ok(())
    }
    for name in wanted {
        visit(
            name,
            kernel,
            &by_name,
            max_module,
            &mut done,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok(order)
}

/// The `depends=` of a module's `.modinfo` section.
pub fn modinfo_depends(elf: &[u8]) -> Vec<String> {
    let Some(e) = Elf::new(elf) else {
        return Vec::new();
    };
    let Some(sections) = e.sections() else {
        return Vec::new();
    };
    let Some((_, off, size)) = sections.into_iter().find(|(n, _, _)| n == ".modinfo") else {
        return Vec::new();
    };
    let Some(info) = elf.get(off..off + size) else {
        return Vec::new();
    };
    info.split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE segment holding `note`.
    fn elf(machine: u16, note: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[18..20].copy_from_slice(&machine.to_le_bytes());
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        e[64..68].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        e[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes());
        e[64 + 32..64 + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        e.extend_from_slice(note);
        e
    }

    fn note(name: &[u8], kind: u32) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.push(0);
        while !n.len().is_multiple_of(4) {
            n.push(0);
        }
        n.extend_from_slice(&[0x00, 0x10, 0x00, 0x01]);
        n
    }

    #[test]
    fn vmlinux_needs_x86_64_and_the_pvh_note() {
        check_vmlinux(&elf(62, &note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY))).unwrap();
        let err = check_vmlinux(&elf(183, &note(b"Xen", 18))).unwrap_err();
        assert!(err.to_string().contains("another architecture"), "{err}");
        let err = check_vmlinux(&elf(62, &note(b"GNU", 18))).unwrap_err();
        assert!(err.to_string().contains("PVH"), "{err}");
        let err = check_vmlinux(b"MZ not an elf").unwrap_err();
        assert!(err.to_string().contains("ELF"), "{err}");
        assert!(vmlinux_from_bzimage(&[0u8; 0x300], 1 << 20).is_err());
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("lib/modules/k/kernel/net/vmw_vsock/vsock.ko.xz"),
            "vsock"
        );
        assert_eq!(module_name("a/crc32-pclmul.ko"), "crc32_pclmul");
    }

    #[test]
    fn config_checks_name_the_option() {
        let ok = "CONFIG_VIRTIO_MMIO=m\nCONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_NET=m\n\
            CONFIG_VSOCKETS=m\nCONFIG_VIRTIO_VSOCKETS=m\nCONFIG_EXT4_FS=y\n\
            CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\nCONFIG_DEVTMPFS=y\nCONFIG_MODULES=y\n\
            # CONFIG_IP_PNP is not set\n";
        let (mods, ip_pnp) = required_modules("k", ok).unwrap();
        assert_eq!(
            mods,
            [
                "virtio_mmio",
                "virtio_net",
                "vsock",
                "vmw_vsock_virtio_transport"
            ]
        );
        assert!(!ip_pnp);
        let err = required_modules("k", &ok.replace("CONFIG_VIRTIO_BLK=y\n", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONFIG_VIRTIO_BLK"), "{err}");
        let err = required_modules("k", &ok.replace("CONFIG_RD_GZIP=y", "CONFIG_RD_GZIP=m"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONFIG_RD_GZIP"), "{err}");
    }
}
