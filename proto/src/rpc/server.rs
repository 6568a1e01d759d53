//! Serving tonic routes on a unix socket.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use super::RuntimeError;
use super::authority::AuthorityFix;
use crate::runtime::v1::info_server::{Info, InfoServer};
use crate::runtime::v1::{GetInfoRequest, ServiceInfo};

/// What to serve and where.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Socket path.
    pub socket: PathBuf,
    /// Group that owns the socket, if not the process's own.
    pub socket_group: Option<String>,
    /// File to hold the process id while serving (removed on exit).
    pub pid_file: Option<PathBuf>,
    /// Binary name, e.g. `banger-netd`.
    pub name: String,
    /// Fully qualified banger APIs served, e.g. `banger.netd.v1.Netd`;
    /// each is marked SERVING in `grpc.health.v1`.
    pub services: Vec<String>,
}

/// How long in-flight calls may take to finish after shutdown begins;
/// shorter than `banger down`'s patience, so a service always exits by itself.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A socket bound and ready for [`BoundSocket::serve`]. Binding first lets
/// `main` report readiness (systemd) only once clients can connect.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    options: ServeOptions,
    /// Handed over by systemd (socket activation): systemd owns the path,
    /// its mode and group, so we neither chmod nor remove it.
    activated: bool,
}

impl BoundSocket {
    /// Binds the socket: recovers a stale socket left by a crash (nothing
    /// answers on it), refuses one a live process serves, sets mode 0660 and
    /// the configured group, and writes the pid file.
    pub async fn bind(options: ServeOptions) -> Result<BoundSocket, RuntimeError> {
        let path = options.socket.clone();
        let bind_err = |source| RuntimeError::Bind {
            path: path.clone(),
            source,
        };
        if let Some(listener) = systemd_listener().map_err(bind_err)? {
            tracing::info!(socket = %path.display(), "listening on the socket systemd passed");
            return Ok(BoundSocket {
                listener,
                options,
                activated: true,
            });
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
        }
        remove_stale_socket(&path).await?;
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .map_err(bind_err)?;
        if let Some(group) = &options.socket_group {
            let gid = nix::unistd::Group::from_name(group)
                .map_err(|e| bind_err(e.into()))?
                .ok_or_else(|| RuntimeError::NoSuchGroup {
                    group: group.clone(),
                })?
                .gid;
            nix::unistd::chown(&path, None, Some(gid)).map_err(|e| bind_err(e.into()))?;
        }
        if let Some(pid_file) = &options.pid_file {
            crate::fsutil::write_atomic(pid_file, format!("{}\n", std::process::id()).as_bytes())
                .map_err(|source| RuntimeError::PidFile {
                path: pid_file.clone(),
                source,
            })?;
        }
        tracing::info!(socket = %path.display(), "listening");
        Ok(BoundSocket {
            listener,
            options,
            activated: false,
        })
    }

    /// The bound socket path.
    pub fn path(&self) -> &Path {
        &self.options.socket
    }

    /// Serves `routes` plus health, reflection and `banger.runtime.v1.Info`
    /// until `shutdown` resolves; in-flight calls then drain, and the socket
    /// and pid file are removed.
    pub async fn serve(
        self,
        routes: Routes,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), RuntimeError> {
        let BoundSocket {
            listener,
            options,
            activated,
        } = self;
        notify_systemd("READY=1");
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        for service in &options.services {
            health_reporter
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
        // Reflection lists exactly what this socket serves, so a generic
        // client never discovers an API it would get UNIMPLEMENTED from.
        let served = served_services(&options.services);
        let reflection_v1 = served
            .iter()
            .fold(reflection_builder(), |b, name| b.with_service_name(name))
            .build_v1()
            .expect("embedded descriptor sets are valid");
        let reflection_v1alpha = served
            .iter()
            .fold(reflection_builder(), |b, name| b.with_service_name(name))
            .build_v1alpha()
            .expect("embedded descriptor sets are valid");
        let info = InfoServer::new(InfoService {
            info: ServiceInfo {
                name: options.name.clone(),
                version: crate::VERSION.to_owned(),
                pid: std::process::id(),
                started_unix: crate::host::now_unix(),
                services: options.services.clone(),
            },
        });
        let routes = routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(info);

        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .trace_fn(super::trace_context::server_span)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming(listener), async {
                shutdown.await;
                tracing::info!("shutting down: draining in-flight calls");
                notify_systemd("STOPPING=1");
                health_reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                let _ = draining_tx.send(());
            });
        // A client that never closes its connection must not keep the
        // process alive forever: drain for a bounded time, then exit.
        let drain_timeout = DRAIN_TIMEOUT;
        let result = tokio::select! {
            result = server => result,
            () = async {
                if draining_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(drain_timeout).await;
            } => {
                tracing::warn!(timeout = ?drain_timeout, "in-flight calls did not finish; exiting anyway");
                Ok(())
            }
        };
        if !activated {
            let _ = std::fs::remove_file(&options.socket);
        }
        if let Some(pid_file) = &options.pid_file {
            let _ = std::fs::remove_file(pid_file);
        }
        result.map_err(|source| RuntimeError::Serve {
            path: options.socket.clone(),
            source,
        })
    }
}

/// Every fully qualified service a banger socket serves: its own APIs, then
/// what the runtime adds to each.
pub fn served_services(own: &[String]) -> Vec<String> {
    let mut all = own.to_vec();
    all.extend(
        [
            "banger.runtime.v1.Info",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        .map(String::from),
    );
    all
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// Accepted connections, each behind [`AuthorityFix`] so stock clients'
/// socket-path authorities reach h2 as `localhost`.
fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<AuthorityFix<tokio::net::UnixStream>>> {
    use tokio_stream::StreamExt;
    UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new))
}

async fn remove_stale_socket(path: &Path) -> Result<(), RuntimeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RuntimeError::Bind {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(RuntimeError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => Err(RuntimeError::AlreadyServing {
            path: path.to_path_buf(),
        }),
        Err(_) => {
            tracing::warn!(socket = %path.display(), "removing stale socket left by a previous run");
            std::fs::remove_file(path).map_err(|source| RuntimeError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    }
}

/// The listening socket systemd passed (`LISTEN_FDS`/`LISTEN_PID`, fd 3),
/// if this process was socket-activated.
fn systemd_listener() -> std::io::Result<Option<UnixListener>> {
    const SD_LISTEN_FDS_START: std::os::fd::RawFd = 3;
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count: u32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !for_us || count == 0 {
        return Ok(None);
    }
    use std::os::fd::FromRawFd;
    // SAFETY: systemd's socket-activation protocol guarantees that fd 3 is an
    // open listening socket handed to this very process (LISTEN_PID checked
    // above), and nothing else in the process has taken ownership of it.
    let std_listener =
        unsafe { std::os::unix::net::UnixListener::from_raw_fd(SD_LISTEN_FDS_START) };
    std_listener.set_nonblocking(true)?;
    UnixListener::from_std(std_listener).map(Some)
}

/// Sends a state line to systemd (`Type=notify`); a no-op outside systemd.
fn notify_systemd(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str());
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        }
        None => socket.send_to(state.as_bytes(), &target),
    };
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}

struct InfoService {
    info: ServiceInfo,
}

#[tonic::async_trait]
impl Info for InfoService {
    async fn get_info(
        &self,
        _request: tonic::Request<GetInfoRequest>,
    ) -> Result<tonic::Response<ServiceInfo>, tonic::Status> {
        Ok(tonic::Response::new(self.info.clone()))
    }
}
