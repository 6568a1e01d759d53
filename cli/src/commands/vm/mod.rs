//! `banger vm …`: VM lifecycle through the vmm, plus the user-side flows
//! that span services (`vm run` pulls the image and kernel first) and the
//! SSH client with banger's own key (`crate::ssh`). This file holds the
//! arguments and the dispatch; `create`, `exec`, `run` the longer flows,
//! `render` what they print.

mod create;
mod exec;
mod render;
mod run;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use banger_proto::config::Service;
use banger_proto::vmm::v1 as pb;
use banger_proto::vmm::v1::vmm_client::VmmClient;

use crate::context::Context;
use crate::{output, ssh};

pub(crate) use render::hypervisor_name;

/// `banger vm` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// Create (and start) a VM from a pulled image.
    Create(CreateArgs),
    /// Start a stopped VM and wait until it is ready.
    Start {
        name: String,
        /// Seconds to wait for readiness (0 = configured default).
        #[arg(long, default_value_t = 0)]
        timeout: u32,
    },
    /// Stop a VM: clean shutdown, killed after the timeout.
    Stop {
        name: String,
        /// Kill it at once.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for a clean shutdown (0 = configured default).
        #[arg(long, default_value_t = 0)]
        timeout: u32,
    },
    /// Stop then start a VM.
    Restart { name: String },
    /// Delete a VM: its process, disk, network lease and record.
    #[command(alias = "delete")]
    Rm {
        name: String,
        /// Kill it first if it runs.
        #[arg(long)]
        force: bool,
    },
    /// List VMs.
    #[command(alias = "ls")]
    List,
    /// Show one VM.
    Show { name: String },
    /// Print a VM's serial console.
    Logs {
        name: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
    },
    /// Run a command in a VM through its agent; exits with its exit code.
    Exec {
        name: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// SSH into a VM as root with banger's key.
    Ssh {
        name: String,
        /// A command to run instead of a shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Pull an image (and its kernel) if missing, create a VM, SSH into it.
    Run(RunArgs),
}

/// `banger vm create` flags.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// VM name (a DNS label).
    #[arg(long)]
    pub name: String,
    /// Image name, as in `banger image list`.
    #[arg(long, default_value = "debian-bookworm")]
    pub image: String,
    /// Kernel name; default: the image's, else the configured one.
    #[arg(long)]
    pub kernel: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub vcpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 0)]
    pub memory: u32,
    /// Disk size, e.g. `4G`, `512M` (default: image size plus headroom).
    #[arg(long)]
    pub disk: Option<String>,
    /// Masquerade the VM's traffic out of the host's uplinks.
    #[arg(long)]
    pub nat: bool,
    /// Hypervisor (default: the one `[vmm] hypervisor` selects).
    #[arg(long, value_enum)]
    pub hypervisor: Option<HypervisorArg>,
    /// Create without starting.
    #[arg(long)]
    pub no_start: bool,
    /// Print how long each phase took.
    #[arg(long)]
    pub timings: bool,
    /// Seconds to wait for readiness (0 = configured default).
    #[arg(long, default_value_t = 0)]
    pub timeout: u32,
}

/// `--hypervisor`: the backends `vmm.v1.Hypervisor` names; leaving the
/// flag out sends `HYPERVISOR_UNSPECIFIED` (the vmm's configured choice,
/// which may be `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HypervisorArg {
    Firecracker,
    Qemu,
}

impl HypervisorArg {
    /// The request's value for an optional `--hypervisor`.
    pub fn or_configured(h: Option<HypervisorArg>) -> pb::Hypervisor {
        match h {
            None => pb::Hypervisor::Unspecified,
            Some(HypervisorArg::Firecracker) => pb::Hypervisor::Firecracker,
            Some(HypervisorArg::Qemu) => pb::Hypervisor::Qemu,
        }
    }
}

/// `banger vm run` flags.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Image reference, e.g. `debian:bookworm`.
    pub reference: String,
    /// VM name (default: the image name plus a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub nat: bool,
    /// Delete the VM when the SSH session ends.
    #[arg(long)]
    pub rm: bool,
    /// Hypervisor (default: the one `[vmm] hypervisor` selects).
    #[arg(long, value_enum)]
    pub hypervisor: Option<HypervisorArg>,
    /// A command to run instead of a shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

type Vmm = VmmClient<banger_proto::rpc::TracedChannel>;

async fn vmm(ctx: &Context) -> Result<Vmm> {
    Ok(VmmClient::new(ctx.channel(Service::Vmm).await?))
}

