//! `banger kernel …`: list, pull, import, show and remove guest kernels
//! through `banger-kernelcat`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use banger_proto::config::Service;
use banger_proto::kernelcat::v1 as pb;
use banger_proto::kernelcat::v1::kernel_cat_client::KernelCatClient;
use banger_proto::rpc::TracedChannel;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::context::Context;
use crate::output;
use crate::progress::{Progress, Unit, Update};

/// Size of the chunks an import streams.
const CHUNK: usize = 1 << 20;

/// `banger kernel` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KernelCommand {
    /// Local kernels; with --available, the catalog.
    List {
        /// List catalog entries (pulled or available) instead of local kernels.
        #[arg(long)]
        available: bool,
    },
    /// Download a catalog kernel, verified, into the local store.
    Pull {
        /// Catalog name, e.g. generic-6.12.
        name: String,
        /// Replace a local kernel of the same name.
        #[arg(long)]
        force: bool,
        /// Debian-archive kernels: resolve the newest package (security
        /// updates) and switch the name to it once verified.
        #[arg(long, conflicts_with = "force")]
        update: bool,
    },
    /// Store a kernel from local files (read with your own rights).
    #[command(disable_version_flag = true)]
    Import {
        /// Name to store it under (a DNS label).
        name: String,
        /// Uncompressed kernel image.
        #[arg(long, value_name = "PATH")]
        vmlinux: PathBuf,
        /// Optional initrd.
        #[arg(long, value_name = "PATH")]
        initrd: Option<PathBuf>,
        /// Optional kernel build configuration.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Distribution or flavour (default: custom).
        #[arg(long)]
        distro: Option<String>,
        /// Architecture (default: from the ELF header).
        #[arg(long)]
        arch: Option<String>,
        /// Kernel release (default: from the vmlinux's `Linux version` banner).
        #[arg(long)]
        version: Option<String>,
        /// Replace a local kernel of the same name.
        #[arg(long)]
        force: bool,
    },
    /// Details of one local kernel.
    Show {
        /// Kernel name.
        name: String,
    },
    /// Remove a local kernel (refused while a VM uses it).
    Rm {
        /// Kernel name.
        name: String,
    },
}

