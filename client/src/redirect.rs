//! Reading a master's "I do not lead; ask that one" answer: `UNAVAILABLE` with the leader's
//! `HOST:PORT` in the [`LEADER_METADATA_KEY`] metadata. The one place that reads the key.

pub use drover_proto::LEADER_METADATA_KEY;

use crate::endpoints::validate_addr;

/// The leader a non-leading master named in an `UNAVAILABLE` answer, trimmed; `None` for any
/// other code, no key, or an empty value (the master knows of no leader).
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let leader = status
        .metadata()
        .get(LEADER_METADATA_KEY)?
        .to_str()
        .ok()?
        .trim();
    (!leader.is_empty()).then(|| leader.to_owned())
}

/// What a failed call's status says about where the leader is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// No hint: not `UNAVAILABLE`, or no leader named.
    None,
    /// Another master leads; try it next.
    To(String),
    /// A hint that cannot be followed: the master named itself, or not a `HOST:PORT`. The
    /// string says which, for the caller's error.
    Unusable(String),
}

/// Reads the hint in `status`, answered by the master at `from`.
pub fn redirect(status: &tonic::Status, from: &str) -> Redirect {
    let Some(hint) = leader_hint(status) else {
        return Redirect::None;
    };
    match validate_addr(&hint) {
        Ok(leader) if leader != from => Redirect::To(leader),
        Ok(_) => Redirect::Unusable("names itself as leader".into()),
        Err(bad) => Redirect::Unusable(format!("bad leader address: {bad}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_hint(status: tonic::Status, hint: &str) -> tonic::Status {
        let mut status = status;
        status
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, hint.parse().expect("ascii"));
        status
    }

    #[test]
    fn only_unavailable_with_a_leader_is_a_hint() {
        // Proves the redirect rule: UNAVAILABLE + non-empty drover-leader, nothing else.
        let s = with_hint(
            tonic::Status::unavailable("not leading"),
            " 127.0.0.1:5060 ",
        );
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:5060"));
        let empty = with_hint(tonic::Status::unavailable("nobody leads"), "");
        assert_eq!(leader_hint(&empty), None);
        assert_eq!(leader_hint(&tonic::Status::unavailable("x")), None);
        let other = with_hint(tonic::Status::internal("x"), "127.0.0.1:1");
        assert_eq!(leader_hint(&other), None);
    }

    #[test]
    fn redirects_name_another_valid_master() {
        // Proves a hint is followed only when it is a HOST:PORT other than the answering master.
        let s = with_hint(tonic::Status::unavailable("not leading"), "127.0.0.1:6000");
        assert_eq!(
            redirect(&s, "127.0.0.1:5000"),
            Redirect::To("127.0.0.1:6000".into())
        );
        assert_eq!(
            redirect(&s, "127.0.0.1:6000"),
            Redirect::Unusable("names itself as leader".into())
        );
        let garbage = with_hint(tonic::Status::unavailable("x"), "nonsense");
        assert!(
            matches!(redirect(&garbage, "a:1"), Redirect::Unusable(m) if m.contains("bad leader address"))
        );
        assert_eq!(
            redirect(&tonic::Status::unavailable("no leader"), "a:1"),
            Redirect::None
        );
    }
}
