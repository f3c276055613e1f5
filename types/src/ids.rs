//! One id type per entity, each validated once where it comes in (wire → domain), so code past the
//! edge never sees an id that breaks the rule.
//!
//! Agent, framework and task ids all follow one rule, the strictest any consumer needs: the agent
//! makes task and framework ids into directory names (sandboxes, status-update streams) and part
//! of cgroup names. So an id is 1..=[`ID_BYTES_MAX`] bytes of `[A-Za-z0-9._-]`, is not `.` and has
//! no `..` anywhere: no path separator, no NUL, no whitespace, no way out of a directory. The
//! master mints agent and framework ids as UUIDs, which fit; frameworks choose task ids.
//!
//! A [`Role`] is not an entity id and never becomes a path; it keeps the looser Mesos rule
//! (1..=[`ROLE_BYTES_MAX`] bytes, no whitespace or control characters, so `*` is a role).
//!
//! A [`UserName`] is the operating-system account a task asks to run as (`TaskInfo.user`). It
//! follows the POSIX portable user name rule, which every agent's `useradd` accepts:
//! 1..=[`USER_NAME_BYTES_MAX`] bytes of `[A-Za-z0-9._-]`, not starting with `-`. Whether the
//! account exists, and whether a task may use it, only the agent (and later the master's ACLs)
//! can tell.
//!
//! Inside they are `Arc<str>`, so copying an id into offers, records and events does not allocate.
//! Serde reads them through the same validation as [`TaskId::parse`] and friends.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest agent, framework or task id, in bytes: a directory name plus room for the agent's
/// `<task_id>.<run_id>` and cgroup prefixes within the usual 255-byte file-name limit.
pub const ID_BYTES_MAX: usize = 200;
/// The entity-id rule in words, for error messages that name their own field.
pub const ID_RULE: &str = "1..=200 bytes of [A-Za-z0-9._-], not '.', without '..'";
/// Longest role name, in bytes.
pub const ROLE_BYTES_MAX: usize = 255;
/// Longest user name, in bytes (Linux `useradd`'s limit).
pub const USER_NAME_BYTES_MAX: usize = 32;

