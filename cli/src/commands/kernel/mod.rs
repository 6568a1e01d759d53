//! `banger kernel …`: list, pull, import, show and remove guest kernels
//! through `banger-kernelcat`. This file holds the arguments and the
//! dispatch; `transfer` the streamed pull and import, `render` what they
//! print.

mod render;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use banger_proto::config::Service;
use banger_proto::kernelcat::v1 as pb;
use banger_proto::kernelcat::v1::kernel_cat_client::KernelCatClient;

use crate::context::Context;
use crate::output;
use render::{CatalogView, KernelView};

pub(crate) use transfer::pull_with_progress;

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
        KernelCommand::List { available: false } => {
            let kernels = client
                .list_kernels(pb::ListKernelsRequest {})
                .await?
                .into_inner()
                .kernels;
            let views: Vec<KernelView> = kernels.into_iter().map(Into::into).collect();
            render::print_kernels(ctx, &views)?;
        }
        KernelCommand::List { available: true } => {
            let response = client
                .list_catalog(pb::ListCatalogRequest {})
                .await?
                .into_inner();
            render::print_catalog(ctx, &CatalogView::from(response))?;
        }
        KernelCommand::Pull {
            name,
            force,
            update,
        } => {
            let kernel = pull_with_progress(ctx, &mut client, name, force, update).await?;
            render::print_kernel(ctx, kernel)?;
        }
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
            let files = transfer::ImportFiles {
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
            let kernel = transfer::import(ctx, &mut client, header, files).await?;
            render::print_kernel(ctx, kernel)?;
        }
        KernelCommand::Show { name } => {
            let kernel = client
                .get_kernel(pb::GetKernelRequest { name })
                .await?
                .into_inner();
            render::print_kernel(ctx, kernel)?;
        }
        KernelCommand::Rm { name } => {
            client
                .delete_kernel(pb::DeleteKernelRequest { name: name.clone() })
                .await?;
            if ctx.json {
                output::print_json(&output::Deleted { deleted: name })?;
            } else {
                eprintln!("removed kernel {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
