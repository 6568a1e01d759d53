//! `banger vm …`: VM lifecycle through the vmm, plus the user-side flows
//! that span services (`vm run` pulls the image and kernel first) and the
//! SSH client with banger's own key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use banger_proto::agent::v1 as agent;
use banger_proto::config::Service;
use banger_proto::imagestore::v1 as img;
use banger_proto::imagestore::v1::image_store_client::ImageStoreClient;
use banger_proto::kernelcat::v1 as kc;
use banger_proto::kernelcat::v1::kernel_cat_client::KernelCatClient;
use banger_proto::vmm::v1 as pb;
use banger_proto::vmm::v1::vmm_client::VmmClient;
use serde_json::json;

use crate::context::Context;
use crate::output;

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
    /// `firecracker` or `qemu` (default: configured).
    #[arg(long)]
    pub hypervisor: Option<String>,
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
    /// `firecracker` or `qemu`.
    #[arg(long)]
    pub hypervisor: Option<String>,
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
            let vm = create(ctx, &args).await?;
            print_vm(ctx, &vm)?;
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
            print_vm(ctx, &vm)?;
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
            print_vm(ctx, &vm)?;
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
            print_vm(ctx, &vm)?;
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
                close_control_master(vm);
            }
            forget_host_key(&name)?;
            if ctx.json {
                output::print_json(&json!({ "deleted": name }))?;
            } else {
                println!("deleted {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::List => list(ctx).await,
        VmCommand::Show { name } => {
            let vm = vmm(ctx)
                .await?
                .get_vm(pb::GetVmRequest { name })
                .await?
                .into_inner();
            print_vm(ctx, &vm)?;
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
        VmCommand::Exec { name, command } => exec(ctx, name, command).await,
        VmCommand::Ssh { name, command } => {
            let vm = vmm(ctx)
                .await?
                .get_vm(pb::GetVmRequest { name })
                .await?
                .into_inner();
            // sshd may still be starting right after a `start` without
            // readiness; when the vmm saw it answer, connect at once (a
            // probe costs the guest an sshd fork of its own).
            if !ssh_known_ready(&vm) {
                wait_tcp(&vm.ip, 22, Duration::from_secs(60)).await;
            }
            ssh(&vm, &command)
        }
        VmCommand::Run(args) => run_flow(ctx, args).await,
    }
}

fn parse_hypervisor(h: Option<&str>) -> Result<pb::Hypervisor> {
    Ok(match h {
        None => pb::Hypervisor::Unspecified,
        Some("firecracker") => pb::Hypervisor::Firecracker,
        Some("qemu") => pb::Hypervisor::Qemu,
        Some(other) => bail!("unknown hypervisor {other:?}: use firecracker or qemu"),
    })
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

async fn create(ctx: &Context, args: &CreateArgs) -> Result<pb::Vm> {
    let key = ensure_ssh_key()?;
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
        hypervisor: parse_hypervisor(args.hypervisor.as_deref())? as i32,
        ssh_authorized_keys: vec![key.public],
        ready_timeout_seconds: args.timeout,
    };
    let mut stream = vmm(ctx).await?.create_vm(request).await?.into_inner();
    let mut bar = output::PhaseBar::new(ctx.json);
    let mut done = None;
    let result = async {
        while let Some(ev) = stream.message().await? {
            match ev.event {
                Some(pb::create_vm_event::Event::Progress(p)) => {
                    bar.event(&p.phase, &p.message, p.done, p.total, p.seconds);
                }
                Some(pb::create_vm_event::Event::Done(vm)) => done = Some(vm),
                None => {}
            }
        }
        anyhow::Ok(())
    }
    .await;
    bar.finish();
    result?;
    let timings = bar.timings;
    if args.timings {
        let total: f64 = timings.iter().map(|(_, s, _)| s).sum();
        if ctx.json {
            let phases: Vec<_> = timings
                .iter()
                .map(|(p, s, d)| json!({"phase": p, "seconds": s, "detail": d}))
                .collect();
            output::print_json(&json!({ "timings": phases, "total_seconds": total }))?;
        } else {
            let mut t = output::table(["PHASE", "SECONDS", "DETAIL"]);
            for (p, s, d) in &timings {
                t.add_row([p.clone(), format!("{s:.2}"), d.clone()]);
            }
            t.add_row(["total".to_string(), format!("{total:.2}"), String::new()]);
            eprintln!("{t}");
        }
    }
    let vm = done.context("the vmm ended the create without a result")?;
    if args.timings && !ctx.json && !vm.accelerator.is_empty() {
        eprintln!(
            "hypervisor {} ({}): {}; {}",
            hypervisor_name(vm.hypervisor),
            vm.accelerator,
            vm.hypervisor_reason,
            vm.accelerator_reason
        );
    }
    record_host_key(&vm)?;
    Ok(vm)
}

async fn list(ctx: &Context) -> Result<ExitCode> {
    let vms = vmm(ctx)
        .await?
        .list_vms(pb::ListVmsRequest {})
        .await?
        .into_inner()
        .vms;
    if ctx.json {
        output::print_json(&vms.iter().map(vm_json).collect::<Vec<_>>())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table([
        "NAME", "STATE", "IP", "IMAGE", "KERNEL", "VCPUS", "MEMORY", "AGE",
    ]);
    for vm in &vms {
        t.add_row([
            vm.name.clone(),
            state_name(vm.state).to_string(),
            vm.ip.clone(),
            vm.image.clone(),
            vm.kernel.clone(),
            vm.vcpus.to_string(),
            format!("{} MiB", vm.memory_mib),
            output::age(vm.created_unix),
        ]);
    }
    println!("{t}");
    // An orphan's line says which process it is and how to end it.
    for vm in vms
        .iter()
        .filter(|v| v.state == pb::VmState::Orphaned as i32)
    {
        println!("{}: {}", vm.name, vm.error);
    }
    Ok(ExitCode::SUCCESS)
}

fn state_name(state: i32) -> &'static str {
    match pb::VmState::try_from(state) {
        Ok(pb::VmState::Creating) => "creating",
        Ok(pb::VmState::Running) => "running",
        Ok(pb::VmState::Stopped) => "stopped",
        Ok(pb::VmState::Error) => "error",
        Ok(pb::VmState::Deleting) => "deleting",
        Ok(pb::VmState::Orphaned) => "orphaned",
        _ => "unknown",
    }
}

/// `firecracker`, `qemu`, or empty for an unknown value.
pub(crate) fn hypervisor_name(h: i32) -> &'static str {
    match pb::Hypervisor::try_from(h) {
        Ok(pb::Hypervisor::Firecracker) => "firecracker",
        Ok(pb::Hypervisor::Qemu) => "qemu",
        _ => "",
    }
}

