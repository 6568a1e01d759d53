//! `banger vm run`: pull the image if missing, create a VM (its kernel
//! pulled if missing), SSH into it, and with `--rm` delete it after.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use banger_proto::config::Service;
use banger_proto::imagestore::v1 as img;
use banger_proto::imagestore::v1::image_store_client::ImageStoreClient;
use banger_proto::vmm::v1 as pb;

use super::{CreateArgs, RunArgs, create::create, ssh_session, vmm};
use crate::context::Context;
use crate::ssh;

/// The name imagestore gives a reference by default: last path component
/// and tag (`debian:bookworm` → `debian-bookworm`).
fn image_name_for(reference: &str) -> String {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    let (repo, tag) = last.split_once(':').unwrap_or((last, "latest"));
    let raw = format!("{repo}-{tag}").to_ascii_lowercase();
    let mut name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name = name.trim_matches('-').to_owned();
    name.truncate(63);
    name
}

pub(super) async fn run(ctx: &Context, args: RunArgs) -> Result<ExitCode> {
    let image_name = image_name_for(&args.reference);
    let mut images = ImageStoreClient::new(ctx.channel(Service::ImageStore).await?);
    let image = match images
        .get_image(img::GetImageRequest {
            name: image_name.clone(),
        })
        .await
    {
        Ok(i) => i.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => {
            if !ctx.json {
                eprintln!("pulling {} …", args.reference);
            }
            let mut stream = images
                .pull_image(img::PullImageRequest {
                    reference: args.reference.clone(),
                    name: image_name.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut done = None;
            while let Some(ev) = stream.message().await? {
                if let Some(img::pull_image_event::Event::Done(i)) = ev.event {
                    done = Some(i);
                }
            }
            done.context("the image pull ended without a result")?
        }
        Err(s) => return Err(s.into()),
    };
    let name = args.name.unwrap_or_else(|| {
        let suffix: String = format!("{:04x}", std::process::id() & 0xffff);
        let mut base = image.name.clone();
        base.truncate(57);
        format!("{}-{suffix}", base.trim_end_matches('-'))
    });
    let vm = create(
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
    // The agent may answer before sshd is up; wait for port 22 too.
    if !ssh::known_ready(&vm) {
        ssh::wait_tcp(&vm.ip, 22, Duration::from_secs(120)).await;
    }
    let code = ssh_session(&vm, &args.command);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert_eq!(image_name_for("debian:bookworm"), "debian-bookworm");
        assert_eq!(
            image_name_for("docker.io/library/debian:bookworm"),
            "debian-bookworm"
        );
        assert_eq!(image_name_for("alpine"), "alpine-latest");
        assert_eq!(
            image_name_for("127.0.0.1:5000/x/ubuntu:24.04@sha256:ab"),
            "ubuntu-24-04"
        );
    }
}
