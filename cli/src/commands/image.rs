//! `banger image …`: pull (with per-layer progress bars), list, show, rm,
//! prune. Registry credentials come from `crate::registry_auth`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use banger_proto::config::Service;
use banger_proto::imagestore::v1 as pb;
use banger_proto::imagestore::v1::image_store_client::ImageStoreClient;
use banger_proto::vmm::v1 as vmm;
use banger_proto::vmm::v1::vmm_client::VmmClient;
use serde::Serialize;

use crate::context::Context;
use crate::progress::Progress;
use crate::{output, registry_auth};

/// `banger image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Pull an OCI image and build its ext4 root filesystem.
    Pull {
        /// Docker reference, e.g. `debian:bookworm` or `registry:5000/repo@sha256:…`.
        reference: String,
        /// Image name (default: last path component + tag, e.g. `debian-bookworm`).
        #[arg(long)]
        name: Option<String>,
        /// Kernel to boot the image with by default, e.g. `generic-6.12`.
        #[arg(long)]
        kernel_ref: Option<String>,
        /// `os/arch[/variant]` (default `linux/amd64`).
        #[arg(long)]
        platform: Option<String>,
        /// Rebuild even if the same digest is already built.
        #[arg(long)]
        force: bool,
    },
    /// List built images.
    #[command(alias = "ls")]
    List,
    /// Show one image.
    Show { name: String },
    /// Remove an image (refused while a VM uses it).
    Rm { name: String },
    /// Delete cached blobs no image needs.
    Prune,
    /// Prepare an image that has no init or SSH server: a one-off VM installs
    /// them with the image's package manager, once per image digest, and every
    /// later VM boots straight into systemd. `vm create` does this on its own
    /// the first time; this is the explicit form.
    Prepare {
        name: String,
        /// Kernel to boot the preparation with (default: the image's, then the configured one).
        #[arg(long)]
        kernel: Option<String>,
        /// Prepare again even if the image is prepared.
        #[arg(long)]
        force: bool,
    },
    /// Import a `docker save` or OCI archive (streamed to the image store).
    Import {
        /// Image name.
        name: String,
        /// The archive (`docker save -o FILE.tar`, or an OCI layout as tar).
        file: PathBuf,
        /// Kernel to boot the image with by default.
        #[arg(long)]
        kernel_ref: Option<String>,
        /// `os/arch[/variant]` to pick from a multi-platform archive.
        #[arg(long)]
        platform: Option<String>,
        /// Rebuild even if the same image is already built.
        #[arg(long)]
        force: bool,
    },
}

/// An image as `--json` prints it.
#[derive(Debug, Serialize)]
struct ImageJson {
    name: String,
    reference: String,
    digest: String,
    platform: String,
    size_bytes: u64,
    content_bytes: u64,
    created_unix: i64,
    default_kernel: String,
    direct_boot: bool,
    guest: GuestJson,
    holders: Vec<String>,
    layers: Vec<String>,
    /// `https://host`, `http://host` (plain HTTP) or `import`.
    fetched_from: String,
    plain_http: bool,
    /// Whether VMs of the image need a prepared filesystem.
    needs_preparation: bool,
    /// vmm's preparation of this digest, if any (done or failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    preparation: Option<PreparedJson>,
}

/// vmm's preparation of an image digest, as `--json` prints it.
#[derive(Debug, Serialize, Default, Clone)]
struct PreparedJson {
    prepared: bool,
    packages: Vec<String>,
    finished_unix: i64,
    seconds: f64,
    has_systemd: bool,
    has_ssh_server: bool,
    size_bytes: u64,
    kernel: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    failed_reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    failed_log: String,
}

impl From<&vmm::PreparedImage> for PreparedJson {
    fn from(p: &vmm::PreparedImage) -> Self {
        PreparedJson {
            prepared: p.prepared,
            packages: p.packages.clone(),
            finished_unix: p.finished_unix,
            seconds: p.seconds,
            has_systemd: p.has_systemd,
            has_ssh_server: p.has_ssh_server,
            size_bytes: p.size_bytes,
            kernel: p.kernel.clone(),
            failed_reason: p.failed_reason.clone(),
            failed_log: p.failed_log.clone(),
        }
    }
}

