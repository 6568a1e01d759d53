//! The guest as the vmm sees it: the banger agent inside a VM, reached
//! through the VM's hybrid-vsock socket. The real implementation speaks the
//! agent's gRPC API; tests use a double ([`crate::testing::RecordingGuest`]).
//! Like [`crate::peers`], this is where the agent's proto types stay.

use std::path::Path;
use std::time::Duration;

use banger_proto::agent::v1 as agent;
use banger_proto::agent::v1::agent_client::AgentClient;
use banger_proto::rpc::hybrid_vsock::{self, AGENT_PORT};
use tonic::transport::Channel;

use crate::error::{Error, Result};

/// What the vmm needs from a guest's agent.
#[tonic::async_trait]
pub trait Guest: Send + Sync + std::fmt::Debug {
    /// Pings the agent behind `vsock` until it answers or `timeout`
    /// passes; the agent's version.
    async fn ping(&self, vsock: &Path, timeout: Duration) -> Result<String>;
    /// Asks the guest to power off; returns once asked, not once off.
    async fn shutdown(&self, vsock: &Path) -> Result<()>;
    /// A channel to the agent, for `Exec` (the service speaks the
    /// agent's API over it).
    async fn exec_channel(&self, vsock: &Path) -> Result<Channel>;
}

/// The real agent, over hybrid vsock on [`AGENT_PORT`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentGuest;

#[tonic::async_trait]
impl Guest for AgentGuest {
    async fn ping(&self, vsock: &Path, timeout: Duration) -> Result<String> {
        let pong = hybrid_vsock::wait_ready(vsock, AGENT_PORT, timeout)
            .await
            .map_err(Error::AgentNotReady)?;
        Ok(pong.version)
    }

    async fn shutdown(&self, vsock: &Path) -> Result<()> {
        let channel = hybrid_vsock::connect(vsock, AGENT_PORT, Duration::from_secs(3)).await?;
        AgentClient::new(channel)
            .shutdown(agent::ShutdownRequest { reboot: false })
            .await
            .map_err(|s| Error::AgentCall {
                call: "Shutdown",
                message: s.message().to_owned(),
            })?;
        Ok(())
    }

    async fn exec_channel(&self, vsock: &Path) -> Result<Channel> {
        Ok(hybrid_vsock::connect(vsock, AGENT_PORT, Duration::from_secs(10)).await?)
    }
}
