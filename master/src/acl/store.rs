//! The token and policy store in coord, and each master's cache of it.
//!
//! Layout (JSON records; the subtree's ACL admits only the masters' certificates, `x509:NAME`
//! for each master, and coord's super ids):
//! - `/drover/acl/bootstrap`: exists once `drover acl bootstrap` ran (the accessor it made).
//! - `/drover/acl/tokens/<accessor>`: `TokenRecord` (the secret's SHA-256, never the secret).
//! - `/drover/acl/policies/<name>`: `StoredPolicy` (the TOML as applied).
//!
//! [`follow`] runs on every master: a coord session on the master's own replica (with the
//! master's certificate) reads the whole subtree, keeps a persistent recursive watch on it and
//! reads it again after each change, publishing an [`AclView`] through a `watch` channel. A
//! check reads that view, so it costs no coord round trip; a revocation reaches every master's
//! view one watch event (a few milliseconds) after it commits.

use super::authz::AclView;
use super::policy::Policy;
use super::token::{POLICIES_MAX, TOKENS_MAX, TokenRecord};
use drover_coord::acl::{AclEntry, Perms, SCHEME_X509};
use drover_coord::client::{Client, ClientError, ClientOptions};
use drover_coord::op::{CreateMode, ErrorCode, WriteOp};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const DROVER_ROOT: &str = "/drover";
pub const ACL_ROOT: &str = "/drover/acl";
pub const TOKENS: &str = "/drover/acl/tokens";
pub const POLICIES: &str = "/drover/acl/policies";
pub const BOOTSTRAP: &str = "/drover/acl/bootstrap";

/// Waits between attempts to reach the local replica (while it has no quorum, say).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Reads again at least this often, besides after every watch event.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// A policy as stored: its TOML, parsed again on every load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPolicy {
    pub name: String,
    pub text: String,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ACLs are already bootstrapped; use a management token to create more tokens")]
    AlreadyBootstrapped,
    #[error("no token has accessor {0}")]
    NoToken(String),
    #[error("no policy named {0:?}")]
    NoPolicy(String),
    #[error("{0}")]
    Limit(String),
    #[error("coord: {0}")]
    Coord(#[from] ClientError),
}

/// The subtree's ACL: every master's certificate name may do anything, nobody else anything.
pub fn node_acl(master_names: &[String]) -> Vec<AclEntry> {
    master_names
        .iter()
        .map(|n| AclEntry::new(SCHEME_X509, n, Perms::ALL))
        .collect()
}

pub fn token_path(accessor: &uuid::Uuid) -> String {
    format!("{TOKENS}/{accessor}")
}

pub fn policy_path(name: &str) -> String {
    format!("{POLICIES}/{name}")
}