impl ImageJson {
    fn with_preparation(mut self, prepared: &HashMap<String, vmm::PreparedImage>) -> Self {
        self.preparation = prepared.get(&self.digest).map(PreparedJson::from);
        self
    }

    /// `yes`, `no` (needs it, not done yet), `failed`, or `-` (needs none).
    fn prepared_word(&self) -> &'static str {
        match &self.preparation {
            Some(p) if p.prepared => "yes",
            Some(_) if self.needs_preparation => "failed",
            _ if self.needs_preparation => "no",
            _ => "-",
        }
    }
}

/// vmm's preparations by digest; empty (with a note) when vmm cannot be
/// reached, so images stay listable without it.
async fn preparations(ctx: &Context) -> HashMap<String, vmm::PreparedImage> {
    let list = async {
        let mut client = VmmClient::new(ctx.channel(Service::Vmm).await?);
        anyhow::Ok(
            client
                .list_prepared_images(vmm::ListPreparedImagesRequest {})
                .await?
                .into_inner()
                .images,
        )
    };
    match list.await {
        Ok(images) => images.into_iter().map(|p| (p.digest.clone(), p)).collect(),
        Err(e) => {
            if !ctx.json {
                eprintln!("banger: cannot ask vmm which images are prepared ({e:#})");
            }
            HashMap::new()
        }
    }
}

#[derive(Debug, Serialize, Default)]
struct GuestJson {
    has_systemd: bool,
    has_ssh_server: bool,
    os_id: String,
    os_id_like: Vec<String>,
    os_version_id: String,
    has_agent: bool,
}

impl From<&pb::Image> for ImageJson {
    fn from(i: &pb::Image) -> Self {
        let g = i.guest.clone().unwrap_or_default();
        ImageJson {
            name: i.name.clone(),
            reference: i.reference.clone(),
            digest: i.digest.clone(),
            platform: i.platform.clone(),
            size_bytes: i.size_bytes,
            content_bytes: i.content_bytes,
            created_unix: i.created_unix,
            default_kernel: i.default_kernel.clone(),
            direct_boot: i.direct_boot,
            guest: GuestJson {
                has_systemd: g.has_systemd,
                has_ssh_server: g.has_ssh_server,
                os_id: g.os_id.clone(),
                os_id_like: g.os_id_like.clone(),
                os_version_id: g.os_version_id,
                has_agent: g.has_agent,
            },
            holders: i.holders.clone(),
            layers: i.layers.clone(),
            fetched_from: i.fetched_from.clone(),
            plain_http: i.plain_http,
            needs_preparation: banger_proto::guest::needs_preparation(
                i.direct_boot,
                g.has_agent,
                &g.os_id,
                &g.os_id_like,
                g.has_systemd,
                g.has_ssh_server,
            ),
            preparation: None,
        }
    }
}

