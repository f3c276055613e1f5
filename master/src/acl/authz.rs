//! The decisions, as pure functions over a snapshot of the store (`AclView`): who a secret
//! belongs to (`authenticate`), and what that principal may do (`Principal::require*`), plus
//! which capability each RPC needs (`rpc_need`). No I/O; time comes in as `now_unix_ms`.

use super::policy::{Capability, CoordAccess, Policy, SERVICES_PREFIX};
use super::token::{TokenKind, TokenRecord};
use drover_security::SecretHash;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Why a caller is not authenticated (gRPC `UNAUTHENTICATED`, HTTP 401). One line each; none
/// includes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: ACLs are on; send `authorization: Bearer <secret>` (--token or DROVER_TOKEN)"
    )]
    Missing,
    #[error("{0}")]
    Malformed(String),
    #[error("unknown token: no token has this secret (revoked, or never issued)")]
    Unknown,
    #[error("{who} expired at unix ms {at}")]
    Expired { who: String, at: u64 },
    #[error("{who} was revoked")]
    Revoked { who: String },
}

/// A refusal of an authenticated principal (gRPC `PERMISSION_DENIED`, HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Which users a principal's tasks may ask for; the core checks launches against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskUsers {
    Any,
    /// These users only. `who` names the principal for the refusal.
    Only {
        users: BTreeSet<String>,
        who: String,
    },
}

impl TaskUsers {
    /// `Ok` if a task may ask for `user`. An empty user is the agent's `--task-user`, which the
    /// operator chose: always allowed.
    pub fn check(&self, user: &str) -> Result<(), String> {
        match self {
            TaskUsers::Any => Ok(()),
            _ if user.is_empty() => Ok(()),
            TaskUsers::Only { users, .. } if users.contains(user) => Ok(()),
            TaskUsers::Only { users, who } => Err(format!(
                "user: {who} may not run tasks as {user:?} (its policies allow {})",
                if users.is_empty() {
                    "no task user".to_string()
                } else {
                    users.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            )),
        }
    }
}

/// What a token's policies add up to. Unknown policy names grant nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    pub management: bool,
    pub capabilities: BTreeSet<Capability>,
    /// At least one policy has a `[framework]` table.
    pub framework: bool,
    pub roles: BTreeSet<String>,
    pub task_users: BTreeSet<String>,
    /// Coord prefixes and the access under each (the strongest if several policies name one).
    pub coord: BTreeMap<String, CoordAccess>,
}

/// An authenticated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub accessor: uuid::Uuid,
    pub name: String,
    pub kind: TokenKind,
    pub expires_unix_ms: Option<u64>,
    pub grants: Grants,
}

impl Principal {
    /// `token "ci" (accessor …)`.
    pub fn describe(&self) -> String {
        format!("token {:?} (accessor {})", self.name, self.accessor)
    }

    pub fn require(&self, capability: Capability) -> Result<(), Denied> {
        if self.grants.management || self.grants.capabilities.contains(&capability) {
            return Ok(());
        }
        Err(Denied(format!(
            "{} lacks operator capability {capability}",
            self.describe()
        )))
    }

