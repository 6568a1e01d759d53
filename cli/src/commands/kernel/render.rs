//! What `banger kernel …` prints: [`KernelView`] (the table, one kernel,
//! `--json`) and [`CatalogView`], per the rule in `crate::output`.

use anyhow::Result;
use banger_proto::kernelcat::v1 as pb;
use serde::Serialize;

use crate::context::Context;
use crate::output;

/// A kernel as `kernel list`, `show`, `pull` and `import` print it.
#[derive(Debug, Serialize)]
pub(super) struct KernelView {
    name: String,
    distro: String,
    arch: String,
    kernel_version: String,
    vmlinux_sha256: String,
    vmlinux_size: u64,
    has_initrd: bool,
    has_config: bool,
    source: String,
    created_unix: i64,
    total_size: u64,
    holders: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    debian: Option<DebianView>,
}

/// Where a Debian kernel came from, as printed with `--json`.
#[derive(Debug, Serialize)]
struct DebianView {
    package: String,
    version: String,
    meta_package: String,
    signing_key: String,
    archive_url: String,
    fetched_from: String,
    suite: String,
    deb_sha256: String,
    modules: Vec<String>,
}

impl From<pb::DebianSource> for DebianView {
    fn from(d: pb::DebianSource) -> Self {
        DebianView {
            package: d.package,
            version: d.version,
            meta_package: d.meta_package,
            signing_key: d.signing_key,
            archive_url: d.archive_url,
            fetched_from: d.fetched_from,
            suite: d.suite,
            deb_sha256: d.deb_sha256,
            modules: d.modules,
        }
    }
}

impl From<pb::Kernel> for KernelView {
    fn from(k: pb::Kernel) -> Self {
        KernelView {
            name: k.name,
            distro: k.distro,
            arch: k.arch,
            kernel_version: k.kernel_version,
            vmlinux_sha256: k.vmlinux_sha256,
            vmlinux_size: k.vmlinux_size,
            has_initrd: k.has_initrd,
            has_config: k.has_config,
            source: k.source,
            created_unix: k.created_unix,
            total_size: k.total_size,
            holders: k.holders,
            debian: k.debian.map(Into::into),
        }
    }
}

/// A catalog entry as `kernel list --available` prints it.
#[derive(Debug, Serialize)]
pub(super) struct EntryView {
    name: String,
    distro: String,
    arch: String,
    kernel_version: String,
    tarball_url: String,
    tarball_sha256: String,
    size_bytes: u64,
    description: String,
    state: &'static str,
    origin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    debian: Option<CatalogDebianView>,
}

/// A Debian-archive entry's source, as printed with `--json`.
#[derive(Debug, Serialize)]
struct CatalogDebianView {
    archive_url: String,
    suite: String,
    component: String,
    arch: String,
    package: String,
}

impl From<pb::CatalogEntry> for EntryView {
    fn from(e: pb::CatalogEntry) -> Self {
        EntryView {
            state: if e.pulled { "pulled" } else { "available" },
            name: e.name,
            distro: e.distro,
            arch: e.arch,
            kernel_version: e.kernel_version,
            tarball_url: e.tarball_url,
            tarball_sha256: e.tarball_sha256,
            size_bytes: e.size_bytes,
            description: e.description,
            origin: e.origin,
            debian: e.debian.map(|d| CatalogDebianView {
                archive_url: d.archive_url,
                suite: d.suite,
                component: d.component,
                arch: d.arch,
                package: d.package,
            }),
        }
    }
}

/// `kernel list --available`: the entries, and what the service had to
/// say about building the list.
#[derive(Debug, Serialize)]
pub(super) struct CatalogView {
    entries: Vec<EntryView>,
    warnings: Vec<String>,
    hint: String,
}

impl From<pb::ListCatalogResponse> for CatalogView {
    fn from(r: pb::ListCatalogResponse) -> Self {
        CatalogView {
            entries: r.entries.into_iter().map(Into::into).collect(),
            warnings: r.warnings,
            hint: r.hint,
        }
    }
}

/// `kernel list`.
pub(super) fn print_kernels(ctx: &Context, kernels: &[KernelView]) -> Result<()> {
    if ctx.json {
        return output::print_json(&kernels);
    }
    println!("{}", kernels_table(kernels));
    if kernels.is_empty() {
        eprintln!("no local kernels; see `banger kernel list --available`");
    }
    Ok(())
}

