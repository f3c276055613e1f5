//! Tokens as stored: an accessor (public uuid), the SHA-256 of the secret (never the secret),
//! a name, policy names, a type, creation time and an optional expiry. Pure values.

use drover_security::{Secret, SecretHash};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Most policies one token names.
pub const POLICIES_PER_TOKEN_MAX: usize = 32;
/// Longest TTL a token may be created with.
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Most tokens the store holds (each master keeps them all in memory).
pub const TOKENS_MAX: usize = 10_000;
/// Most policies the store holds.
pub const POLICIES_MAX: usize = 1_000;

/// `management`: every capability, any role and user, coord write everywhere but the masters'
/// own subtree. `client`: what its policies grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenKind {
    Management,
    Client,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Management => "management",
            TokenKind::Client => "client",
        }
    }

    pub fn parse(text: &str) -> Result<TokenKind, String> {
        match text {
            "management" => Ok(TokenKind::Management),
            "client" => Ok(TokenKind::Client),
            other => Err(format!(
                "token type {other:?}: must be management or client"
            )),
        }
    }
}

/// One token, as JSON under `/drover/acl/tokens/<accessor>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub accessor: uuid::Uuid,
    pub name: String,
    /// Lower-case hex SHA-256 of the secret's bytes.
    pub secret_sha256: String,
    pub policies: Vec<String>,
    #[serde(rename = "type")]
    pub kind: TokenKind,
    pub created_unix_ms: u64,
    /// `None`: never expires.
    pub expires_unix_ms: Option<u64>,
}

impl TokenRecord {
    /// The record of a new token with `secret`; `ttl` counts from `now_unix_ms`.
    pub fn new(
        accessor: uuid::Uuid,
        name: &str,
        secret: &Secret,
        policies: Vec<String>,
        kind: TokenKind,
        now_unix_ms: u64,
        ttl: Option<Duration>,
    ) -> TokenRecord {
        TokenRecord {
            accessor,
            name: name.to_string(),
            secret_sha256: secret.sha256().to_hex(),
            policies,
            kind,
            created_unix_ms: now_unix_ms,
            expires_unix_ms: ttl.map(|t| {
                now_unix_ms.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
            }),
        }
    }

    pub fn hash(&self) -> Result<SecretHash, String> {
        SecretHash::from_hex(&self.secret_sha256)
    }

    /// Expired at `now_unix_ms` (an expiry is the first instant the token no longer works).
    pub fn expired(&self, now_unix_ms: u64) -> bool {
        self.expires_unix_ms.is_some_and(|at| now_unix_ms >= at)
    }

    /// `token "ci" (accessor 1b4e…)`: how refusals and the audit log name the principal.
    pub fn describe(&self) -> String {
        format!("token {:?} (accessor {})", self.name, self.accessor)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a token record always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<TokenRecord, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_the_hash_not_the_secret_and_expires_at_its_ttl() {
        // Proves the stored JSON holds the SHA-256 (never the secret), round-trips, and that
        // expiry starts exactly at created + ttl.
        let secret = Secret::generate();
        let id = uuid::Uuid::new_v4();
        let r = TokenRecord::new(
            id,
            "ci",
            &secret,
            vec!["p".into()],
            TokenKind::Client,
            1_000,
            Some(Duration::from_secs(2)),
        );
        let json = String::from_utf8(r.to_json()).expect("utf8");
        assert!(!json.contains(secret.expose()), "{json}");
        assert!(json.contains(&secret.sha256().to_hex()), "{json}");
        assert!(json.contains("\"type\":\"client\""), "{json}");
        assert_eq!(TokenRecord::from_json(json.as_bytes()), Ok(r.clone()));
        assert_eq!(r.hash(), Ok(secret.sha256()));
        assert!(!r.expired(2_999));
        assert!(r.expired(3_000));
        let forever = TokenRecord {
            expires_unix_ms: None,
            ..r.clone()
        };
        assert!(!forever.expired(u64::MAX));
        assert_eq!(r.describe(), format!("token \"ci\" (accessor {id})"));
        assert!(TokenRecord::from_json(b"{\"accessor\":1}").is_err());
        assert_eq!(TokenKind::parse("management"), Ok(TokenKind::Management));
        assert!(TokenKind::parse("root").is_err());
    }
}