    /// May a framework subscribe (or act) with `role`?
    pub fn require_role(&self, role: &str) -> Result<(), Denied> {
        let g = &self.grants;
        if g.management || g.roles.contains("*") || g.roles.contains(role) {
            return Ok(());
        }
        Err(Denied(if g.framework {
            format!(
                "{} lacks framework role {role:?} (its policies grant {})",
                self.describe(),
                g.roles.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        } else {
            format!(
                "{} lacks framework role {role:?} (its policies have no [framework] table)",
                self.describe()
            )
        }))
    }

    /// Any scheduler call needs a `[framework]` grant (or a management token).
    pub fn require_framework(&self) -> Result<(), Denied> {
        if self.grants.management || self.grants.framework {
            return Ok(());
        }
        Err(Denied(format!(
            "{} lacks a framework grant (no [framework] table in its policies)",
            self.describe()
        )))
    }

    pub fn task_users(&self) -> TaskUsers {
        let g = &self.grants;
        if g.management || g.task_users.contains("*") {
            TaskUsers::Any
        } else {
            TaskUsers::Only {
                users: g.task_users.clone(),
                who: self.describe(),
            }
        }
    }

    /// Coord prefixes this token's sessions may reach: its `[[coord]]` entries, `/services`
    /// for `service-read`/`service-write`, and for a management token write on `/`.
    pub fn coord_grants(&self) -> Vec<(String, CoordAccess)> {
        let g = &self.grants;
        if g.management {
            return vec![("/".into(), CoordAccess::Write)];
        }
        let mut out = g.coord.clone();
        let mut add = |prefix: &str, access: CoordAccess| {
            let e = out.entry(prefix.to_string()).or_insert(access);
            *e = (*e).max(access);
        };
        if g.capabilities.contains(&Capability::ServiceWrite) {
            add(SERVICES_PREFIX, CoordAccess::Write);
        } else if g.capabilities.contains(&Capability::ServiceRead) {
            add(SERVICES_PREFIX, CoordAccess::Read);
        }
        out.into_iter().collect()
    }
}

/// A consistent snapshot of the token and policy store, as each master caches it.
#[derive(Debug, Clone, Default)]
pub struct AclView {
    /// False until the first complete read of the store: nothing is decided before it.
    pub loaded: bool,
    /// `drover acl bootstrap` has run (its marker node exists).
    pub bootstrapped: bool,
    tokens: BTreeMap<uuid::Uuid, TokenRecord>,
    by_hash: HashMap<SecretHash, uuid::Uuid>,
    policies: BTreeMap<String, Arc<Policy>>,
}

impl AclView {
    /// A loaded view of these records. Tokens whose stored hash does not parse are skipped (the
    /// caller logs them).
    pub fn new(
        bootstrapped: bool,
        tokens: impl IntoIterator<Item = TokenRecord>,
        policies: impl IntoIterator<Item = Policy>,
    ) -> AclView {
        let mut view = AclView {
            loaded: true,
            bootstrapped,
            ..AclView::default()
        };
        for t in tokens {
            if let Ok(hash) = t.hash() {
                view.by_hash.insert(hash, t.accessor);
                view.tokens.insert(t.accessor, t);
            }
        }
        for p in policies {
            view.policies.insert(p.name.clone(), Arc::new(p));
        }
        view
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    pub fn token(&self, accessor: &uuid::Uuid) -> Option<&TokenRecord> {
        self.tokens.get(accessor)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values().map(|p| p.as_ref())
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.get(name).map(|p| p.as_ref())
    }

    /// The principal a secret (by its hash) belongs to at `now_unix_ms`.
    pub fn authenticate(
        &self,
        hash: &SecretHash,
        now_unix_ms: u64,
    ) -> Result<Principal, AuthError> {
        let accessor = self.by_hash.get(hash).ok_or(AuthError::Unknown)?;
        self.principal(accessor, now_unix_ms)
    }

    /// The principal of `accessor` now: revoked if the token is gone, or expired.
    pub fn principal(
        &self,
        accessor: &uuid::Uuid,
        now_unix_ms: u64,
    ) -> Result<Principal, AuthError> {
        let Some(t) = self.tokens.get(accessor) else {
            return Err(AuthError::Revoked {
                who: format!("the token with accessor {accessor}"),
            });
        };
        if let Some(at) = t.expires_unix_ms
            && now_unix_ms >= at
        {
            return Err(AuthError::Expired {
                who: t.describe(),
                at,
            });
        }
        Ok(Principal {
            accessor: t.accessor,
            name: t.name.clone(),
            kind: t.kind,
            expires_unix_ms: t.expires_unix_ms,
            grants: self.grants_of(t),
        })
    }

    fn grants_of(&self, t: &TokenRecord) -> Grants {
        let mut g = Grants {
            management: t.kind == TokenKind::Management,
            ..Grants::default()
        };
        for name in &t.policies {
            let Some(p) = self.policies.get(name) else {
                continue;
            };
            g.capabilities
                .extend(p.operator.capabilities.iter().copied());
            if let Some(f) = &p.framework {
                g.framework = true;
                g.roles.extend(f.roles.iter().cloned());
                g.task_users.extend(f.task_users.iter().cloned());
            }
            for c in &p.coord {
                let e = g.coord.entry(c.prefix.clone()).or_insert(c.access);
                *e = (*e).max(c.access);
            }
        }
        g
    }
}

/// What a gRPC method needs from a caller that is not a master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No token (`Acl.Bootstrap`: there is none yet); the certificate check still applies.
    Nothing,
    Capability(Capability),
    /// A `[framework]` grant; the handler checks the role (`Subscribe`) or the framework's role
    /// and the task users (every other call).
    Framework,
    /// A token; its coord grants bound the session.
    CoordSession,
}

/// The rule for each gRPC method (`/package.Service/Method`) behind the ACL gate. A method
/// without a rule is refused: default deny.
pub fn rpc_need(path: &str) -> Option<Need> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    Some(match (service, method) {
        ("drover.v1.Operator", "GetState" | "GetMetrics") => {
            Need::Capability(Capability::StateRead)
        }
        ("drover.v1.AclApi", "Bootstrap") => Need::Nothing,
        (
            "drover.v1.AclApi",
            "CreateToken" | "ListTokens" | "RevokeToken" | "ApplyPolicy" | "ListPolicies"
            | "DeletePolicy",
        ) => Need::Capability(Capability::AclManage),
        (
            "drover.v1.Scheduler",
            "Subscribe" | "Accept" | "Decline" | "Revive" | "Suppress" | "Kill" | "Acknowledge"
            | "Reconcile" | "Teardown",
        ) => Need::Framework,
        ("drover.v1.Coord", "Session") => Need::CoordSession,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_security::Secret;

    fn view(tokens: Vec<TokenRecord>, policies: &[(&str, &str)]) -> AclView {
        AclView::new(
            true,
            tokens,
            policies
                .iter()
                .map(|(n, t)| Policy::parse(n, t).expect("valid policy")),
        )
    }

    fn token(name: &str, secret: &Secret, policies: &[&str], kind: TokenKind) -> TokenRecord {
        TokenRecord::new(
            uuid::Uuid::new_v4(),
            name,
            secret,
            policies.iter().map(|p| p.to_string()).collect(),
            kind,
            1_000,
            Some(std::time::Duration::from_secs(60)),
        )
    }

    #[test]
    fn a_secret_authenticates_until_it_expires_or_is_revoked() {
        // Proves lookup by hash, expiry at the TTL, and that a removed token reads as revoked.
        let s = Secret::generate();
        let t = token("ci", &s, &[], TokenKind::Client);
        let v = view(vec![t.clone()], &[]);
        let p = v.authenticate(&s.sha256(), 1_000).expect("valid");
        assert_eq!((p.name.as_str(), p.accessor), ("ci", t.accessor));
        assert_eq!(
            v.authenticate(&Secret::generate().sha256(), 1_000),
            Err(AuthError::Unknown)
        );
        let expired = v.authenticate(&s.sha256(), 61_000).expect_err("expired");
        assert!(
            expired.to_string().starts_with("token \"ci\" (accessor"),
            "{expired}"
        );
        assert!(matches!(expired, AuthError::Expired { at: 61_000, .. }));
        let gone = view(vec![], &[]);
        assert!(matches!(
            gone.principal(&t.accessor, 1_000),
            Err(AuthError::Revoked { .. })
        ));
    }

    #[test]
    fn capabilities_come_from_the_policies_and_management_has_all() {
        // Proves a client token has exactly its policies' capabilities, unknown policies grant
        // nothing, the refusal names token, accessor and capability, and management passes.
        let s = Secret::generate();
        let t = token("ci", &s, &["reader", "missing"], TokenKind::Client);
        let v = view(
            vec![t.clone()],
            &[("reader", "[operator]\ncapabilities = [\"state-read\"]\n")],
        );
        let p = v.authenticate(&s.sha256(), 1_000).expect("valid");
        assert!(p.require(Capability::StateRead).is_ok());
        let denied = p.require(Capability::TaskKill).expect_err("not granted");
        assert_eq!(
            denied.to_string(),
            format!(
                "token \"ci\" (accessor {}) lacks operator capability task-kill",
                t.accessor
            )
        );
        assert!(p.require_framework().is_err());
        let m = Secret::generate();
        let v = view(vec![token("root", &m, &[], TokenKind::Management)], &[]);
        let root = v.authenticate(&m.sha256(), 1_000).expect("valid");
        for c in Capability::ALL {
            assert!(root.require(c).is_ok(), "{c}");
        }
        assert!(root.require_role("anything").is_ok());
        assert_eq!(root.task_users(), TaskUsers::Any);
        assert_eq!(root.coord_grants(), [("/".to_string(), CoordAccess::Write)]);
    }

    #[test]
    fn framework_roles_task_users_and_coord_prefixes_are_granted_as_written() {
        // Proves role "*" is any role, listed roles only otherwise, task users are checked
        // (an empty user always passes), and coord grants merge to the strongest access.
        let s = Secret::generate();
        let v = view(
            vec![token("web", &s, &["web", "more"], TokenKind::Client)],
            &[
                (
                    "web",
                    "[framework]\nroles = [\"web\"]\ntask_users = [\"nobody\"]\n[[coord]]\nprefix = \"/app\"\naccess = \"read\"\n",
                ),
                (
                    "more",
                    "[operator]\ncapabilities = [\"service-read\"]\n[[coord]]\nprefix = \"/app\"\naccess = \"write\"\n",
                ),
            ],
        );
        let p = v.authenticate(&s.sha256(), 1_000).expect("valid");
        assert!(p.require_framework().is_ok());
        assert!(p.require_role("web").is_ok());
        let e = p.require_role("db").expect_err("not granted").to_string();
        assert!(e.contains("lacks framework role \"db\""), "{e}");
        let users = p.task_users();
        assert!(users.check("nobody").is_ok());
        assert!(users.check("").is_ok());
        let e = users.check("root").expect_err("not granted");
        assert!(e.contains("may not run tasks as \"root\""), "{e}");
        assert_eq!(
            p.coord_grants(),
            [
                ("/app".to_string(), CoordAccess::Write),
                ("/services".to_string(), CoordAccess::Read)
            ]
        );
        let any = Secret::generate();
        let v = view(
            vec![token("svc", &any, &["any"], TokenKind::Client)],
            &[(
                "any",
                "[framework]\nroles = [\"*\"]\ntask_users = [\"*\"]\n",
            )],
        );
        let p = v.authenticate(&any.sha256(), 1_000).expect("valid");
        assert!(p.require_role("whatever").is_ok());
        assert_eq!(p.task_users(), TaskUsers::Any);
    }

    #[test]
    fn every_rpc_has_a_rule_and_unknown_methods_have_none() {
        // Proves the capability map: each Operator, Acl, Scheduler and Coord method is mapped,
        // and anything else gets no rule (the gate then refuses it: default deny).
        assert_eq!(
            rpc_need("/drover.v1.Operator/GetState"),
            Some(Need::Capability(Capability::StateRead))
        );
        assert_eq!(
            rpc_need("/drover.v1.Operator/GetMetrics"),
            Some(Need::Capability(Capability::StateRead))
        );
        assert_eq!(rpc_need("/drover.v1.AclApi/Bootstrap"), Some(Need::Nothing));
        for m in [
            "CreateToken",
            "ListTokens",
            "RevokeToken",
            "ApplyPolicy",
            "ListPolicies",
            "DeletePolicy",
        ] {
            assert_eq!(
                rpc_need(&format!("/drover.v1.AclApi/{m}")),
                Some(Need::Capability(Capability::AclManage)),
                "{m}"
            );
        }
        for m in [
            "Subscribe",
            "Accept",
            "Decline",
            "Revive",
            "Suppress",
            "Kill",
            "Acknowledge",
            "Reconcile",
            "Teardown",
        ] {
            assert_eq!(
                rpc_need(&format!("/drover.v1.Scheduler/{m}")),
                Some(Need::Framework),
                "{m}"
            );
        }
        assert_eq!(
            rpc_need("/drover.v1.Coord/Session"),
            Some(Need::CoordSession)
        );
        assert_eq!(rpc_need("/drover.v1.Operator/Shutdown"), None);
        assert_eq!(rpc_need("/drover.v1.Peer/Deliver"), None);
        assert_eq!(rpc_need("garbage"), None);
    }
}
