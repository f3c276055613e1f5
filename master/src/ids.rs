//! Newtype identifiers the allocator deals in. Agent, framework and role names are strings on the
//! wire (as in Mesos); inside they are `Arc<str>` so the allocator can copy them into offers and
//! skip records without allocating.

use std::fmt;
use std::sync::Arc;

/// Longest accepted agent id, framework id or role name, in bytes.
pub const NAME_BYTES_MAX: usize = 255;

/// A name that is not a valid id; `field` names which input was wrong.
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
    #[error("{field}: contains whitespace or a control character")]
    BadCharacter { field: &'static str },
}

fn validate(field: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { field });
    }
    if s.len() > NAME_BYTES_MAX {
        return Err(IdError::TooLong {
            field,
            len: s.len(),
            max: NAME_BYTES_MAX,
        });
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(IdError::BadCharacter { field });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s`: non-empty, at most `NAME_BYTES_MAX` bytes, no whitespace or control
            /// characters. The error names the field.
            pub fn new(s: &str) -> Result<$name, IdError> {
                validate($field, s)?;
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
    };
}

name_id!(
    /// An agent, as registered with the master.
    AgentId,
    "agent_id"
);
name_id!(
    /// A subscribed framework.
    FrameworkId,
    "framework_id"
);
name_id!(
    /// A role: the unit of fair sharing between groups of frameworks.
    Role,
    "role"
);

/// An offer. The allocator numbers offers from a counter; the networked master qualifies them
/// with its leadership epoch on the wire so ids from an old leader are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OfferId(pub u64);

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "O{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_naming_the_field() {
        // Proves invalid ids are errors that name the field, never panics.
        assert_eq!(AgentId::new(""), Err(IdError::Empty { field: "agent_id" }));
        assert_eq!(
            Role::new("a b"),
            Err(IdError::BadCharacter { field: "role" })
        );
        let long = "x".repeat(NAME_BYTES_MAX + 1);
        assert!(matches!(
            FrameworkId::new(&long),
            Err(IdError::TooLong {
                field: "framework_id",
                ..
            })
        ));
        assert_eq!(
            FrameworkId::new("fw-1").map(|f| f.to_string()).as_deref(),
            Ok("fw-1")
        );
    }
}
