//! Policies: what a token may do, written in TOML and stored as that text.
//!
//! ```toml
//! [framework]                      # may subscribe (register) as a framework
//! roles = ["web", "*"]             # with these roles; "*" is any role
//! task_users = ["nobody"]          # its tasks may ask for these users; "*" is any user
//!
//! [operator]
//! capabilities = ["state-read", "service-write"]
//!
//! [[coord]]                        # coord sessions opened with the token
//! prefix = "/app"
//! access = "read"                  # or "write" (which includes read)
//! ```
//!
//! Every table refuses fields it does not know, so a typo is an error naming the field and its
//! line, never a grant that silently does nothing. Pure values: no I/O.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// Longest policy file, in bytes.
pub const POLICY_BYTES_MAX: usize = 64 * 1024;
/// Longest policy or token name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Most `[[coord]]` entries in one policy.
pub const COORD_GRANTS_PER_POLICY_MAX: usize = 64;

/// The services framework's subtree in coord (`services::paths::ROOT`; the master cannot depend
/// on the example, so a test in the binary checks the two agree). `service-read` reads it,
/// `service-write` writes it: that is all `drover service ...` does besides `state-read`.
pub const SERVICES_PREFIX: &str = "/services";

/// An operator capability. The names are the TOML names (`kebab-case`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Coord read under `/services` (`drover service ls|status`).
    ServiceRead,
    /// Coord write under `/services` (`drover service deploy|scale|rm`).
    ServiceWrite,
    /// Killing tasks through the operator API (reserved: no operator RPC kills yet).
    TaskKill,
    /// Reading task logs through the masters (reserved: `drover logs` reads the agents' file
    /// API, which checks certificates, not tokens).
    LogsRead,
    /// Draining agents (reserved: no drain RPC yet).
    AgentDrain,
    /// Tokens and policies: the `drover.v1.AclApi` service.
    AclManage,
    /// Cluster state and metrics: `Operator.GetState`, `Operator.GetMetrics`, the HTTP side.
    StateRead,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::ServiceRead,
        Capability::ServiceWrite,
        Capability::TaskKill,
        Capability::LogsRead,
        Capability::AgentDrain,
        Capability::AclManage,
        Capability::StateRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::ServiceRead => "service-read",
            Capability::ServiceWrite => "service-write",
            Capability::TaskKill => "task-kill",
            Capability::LogsRead => "logs-read",
            Capability::AgentDrain => "agent-drain",
            Capability::AclManage => "acl-manage",
            Capability::StateRead => "state-read",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Coord access a `[[coord]]` entry grants under its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoordAccess {
    Read,
    /// Read and write.
    Write,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameworkGrant {
    /// Roles a framework may subscribe with; `*` is any role.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Users its tasks may ask for in `TaskInfo.user`; `*` is any user.
    #[serde(default)]
    pub task_users: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorGrant {
    #[serde(default)]
    pub capabilities: Vec<Capability>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordGrant {
    pub prefix: String,
    pub access: CoordAccess,
}

/// A parsed, validated policy. `text` is what was applied (stored and shown as given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub description: String,
    pub framework: Option<FrameworkGrant>,
    pub operator: OperatorGrant,
    pub coord: Vec<CoordGrant>,
    pub text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    description: String,
    framework: Option<FrameworkGrant>,
    #[serde(default)]
    operator: OperatorGrant,
    #[serde(default)]
    coord: Vec<CoordGrant>,
}

/// Why a policy (or a name) was refused; the message names the field, and for TOML errors the
/// line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {name}: {message}")]
    Toml { name: String, message: String },
    #[error("policy {name}: {field}: {reason}")]
    Invalid {
        name: String,
        field: String,
        reason: String,
    },
    #[error("{what} name {name:?}: {reason}")]
    BadName {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("policy {name}: {len} bytes; the limit is {max}")]
    TooLarge {
        name: String,
        len: usize,
        max: usize,
    },
}

/// A policy or token name: 1..=`NAME_BYTES_MAX` bytes of `[A-Za-z0-9._-]`, not starting with
/// `.` (a policy name becomes a coord node name).
pub fn validate_name(what: &'static str, name: &str) -> Result<(), PolicyError> {
    let bad = |reason: &str| {
        Err(PolicyError::BadName {
            what,
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > NAME_BYTES_MAX {
        return bad(&format!("longer than {NAME_BYTES_MAX} bytes"));
    }
    if name.starts_with('.') {
        return bad("must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

impl Policy {
    /// Parses and validates `text` as the policy `name`.
    pub fn parse(name: &str, text: &str) -> Result<Policy, PolicyError> {
        validate_name("policy", name)?;
        if text.len() > POLICY_BYTES_MAX {
            return Err(PolicyError::TooLarge {
                name: name.into(),
                len: text.len(),
                max: POLICY_BYTES_MAX,
            });
        }
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Toml {
            name: name.into(),
            // toml's message names the line, the column and the field; one line is enough.
            message: one_line(&e, text),
        })?;
        let invalid = |field: String, reason: String| PolicyError::Invalid {
            name: name.into(),
            field,
            reason,
        };
        if let Some(f) = &file.framework {
            for (i, role) in f.roles.iter().enumerate() {
                drover_types::ids::Role::parse(role)
                    .map_err(|e| invalid(format!("framework.roles[{i}]"), e.to_string()))?;
            }
            for (i, user) in f.task_users.iter().enumerate() {
                if user != "*" {
                    drover_types::ids::UserName::parse(user).map_err(|e| {
                        invalid(format!("framework.task_users[{i}]"), e.to_string())
                    })?;
                }
            }
        }
        if file.coord.len() > COORD_GRANTS_PER_POLICY_MAX {
            return Err(invalid(
                "coord".into(),
                format!(
                    "{} entries; the limit is {COORD_GRANTS_PER_POLICY_MAX}",
                    file.coord.len()
                ),
            ));
        }
        for (i, g) in file.coord.iter().enumerate() {
            drover_coord::path::validate(&g.prefix, false)
                .map_err(|e| invalid(format!("coord[{i}].prefix"), e.to_string()))?;
        }
        Ok(Policy {
            name: name.into(),
            description: file.description,
            framework: file.framework,
            operator: file.operator,
            coord: file.coord,
            text: text.to_string(),
        })
    }

    pub fn capabilities(&self) -> BTreeSet<Capability> {
        self.operator.capabilities.iter().copied().collect()
    }
}

/// The toml error on one line: "line 3, column 1: unknown field `foo`, expected ...".
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        None => message,
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
description = "the web team"

[framework]
roles = ["web", "*"]
task_users = ["nobody"]

[operator]
capabilities = ["service-read", "service-write", "task-kill", "logs-read", "agent-drain", "acl-manage", "state-read"]

[[coord]]
prefix = "/app"
access = "read"

[[coord]]
prefix = "/services"
access = "write"
"#;

    #[test]
    fn a_full_policy_parses_into_its_grants() {
        // Proves every table and field of the documented format is read.
        let p = Policy::parse("web", FULL).expect("valid");
        let f = p.framework.as_ref().expect("framework table");
        assert_eq!(f.roles, ["web", "*"]);
        assert_eq!(f.task_users, ["nobody"]);
        assert_eq!(p.capabilities().len(), Capability::ALL.len());
        assert_eq!(
            p.coord,
            [
                CoordGrant {
                    prefix: "/app".into(),
                    access: CoordAccess::Read
                },
                CoordGrant {
                    prefix: "/services".into(),
                    access: CoordAccess::Write
                }
            ]
        );
        assert_eq!(p.description, "the web team");
        let empty = Policy::parse("nothing", "").expect("an empty policy grants nothing");
        assert!(empty.framework.is_none() && empty.capabilities().is_empty());
        assert!(empty.coord.is_empty());
    }

    #[test]
    fn bad_policies_are_refused_naming_the_field() {
        // Proves unknown fields, unknown capabilities, bad roles, users and prefixes are each
        // refused with the field named (and, from toml, where it is).
        let err = |text: &str| Policy::parse("p", text).expect_err(text).to_string();
        let e = err("[framework]\nrole = [\"web\"]\n");
        assert!(e.contains("unknown field `role`"), "{e}");
        assert!(e.contains("line 2, column 1"), "{e}");
        assert!(e.contains("policy p"), "{e}");
        let e = err("[operator]\ncapabilities = [\"task-murder\"]\n");
        assert!(e.contains("task-murder"), "{e}");
        let e = err("[opertor]\n");
        assert!(e.contains("opertor"), "{e}");
        let e = err("[framework]\nroles = [\"a b\"]\n");
        assert!(e.contains("framework.roles[0]"), "{e}");
        let e = err("[framework]\ntask_users = [\"ok\", \"Not Valid\"]\n");
        assert!(e.contains("framework.task_users[1]"), "{e}");
        let e = err("[[coord]]\nprefix = \"app\"\naccess = \"read\"\n");
        assert!(e.contains("coord[0].prefix"), "{e}");
        let e = err("[[coord]]\nprefix = \"/app\"\naccess = \"admin\"\n");
        assert!(e.contains("admin"), "{e}");
        let e = err("[[coord]]\nprefix = \"/app\"\n");
        assert!(e.contains("access"), "{e}");
        let e = err("this is not toml");
        assert!(e.starts_with("policy p: "), "{e}");
        assert!(Policy::parse("bad name", "").is_err());
        assert!(Policy::parse(".hidden", "").is_err());
        assert!(Policy::parse(&"x".repeat(65), "").is_err());
    }
}
