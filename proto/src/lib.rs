//! banger's public gRPC API and the one RPC runtime every banger process shares.
//!
//! - [`kernelcat`], [`imagestore`], [`netd`], [`vmm`], [`agent`], [`runtime`]:
//!   code generated from `proto/banger/<service>/v1/*.proto`.
//! - [`rpc`]: serve a tonic service on a unix socket and connect to one, with
//!   peer credentials, trace-context propagation, health, reflection and
//!   graceful shutdown.
//! - [`config`]: the one config loader (`banger.toml`, `--home`, `BANGER_HOME`).
//! - [`names`]: the one validator for VM, image and kernel names.
//! - [`fsutil`]: the one atomic-write helper.
//! - [`host`]: host facts several processes check (process liveness, clock, KVM).
//! - [`guest`]: the guest contract (paths, `identity.json`, first-boot events).
//! - [`telemetry`]: tracing, JSON logs under systemd, OTLP export when configured.
//! - [`tls`]: the one rustls crypto provider (*ring*), installed before any HTTP client.
//!
//! # Features
//!
//! `host` (default) is everything only host processes need: `config`,
//! `daemon`, `telemetry`, `tls`, `host`, `names` and the server/client halves of
//! [`rpc`], with their heavy dependencies (OpenTelemetry and its OTLP
//! exporter, toml, clap, tracing-subscriber, tonic-health and reflection,
//! rustls).
//! The static guest agent depends on this crate with `default-features =
//! false`: the generated API, [`guest`], [`fsutil`] (std only), [`rpc::hybrid_vsock`], [`rpc::status`],
//! [`rpc::signal`] and the event half of [`rpc::progress`], nothing else.

#[cfg(feature = "host")]
pub mod config;
#[cfg(feature = "host")]
pub mod daemon;
pub mod fsutil;
pub mod guest;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "host")]
pub mod names;
pub mod rpc;
#[cfg(feature = "host")]
pub mod telemetry;
#[cfg(feature = "host")]
pub mod tls;

/// Encoded `FileDescriptorSet` of every banger proto, for server reflection
/// and for clients that want to decode messages dynamically.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/banger_descriptor.bin"));

macro_rules! generated {
    ($(#[$doc:meta])* $name:ident, $package:literal) => {
        $(#[$doc])*
        pub mod $name {
            /// Version 1 of the API.
            #[allow(clippy::all, clippy::pedantic, missing_docs)]
            pub mod v1 {
                tonic::include_proto!($package);
            }
        }
    };
}

generated!(
    /// `banger.runtime.v1`: process identity, served by every banger process.
    runtime,
    "banger.runtime.v1"
);
generated!(
    /// `banger.kernelcat.v1`: guest kernels.
    kernelcat,
    "banger.kernelcat.v1"
);
generated!(
    /// `banger.imagestore.v1`: OCI images and their ext4 root filesystems.
    imagestore,
    "banger.imagestore.v1"
);
generated!(
    /// `banger.netd.v1`: bridge, taps, leases, NAT.
    netd,
    "banger.netd.v1"
);
generated!(
    /// `banger.vmm.v1`: VM lifecycle.
    vmm,
    "banger.vmm.v1"
);
generated!(
    /// `banger.agent.v1`: the in-guest agent.
    agent,
    "banger.agent.v1"
);

/// Version of this build of banger, shared by every binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
