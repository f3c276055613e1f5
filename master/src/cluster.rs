//! Who leads, as an API: `drover.v1.Cluster.Status`, answered by every master about itself,
//! leading or not (no redirect), and `/api/v1/masters` on the HTTP side, which adds what each
//! peer answers.
//!
//! The answer combines coord's view (`drover_coord::driver::StatusQuery`: ZAB role and phase,
//! epochs, zxids, when each peer was last heard from and whether it is synced) with the master's
//! own (`serving`: this master's term has taken the registry over and serves the scheduler,
//! agent and operator APIs). `drover cluster status`, `drover local`, the benches and the tests
//! learn the ensemble's roles here; nothing reads a master's log for it.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_client::cluster;
use drover_coord::driver::{ReplicaStatus, StatusQuery};
use drover_coord::zab::ZabRole;
use drover_proto::v1;
use drover_proto::v1::cluster_server::{Cluster, ClusterServer};
use futures::future::join_all;
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use crate::driver::MasterHandle;

/// How long a status question to this master's own coord replica may take.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of asking one peer (connection included) for `/api/v1/masters`.
pub const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Answers `Cluster.Status` for this master.
#[derive(Clone)]
pub struct ClusterService {
    master_id: u32,
    /// Every master's gRPC address by id (this one included).
    peers: BTreeMap<u32, String>,
    coord: StatusQuery,
    master: MasterHandle,
    /// This master's TLS material, for asking its peers.
    tls: Option<drover_security::TlsConfig>,
}

impl ClusterService {
    pub fn new(
        master_id: u32,
        peers: BTreeMap<u32, String>,
        coord: StatusQuery,
        master: MasterHandle,
        tls: Option<drover_security::TlsConfig>,
    ) -> ClusterService {
        ClusterService {
            master_id,
            peers,
            coord,
            master,
            tls,
        }
    }

    pub fn into_server(self) -> ClusterServer<ClusterService> {
        ClusterServer::new(self)
    }

    /// This master's status, as `Cluster.Status` answers it.
    pub async fn status(&self) -> Result<v1::MasterStatus, Status> {
        let replica =
            self.coord.get(STATUS_TIMEOUT).await.ok_or_else(|| {
                Status::unavailable("this master's coord replica does not answer")
            })?;
        Ok(to_wire(
            self.master_id,
            &self.peers,
            &replica,
            self.master.serving(),
        ))
    }

    /// Every master of the ensemble: this one answered here, each peer asked over gRPC with
    /// `PEER_STATUS_TIMEOUT`. A peer that does not answer is listed with its error.
    pub async fn ensemble(&self) -> Vec<(u32, String, Result<v1::MasterStatus, String>)> {
        let asks = self.peers.iter().map(|(&id, addr)| async move {
            let answer = if id == self.master_id {
                self.status().await.map_err(|s| s.message().to_string())
            } else {
                let transport = cluster::status_transport(PEER_STATUS_TIMEOUT, self.tls.clone());
                cluster::ask_status(&transport, addr).await
            };
            (id, addr.clone(), answer)
        });
        join_all(asks).await
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        _request: Request<v1::MasterStatusRequest>,
    ) -> Result<Response<v1::MasterStatus>, Status> {
        ClusterService::status(self).await.map(Response::new)
    }
}

fn to_wire(
    master_id: u32,
    peers: &BTreeMap<u32, String>,
    replica: &ReplicaStatus,
    serving: bool,
) -> v1::MasterStatus {
    let zab = &replica.zab;
    let role = match zab.role {
        ZabRole::Looking => v1::MasterRole::Looking,
        ZabRole::Following => v1::MasterRole::Following,
        ZabRole::Leading => v1::MasterRole::Leading,
    };
    let address = |id: u32| peers.get(&id).cloned().unwrap_or_default();
    v1::MasterStatus {
        master_id,
        address: address(master_id),
        role: role as i32,
        phase: zab.phase.to_string(),
        epoch: zab.current_epoch,
        accepted_epoch: zab.accepted_epoch,
        last_logged_zxid: zab.last_logged.0,
        last_applied_zxid: replica.last_applied.0,
        leader_id: zab.leader,
        leader_address: zab.leader.map(address).unwrap_or_default(),
        peers: zab
            .peers
            .iter()
            .map(|p| v1::PeerStatus {
                id: p.id,
                address: address(p.id),
                heard_ms_ago: p.heard_ms_ago,
                synced: p.synced,
            })
            .collect(),
        serving: serving && zab.role == ZabRole::Leading,
        znodes: replica.znodes as u64,
        sessions: replica.sessions as u64,
        role_since_unix_ms: u64::try_from(replica.leadership_since_wall_ms).unwrap_or(0),
    }
}

/// A zxid as `epoch:counter` (hex, as ZooKeeper prints them: `0x100000002` is `1:2`).
pub fn zxid_text(zxid: u64) -> String {
    format!("{:#x}", zxid)
}

/// One master's status as JSON (field names as in `cluster.proto`, the role by name).
pub fn status_json(s: &v1::MasterStatus) -> Value {
    json!({
        "master_id": s.master_id,
        "address": s.address,
        "role": cluster::role_name(s.role),
        "phase": s.phase,
        "epoch": s.epoch,
        "accepted_epoch": s.accepted_epoch,
        "last_logged_zxid": zxid_text(s.last_logged_zxid),
        "last_applied_zxid": zxid_text(s.last_applied_zxid),
        "leader_id": s.leader_id,
        "leader_address": s.leader_address,
        "serving": s.serving,
        "znodes": s.znodes,
        "sessions": s.sessions,
        "role_since_unix_ms": s.role_since_unix_ms,
        "peers": s.peers.iter().map(|p| json!({
            "id": p.id,
            "address": p.address,
            "heard_ms_ago": p.heard_ms_ago,
            "synced": p.synced,
        })).collect::<Vec<_>>(),
    })
}