fn vm_json(vm: &pb::Vm) -> serde_json::Value {
    json!({
        "id": vm.id,
        "name": vm.name,
        "state": state_name(vm.state),
        "image": vm.image,
        "kernel": vm.kernel,
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
        "disk_bytes": vm.disk_bytes,
        "hypervisor": hypervisor_name(vm.hypervisor),
        "hypervisor_reason": vm.hypervisor_reason,
        "accelerator": vm.accelerator,
        "accelerator_reason": vm.accelerator_reason,
        "ip": vm.ip,
        "mac": vm.mac,
        "tap": vm.tap,
        "nat": vm.nat,
        "pid": vm.pid,
        "created_unix": vm.created_unix,
        "started_unix": vm.started_unix,
        "error": vm.error,
        "vsock_path": vm.vsock_path,
        "ssh_host_public_key": vm.ssh_host_public_key,
        "image_prepared": vm.image_prepared,
        "probes": vm.probes.iter().map(|p| json!({
            "capability": p.capability, "state": p.state, "detail": p.detail
        })).collect::<Vec<_>>(),
    })
}

fn print_vm(ctx: &Context, vm: &pb::Vm) -> Result<()> {
    if ctx.json {
        return output::print_json(&vm_json(vm));
    }
    println!("name:       {}", vm.name);
    println!("state:      {}", state_name(vm.state));
    println!("id:         {}", vm.id);
    if vm.image_prepared {
        println!("image:      {} (its prepared filesystem)", vm.image);
    } else {
        println!("image:      {}", vm.image);
    }
    println!("kernel:     {}", vm.kernel);
    println!("vcpus:      {}", vm.vcpus);
    println!("memory:     {} MiB", vm.memory_mib);
    println!("disk:       {}", output::human_bytes(vm.disk_bytes));
    println!(
        "hypervisor: {}{}",
        hypervisor_name(vm.hypervisor),
        if vm.hypervisor_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", vm.hypervisor_reason)
        }
    );
    if !vm.accelerator.is_empty() {
        println!(
            "accel:      {}{}",
            vm.accelerator,
            if vm.accelerator_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", vm.accelerator_reason)
            }
        );
    }
    println!("ip:         {}", vm.ip);
    println!("mac:        {}", vm.mac);
    println!("tap:        {}", vm.tap);
    println!("nat:        {}", vm.nat);
    if vm.pid > 0 {
        println!("pid:        {}", vm.pid);
    }
    if !vm.ssh_host_public_key.is_empty() {
        println!("host key:   {}", vm.ssh_host_public_key);
    }
    for p in &vm.probes {
        println!("ready:      {}: {} ({})", p.capability, p.state, p.detail);
    }
    if !vm.error.is_empty() {
        println!("error:      {}", vm.error);
    }
    Ok(())
}