/// Creates the subtree (with its ACL) unless it exists.
async fn ensure_layout(client: &Client, acl: &[AclEntry]) -> Result<(), ClientError> {
    client.ensure_node(DROVER_ROOT).await?;
    for path in [ACL_ROOT, TOKENS, POLICIES] {
        match client
            .create_with_acl(path, Vec::new(), CreateMode::Persistent, acl.to_vec())
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the whole store. Records that do not parse are skipped with a warning (they cannot
/// grant anything).
pub async fn load(client: &Client) -> Result<AclView, ClientError> {
    let bootstrapped = client.exists(BOOTSTRAP).await?.is_some();
    let mut tokens = Vec::new();
    for child in client.children(TOKENS).await? {
        let path = format!("{TOKENS}/{child}");
        let data = match client.get(&path).await {
            Ok((data, _)) => data,
            Err(e) if e.code() == Some(ErrorCode::NoNode) => continue,
            Err(e) => return Err(e),
        };
        match TokenRecord::from_json(&data) {
            Ok(t) => tokens.push(t),
            Err(e) => tracing::warn!(%path, error = %e, "unreadable token record ignored"),
        }
    }
    let mut policies = Vec::new();
    for child in client.children(POLICIES).await? {
        let path = policy_path(&child);
        let data = match client.get(&path).await {
            Ok((data, _)) => data,
            Err(e) if e.code() == Some(ErrorCode::NoNode) => continue,
            Err(e) => return Err(e),
        };
        let parsed = serde_json::from_slice::<StoredPolicy>(&data)
            .map_err(|e| e.to_string())
            .and_then(|s| Policy::parse(&s.name, &s.text).map_err(|e| e.to_string()));
        match parsed {
            Ok(p) => policies.push(p),
            Err(e) => tracing::warn!(%path, error = %e, "unreadable policy ignored"),
        }
    }
    Ok(AclView::new(bootstrapped, tokens, policies))
}

/// Writes to the store. Every master may write (coord orders the writes); the checks on who may
/// ask are the gate's.
#[derive(Clone)]
pub struct AclStore {
    client: Client,
    acl: Arc<[AclEntry]>,
}

impl AclStore {
    /// The first management token, once: the marker and the token in one `multi`, so a second
    /// bootstrap (even a concurrent one) fails as a whole.
    pub async fn bootstrap(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let marker =
            serde_json::json!({ "accessor": token.accessor, "at_unix_ms": token.created_unix_ms });
        let ops = vec![
            WriteOp::Create {
                path: BOOTSTRAP.into(),
                data: marker.to_string().into_bytes().into(),
                mode: CreateMode::Persistent,
                acl: self.acl.to_vec(),
            },
            WriteOp::Create {
                path: token_path(&token.accessor),
                data: token.to_json().into(),
                mode: CreateMode::Persistent,
                acl: self.acl.to_vec(),
            },
        ];
        match self.client.multi(ops).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(ErrorCode::NodeExists) => {
                Err(StoreError::AlreadyBootstrapped)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn create_token(&self, token: &TokenRecord, count: usize) -> Result<(), StoreError> {
        if count >= TOKENS_MAX {
            return Err(StoreError::Limit(format!(
                "tokens_max ({TOKENS_MAX}) reached; revoke some first"
            )));
        }
        self.client
            .create_with_acl(
                &token_path(&token.accessor),
                token.to_json(),
                CreateMode::Persistent,
                self.acl.to_vec(),
            )
            .await?;
        Ok(())
    }

    pub async fn revoke_token(&self, accessor: &uuid::Uuid) -> Result<(), StoreError> {
        match self.client.delete(&token_path(accessor), None).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(ErrorCode::NoNode) => {
                Err(StoreError::NoToken(accessor.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates or replaces the policy.
    pub async fn put_policy(&self, policy: &Policy, count: usize) -> Result<(), StoreError> {
        let data = serde_json::to_vec(&StoredPolicy {
            name: policy.name.clone(),
            text: policy.text.clone(),
        })
        .expect("a stored policy always serializes");
        let path = policy_path(&policy.name);
        match self.client.set(&path, data.clone(), None).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(ErrorCode::NoNode) => {}
            Err(e) => return Err(e.into()),
        }
        if count >= POLICIES_MAX {
            return Err(StoreError::Limit(format!(
                "policies_max ({POLICIES_MAX}) reached; remove some first"
            )));
        }
        self.client
            .create_with_acl(&path, data, CreateMode::Persistent, self.acl.to_vec())
            .await?;
        Ok(())
    }

    pub async fn delete_policy(&self, name: &str) -> Result<(), StoreError> {
        match self.client.delete(&policy_path(name), None).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(ErrorCode::NoNode) => {
                Err(StoreError::NoPolicy(name.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Keeps `view` (and `store`, the writer on the current session) current until the process
/// ends. `address` is this master's own gRPC address; `options` carry its certificate.
pub async fn follow(
    address: String,
    options: ClientOptions,
    master_names: Vec<String>,
    view: watch::Sender<Arc<AclView>>,
    store: watch::Sender<Option<AclStore>>,
) {
    let acl: Arc<[AclEntry]> = node_acl(&master_names).into();
    let mut backoff = RETRY_MIN;
    loop {
        match follow_session(&address, &options, &acl, &view, &store).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "ACL store: reading again after an error");
                let _ = store.send(None);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// One coord session: layout, watch, load, then reload after each change. `Ok` when nobody
/// listens to the view any more.
async fn follow_session(
    address: &str,
    options: &ClientOptions,
    acl: &Arc<[AclEntry]>,
    view: &watch::Sender<Arc<AclView>>,
    store: &watch::Sender<Option<AclStore>>,
) -> Result<(), ClientError> {
    let client = Client::connect(vec![address.to_string()], options.clone()).await?;
    ensure_layout(&client, acl).await?;
    // Watch first, then read: a change between the two is seen by the next read.
    let mut events = client.watch(ACL_ROOT, true).await?;
    let loaded = load(&client).await?;
    let first = !view.borrow().loaded;
    let _ = view.send(Arc::new(loaded));
    let _ = store.send(Some(AclStore {
        client: client.clone(),
        acl: acl.clone(),
    }));
    if first {
        tracing::info!(tokens = view.borrow().tokens().count(), "ACL store loaded");
    }
    loop {
        tokio::select! {
            event = events.next() => {
                if event.is_none() {
                    return Err(ClientError::Closed);
                }
            }
            _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
            _ = view.closed() => return Ok(()),
        }
        let loaded = load(&client).await?;
        let _ = view.send(Arc::new(loaded));
    }
}
