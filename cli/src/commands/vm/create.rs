//! `banger vm create`: make sure the VM's kernel is there (pulling it when
//! missing), then create through the vmm, drawing its phases.

use anyhow::{Context as _, Result};
use banger_proto::config::Service;
use banger_proto::imagestore::v1 as img;
use banger_proto::imagestore::v1::image_store_client::ImageStoreClient;
use banger_proto::kernelcat::v1 as kc;
use banger_proto::kernelcat::v1::kernel_cat_client::KernelCatClient;
use banger_proto::rpc::progress::{LongEvent, Step};
use banger_proto::vmm::v1 as pb;

use super::{CreateArgs, HypervisorArg, parse_size, vmm};
use crate::context::Context;
use crate::progress::Progress;
use crate::ssh;

/// Creates the VM; returns it and the phases its create went through.
pub(super) async fn create(
    ctx: &Context,
    args: &CreateArgs,
) -> Result<(pb::Vm, Vec<crate::progress::Timing>)> {
    let key = ssh::ensure_ssh_key()?;
    if let Some(kernel) = chosen_kernel(ctx, args).await? {
        ensure_kernel(ctx, &kernel).await?;
    }
    let request = pb::CreateVmRequest {
        name: args.name.clone(),
        image: args.image.clone(),
        kernel: args.kernel.clone().unwrap_or_default(),
        vcpus: args.vcpus,
        memory_mib: args.memory,
        disk_bytes: args
            .disk
            .as_deref()
            .map(parse_size)
            .transpose()?
            .unwrap_or(0),
        nat: args.nat,
        no_start: args.no_start,
        hypervisor: HypervisorArg::or_configured(args.hypervisor) as i32,
        ssh_authorized_keys: vec![key.public],
        ready_timeout_seconds: args.timeout,
    };
    let mut stream = vmm(ctx).await?.create_vm(request).await?.into_inner();
    let mut progress = Progress::new(ctx.json);
    let mut done = None;
    let result = async {
        while let Some(ev) = stream.message().await? {
            match ev.into_step() {
                Some(Step::Update(p)) => progress.update(&p),
                Some(Step::Done(vm)) => done = Some(vm),
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
    let vm = done.context("the vmm ended the create without a result")?;
    ssh::record_host_key(&vm)?;
    Ok((vm, progress.timings().to_vec()))
}

/// The kernel vmm will boot for this create, chosen as vmm chooses it:
/// `--kernel`, else the image's default, else `[vmm] default_kernel`.
/// `None` when the image does not exist (vmm then says so).
async fn chosen_kernel(ctx: &Context, args: &CreateArgs) -> Result<Option<String>> {
    if let Some(k) = &args.kernel {
        return Ok(Some(k.clone()));
    }
    let image = ImageStoreClient::new(ctx.channel(Service::ImageStore).await?)
        .get_image(img::GetImageRequest {
            name: args.image.clone(),
        })
        .await;
    match image {
        Ok(i) if !i.get_ref().default_kernel.is_empty() => Ok(Some(i.into_inner().default_kernel)),
        Ok(_) => Ok(Some(config_default_kernel(ctx)?)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

/// `[vmm] default_kernel` of the config the CLI loaded (the vmm reads the
/// same file).
fn config_default_kernel(ctx: &Context) -> Result<String> {
    #[derive(serde::Deserialize)]
    #[serde(default)]
    struct VmmKernel {
        default_kernel: String,
    }
    impl Default for VmmKernel {
        fn default() -> Self {
            VmmKernel {
                default_kernel: banger_proto::config::DEFAULT_KERNEL.into(),
            }
        }
    }
    Ok(ctx.config.section::<VmmKernel>("vmm")?.default_kernel)
}

/// Pulls `name` (with progress) when kernelcat does not have it, so a
/// fresh host's first `vm create` works without a `kernel pull` first.
async fn ensure_kernel(ctx: &Context, name: &str) -> Result<()> {
    let mut kernels = KernelCatClient::new(ctx.channel(Service::KernelCat).await?);
    match kernels
        .get_kernel(kc::GetKernelRequest { name: name.into() })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => {
            if !ctx.json {
                eprintln!("kernel {name} is not stored yet: pulling it");
            }
            crate::commands::kernel::pull_with_progress(
                ctx,
                &mut kernels,
                name.into(),
                false,
                false,
            )
            .await
            .with_context(|| format!("cannot pull kernel {name} for this VM"))?;
            Ok(())
        }
        Err(s) => Err(s.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_kernel_comes_from_vmm_config_else_debian() {
        let ctx = |toml: &str| Context {
            config: banger_proto::config::Config::parse(toml, "t.toml").unwrap(),
            json: true,
        };
        assert_eq!(config_default_kernel(&ctx("")).unwrap(), "debian-6.12");
        assert_eq!(
            config_default_kernel(&ctx("[vmm]\nhypervisor = \"qemu\"\n")).unwrap(),
            "debian-6.12"
        );
        assert_eq!(
            config_default_kernel(&ctx("[vmm]\ndefault_kernel = \"generic-6.12\"\n")).unwrap(),
            "generic-6.12"
        );
        assert!(config_default_kernel(&ctx("[vmm]\ndefault_kernel = 3\n")).is_err());
    }
}