async fn exec(ctx: &Context, name: String, command: Vec<String>) -> Result<ExitCode> {
    use std::io::IsTerminal;
    // Piped stdin is forwarded (`echo hi | banger vm exec box -- cat`); a
    // terminal is not, so interactive use does not hang waiting for EOF.
    let forward_stdin = !std::io::stdin().is_terminal();
    let start = pb::ExecRequest {
        vm: name,
        request: Some(agent::ExecRequest {
            part: Some(agent::exec_request::Part::Start(agent::ExecStart {
                argv: command,
                stdin: forward_stdin,
                ..Default::default()
            })),
        }),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(start).await?;
    if forward_stdin {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            let part = |p| pb::ExecRequest {
                vm: String::new(),
                request: Some(agent::ExecRequest { part: Some(p) }),
            };
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let chunk = agent::exec_request::Part::Stdin(buf[..n].to_vec());
                        if tx.send(part(chunk)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx
                .send(part(agent::exec_request::Part::StdinClose(true)))
                .await;
        });
    } else {
        drop(tx);
    }
    let mut stream = vmm(ctx)
        .await?
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(msg) = stream.message().await? {
        match msg.part {
            Some(agent::exec_response::Part::Stdout(b)) => {
                out.write_all(&b)?;
                out.flush()?;
            }
            Some(agent::exec_response::Part::Stderr(b)) => {
                err.write_all(&b)?;
                err.flush()?;
            }
            Some(agent::exec_response::Part::Exit(status)) => {
                let code = match status.status {
                    Some(agent::exit_status::Status::Code(c)) => c,
                    Some(agent::exit_status::Status::Signal(s)) => 128 + s,
                    None => 1,
                };
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
            None => {}
        }
    }
    bail!("the agent ended the command without an exit status")
}

/// banger's SSH key pair.
struct SshKey {
    private: PathBuf,
    public: String,
}

/// `$XDG_CONFIG_HOME/banger` (else `~/.config/banger`): banger's SSH key
/// and the known host keys of the user's VMs.
fn config_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set: cannot place banger's SSH files")?;
    Ok(base.join("banger"))
}

/// `~/.config/banger/id_ed25519`, made with `ssh-keygen` on first use.
fn ensure_ssh_key() -> Result<SshKey> {
    let dir = config_dir()?;
    let private = dir.join("id_ed25519");
    let public_path = dir.join("id_ed25519.pub");
    if !private.exists() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        make_ssh_key(&dir, &private, &public_path)?;
    }
    let public = std::fs::read_to_string(&public_path)
        .with_context(|| format!("cannot read {}", public_path.display()))?
        .trim()
        .to_owned();
    Ok(SshKey { private, public })
}

/// Makes the key pair under a name of this process and publishes it with
/// hard links, the public key first: parallel first uses (several `vm
/// create` at once on a fresh host) agree on one pair, and whoever sees
/// the private key also finds its public key. A loser waits for the
/// winner's private key.
fn make_ssh_key(dir: &Path, private: &Path, public: &Path) -> Result<()> {
    let mine = dir.join(format!(".id_ed25519.{}", std::process::id()));
    let mine_pub = dir.join(format!(".id_ed25519.{}.pub", std::process::id()));
    let _ = std::fs::remove_file(&mine);
    let _ = std::fs::remove_file(&mine_pub);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "banger", "-f"])
        .arg(&mine)
        .stdin(std::process::Stdio::null())
        .status()
        .context("cannot run ssh-keygen: install openssh-client")?;
    if !status.success() {
        bail!("ssh-keygen failed ({status})");
    }
    let won =
        std::fs::hard_link(&mine_pub, public).is_ok() && std::fs::hard_link(&mine, private).is_ok();
    let _ = std::fs::remove_file(&mine);
    let _ = std::fs::remove_file(&mine_pub);
    if !won {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !private.exists() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} exists without {}: remove it to make a new key",
                    public.display(),
                    private.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// `~/.config/banger/known_hosts.d/<vm>`: the one host key `vm ssh` accepts
