//! What a master's failed answer means for the SDK: follow a redirect, retry, or surface one of
//! its errors. The leader-search rules themselves (round robin, redirects in a row, jittered
//! backoff) and reading the `drover-leader` hint live in `drover-client`; `connection` and
//! `calls` drive them.

use drover_client::Redirect;

/// What a failed RPC means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Another master leads: retry there.
    Redirect(String),
    /// Transient (no leader yet, connection broken, master busy): retry elsewhere or later.
    Retry(String),
    /// The master does not know the framework id.
    NotFound(String),
    /// The request itself is wrong.
    InvalidArgument(String),
    /// The master will not do it, and asking again will not help.
    Refused(tonic::Code, String),
}

impl Verdict {
    fn map(self, f: impl FnOnce(String) -> String) -> Verdict {
        match self {
            Verdict::Redirect(leader) => Verdict::Redirect(leader),
            Verdict::Retry(m) => Verdict::Retry(f(m)),
            Verdict::NotFound(m) => Verdict::NotFound(f(m)),
            Verdict::InvalidArgument(m) => Verdict::InvalidArgument(f(m)),
            Verdict::Refused(code, m) => Verdict::Refused(code, f(m)),
        }
    }
}

/// Classifies `status` from the master at `addr`; messages start with `addr`.
pub(crate) fn classify(status: &tonic::Status, addr: &str) -> Verdict {
    verdict(status, addr).map(|m| format!("{addr}: {m}"))
}

/// Classifies `status` from the master at `addr`; messages leave the address out.
pub(crate) fn verdict(status: &tonic::Status, addr: &str) -> Verdict {
    use tonic::Code;
    let message = if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    };
    match status.code() {
        Code::Unavailable => match drover_client::redirect(status, addr) {
            Redirect::To(leader) => Verdict::Redirect(leader),
            Redirect::Unusable(why) => Verdict::Retry(format!("{message} ({why})")),
            Redirect::None => Verdict::Retry(message),
        },
        Code::NotFound => Verdict::NotFound(message),
        Code::InvalidArgument | Code::OutOfRange => Verdict::InvalidArgument(message),
        Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::Unimplemented => Verdict::Refused(status.code(), message),
        // Unknown, Internal, Cancelled, Aborted, DeadlineExceeded, ResourceExhausted, DataLoss,
        // Ok: what a broken connection or a busy master looks like.
        _ => Verdict::Retry(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_client::LEADER_METADATA_KEY;

    #[test]
    fn statuses_are_classified() {
        // Proves UNAVAILABLE + drover-leader redirects, UNAVAILABLE alone retries, and the other
        // codes map to not-found / invalid argument / refused / retry.
        let mut redirect = tonic::Status::unavailable("not leading");
        redirect.metadata_mut().insert(
            LEADER_METADATA_KEY,
            "127.0.0.1:6000".parse().expect("ascii"),
        );
        assert_eq!(
            classify(&redirect, "127.0.0.1:5000"),
            Verdict::Redirect("127.0.0.1:6000".into())
        );
        assert!(matches!(
            classify(&redirect, "127.0.0.1:6000"),
            Verdict::Retry(m) if m.contains("names itself")
        ));
        let mut empty = tonic::Status::unavailable("no leader");
        empty
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, "".parse().expect("ascii"));
        assert_eq!(
            classify(&empty, "a:1"),
            Verdict::Retry("a:1: no leader".into())
        );
        assert_eq!(verdict(&empty, "a:1"), Verdict::Retry("no leader".into()));
        let mut garbage = tonic::Status::unavailable("x");
        garbage
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, "nonsense".parse().expect("ascii"));
        assert!(
            matches!(classify(&garbage, "a:1"), Verdict::Retry(m) if m.contains("bad leader address"))
        );
        assert_eq!(
            classify(&tonic::Status::not_found("framework f1"), "a:1"),
            Verdict::NotFound("a:1: framework f1".into())
        );
        assert_eq!(
            classify(&tonic::Status::invalid_argument("offer_ids: empty"), "a:1"),
            Verdict::InvalidArgument("a:1: offer_ids: empty".into())
        );
        assert!(matches!(
            classify(&tonic::Status::unimplemented(""), "a:1"),
            Verdict::Refused(tonic::Code::Unimplemented, _)
        ));
        assert!(matches!(
            classify(&tonic::Status::internal("h2 protocol error"), "a:1"),
            Verdict::Retry(_)
        ));
    }
}
