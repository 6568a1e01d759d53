//! `banger up`, `banger down`, `banger status`: the services as children of
//! the CLI in dev and embedded mode (systemd units are the production way).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use banger_proto::config::Service;
use banger_proto::runtime::v1::GetInfoRequest;
use banger_proto::runtime::v1::info_client::InfoClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::context::Context;
use crate::output;

/// `banger up` flags.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Seconds to wait for each service to become healthy.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// `banger down` flags.
#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// Seconds to wait for each service to drain before killing it.
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
    /// Stop the running VMs cleanly first (without it they keep running,
    /// and the next `banger up` adopts them).
    #[arg(long)]
    pub stop_vms: bool,
}

/// `banger status` flags.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

/// One row of `banger status`.
#[derive(Debug, Serialize)]
struct ServiceView {
    service: String,
    socket: PathBuf,
    pid: Option<u32>,
    version: Option<String>,
    health: String,
}

/// `banger down --json`: the services it stopped and the VMs it left
/// running.
#[derive(Debug, Serialize)]
struct DownView {
    stopped: Vec<StoppedView>,
    vms_left_running: Vec<String>,
}

/// A service `banger down` stopped.
#[derive(Debug, Serialize)]
struct StoppedView {
    service: String,
    pid: u32,
}

pub async fn up(ctx: &Context, args: UpArgs) -> Result<ExitCode> {
    let paths = &ctx.config.paths;
    std::fs::create_dir_all(&paths.run_dir)
        .with_context(|| format!("cannot create {}", paths.run_dir.display()))?;
    let mut started = Vec::new();
    for service in Service::ALL {
        if health(ctx, service).await.is_ok() {
            if !ctx.json {
                eprintln!("{service}: already running");
            }
            continue;
        }
        clear_stale(ctx, service)?;
        let pid = spawn(ctx, service)?;
        started.push((service, pid));
    }
    let deadline = Duration::from_secs(args.timeout);
    for (service, pid) in &started {
        wait_healthy(ctx, *service, *pid, deadline).await?;
        if !ctx.json {
            eprintln!("{service}: started (pid {pid})");
        }
    }
    let statuses = collect_status(ctx).await;
    if ctx.json {
        output::print_json(&statuses)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Names of the VMs vmm reports running (empty when vmm is not answering).
async fn running_vms(ctx: &Context) -> Vec<String> {
    use banger_proto::vmm::v1::vmm_client::VmmClient;
    use banger_proto::vmm::v1::{ListVmsRequest, VmState};
    let Ok(channel) = ctx.channel(Service::Vmm).await else {
        return Vec::new();
    };
    match VmmClient::new(channel).list_vms(ListVmsRequest {}).await {
        Ok(list) => list
            .into_inner()
            .vms
            .into_iter()
            .filter(|vm| vm.state() == VmState::Running)
            .map(|vm| vm.name)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Stops each VM cleanly through vmm (its graceful-stop timeout applies).
async fn stop_vms(ctx: &Context, names: &[String]) -> Result<()> {
    use banger_proto::vmm::v1::StopVmRequest;
    use banger_proto::vmm::v1::vmm_client::VmmClient;
    let mut vmm = VmmClient::new(ctx.channel(Service::Vmm).await?);
    for name in names {
        vmm.stop_vm(StopVmRequest {
            name: name.clone(),
            force: false,
            timeout_seconds: 0,
        })
        .await
        .with_context(|| format!("cannot stop VM {name}; the services are left running"))?;
        if !ctx.json {
            eprintln!("vm {name}: stopped");
        }
    }
    Ok(())
}

pub async fn down(ctx: &Context, args: DownArgs) -> Result<ExitCode> {
    let mut running = running_vms(ctx).await;
    if args.stop_vms && !running.is_empty() {
        stop_vms(ctx, &running).await?;
        running.clear();
    }
    let mut stopped = Vec::new();
    for service in Service::ALL.iter().rev().copied() {
        let Some(pid) = read_pid(ctx, service) else {
            continue;
        };
        if !is_our_process(pid, service) {
            clear_stale(ctx, service)?;
            continue;
        }
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        while is_our_process(pid, service) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if is_our_process(pid, service) {
            eprintln!(
                "{service}: did not stop within {}s; killing it",
                args.timeout
            );
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        clear_stale(ctx, service)?;
        if !ctx.json {
            eprintln!("{service}: stopped (pid {pid})");
        }
        stopped.push(StoppedView {
            service: service.short_name().to_owned(),
            pid,
        });
    }
    if ctx.json {
        output::print_json(&DownView {
            stopped,
            vms_left_running: running,
        })?;
    } else {
        if stopped.is_empty() {
            eprintln!("no banger services were running");
        }
        if !running.is_empty() {
            eprintln!(
                "{} VM(s) still running: {}; they keep running, and the next `banger up` adopts them \
                 (`banger down --stop-vms` stops them first)",
                running.len(),
                running.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(ctx: &Context, _args: StatusArgs) -> Result<ExitCode> {
    let statuses = collect_status(ctx).await;
    if ctx.json {
        output::print_json(&statuses)?;
    } else {
        let mut table = output::table(["SERVICE", "SOCKET", "PID", "VERSION", "HEALTH"]);
        for s in &statuses {
            table.add_row([
                s.service.clone(),
                s.socket.display().to_string(),
                s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                s.version.clone().unwrap_or_else(|| "-".into()),
                s.health.clone(),
            ]);
        }
        println!("{table}");
    }
    let all_up = statuses.iter().all(|s| s.health == "serving");
    if !all_up && !ctx.json {
        eprintln!("some services are down; start them with `banger up`");
    }
    Ok(if all_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn collect_status(ctx: &Context) -> Vec<ServiceView> {
    let mut out = Vec::new();
    for service in Service::ALL {
        let socket = ctx.config.paths.socket(service);
        let (pid, version, health) = match ctx.channel(service).await {
            Err(_) => (None, None, "down".to_owned()),
            Ok(channel) => {
                let info = InfoClient::new(channel.clone())
                    .get_info(GetInfoRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .ok();
                let health = match HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: service.api_service().to_owned(),
                    })
                    .await
                {
                    Ok(r) if r.get_ref().status == 1 => "serving".to_owned(),
                    Ok(_) => "not serving".to_owned(),
                    Err(e) => format!("error: {}", e.message()),
                };
                (
                    info.as_ref().map(|i| i.pid),
                    info.map(|i| i.version),
                    health,
                )
            }
        };
        out.push(ServiceView {
            service: service.short_name().to_owned(),
            socket,
            pid,
            version,
            health,
        });
    }
    out
}

async fn health(ctx: &Context, service: Service) -> Result<()> {
    let channel = ctx.channel(service).await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.api_service().to_owned(),
        })
        .await?;
    if response.get_ref().status != 1 {
        bail!("{service} is not serving");
    }
    Ok(())
}

fn read_pid(ctx: &Context, service: Service) -> Option<u32> {
    std::fs::read_to_string(ctx.config.paths.pid_file(service))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is alive and runs `service`'s binary (pids get reused).
fn is_our_process(pid: u32, service: Service) -> bool {
    if !is_alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Path::new(std::str::from_utf8(argv0).unwrap_or_default())
        .file_name()
        .is_some_and(|name| name == service.binary())
}

/// Whether the child we just spawned still runs. Unlike
/// [`is_our_process`] it does not read the command line, which can briefly
/// read empty right after exec.
fn is_alive(pid: u32) -> bool {
    banger_proto::host::pid_alive(pid)
}

/// Removes a pid file and socket that no live process owns.
fn clear_stale(ctx: &Context, service: Service) -> Result<()> {
    let paths = &ctx.config.paths;
    if let Some(pid) = read_pid(ctx, service) {
        if is_our_process(pid, service) {
            return Ok(());
        }
        eprintln!("{service}: removing stale pid file (pid {pid} is gone)");
    }
    for path in [paths.pid_file(service), paths.socket(service)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
    Ok(())
}

/// The service binary: next to `banger` itself, else on PATH.
fn binary_path(service: Service) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(service.binary())))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(service.binary()))
}

fn spawn(ctx: &Context, service: Service) -> Result<u32> {
    let paths = &ctx.config.paths;
    let log_path = paths.log_file(service);
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let binary = binary_path(service);
    let mut command = std::process::Command::new(&binary);
    match (&ctx.config.home, &ctx.config.source) {
        (Some(home), _) => command.arg("--home").arg(home),
        (None, Some(file)) => command.arg("--config").arg(file),
        (None, None) => &mut command,
    };
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in the user's terminal must not
        // reach services that outlive this command.
        .process_group(0)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} ({}); build it with `cargo build --workspace` or put it on PATH",
                service.binary(),
                binary.display()
            )
        })?;
    Ok(child.id())
}

async fn wait_healthy(ctx: &Context, service: Service, pid: u32, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if health(ctx, service).await.is_ok() {
            return Ok(());
        }
        if !is_alive(pid) {
            bail!(
                "{} exited during start-up; last lines of {}:\n{}",
                service.binary(),
                ctx.config.paths.log_file(service).display(),
                log_tail(&ctx.config.paths.log_file(service), 15)
            );
        }
        if start.elapsed() > timeout {
            bail!(
                "{} did not become healthy within {}s; see {}",
                service.binary(),
                timeout.as_secs(),
                ctx.config.paths.log_file(service).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
