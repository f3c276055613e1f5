//! `drover.v1.AclApi`: bootstrap, tokens and policies. Served by every master (writes go to
//! coord, which orders them); the gate has already checked `acl-manage` (or nothing, for
//! `Bootstrap`). Every change writes an audit line; a secret leaves only in `CreatedToken`.

use super::audit::{self, Outcome};
use super::authz::AclView;
use super::gate::{AclGate, Caller};
use super::now_unix_ms;
use super::policy::{Policy, validate_name};
use super::store::{AclStore, StoreError};
use super::token::{POLICIES_PER_TOKEN_MAX, TOKEN_TTL_MAX, TokenKind, TokenRecord};
use drover_proto::v1;
use drover_proto::v1::acl_api_server::AclApi;
use drover_security::Secret;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// How long a change waits for this master's view to show it, so the next call here sees it.
const VIEW_CATCH_UP: Duration = Duration::from_secs(5);

pub struct AclService {
    gate: AclGate,
    view: watch::Receiver<Arc<AclView>>,
    store: watch::Receiver<Option<AclStore>>,
}

impl AclService {
    pub fn new(
        gate: AclGate,
        view: watch::Receiver<Arc<AclView>>,
        store: watch::Receiver<Option<AclStore>>,
    ) -> AclService {
        AclService { gate, view, store }
    }

    fn store(&self) -> Result<AclStore, Status> {
        if !self.gate.enforced() {
            return Err(Status::failed_precondition(
                "ACLs are off on this master; start the masters with --acl",
            ));
        }
        self.store.borrow().clone().ok_or_else(|| {
            Status::unavailable("this master has not read the ACL store yet; retry shortly")
        })
    }

    /// Waits (bounded) until this master's view satisfies `done`.
    async fn catch_up(&self, done: impl Fn(&AclView) -> bool) {
        let mut view = self.view.clone();
        let _ = tokio::time::timeout(VIEW_CATCH_UP, view.wait_for(|v| done(v))).await;
    }
}

fn caller<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_string(), Caller::describe)
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::AlreadyBootstrapped => Status::failed_precondition(e.to_string()),
        StoreError::NoToken(_) | StoreError::NoPolicy(_) => Status::not_found(e.to_string()),
        StoreError::Limit(_) => Status::resource_exhausted(e.to_string()),
        StoreError::Coord(_) => Status::unavailable(e.to_string()),
    }
}

fn token_info(t: &TokenRecord) -> v1::TokenInfo {
    v1::TokenInfo {
        accessor: t.accessor.to_string(),
        name: t.name.clone(),
        policies: t.policies.clone(),
        r#type: t.kind.as_str().to_string(),
        created_unix_ms: t.created_unix_ms,
        expires_unix_ms: t.expires_unix_ms.unwrap_or(0),
    }
}

fn policy_info(p: &Policy) -> v1::PolicyInfo {
    v1::PolicyInfo {
        name: p.name.clone(),
        description: p.description.clone(),
        text: p.text.clone(),
    }
}

/// Logs the change's outcome and passes the result on.
fn audited<T>(who: &str, action: &str, resource: &str, r: Result<T, Status>) -> Result<T, Status> {
    match &r {
        Ok(_) => audit::record(who, action, resource, Outcome::Allowed, None),
        Err(s) => audit::record(who, action, resource, Outcome::Failed, Some(s.message())),
    }
    r
}