/// for that VM, under the alias of the VM's name (so a reused IP never
/// matches another VM's entry).
fn known_hosts_path(vm: &str) -> Result<PathBuf> {
    // The name becomes a file name: only a DNS label may.
    banger_proto::names::validate("vm", vm)?;
    Ok(config_dir()?.join("known_hosts.d").join(vm))
}

/// Records the host key the vmm generated for `vm` (at create, the creator
/// pins it; a later create of the same name replaces it).
fn record_host_key(vm: &pb::Vm) -> Result<()> {
    if vm.ssh_host_public_key.is_empty() {
        return Ok(());
    }
    let path = known_hosts_path(&vm.name)?;
    let dir = path.parent().expect("known_hosts.d");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    banger_proto::fsutil::write_atomic(&path, known_hosts_line(vm).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn known_hosts_line(vm: &pb::Vm) -> String {
    format!("{} {}\n", vm.name, vm.ssh_host_public_key.trim())
}

/// Drops the known host key of a deleted VM; absent is fine.
fn forget_host_key(vm: &str) -> Result<()> {
    let path = known_hosts_path(vm)?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// How `vm ssh` checks the guest's host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKeyCheck {
    /// Only the pinned key in the VM's known_hosts file.
    Strict,
    /// A VM from before host-key pinning: trust the first key it shows and
    /// pin that.
    FirstUse,
}

/// The control socket `vm ssh` multiplexes a VM's sessions over:
/// `~/.config/banger/mux/<hash>`, the hash of the VM's name, address,
/// the host key the vmm made and the pin in its known_hosts file, so a
/// re-created VM (new key), a reused address or a changed pin never
/// reaches an old master (whose connection verified the key it was made
/// with). `None` when the path would not fit a unix socket (then every call
/// connects on its own).
fn control_path(vm: &pb::Vm) -> Result<Option<PathBuf>> {
    use std::hash::{Hash, Hasher};
    let pin = std::fs::read(known_hosts_path(&vm.name)?).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&vm.name, &vm.ip, vm.ssh_host_public_key.trim(), pin).hash(&mut h);
    let path = config_dir()?
        .join("mux")
        .join(format!("{:016x}", h.finish()));
    // sun_path is 108 bytes; ssh adds a temporary suffix while binding.
    Ok((path.as_os_str().len() <= 80).then_some(path))
}

/// Ends the SSH master of a deleted VM, if one runs.
fn close_control_master(vm: &pb::Vm) {
    let Ok(Some(path)) = control_path(vm) else {
        return;
    };
    if path.exists() {
        let _ = std::process::Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", path.display()))
            .args(["-O", "exit", "banger-vm"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_file(&path);
    }
}

/// The `ssh` argv for a VM: banger's key, and the VM's own known_hosts
/// file under the VM's name as alias, checked strictly; with a control
/// path, sessions share one connection (the first call opens it, later
/// calls within a minute of the last skip the key exchange, which is most
/// of a connection's cost to a TCG guest).
fn ssh_argv(
    key: &std::path::Path,
    known_hosts: &std::path::Path,
    check: HostKeyCheck,
    control: Option<&std::path::Path>,
    vm: &str,
    ip: &str,
    command: &[String],
) -> Vec<String> {
    let strict = match check {
        HostKeyCheck::Strict => "yes",
        HostKeyCheck::FirstUse => "accept-new",
    };
    let mut a: Vec<String> = vec![
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        format!("StrictHostKeyChecking={strict}"),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        format!("HostKeyAlias={vm}"),
        "-o".into(),
        "HostKeyAlgorithms=ssh-ed25519".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
    ];
    if let Some(control) = control {
        a.extend([
            "-o".into(),
            "ControlMaster=auto".into(),
            "-o".into(),
            format!("ControlPath={}", control.display()),
            "-o".into(),
            "ControlPersist=60".into(),
        ]);
    }
    a.push(format!("root@{ip}"));
    if !command.is_empty() {
        a.push("--".into());
        a.extend(command.iter().cloned());
    }
    a
}

fn ssh(vm: &pb::Vm, command: &[String]) -> Result<ExitCode> {
    if vm.ip.is_empty() {
        bail!("VM {} has no IP address", vm.name);
    }
    if vm.state != pb::VmState::Running as i32 {
        bail!(
            "VM {} is {}; start it with `banger vm start {}`",
            vm.name,
            state_name(vm.state),
            vm.name
        );
    }
    let key = ensure_ssh_key()?;
    let known_hosts = known_hosts_path(&vm.name)?;
    let check = if vm.ssh_host_public_key.is_empty() {
        eprintln!(
            "warning: VM {} has no pinned SSH host key (it was created before banger pinned them); \
             trusting the key it shows now and recording it in {}",
            vm.name,
            known_hosts.display()
        );
        std::fs::create_dir_all(known_hosts.parent().expect("known_hosts.d"))?;
        HostKeyCheck::FirstUse
    } else {
        if !known_hosts.exists() {
            // A VM created by another client: the vmm's word is the pin.
            record_host_key(vm)?;
        }
        HostKeyCheck::Strict
    };
    // Only for pinned keys: a first-use check must see the key itself.
    let control = match check {
        HostKeyCheck::Strict => control_path(vm)?,
        HostKeyCheck::FirstUse => None,
    };
    if let Some(dir) = control.as_deref().and_then(|c| c.parent()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    let status = std::process::Command::new("ssh")
        .args(ssh_argv(
            &key.private,
            &known_hosts,
            check,
            control.as_deref(),
            &vm.name,
            &vm.ip,
            command,
        ))
        .status()
        .context("cannot run ssh: install openssh-client")?;
    if status.code() == Some(255)
        && check == HostKeyCheck::Strict
        && std::fs::read_to_string(&known_hosts).ok().as_deref() != Some(&known_hosts_line(vm))
    {
        eprintln!(
            "banger: the host key pinned for {} in {} is not the one the vmm made for it; \
             if the VM was re-created by another client, delete that file and retry",
            vm.name,
            known_hosts.display()
        );
    }
    Ok(ExitCode::from(
        status.code().unwrap_or(255).clamp(0, 255) as u8
    ))
}

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

async fn run_flow(ctx: &Context, args: RunArgs) -> Result<ExitCode> {
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
    if !ssh_known_ready(&vm) {
        wait_tcp(&vm.ip, 22, Duration::from_secs(120)).await;
    }
    let code = ssh(&vm, &args.command);
    if args.rm {
        vmm(ctx)
            .await?
            .delete_vm(pb::DeleteVmRequest {
                name: name.clone(),
                force: true,
            })
            .await?;
        close_control_master(&vm);
        forget_host_key(&name)?;
    }
    code
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
            super::kernel::pull_with_progress(ctx, &mut kernels, name.into(), false, false)
                .await
                .with_context(|| format!("cannot pull kernel {name} for this VM"))?;
            Ok(())
        }
        Err(s) => Err(s.into()),
    }
}

/// Whether the vmm's readiness check saw this VM's sshd answer.
fn ssh_known_ready(vm: &pb::Vm) -> bool {
    vm.probes
        .iter()
        .any(|p| p.capability == "ssh" && p.state == "ready")
}

async fn wait_tcp(ip: &str, port: u16, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((ip, port)),
        )
        .await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
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

    #[test]
    fn ssh_command_line_checks_the_pinned_host_key() {
        let a = ssh_argv(
            std::path::Path::new("/k/id"),
            std::path::Path::new("/k/known_hosts.d/box"),
            HostKeyCheck::Strict,
            Some(std::path::Path::new("/k/mux/0123")),
            "box",
            "10.0.0.2",
            &["id".into()],
        );
        assert_eq!(
            a.join(" "),
            "-i /k/id -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/k/known_hosts.d/box \
             -o GlobalKnownHostsFile=/dev/null -o HostKeyAlias=box -o HostKeyAlgorithms=ssh-ed25519 \
             -o LogLevel=ERROR -o IdentitiesOnly=yes \
             -o ControlMaster=auto -o ControlPath=/k/mux/0123 -o ControlPersist=60 \
             root@10.0.0.2 -- id"
        );
    }

    #[test]
    fn known_hosts_paths_are_vm_names_only() {
        assert!(known_hosts_path("../../etc/passwd").is_err());
        assert!(known_hosts_path("a/b").is_err());
        let vm = pb::Vm {
            name: "box".into(),
            ssh_host_public_key: "ssh-ed25519 AAAAC3 box\n".into(),
            ..Default::default()
        };
        assert_eq!(known_hosts_line(&vm), "box ssh-ed25519 AAAAC3 box\n");
    }
}
