//! `banger vm run`: pull the image if missing (the image store names it),
//! create a VM (its kernel pulled if missing), SSH into it, and with `--rm`
//! delete it after.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use banger_proto::config::Service;
use banger_proto::imagestore::v1 as img;
use banger_proto::imagestore::v1::image_store_client::ImageStoreClient;
use banger_proto::vmm::v1 as pb;

use super::{CreateArgs, RunArgs, create::create, ssh_session, vmm};
use crate::commands::image::pull_with_progress;
use crate::context::Context;
use crate::{registry_auth, ssh};

pub(super) async fn run(ctx: &Context, args: RunArgs) -> Result<ExitCode> {
    // The image store names the image (one rule, its own) and pulls it
    // only when no image of that name exists yet.
    let mut images = ImageStoreClient::new(ctx.channel(Service::ImageStore).await?);
    let image = pull_with_progress(
        ctx,
        &mut images,
        img::PullImageRequest {
            reference: args.reference.clone(),
            if_missing: true,
            credentials: registry_auth::credentials_for(&args.reference),
            ..Default::default()
        },
    )
    .await?;
    let name = args.name.unwrap_or_else(|| {
        let suffix: String = format!("{:04x}", std::process::id() & 0xffff);
        let mut base = image.name.clone();
        base.truncate(57);
        format!("{}-{suffix}", base.trim_end_matches('-'))
    });
    let (vm, _) = create(
        ctx,
        &CreateArgs {
            name: name.clone(),
            image: image.name.clone(),
            kernel: None,
            vcpus: 0,
            memory: 0,
            disk: None,
            nat: args.nat,
            hypervisor: args.hypervisor,
            no_start: false,
            timings: false,
            timeout: 0,
        },
    )
    .await?;
    let code = ssh_session(&vm, &args.command, Duration::from_secs(120)).await;
    if args.rm {
        vmm(ctx)
            .await?
            .delete_vm(pb::DeleteVmRequest {
                name: name.clone(),
                force: true,
            })
            .await?;
        ssh::close_control_master(&vm);
        ssh::forget_host_key(&name)?;
    }
    code
}