#[tonic::async_trait]
impl AclApi for AclService {
    async fn bootstrap(
        &self,
        request: Request<v1::BootstrapRequest>,
    ) -> Result<Response<v1::CreatedToken>, Status> {
        let who = caller(&request);
        let result = async {
            let store = self.store()?;
            if self.view.borrow().bootstrapped {
                return Err(store_status(StoreError::AlreadyBootstrapped));
            }
            let secret = Secret::generate();
            let record = TokenRecord::new(
                uuid::Uuid::new_v4(),
                "bootstrap",
                &secret,
                Vec::new(),
                TokenKind::Management,
                now_unix_ms(),
                None,
            );
            store.bootstrap(&record).await.map_err(store_status)?;
            let accessor = record.accessor;
            self.catch_up(|v| v.token(&accessor).is_some()).await;
            Ok(v1::CreatedToken {
                token: Some(token_info(&record)),
                secret: secret.expose().to_string(),
            })
        }
        .await;
        audited(&who, "acl-bootstrap", "bootstrap", result).map(Response::new)
    }

    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreatedToken>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        let result = async {
            let store = self.store()?;
            validate_name("token", &r.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let kind = match r.r#type.as_str() {
                "" => TokenKind::Client,
                other => TokenKind::parse(other).map_err(Status::invalid_argument)?,
            };
            if r.policies.len() > POLICIES_PER_TOKEN_MAX {
                return Err(Status::invalid_argument(format!(
                    "policies: {} given; a token names at most {POLICIES_PER_TOKEN_MAX}",
                    r.policies.len()
                )));
            }
            let view = self.view.borrow().clone();
            for p in &r.policies {
                validate_name("policy", p).map_err(|e| Status::invalid_argument(e.to_string()))?;
                if view.policy(p).is_none() {
                    return Err(Status::invalid_argument(format!(
                        "policies: no policy named {p:?}; apply it first (drover acl policy apply)"
                    )));
                }
            }
            if kind == TokenKind::Client && r.policies.is_empty() {
                return Err(Status::invalid_argument(
                    "policies: a client token needs at least one policy (--policy)",
                ));
            }
            let ttl = match r.ttl_ms {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            };
            if ttl.is_some_and(|t| t > TOKEN_TTL_MAX) {
                return Err(Status::invalid_argument(format!(
                    "ttl: longer than the limit of {} days",
                    TOKEN_TTL_MAX.as_secs() / 86_400
                )));
            }
            let secret = Secret::generate();
            let record = TokenRecord::new(
                uuid::Uuid::new_v4(),
                &r.name,
                &secret,
                r.policies.clone(),
                kind,
                now_unix_ms(),
                ttl,
            );
            store
                .create_token(&record, view.tokens().count())
                .await
                .map_err(store_status)?;
            let accessor = record.accessor;
            self.catch_up(|v| v.token(&accessor).is_some()).await;
            Ok(v1::CreatedToken {
                token: Some(token_info(&record)),
                secret: secret.expose().to_string(),
            })
        }
        .await;
        let resource = match &result {
            Ok(c) => format!(
                "token {:?} (accessor {})",
                r.name,
                c.token.as_ref().map_or("", |t| t.accessor.as_str())
            ),
            Err(_) => format!("token {:?}", r.name),
        };
        audited(&who, "token-create", &resource, result).map(Response::new)
    }

    async fn list_tokens(
        &self,
        _request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::TokenList>, Status> {
        self.store()?;
        let view = self.view.borrow().clone();
        Ok(Response::new(v1::TokenList {
            tokens: view.tokens().map(token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        let result = async {
            let store = self.store()?;
            let accessor = uuid::Uuid::parse_str(r.accessor.trim()).map_err(|e| {
                Status::invalid_argument(format!(
                    "accessor {:?} is not a token accessor (a uuid): {e}",
                    r.accessor
                ))
            })?;
            store.revoke_token(&accessor).await.map_err(store_status)?;
            self.catch_up(|v| v.token(&accessor).is_none()).await;
            Ok(v1::RevokeTokenResponse {})
        }
        .await;
        audited(
            &who,
            "token-revoke",
            &format!("accessor {}", r.accessor),
            result,
        )
        .map(Response::new)
    }

    async fn apply_policy(
        &self,
        request: Request<v1::ApplyPolicyRequest>,
    ) -> Result<Response<v1::PolicyInfo>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        let result = async {
            let store = self.store()?;
            let policy = Policy::parse(&r.name, &r.text)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let count = self.view.borrow().policies().count();
            store
                .put_policy(&policy, count)
                .await
                .map_err(store_status)?;
            let want = policy.clone();
            self.catch_up(|v| v.policy(&want.name) == Some(&want)).await;
            Ok(policy_info(&policy))
        }
        .await;
        audited(
            &who,
            "policy-apply",
            &format!("policy {:?}", r.name),
            result,
        )
        .map(Response::new)
    }

    async fn list_policies(
        &self,
        _request: Request<v1::ListPoliciesRequest>,
    ) -> Result<Response<v1::PolicyList>, Status> {
        self.store()?;
        let view = self.view.borrow().clone();
        Ok(Response::new(v1::PolicyList {
            policies: view.policies().map(policy_info).collect(),
        }))
    }

    async fn delete_policy(
        &self,
        request: Request<v1::DeletePolicyRequest>,
    ) -> Result<Response<v1::DeletePolicyResponse>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        let result = async {
            let store = self.store()?;
            validate_name("policy", &r.name)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            store.delete_policy(&r.name).await.map_err(store_status)?;
            let name = r.name.clone();
            self.catch_up(|v| v.policy(&name).is_none()).await;
            Ok(v1::DeletePolicyResponse {})
        }
        .await;
        audited(&who, "policy-rm", &format!("policy {:?}", r.name), result).map(Response::new)
    }
}
