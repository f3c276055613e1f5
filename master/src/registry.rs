//! The registry in coord: what survives a master failover. Frameworks, admitted agents, the
//! leader's address and the fencing node, under `/drover`.
//!
//! ```text
//! /drover/leader             ephemeral: {"id", "address", "epoch"} of the leading master
//! /drover/epoch              persistent fencing node: every leader sets it once at takeover
//! /drover/frameworks/<id>    {"id", "name", "role", "principal", "failover_timeout_ms", "hostname"}
//! /drover/agents/<id>        {"id", "hostname", "address", "millicpus", "mem_bytes", "ports", "attributes"}
//! ```
//!
//! **Fencing.** A master that leads sets `/drover/epoch` at takeover and remembers the version
//! it got; every registry write is a `multi` that first checks that version. When a newer
//! leader takes over, it bumps the version, so a write from the old leader still in flight
//! fails with `Fenced` instead of landing (ZAB leadership alone could leave a short window
//! between losing the role and noticing it).
//!
//! Records are JSON, so operators can read them with `drover coord get`.

use crate::core::types::{AgentInfo, FrameworkInfo, RegistryWrite};
use crate::ids::{AgentId, FrameworkId, Role};
use crate::resources::{PortRanges, Resources};
use drover_coord::client::{Client, ClientError};
use drover_coord::op::ErrorCode;
use drover_coord::{CreateMode, WriteOp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const ROOT: &str = "/drover";
pub const LEADER: &str = "/drover/leader";
pub const EPOCH: &str = "/drover/epoch";
pub const FRAMEWORKS: &str = "/drover/frameworks";
pub const AGENTS: &str = "/drover/agents";

/// Any version, for coord's conditional ops.
const ANY_VERSION: i32 = -1;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Another master took over since: this one must stop leading.
    #[error("a newer leader took over the registry (the fencing node {EPOCH} moved on)")]
    Fenced,
    #[error("coord: {0}")]
    Coord(#[from] ClientError),
}

/// The leader's record in `/drover/leader`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub id: u32,
    pub address: String,
    pub epoch: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrameworkRecord {
    id: String,
    name: String,
    role: String,
    principal: String,
    failover_timeout_ms: u64,
    hostname: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentRecord {
    id: String,
    hostname: String,
    address: String,
    millicpus: u64,
    mem_bytes: u64,
    ports: Vec<(u16, u16)>,
    attributes: BTreeMap<String, String>,
}

fn encode_framework(f: &FrameworkInfo) -> Vec<u8> {
    serde_json::to_vec(&FrameworkRecord {
        id: f.id.to_string(),
        name: f.name.clone(),
        role: f.role.to_string(),
        principal: f.principal.clone(),
        failover_timeout_ms: f.failover_timeout_ms,
        hostname: f.hostname.clone(),
    })
    .expect("plain record serializes")
}

fn decode_framework(data: &[u8]) -> Result<FrameworkInfo, String> {
    let r: FrameworkRecord = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    Ok(FrameworkInfo {
        id: FrameworkId::parse(&r.id).map_err(|e| e.to_string())?,
        name: r.name,
        role: Role::parse(&r.role).map_err(|e| e.to_string())?,
        principal: r.principal,
        failover_timeout_ms: r.failover_timeout_ms,
        hostname: r.hostname,
    })
}

fn encode_agent(a: &AgentInfo) -> Vec<u8> {
    serde_json::to_vec(&AgentRecord {
        id: a.id.to_string(),
        hostname: a.hostname.clone(),
        address: a.address.clone(),
        millicpus: a.resources.millicpus(),
        mem_bytes: a.resources.mem_bytes(),
        ports: a.resources.ports().ranges().to_vec(),
        attributes: a.attributes.clone(),
    })
    .expect("plain record serializes")
}

fn decode_agent(data: &[u8]) -> Result<AgentInfo, String> {
    let r: AgentRecord = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    Ok(AgentInfo {
        id: AgentId::parse(&r.id).map_err(|e| e.to_string())?,
        hostname: r.hostname,
        address: r.address,
        resources: Resources::from_millicpus(
            r.millicpus,
            r.mem_bytes,
            PortRanges::from_ranges(&r.ports).map_err(|e| e.to_string())?,
        ),
        attributes: r.attributes,
    })
}

/// The leader's handle on the registry: a coord client and the fencing version.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    fence_version: i32,
}

/// What a new leader starts from.
pub struct Loaded {
    pub frameworks: Vec<FrameworkInfo>,
    pub agents: Vec<AgentInfo>,
}

fn is(e: &ClientError, code: ErrorCode) -> bool {
    e.code() == Some(code)
}

async fn ensure(client: &Client, path: &str) -> Result<(), ClientError> {
    match client
        .create(path, Vec::new(), CreateMode::Persistent)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is(&e, ErrorCode::NodeExists) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Registry {
    /// Takes the registry over for a new leadership term: creates the tree if missing, moves
    /// the fencing node on, writes `/drover/leader` (replacing an old leader's) and reads the
    /// frameworks and agents back.
    pub async fn take_over(
        client: Client,
        leader: &LeaderRecord,
    ) -> Result<(Registry, Loaded), RegistryError> {
        for path in [ROOT, FRAMEWORKS, AGENTS] {
            ensure(&client, path).await?;
        }
        let record = serde_json::to_vec(leader).expect("plain record serializes");
        let fence_version = match client.set(EPOCH, record.clone(), None).await {
            Ok(stat) => stat.version,
            Err(e) if is(&e, ErrorCode::NoNode) => {
                match client
                    .create_with_stat(EPOCH, record.clone(), CreateMode::Persistent)
                    .await
                {
                    Ok((_, stat)) => stat.version,
                    // Someone else created it between our two calls: it is not ours.
                    Err(e) if is(&e, ErrorCode::NodeExists) => return Err(RegistryError::Fenced),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        match client.delete(LEADER, None).await {
            Ok(()) => {}
            Err(e) if is(&e, ErrorCode::NoNode) => {}
            Err(e) => return Err(e.into()),
        }
        let registry = Registry {
            client,
            fence_version,
        };
        registry
            .fenced(vec![WriteOp::Create {
                path: LEADER.into(),
                data: record.into(),
                mode: CreateMode::Ephemeral,
                acl: drover_coord::acl::open_acl(),
            }])
            .await?;
        let mut loaded = Loaded {
            frameworks: Vec::new(),
            agents: Vec::new(),
        };
        for child in registry.client.children(FRAMEWORKS).await? {
            let path = format!("{FRAMEWORKS}/{child}");
            match registry.client.get(&path).await {
                Ok((data, _)) => match decode_framework(&data) {
                    Ok(f) => loaded.frameworks.push(f),
                    Err(e) => {
                        tracing::error!(path, error = %e, "unreadable framework record skipped")
                    }
                },
                Err(e) if is(&e, ErrorCode::NoNode) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for child in registry.client.children(AGENTS).await? {
            let path = format!("{AGENTS}/{child}");
            match registry.client.get(&path).await {
                Ok((data, _)) => match decode_agent(&data) {
                    Ok(a) => loaded.agents.push(a),
                    Err(e) => tracing::error!(path, error = %e, "unreadable agent record skipped"),
                },
                Err(e) if is(&e, ErrorCode::NoNode) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok((registry, loaded))
    }

    /// `ops` after a check of the fencing node, all or nothing.
    async fn fenced(&self, mut ops: Vec<WriteOp>) -> Result<(), RegistryError> {
        ops.insert(
            0,
            WriteOp::Check {
                path: EPOCH.into(),
                version: self.fence_version,
            },
        );
        match self.client.multi(ops).await {
            Ok(_) => Ok(()),
            Err(ClientError::Server(e)) if e.op_index == Some(0) => Err(RegistryError::Fenced),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes one registry change durable.
    pub async fn write(&self, write: &RegistryWrite) -> Result<(), RegistryError> {
        let (path, data) = match write {
            RegistryWrite::PutFramework(f) => {
                (format!("{FRAMEWORKS}/{}", f.id), encode_framework(f))
            }
            RegistryWrite::PutAgent(a) => (format!("{AGENTS}/{}", a.id), encode_agent(a)),
            RegistryWrite::DeleteFramework(id) => {
                let path = format!("{FRAMEWORKS}/{id}");
                return match self
                    .fenced(vec![WriteOp::Delete {
                        path,
                        version: ANY_VERSION,
                    }])
                    .await
                {
                    Err(RegistryError::Coord(e)) if is(&e, ErrorCode::NoNode) => Ok(()),
                    other => other,
                };
            }
        };
        let set = WriteOp::SetData {
            path: path.clone(),
            data: data.clone().into(),
            version: ANY_VERSION,
        };
        match self.fenced(vec![set]).await {
            Err(RegistryError::Coord(e)) if is(&e, ErrorCode::NoNode) => {
                self.fenced(vec![WriteOp::Create {
                    path,
                    data: data.into(),
                    mode: CreateMode::Persistent,
                    acl: drover_coord::acl::open_acl(),
                }])
                .await
            }
            other => other,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_named_errors() {
        // Proves registry records decode to what was encoded, and garbage is an error, not a panic.
        let f = FrameworkInfo {
            id: FrameworkId::parse("fw-1").unwrap(),
            name: "hello".into(),
            role: Role::parse("*").unwrap(),
            principal: "p".into(),
            failover_timeout_ms: 60_000,
            hostname: "h".into(),
        };
        assert_eq!(decode_framework(&encode_framework(&f)).unwrap(), f);
        let a = AgentInfo {
            id: AgentId::parse("a-1").unwrap(),
            hostname: "h".into(),
            address: "127.0.0.1:5051".into(),
            resources: Resources::from_millicpus(
                2000,
                1 << 30,
                PortRanges::from_ranges(&[(31000, 31010)]).unwrap(),
            ),
            attributes: [("rack".to_string(), "r1".to_string())].into(),
        };
        assert_eq!(decode_agent(&encode_agent(&a)).unwrap(), a);
        assert!(decode_agent(b"{").is_err());
        assert!(decode_framework(br#"{"id":"","name":"x","role":"*","principal":"","failover_timeout_ms":0,"hostname":""}"#).is_err());
    }
}