pub async fn run(ctx: &Context, command: KernelCommand) -> Result<ExitCode> {
    let mut client = KernelCatClient::new(ctx.channel(Service::KernelCat).await?);
    match command {
        KernelCommand::List { available: false } => list(ctx, &mut client).await,
        KernelCommand::List { available: true } => catalog(ctx, &mut client).await,
        KernelCommand::Pull {
            name,
            force,
            update,
        } => pull(ctx, &mut client, name, force, update).await,
        KernelCommand::Import {
            name,
            vmlinux,
            initrd,
            config,
            distro,
            arch,
            version,
            force,
        } => {
            let files = ImportFiles {
                vmlinux,
                initrd,
                config,
            };
            let header = pb::ImportKernelHeader {
                name,
                distro: distro.unwrap_or_default(),
                arch: arch.unwrap_or_default(),
                kernel_version: version.unwrap_or_default(),
                force,
                ..Default::default()
            };
            import(ctx, &mut client, header, files).await
        }
        KernelCommand::Show { name } => show(ctx, &mut client, name).await,
        KernelCommand::Rm { name } => {
            client
                .delete_kernel(pb::DeleteKernelRequest { name: name.clone() })
                .await?;
            if ctx.json {
                output::print_json(&serde_json::json!({ "deleted": name }))?;
            } else {
                eprintln!("removed kernel {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A kernel as printed with `--json`.
#[derive(Debug, Serialize)]
struct KernelJson {
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
    debian: Option<DebianJson>,
}

/// Where a Debian kernel came from, as printed with `--json`.
#[derive(Debug, Serialize)]
struct DebianJson {
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

impl From<pb::DebianSource> for DebianJson {
    fn from(d: pb::DebianSource) -> Self {
        DebianJson {
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

impl From<pb::Kernel> for KernelJson {
    fn from(k: pb::Kernel) -> Self {
        KernelJson {
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

/// A catalog entry as printed with `--json`.
#[derive(Debug, Serialize)]
struct EntryJson {
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
    debian: Option<CatalogDebianJson>,
}

/// A Debian-archive entry's source, as printed with `--json`.
#[derive(Debug, Serialize)]
struct CatalogDebianJson {
    archive_url: String,
    suite: String,
    component: String,
    arch: String,
    package: String,
}

fn created(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".into())
}

async fn list(ctx: &Context, client: &mut KernelCatClient<TracedChannel>) -> Result<ExitCode> {
    let kernels = client
        .list_kernels(pb::ListKernelsRequest {})
        .await?
        .into_inner()
        .kernels;
    if ctx.json {
        let out: Vec<KernelJson> = kernels.into_iter().map(Into::into).collect();
        output::print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table([
        "NAME", "DISTRO", "ARCH", "VERSION", "SIZE", "SOURCE", "CREATED",
    ]);
    for k in &kernels {
        table.add_row([
            k.name.clone(),
            k.distro.clone(),
            k.arch.clone(),
            k.kernel_version.clone(),
            output::human_bytes(k.total_size),
            k.source.clone(),
            created(k.created_unix),
        ]);
    }
    println!("{table}");
    if kernels.is_empty() {
        eprintln!("no local kernels; see `banger kernel list --available`");
    }
    Ok(ExitCode::SUCCESS)
}

async fn catalog(ctx: &Context, client: &mut KernelCatClient<TracedChannel>) -> Result<ExitCode> {
    let response = client
        .list_catalog(pb::ListCatalogRequest {})
        .await?
        .into_inner();
    let state = |pulled: bool| if pulled { "pulled" } else { "available" };
    if ctx.json {
        let entries: Vec<EntryJson> = response
            .entries
            .into_iter()
            .map(|e| EntryJson {
                state: state(e.pulled),
                name: e.name,
                distro: e.distro,
                arch: e.arch,
                kernel_version: e.kernel_version,
                tarball_url: e.tarball_url,
                tarball_sha256: e.tarball_sha256,
                size_bytes: e.size_bytes,
                description: e.description,
                origin: e.origin,
                debian: e.debian.map(|d| CatalogDebianJson {
                    archive_url: d.archive_url,
                    suite: d.suite,
                    component: d.component,
                    arch: d.arch,
                    package: d.package,
                }),
            })
            .collect();
        output::print_json(&serde_json::json!({
            "entries": entries,
            "warnings": response.warnings,
            "hint": response.hint,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    for warning in &response.warnings {
        eprintln!("warning: {warning}");
    }
    if response.entries.is_empty() {
        eprintln!("{}", response.hint);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table([
        "NAME",
        "DISTRO",
        "ARCH",
        "VERSION",
        "SIZE",
        "STATE",
        "DESCRIPTION",
    ]);
    for e in &response.entries {
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
            state(e.pulled).to_owned(),
            e.description.clone(),
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

async fn pull(
    ctx: &Context,
    client: &mut KernelCatClient<TracedChannel>,
    name: String,
    force: bool,
    update: bool,
) -> Result<ExitCode> {
    let kernel = pull_with_progress(ctx, client, name, force, update).await?;
    print_kernel(ctx, kernel)
}

/// Pulls a catalog kernel, drawing its progress (nothing under `--json`).
/// Also used by `vm create`/`vm run` when their kernel is missing.
pub(crate) async fn pull_with_progress(
    ctx: &Context,
    client: &mut KernelCatClient<TracedChannel>,
    name: String,
    force: bool,
    update: bool,
) -> Result<pb::Kernel> {
    let mut stream = client
        .pull_kernel(pb::PullKernelRequest {
            name,
            force,
            update,
        })
        .await?
        .into_inner();
    let mut progress = Progress::new(ctx.json);
    // Ctrl-C drops the stream; the service then cancels the pull and
    // removes what it had downloaded.
    let result = loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = tokio::signal::ctrl_c() => {
                progress.abandon("cancelled");
                bail!("pull cancelled; nothing was stored");
            }
        };
        match message {
            Err(status) => {
                progress.abandon("failed");
                return Err(status.into());
            }
            Ok(None) => {
                progress.abandon("failed");
                bail!("the service ended the pull without a result; see its log")
            }
            Ok(Some(event)) => match event.event {
                Some(pb::pull_kernel_event::Event::Progress(p)) => progress.update(&p),
                Some(pb::pull_kernel_event::Event::Done(kernel)) => break kernel,
                None => {}
            },
        }
    };
    progress.finish();
    Ok(result)
}

fn print_kernel(ctx: &Context, k: pb::Kernel) -> Result<ExitCode> {
    if ctx.json {
        output::print_json(&KernelJson::from(k))?;
        return Ok(ExitCode::SUCCESS);
    }
    let debian = k.debian.clone();
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
        ("created", created(k.created_unix)),
        (
            "used by",
            if k.holders.is_empty() {
                "-".into()
            } else {
                k.holders.join(", ")
            },
        ),
    ];
    if let Some(d) = debian {
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
    for (key, value) in rows {
        println!("{key:9} {value}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(
    ctx: &Context,
    client: &mut KernelCatClient<TracedChannel>,
    name: String,
) -> Result<ExitCode> {
    let kernel = client
        .get_kernel(pb::GetKernelRequest { name })
        .await?
        .into_inner();
    print_kernel(ctx, kernel)
}

struct ImportFiles {
    vmlinux: PathBuf,
    initrd: Option<PathBuf>,
    config: Option<PathBuf>,
}

async fn open(path: &Path) -> Result<(tokio::fs::File, u64)> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file
        .metadata()
        .await
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok((file, meta.len()))
}

async fn import(
    ctx: &Context,
    client: &mut KernelCatClient<TracedChannel>,
    mut header: pb::ImportKernelHeader,
    files: ImportFiles,
) -> Result<ExitCode> {
    // Opened here, with the user's own rights: the service never reads a
    // client-named host path.
    let mut parts = Vec::new();
    let (vmlinux, size) = open(&files.vmlinux).await?;
    if size == 0 {
        bail!("{} is empty", files.vmlinux.display());
    }
    header.vmlinux_size = size;
    parts.push((pb::KernelFile::Vmlinux, vmlinux, size));
    if let Some(path) = &files.initrd {
        let (f, size) = open(path).await?;
        header.initrd_size = size;
        if size > 0 {
            parts.push((pb::KernelFile::Initrd, f, size));
        }
    }
    if let Some(path) = &files.config {
        let (f, size) = open(path).await?;
        header.config_size = size;
        if size > 0 {
            parts.push((pb::KernelFile::Config, f, size));
        }
    }
    let total: u64 = parts.iter().map(|p| p.2).sum();
    let mut progress = Progress::new(ctx.json);
    let sent = |done| Update {
        phase: "importing".into(),
        done,
        total,
        unit: Unit::Bytes,
        ..Update::default()
    };
    progress.update(sent(0));
    // The request stream reports each chunk it hands over; drawn here.
    let (tx, mut chunks) = tokio::sync::mpsc::unbounded_channel();
    let first = pb::ImportKernelRequest {
        part: Some(pb::import_kernel_request::Part::Header(header)),
    };
    let call = client.import_kernel(async_stream_of(first, parts, tx));
    tokio::pin!(call);
    let mut done = 0;
    let kernel = loop {
        tokio::select! {
            r = &mut call => break r,
            Some(n) = chunks.recv() => {
                done += n;
                progress.update(sent(done));
            }
        }
    };
    let kernel = match kernel {
        Ok(k) => k.into_inner(),
        Err(status) => {
            progress.abandon("failed");
            return Err(status.into());
        }
    };
    progress.finish();
    print_kernel(ctx, kernel)
}

/// The request stream of an import: the header, then each file in chunks.
/// A read error ends the stream early; the service then reports the size
/// mismatch and stores nothing.
fn async_stream_of(
    first: pb::ImportKernelRequest,
    parts: Vec<(pb::KernelFile, tokio::fs::File, u64)>,
    sent: tokio::sync::mpsc::UnboundedSender<u64>,
) -> impl futures::Stream<Item = pb::ImportKernelRequest> + Send + 'static {
    let state = (
        Some(first),
        parts.into_iter(),
        None::<(pb::KernelFile, tokio::fs::File)>,
        sent,
    );
    futures::stream::unfold(state, |(first, mut parts, mut current, sent)| async move {
        if let Some(first) = first {
            return Some((first, (None, parts, current, sent)));
        }
        loop {
            if current.is_none() {
                let (kind, file, _) = parts.next()?;
                current = Some((kind, file));
            }
            let (kind, file) = current.as_mut()?;
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => current = None,
                Ok(n) => {
                    buf.truncate(n);
                    let _ = sent.send(n as u64);
                    let message = pb::ImportKernelRequest {
                        part: Some(pb::import_kernel_request::Part::Chunk(
                            pb::ImportKernelChunk {
                                file: *kind as i32,
                                data: buf,
                            },
                        )),
                    };
                    return Some((message, (None, parts, current, sent)));
                }
                Err(e) => {
                    eprintln!("banger: read error during import: {e}");
                    return None;
                }
            }
        }
    })
}