pub async fn run(ctx: &Context, command: VmCommand) -> Result<ExitCode> {
    match command {
        VmCommand::Create(args) => {
            let (vm, timings) = create::create(ctx, &args).await?;
            render::print_created(ctx, &vm, args.timings.then_some(&timings[..]))?;
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Start { name, timeout } => {
            let vm = vmm(ctx)
                .await?
                .start_vm(pb::StartVmRequest {
                    name,
                    ready_timeout_seconds: timeout,
                })
                .await?
                .into_inner();
            render::print_vm(ctx, &vm)?;
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Stop {
            name,
            force,
            timeout,
        } => {
            let vm = vmm(ctx)
                .await?
                .stop_vm(pb::StopVmRequest {
                    name,
                    force,
                    timeout_seconds: timeout,
                })
                .await?
                .into_inner();
            render::print_vm(ctx, &vm)?;
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Restart { name } => {
            let vm = vmm(ctx)
                .await?
                .restart_vm(pb::RestartVmRequest {
                    name,
                    ..Default::default()
                })
                .await?
                .into_inner();
            render::print_vm(ctx, &vm)?;
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Rm { name, force } => {
            let mut client = vmm(ctx).await?;
            // Its SSH master (if `vm ssh` left one) goes with it.
            let known = client
                .get_vm(pb::GetVmRequest { name: name.clone() })
                .await
                .ok()
                .map(|r| r.into_inner());
            client
                .delete_vm(pb::DeleteVmRequest {
                    name: name.clone(),
                    force,
                })
                .await?;
            if let Some(vm) = &known {
                ssh::close_control_master(vm);
            }
            ssh::forget_host_key(&name)?;
            if ctx.json {
                output::print_json(&output::Deleted { deleted: name })?;
            } else {
                println!("deleted {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::List => {
            let vms = vmm(ctx)
                .await?
                .list_vms(pb::ListVmsRequest {})
                .await?
                .into_inner()
                .vms;
            render::print_vms(ctx, &vms)?;
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Show { name } => {
            let vm = vmm(ctx)
                .await?
                .get_vm(pb::GetVmRequest { name })
                .await?
                .into_inner();
            render::print_vm(ctx, &vm)?;
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Logs { name, follow } => {
            let mut stream = vmm(ctx)
                .await?
                .console_log(pb::ConsoleLogRequest {
                    name,
                    follow,
                    tail_bytes: 0,
                })
                .await?
                .into_inner();
            let mut out = std::io::stdout();
            while let Some(chunk) = stream.message().await? {
                out.write_all(&chunk.data)?;
                out.flush()?;
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Exec { name, command } => exec::exec(ctx, name, command).await,
        VmCommand::Ssh { name, command } => {
            let vm = vmm(ctx)
                .await?
                .get_vm(pb::GetVmRequest { name })
                .await?
                .into_inner();
            ssh_session(&vm, &command, Duration::from_secs(60)).await
        }
        VmCommand::Run(args) => run::run(ctx, args).await,
    }
}

/// `4G`, `512M`, `1024K`, or plain bytes.
fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let mult = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => bail!("bad size {s:?}: use e.g. 4G or 512M"),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad size {s:?}: use e.g. 4G or 512M"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} is too large: it does not fit in 64 bits of bytes"))
}

/// SSH into a running VM (see [`ssh::session`]), waiting up to
/// `sshd_wait` for its port 22 unless the vmm saw sshd answer.
async fn ssh_session(vm: &pb::Vm, command: &[String], sshd_wait: Duration) -> Result<ExitCode> {
    if vm.ip.is_empty() {
        bail!("VM {} has no IP address", vm.name);
    }
    if vm.state != pb::VmState::Running as i32 {
        bail!(
            "VM {} is {}; start it with `banger vm start {}`",
            vm.name,
            render::state_name(vm.state),
            vm.name
        );
    }
    // sshd may still be starting right after a `start` without readiness
    // (the agent may answer first); when the vmm saw it answer, connect at
    // once (a probe costs the guest an sshd fork of its own).
    if !ssh::known_ready(vm) {
        ssh::wait_tcp(&vm.ip, 22, sshd_wait).await;
    }
    ssh::session(vm, command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypervisor_flag_takes_the_backends_the_proto_names() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            create: CreateArgs,
        }
        let parse = |extra: &[&str]| {
            Cli::try_parse_from([&["t", "--name", "box"], extra].concat())
                .map(|c| HypervisorArg::or_configured(c.create.hypervisor))
        };
        assert_eq!(parse(&[]).unwrap(), pb::Hypervisor::Unspecified);
        assert_eq!(
            parse(&["--hypervisor", "qemu"]).unwrap(),
            pb::Hypervisor::Qemu
        );
        assert_eq!(
            parse(&["--hypervisor", "firecracker"]).unwrap(),
            pb::Hypervisor::Firecracker
        );
        let err = parse(&["--hypervisor", "kvm"]).unwrap_err().to_string();
        assert!(err.contains("firecracker") && err.contains("qemu"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("G").is_err());
        // 2^64 / 2^40 = 16777216: one more overflows, and must say so, not wrap.
        assert_eq!(parse_size("16777215T").unwrap(), 16_777_215 << 40);
        let err = parse_size("16777216T").unwrap_err().to_string();
        assert!(err.contains("too large"), "{err}");
        assert!(parse_size("99999999999999999999").is_err());
    }
}
