//! gRPC adapter: `banger.netd.v1.Netd` over the lease manager. Proto types
//! stop here; the caller's credentials decide who may change state.

use std::sync::Arc;

use banger_proto::netd::v1 as pb;
use banger_proto::netd::v1::netd_server::Netd;
use banger_proto::rpc::Peer;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::lease::Lease;
use crate::manager::{AllocateParams, Manager};

/// The network daemon service.
#[derive(Debug, Clone)]
pub struct NetdService {
    manager: Arc<Manager>,
}

impl NetdService {
    /// Serves `manager` (already started and reconciled).
    pub fn new(manager: Arc<Manager>) -> Self {
        NetdService { manager }
    }
}

/// Who may change network state: root and the configured vmm uid.
pub fn authorize(peer: Option<Peer>, vmm_uid: Option<u32>) -> Result<Peer, Error> {
    let peer = peer.ok_or(Error::UnknownCaller)?;
    if peer.is_root() || Some(peer.uid) == vmm_uid {
        Ok(peer)
    } else {
        Err(Error::PermissionDenied { uid: peer.uid })
    }
}

/// The tap owner: what root asks for (defaulting to root's own ids), and
/// always the caller's own uid/gid for anyone else.
pub fn tap_owner(peer: &Peer, owner_uid: Option<u32>, owner_gid: Option<u32>) -> (u32, u32) {
    if peer.is_root() {
        (owner_uid.unwrap_or(peer.uid), owner_gid.unwrap_or(peer.gid))
    } else {
        (peer.uid, peer.gid)
    }
}

fn to_pb(l: Lease) -> pb::Lease {
    pb::Lease {
        vm_id: l.vm_id,
        tap: l.tap,
        ip: l.ip.to_string(),
        prefix_len: l.prefix_len.into(),
        gateway: l.gateway.to_string(),
        mac: l.mac,
        dns: l.dns.iter().map(ToString::to_string).collect(),
        nat: l.nat,
        owner_uid: l.owner_uid,
        owner_gid: l.owner_gid,
        created_unix: l.created_unix,
    }
}

#[tonic::async_trait]
impl Netd for NetdService {
    #[tracing::instrument(skip_all)]
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::NetworkStatus>, Status> {
        let s = self.manager.status().await?;
        Ok(Response::new(pb::NetworkStatus {
            bridge: s.bridge,
            bridge_up: s.bridge_up,
            subnet: s.subnet,
            gateway: s.gateway.to_string(),
            nat_enabled: s.nat_enabled,
            uplinks: s.uplinks,
            ip_forward: s.ip_forward,
            lease_count: s.lease_count,
            free_addresses: s.free_addresses,
            problems: s.problems,
        }))
    }

    #[tracing::instrument(skip_all, fields(vm = %request.get_ref().vm_id))]
    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let peer = authorize(
            banger_proto::rpc::peer(&request),
            self.manager.config().vmm_uid,
        )?;
        let req = request.into_inner();
        let (owner_uid, owner_gid) = tap_owner(&peer, req.owner_uid, req.owner_gid);
        let lease = self
            .manager
            .allocate(AllocateParams {
                vm_id: req.vm_id,
                nat: req.nat,
                owner_uid,
                owner_gid,
            })
            .await?;
        Ok(Response::new(to_pb(lease)))
    }

    #[tracing::instrument(skip_all, fields(vm = %request.get_ref().vm_id))]
    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        authorize(
            banger_proto::rpc::peer(&request),
            self.manager.config().vmm_uid,
        )?;
        let released = self.manager.release(&request.get_ref().vm_id).await?;
        Ok(Response::new(pb::ReleaseResponse { released }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_leases(
        &self,
        _: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let leases = self.manager.list().await.into_iter().map(to_pb).collect();
        Ok(Response::new(pb::ListLeasesResponse { leases }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Option<Peer> {
        Some(Peer {
            uid,
            gid,
            pid: Some(1),
        })
    }

    #[test]
    fn only_root_and_vmm_change_state() {
        authorize(peer(0, 0), None).unwrap();
        authorize(peer(990, 990), Some(990)).unwrap();
        let denied = authorize(peer(1000, 1000), Some(990)).unwrap_err();
        assert_eq!(Status::from(denied).code(), tonic::Code::PermissionDenied);
        assert!(authorize(peer(1000, 1000), None).is_err());
        assert_eq!(
            Status::from(authorize(None, Some(990)).unwrap_err()).code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn only_root_chooses_the_tap_owner() {
        let root = peer(0, 0).unwrap();
        assert_eq!(tap_owner(&root, Some(990), Some(36)), (990, 36));
        assert_eq!(tap_owner(&root, None, None), (0, 0));
        let vmm = peer(990, 991).unwrap();
        assert_eq!(tap_owner(&vmm, Some(0), Some(0)), (990, 991));
    }
}
