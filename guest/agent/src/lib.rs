//! `banger-agent`: the agent inside every banger VM.
//!
//! It answers the host over AF_VSOCK port [`AGENT_PORT`] (reached from the
//! host through the VM's hybrid-vsock socket, see
//! `banger_proto::rpc::hybrid_vsock`) with the `banger.agent.v1.Agent` API:
//! readiness ([`system::ping`]), command execution ([`exec`]), clean
//! shutdown ([`power`]) and facts about the guest ([`system::facts`]).
//! [`service`] adapts these to the generated tonic server; [`serve`] binds
//! vsock or unix listeners (the latter so tests run it on the host).
//!
//! The binary is statically linked so one build runs on every distro,
//! busybox-only images included. The same binary is the `/init` of the
//! initramfs kernelcat generates for modular kernels ([`init`]), and the
//! VM's first init, `banger-first-boot` ([`first_boot`]).

#![forbid(unsafe_code)]

pub mod error;
pub mod exec;
pub mod first_boot;
pub mod init;
pub mod power;
pub mod serve;
pub mod service;
pub mod system;

pub use banger_proto::rpc::hybrid_vsock::AGENT_PORT;
pub use error::AgentError;
