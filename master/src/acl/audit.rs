//! The audit log: one JSON line per denial and per ACL change, as a `tracing` event with target
//! `audit` (`RUST_LOG=audit=info` keeps just these). Fields: `time_unix_ms`, `principal`,
//! `action`, `resource`, `outcome`, and `reason` for refusals. Never a secret: callers pass
//! descriptions (`token "ci" (accessor …)`), and the secret type has no `Display`.

use serde_json::json;

/// What happened to the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// No or bad credentials (UNAUTHENTICATED / 401).
    Unauthenticated,
    /// Authenticated but not permitted (PERMISSION_DENIED / 403).
    Denied,
    /// The change was asked for and failed (e.g. bootstrap twice).
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// One audit record as its JSON line.
pub fn line(
    time_unix_ms: u64,
    principal: &str,
    action: &str,
    resource: &str,
    outcome: Outcome,
    reason: Option<&str>,
) -> String {
    let mut v = json!({
        "time_unix_ms": time_unix_ms,
        "principal": principal,
        "action": action,
        "resource": resource,
        "outcome": outcome.as_str(),
    });
    if let Some(r) = reason {
        v["reason"] = json!(r);
    }
    v.to_string()
}

/// Writes one audit record now.
pub fn record(
    principal: &str,
    action: &str,
    resource: &str,
    outcome: Outcome,
    reason: Option<&str>,
) {
    let l = line(
        crate::acl::now_unix_ms(),
        principal,
        action,
        resource,
        outcome,
        reason,
    );
    tracing::info!(target: "audit", "{l}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_line_with_every_field() {
        // Proves the audit format: valid JSON on one line, the five fields, reason only on refusal.
        let l = line(
            7,
            "token \"ci\" (accessor x)",
            "task-kill",
            "/drover.v1.Operator/Kill",
            Outcome::Denied,
            Some("lacks\ncapability"),
        );
        assert!(!l.contains('\n'), "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).expect("json");
        assert_eq!(v["time_unix_ms"], 7);
        assert_eq!(v["principal"], "token \"ci\" (accessor x)");
        assert_eq!(v["action"], "task-kill");
        assert_eq!(v["resource"], "/drover.v1.Operator/Kill");
        assert_eq!(v["outcome"], "denied");
        assert_eq!(v["reason"], "lacks\ncapability");
        let ok = line(1, "p", "token-create", "ci", Outcome::Allowed, None);
        assert!(serde_json::from_str::<serde_json::Value>(&ok).expect("json")["reason"].is_null());
    }
}
