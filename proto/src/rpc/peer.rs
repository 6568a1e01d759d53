//! The caller's identity, from `SO_PEERCRED` on the unix socket.

use tonic::transport::server::UdsConnectInfo;

/// Who is on the other end of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Absent when the kernel does not report it.
    pub pid: Option<i32>,
}

impl Peer {
    /// Whether the caller is root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// The caller of `request`, if it came over a unix socket served by
/// [`crate::rpc::BoundSocket::serve`].
pub fn peer<T>(request: &tonic::Request<T>) -> Option<Peer> {
    let info = request.extensions().get::<UdsConnectInfo>()?;
    let cred = info.peer_cred?;
    Some(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    })
}