fn kernels_table(kernels: &[KernelView]) -> comfy_table::Table {
    let mut table = output::table([
        "NAME", "DISTRO", "ARCH", "VERSION", "SIZE", "SOURCE", "CREATED",
    ]);
    for k in kernels {
        table.add_row([
            k.name.clone(),
            k.distro.clone(),
            k.arch.clone(),
            k.kernel_version.clone(),
            output::human_bytes(k.total_size),
            k.source.clone(),
            output::timestamp(k.created_unix),
        ]);
    }
    table
}

/// `kernel list --available`.
pub(super) fn print_catalog(ctx: &Context, catalog: &CatalogView) -> Result<()> {
    if ctx.json {
        return output::print_json(catalog);
    }
    for warning in &catalog.warnings {
        eprintln!("warning: {warning}");
    }
    if catalog.entries.is_empty() {
        eprintln!("{}", catalog.hint);
        return Ok(());
    }
    println!("{}", catalog_table(&catalog.entries));
    Ok(())
}

fn catalog_table(entries: &[EntryView]) -> comfy_table::Table {
    let mut table = output::table([
        "NAME",
        "DISTRO",
        "ARCH",
        "VERSION",
        "SIZE",
        "STATE",
        "DESCRIPTION",
    ]);
    for e in entries {
        table.add_row([
            e.name.clone(),
            e.distro.clone(),
            e.arch.clone(),
            e.kernel_version.clone(),
            if e.size_bytes > 0 {
                output::human_bytes(e.size_bytes)
            } else {
                "-".into()
            },
            e.state.to_owned(),
            e.description.clone(),
        ]);
    }
    table
}

/// `kernel show`, `pull` and `import`: one kernel.
pub(super) fn print_kernel(ctx: &Context, k: pb::Kernel) -> Result<()> {
    let view = KernelView::from(k);
    if ctx.json {
        return output::print_json(&view);
    }
    print!("{}", kernel_lines(view));
    Ok(())
}

fn kernel_lines(k: KernelView) -> String {
    let mut rows = vec![
        ("name", k.name),
        ("distro", k.distro),
        ("arch", k.arch),
        ("version", k.kernel_version),
        (
            "vmlinux",
            format!(
                "{} ({} bytes)",
                output::human_bytes(k.vmlinux_size),
                k.vmlinux_size
            ),
        ),
        ("sha256", k.vmlinux_sha256),
        ("initrd", if k.has_initrd { "yes" } else { "no" }.into()),
        ("config", if k.has_config { "yes" } else { "no" }.into()),
        ("size", output::human_bytes(k.total_size)),
        ("source", k.source),
        ("created", output::timestamp(k.created_unix)),
        (
            "used by",
            if k.holders.is_empty() {
                "-".into()
            } else {
                k.holders.join(", ")
            },
        ),
    ];
    if let Some(d) = k.debian {
        rows.extend([
            ("package", format!("{} {}", d.package, d.version)),
            ("via", d.meta_package),
            ("archive", format!("{} {}", d.archive_url, d.suite)),
            ("fetched", d.fetched_from),
            ("signed by", d.signing_key),
            ("deb", format!("sha256:{}", d.deb_sha256)),
            ("modules", d.modules.len().to_string()),
        ]);
    }
    rows.into_iter()
        .map(|(key, value)| format!("{key:9} {value}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_view_feeds_json_and_text() {
        let kernel = pb::Kernel {
            name: "debian-6.12".into(),
            total_size: 8 << 20,
            holders: vec!["box".into()],
            ..Default::default()
        };
        let json = serde_json::to_value(KernelView::from(kernel.clone())).unwrap();
        assert_eq!(json["name"], "debian-6.12");
        assert_eq!(json["holders"][0], "box");
        assert!(json.get("debian").is_none());
        let text = kernel_lines(KernelView::from(kernel.clone()));
        assert!(text.contains("used by   box\n"), "{text}");
        let table = kernels_table(&[KernelView::from(kernel)]).to_string();
        assert!(table.contains("8.0 MiB"), "{table}");
        let catalog = CatalogView::from(pb::ListCatalogResponse {
            entries: vec![pb::CatalogEntry {
                name: "generic-6.12".into(),
                pulled: true,
                ..Default::default()
            }],
            warnings: vec![],
            hint: String::new(),
        });
        let json = serde_json::to_value(&catalog).unwrap();
        assert_eq!(json["entries"][0]["state"], "pulled");
        assert!(
            catalog_table(&catalog.entries)
                .to_string()
                .contains("pulled")
        );
    }
}
