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
    /// Waits until the guest itself sees a socket listening on TCP `port`
    /// (not loopback), or `timeout` passes.
    async fn wait_listening(&self, vsock: &Path, port: u16, timeout: Duration)
    -> Result<Listening>;
    /// Asks the guest to power off; returns once asked, not once off.
    async fn shutdown(&self, vsock: &Path) -> Result<()>;
    /// A channel to the agent, for `Exec` (the service speaks the
    /// agent's API over it).
    async fn exec_channel(&self, vsock: &Path) -> Result<Channel>;
}

/// What the agent saw of a TCP port ([`Guest::wait_listening`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listening {
    /// A socket listens on it, at this address (`0.0.0.0:22`).
    Yes { address: String },
    /// Nothing listened before the timeout.
    No,
    /// The agent predates `WaitListening`: the caller must look another way.
    Unsupported,
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

    async fn wait_listening(
        &self,
        vsock: &Path,
        port: u16,
        timeout: Duration,
    ) -> Result<Listening> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // The agent waits on its side; a dropped connection (a guest
            // still settling its vsock) is retried until the deadline.
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = async {
                let channel = hybrid_vsock::connect(vsock, AGENT_PORT, Duration::from_secs(5))
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let request = agent::WaitListeningRequest {
                    port: u32::from(port),
                    timeout_ms: u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX),
                };
                AgentClient::new(channel).wait_listening(request).await
            };
            let answer = tokio::time::timeout(remaining + Duration::from_secs(5), attempt).await;
            match answer {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    return Ok(if reply.listening {
                        Listening::Yes {
                            address: reply.address,
                        }
                    } else {
                        Listening::No
                    });
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    return Ok(Listening::Unsupported);
                }
                Ok(Err(status)) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::AgentCall {
                        call: "WaitListening",
                        message: status.message().to_owned(),
                    });
                }
                Err(_) => return Ok(Listening::No),
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
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
