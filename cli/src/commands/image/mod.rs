//! `banger image …`: pull, import, list, show, rm, prepare, prune. This
//! file holds the arguments and the dispatch; `transfer` the streamed
//! operations (with progress), `render` what they print. Registry
//! credentials come from `crate::registry_auth`.

mod render;
mod transfer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use banger_proto::config::Service;
use banger_proto::imagestore::v1 as pb;
use banger_proto::imagestore::v1::image_store_client::ImageStoreClient;
use banger_proto::vmm::v1 as vmm;
use banger_proto::vmm::v1::vmm_client::VmmClient;

use crate::context::Context;
use crate::{output, registry_auth};
use render::{ImageView, PruneView};

pub(crate) use transfer::pull_with_progress;

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
                if_missing: false,
                credentials,
            };
            let image = pull_with_progress(ctx, &mut client, request).await?;
            render::print_built(ctx, &image, &format!("built from {}", image.reference))?;
        }
        ImageCommand::List => {
            let images = client
                .list_images(pb::ListImagesRequest {})
                .await?
                .into_inner()
                .images;
            let prepared = preparations(ctx).await;
            let images: Vec<ImageView> = images
                .iter()
                .map(|i| ImageView::from(i).with_preparation(&prepared))
                .collect();
            render::print_images(ctx, &images)?;
        }
        ImageCommand::Show { name } => {
            let image = client
                .get_image(pb::GetImageRequest { name })
                .await?
                .into_inner();
            let prepared = preparations(ctx).await;
            render::print_image(ctx, &ImageView::from(&image).with_preparation(&prepared))?;
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
            if ctx.json {
                output::print_json(&output::Deleted { deleted: name })?;
            } else {
                println!("removed {name}");
            }
        }
        ImageCommand::Prepare {
            name,
            kernel,
            force,
        } => {
            let request = vmm::PrepareImageRequest {
                image: name.clone(),
                kernel: kernel.unwrap_or_default(),
                force,
            };
            let prepared = transfer::prepare(ctx, request).await?;
            render::print_prepared(ctx, &name, &prepared)?;
        }
        ImageCommand::Import {
            name,
            file,
            kernel_ref,
            platform,
            force,
        } => {
            let header = pb::ImportImageHeader {
                name,
                kernel_ref: kernel_ref.unwrap_or_default(),
                platform: platform.unwrap_or_default(),
                force,
                ..Default::default()
            };
            let image = transfer::import(ctx, &mut client, header, &file).await?;
            render::print_built(ctx, &image, &format!("imported from {}", file.display()))?;
        }
        ImageCommand::Prune => {
            let r = client
                .prune_blobs(pb::PruneBlobsRequest {})
                .await?
                .into_inner();
            render::print_prune(
                ctx,
                &PruneView {
                    blobs_removed: r.blobs_removed,
                    bytes_freed: r.bytes_freed,
                },
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