/// An id or role that breaks its rule; `field` names which input was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{field}: must not be empty")]
    Empty { field: &'static str },
    #[error("{field}: {len} bytes, longer than {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field}: {c:?} is not allowed; only letters, digits, '.', '_' and '-'")]
    BadCharacter { field: &'static str, c: char },
    #[error("{field}: must not be '.' or contain '..'")]
    DotPath { field: &'static str },
    #[error("{field}: contains whitespace or a control character")]
    Whitespace { field: &'static str },
    #[error("{field}: must not start with '-'")]
    LeadingDash { field: &'static str },
}

fn check_length(field: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { field });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// The entity-id rule; see the module docs.
fn validate_id(field: &'static str, s: &str) -> Result<(), IdError> {
    check_length(field, s, ID_BYTES_MAX)?;
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(IdError::BadCharacter { field, c });
    }
    if s == "." || s.contains("..") {
        return Err(IdError::DotPath { field });
    }
    Ok(())
}

fn validate_role(field: &'static str, s: &str) -> Result<(), IdError> {
    check_length(field, s, ROLE_BYTES_MAX)?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(IdError::Whitespace { field });
    }
    Ok(())
}

/// The POSIX portable user name rule; see the module docs.
fn validate_user_name(field: &'static str, s: &str) -> Result<(), IdError> {
    check_length(field, s, USER_NAME_BYTES_MAX)?;
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(IdError::BadCharacter { field, c });
    }
    if s.starts_with('-') {
        return Err(IdError::LeadingDash { field });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $validate:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            #[doc = concat!("Validates `s` (see the module docs); the error names `", $field, "`.")]
            pub fn parse(s: &str) -> Result<$name, IdError> {
                $validate($field, s)?;
                Ok($name(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<$name, IdError> {
                $name::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// An agent registration (a restarted agent that lost its work dir gets a new one).
    AgentId,
    "agent_id",
    validate_id
);
id_type!(
    /// A framework; assigned by the master on the first subscription and reused to re-subscribe.
    FrameworkId,
    "framework_id",
    validate_id
);
id_type!(
    /// A task; chosen by the framework, unique within it.
    TaskId,
    "task_id",
    validate_id
);
id_type!(
    /// A role: the unit of fair sharing between groups of frameworks.
    Role,
    "role",
    validate_role
);
id_type!(
    /// The operating-system user a task runs as (`TaskInfo.user`).
    UserName,
    "user",
    validate_user_name
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_ids_refuse_everything_unsafe_in_a_path_naming_the_field() {
        // Proves the one entity-id rule: empty, too long, separators, NUL, whitespace, `.` and
        // `..` are refused with the variant and field named; UUIDs and dotted names pass.
        assert_eq!(TaskId::parse(""), Err(IdError::Empty { field: "task_id" }));
        let long = "x".repeat(ID_BYTES_MAX + 1);
        assert_eq!(
            AgentId::parse(&long),
            Err(IdError::TooLong {
                field: "agent_id",
                len: ID_BYTES_MAX + 1,
                max: ID_BYTES_MAX
            })
        );
        for (bad, c) in [
            ("a/b", '/'),
            ("a\\b", '\\'),
            ("a\0b", '\0'),
            ("a b", ' '),
            ("é", 'é'),
        ] {
            assert_eq!(
                FrameworkId::parse(bad),
                Err(IdError::BadCharacter {
                    field: "framework_id",
                    c
                }),
                "{bad:?}"
            );
        }
        for bad in [".", "..", "a..b", "..x"] {
            assert_eq!(
                TaskId::parse(bad),
                Err(IdError::DotPath { field: "task_id" }),
                "{bad:?}"
            );
        }
        let err = TaskId::parse("a/b").expect_err("separator").to_string();
        assert_eq!(
            err,
            "task_id: '/' is not allowed; only letters, digits, '.', '_' and '-'"
        );
        for ok in [
            "web.1",
            "web-0.abc_def",
            ".hidden",
            "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            &"x".repeat(ID_BYTES_MAX),
        ] {
            assert_eq!(TaskId::parse(ok).map(|t| t.to_string()).as_deref(), Ok(ok));
        }
    }

    #[test]
    fn roles_keep_the_looser_rule() {
        // Proves `*` and punctuation are roles, whitespace and control characters are not.
        assert_eq!(Role::parse("*").map(|r| r.to_string()).as_deref(), Ok("*"));
        assert!(Role::parse("team/a").is_ok());
        assert_eq!(
            Role::parse("a b"),
            Err(IdError::Whitespace { field: "role" })
        );
        assert!(matches!(
            Role::parse(&"r".repeat(ROLE_BYTES_MAX + 1)),
            Err(IdError::TooLong { field: "role", .. })
        ));
    }

    #[test]
    fn user_names_follow_the_posix_portable_rule() {
        // Proves the user rule: the usual account names pass; empty, too long, a leading '-',
        // separators, whitespace and non-ASCII are refused naming the field `user`.
        for ok in [
            "nobody",
            "www-data",
            "svc_web.1",
            "root",
            "_apt",
            &"u".repeat(32),
        ] {
            assert_eq!(
                UserName::parse(ok).map(|u| u.to_string()).as_deref(),
                Ok(ok)
            );
        }
        assert_eq!(UserName::parse(""), Err(IdError::Empty { field: "user" }));
        assert!(matches!(
            UserName::parse(&"u".repeat(USER_NAME_BYTES_MAX + 1)),
            Err(IdError::TooLong { field: "user", .. })
        ));
        assert_eq!(
            UserName::parse("-rf"),
            Err(IdError::LeadingDash { field: "user" })
        );
        for (bad, c) in [
            ("a b", ' '),
            ("a/b", '/'),
            ("a:b", ':'),
            ("é", 'é'),
            ("a\0b", '\0'),
        ] {
            assert_eq!(
                UserName::parse(bad),
                Err(IdError::BadCharacter { field: "user", c }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn serde_reads_ids_through_the_same_validation() {
        // Proves a deserialized id is as checked as a parsed one and serializes as a string.
        let id: TaskId = serde_json::from_str("\"web.1\"").expect("valid");
        assert_eq!(serde_json::to_string(&id).expect("serializes"), "\"web.1\"");
        let err = serde_json::from_str::<TaskId>("\"../etc\"").expect_err("refused");
        assert!(err.to_string().contains("task_id"), "{err}");
    }
}