pub async fn run(ctx: &Context, command: ImageCommand) -> Result<ExitCode> {
    let mut client = ImageStoreClient::new(ctx.channel(Service::ImageStore).await?);
    match command {
        ImageCommand::Pull {
            reference,
            name,
            kernel_ref,
            platform,
            force,
        } => {
            let credentials = registry_auth::credentials_for(&reference);
            let request = pb::PullImageRequest {
                reference,
                name: name.unwrap_or_default(),
                kernel_ref: kernel_ref.unwrap_or_default(),
                platform: platform.unwrap_or_default(),
                force,
                credentials,
            };
            let image = pull(ctx, &mut client, request).await?;
            if ctx.json {
                output::print_json(&ImageJson::from(&image))?;
            } else {
                println!(
                    "{} ({}, {}) built from {}",
                    image.name,
                    output::short_digest(&image.digest),
                    output::human_bytes(image.size_bytes),
                    image.reference
                );
            }
        }
        ImageCommand::List => {
            let images = client
                .list_images(pb::ListImagesRequest {})
                .await?
                .into_inner()
                .images;
            let prepared = preparations(ctx).await;
            let images: Vec<ImageJson> = images
                .iter()
                .map(|i| ImageJson::from(i).with_preparation(&prepared))
                .collect();
            if ctx.json {
                output::print_json(&images)?;
            } else {
                let mut t = output::table([
                    "NAME",
                    "REFERENCE",
                    "DIGEST",
                    "SIZE",
                    "KERNEL",
                    "PREPARED",
                    "CREATED",
                ]);
                for i in &images {
                    t.add_row(vec![
                        i.name.clone(),
                        i.reference.clone(),
                        output::short_digest(&i.digest),
                        output::human_bytes(i.size_bytes),
                        i.default_kernel.clone(),
                        i.prepared_word().to_owned(),
                        created(i.created_unix),
                    ]);
                }
                println!("{t}");
            }
        }
        ImageCommand::Show { name } => {
            let image = client
                .get_image(pb::GetImageRequest { name })
                .await?
                .into_inner();
            let prepared = preparations(ctx).await;
            let json = ImageJson::from(&image).with_preparation(&prepared);
            if ctx.json {
                output::print_json(&json)?;
            } else {
                let g = &json.guest;
                println!("name:           {}", json.name);
                println!("reference:      {}", json.reference);
                println!("digest:         {}", json.digest);
                println!("platform:       {}", json.platform);
                println!("size:           {}", output::human_bytes(json.size_bytes));
                println!(
                    "content:        {}",
                    output::human_bytes(json.content_bytes)
                );
                println!("created:        {}", created(json.created_unix));
                if json.plain_http {
                    println!(
                        "fetched from:   {} (plain HTTP, as configured: no TLS; the content is still checked against its digests)",
                        json.fetched_from
                    );
                } else if !json.fetched_from.is_empty() {
                    println!("fetched from:   {}", json.fetched_from);
                }
                println!("default kernel: {}", json.default_kernel);
                println!("direct boot:    {}", json.direct_boot);
                println!(
                    "guest:          {} {} (like: {}), systemd: {}, sshd: {}, agent: {}",
                    g.os_id,
                    g.os_version_id,
                    g.os_id_like.join(" "),
                    g.has_systemd,
                    g.has_ssh_server,
                    g.has_agent
                );
                println!("prepared:       {}", prepared_line(&json));
                println!("holders:        {}", json.holders.join(", "));
                println!("layers:         {}", json.layers.len());
            }
        }
        ImageCommand::Rm { name } => {
            let digest = client
                .get_image(pb::GetImageRequest { name: name.clone() })
                .await?
                .into_inner()
                .digest;
            client
                .delete_image(pb::DeleteImageRequest { name: name.clone() })
                .await?;
            // The prepared filesystem goes with the last image of its
            // digest (another name may share it).
            let others = client
                .list_images(pb::ListImagesRequest {})
                .await?
                .into_inner()
                .images
                .iter()
                .any(|i| i.digest == digest);
            if !others {
                let dropped = async {
                    let mut vmm = VmmClient::new(ctx.channel(Service::Vmm).await?);
                    anyhow::Ok(
                        vmm.drop_prepared_image(vmm::DropPreparedImageRequest {
                            digest: digest.clone(),
                        })
                        .await?
                        .into_inner()
                        .dropped,
                    )
                };
                match dropped.await {
                    Ok(true) if !ctx.json => println!("removed the prepared filesystem of {name}"),
                    Ok(_) => {}
                    Err(e) => eprintln!(
                        "banger: could not drop the prepared filesystem of {name} ({e:#}); `banger image rm` again once vmm runs"
                    ),
                }
            }
            if !ctx.json {
                println!("removed {name}");
            }
        }
        ImageCommand::Prepare {
            name,
            kernel,
            force,
        } => {
            let mut vmm = VmmClient::new(ctx.channel(Service::Vmm).await?);
            let mut stream = vmm
                .prepare_image(vmm::PrepareImageRequest {
                    image: name.clone(),
                    kernel: kernel.unwrap_or_default(),
                    force,
                })
                .await?
                .into_inner();
            let mut progress = Progress::new(ctx.json);
            let mut done = None;
            let result = async {
                while let Some(ev) = stream.message().await? {
                    match ev.event {
                        Some(vmm::prepare_image_event::Event::Progress(p)) => progress.update(&p),
                        Some(vmm::prepare_image_event::Event::Done(p)) => done = Some(p),
                        None => {}
                    }
                }
                anyhow::Ok(())
            }
            .await;
            match &result {
                Ok(()) => progress.finish(),
                Err(_) => progress.abandon("failed"),
            }
            result?;
            let p = done.context("vmm ended the preparation without a result")?;
            if ctx.json {
                output::print_json(&PreparedJson::from(&p))?;
            } else {
                println!(
                    "{name} prepared in {:.0}s: installed {}; its VMs boot with{} systemd and with{} sshd",
                    p.seconds,
                    if p.packages.is_empty() {
                        "nothing".to_owned()
                    } else {
                        p.packages.join(", ")
                    },
                    if p.has_systemd { "" } else { "out" },
                    if p.has_ssh_server { "" } else { "out" },
                );
            }
        }
        ImageCommand::Import {
            name,
            file,
            kernel_ref,
            platform,
            force,
        } => {
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            let header = pb::ImportImageRequest {
                part: Some(pb::import_image_request::Part::Header(
                    pb::ImportImageHeader {
                        name,
                        file_name: file
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        kernel_ref: kernel_ref.unwrap_or_default(),
                        platform: platform.unwrap_or_default(),
                        force,
                        size_bytes: size,
                    },
                )),
            };
            // Read with the user's rights and stream in 1 MiB chunks.
            let chunks = futures::stream::unfold(f, |mut f| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 1 << 20];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((
                            pb::ImportImageRequest {
                                part: Some(pb::import_image_request::Part::Chunk(buf)),
                            },
                            f,
                        ))
                    }
                    Err(e) => {
                        eprintln!("banger: reading the archive failed: {e}");
                        None
                    }
                }
            });
            let stream = futures::StreamExt::chain(futures::stream::iter([header]), chunks);
            let events = client.import_image(stream).await?.into_inner();
            let image = follow(ctx, events).await?;
            if ctx.json {
                output::print_json(&ImageJson::from(&image))?;
            } else {
                println!(
                    "{} ({}, {}) imported from {}",
                    image.name,
                    output::short_digest(&image.digest),
                    output::human_bytes(image.size_bytes),
                    file.display()
                );
            }
        }
        ImageCommand::Prune => {
            let r = client
                .prune_blobs(pb::PruneBlobsRequest {})
                .await?
                .into_inner();
            if ctx.json {
                output::print_json(&serde_json::json!({
                    "blobs_removed": r.blobs_removed, "bytes_freed": r.bytes_freed
                }))?;
            } else {
                println!(
                    "removed {} blobs, freed {}",
                    r.blobs_removed,
                    output::human_bytes(r.bytes_freed)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a pull, drawing one progress bar per layer (none under `--json`).
async fn pull(
    ctx: &Context,
    client: &mut ImageStoreClient<banger_proto::rpc::TracedChannel>,
    request: pb::PullImageRequest,
) -> Result<pb::Image> {
    let stream = client.pull_image(request).await?.into_inner();
    follow(ctx, stream).await
}

/// Draws the progress events of a pull or import until its image arrives.
async fn follow(
    ctx: &Context,
    mut stream: tonic::Streaming<pb::PullImageEvent>,
) -> Result<pb::Image> {
    let mut progress = Progress::new(ctx.json);
    let result = async {
        while let Some(event) = stream.message().await? {
            match event.event {
                Some(pb::pull_image_event::Event::Progress(p)) => progress.update(&p),
                Some(pb::pull_image_event::Event::Done(image)) => return Ok(image),
                None => {}
            }
        }
        anyhow::bail!("the image store ended the pull without a result; see its log")
    }
    .await;
    match &result {
        Ok(_) => progress.finish(),
        Err(_) => progress.abandon("failed"),
    }
    result
}

/// `image show`'s line about the preparation.
fn prepared_line(json: &ImageJson) -> String {
    match &json.preparation {
        Some(p) if p.prepared => format!(
            "yes, {} ago in {:.0}s: installed {}; VMs get systemd: {}, sshd: {}",
            output::age(p.finished_unix),
            p.seconds,
            p.packages.join(", "),
            p.has_systemd,
            p.has_ssh_server
        ),
        Some(p) => format!(
            "no: the last preparation failed {} ago: {}\n                console log: {}\n                `banger image prepare {} --force` tries again",
            output::age(p.finished_unix),
            p.failed_reason.lines().next().unwrap_or_default(),
            p.failed_log,
            json.name
        ),
        None if json.needs_preparation => format!(
            "no: it lacks an init or sshd; the first `vm create` prepares it (or `banger image prepare {}`)",
            json.name
        ),
        None => "not needed".into(),
    }
}

fn created(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
