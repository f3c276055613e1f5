//! The user commands' way to the leading master's Operator API.
//!
//! The rules are `drover_client`'s leader search (shared with the SDK and the agent), for a
//! short-lived command:
//! 1. The `--masters` addresses are tried in turn. A master that does not lead answers
//!    `UNAVAILABLE` with the leader's `HOST:PORT` in `drover-leader`; that address is tried next,
//!    at once, at most `REDIRECTS_MAX_DEFAULT` times in a row (two masters with stale views cannot
//!    bounce a command for ever).
//! 2. After a round in which nobody answered as leader, wait (jittered below a ceiling that
//!    starts at `--retry-backoff-min-ms` and doubles up to `--retry-backoff-max-ms`) and try
//!    again. The whole search, attempts included, ends by `--leader-wait-ms` after the call
//!    started; then it fails with one line saying what each master answered.
//! 3. Every connection attempt and every call has its own deadline (`--connect-timeout-ms`,
//!    `--request-timeout-ms`).
//!
//! Other errors (a leader that refuses the request) end the command at once.

use drover_client::status_text;
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use drover_client::MasterChannel;
use drover_client::{
    Answer, Endpoints, EndpointsError, LeaderSearch, Outcome, REDIRECTS_MAX_DEFAULT, SearchError,
    SearchLimits, Transport, find_leader, leader_hint, random_seed, validate_addr,
};
use drover_proto::v1;
use drover_proto::v1::acl_api_client::AclApiClient;
use drover_proto::v1::operator_client::OperatorClient;

use super::Context;

/// How a user command reaches the leading master. Flattened into every command that asks it.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Deadline of one connection attempt to a master.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,
    /// Deadline of one call to a master.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// How long to keep looking for the leading master (while none leads, e.g. during a
    /// failover) before giving up; bounds the attempts too.
    #[arg(long, default_value_t = 5_000)]
    pub leader_wait_ms: u64,
    /// First wait after a round of masters found no leader (doubles up to the max).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_backoff_min_ms: u64,
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_backoff_max_ms: u64,
}

impl Default for ConnectArgs {
    fn default() -> Self {
        ConnectArgs {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 10_000,
            leader_wait_ms: 5_000,
            retry_backoff_min_ms: 100,
            retry_backoff_max_ms: 1_000,
        }
    }
}

/// What one master answered when asked directly (no redirect followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterAnswer {
    /// It does not lead and names the leader.
    Following { leader: String },
    /// It answers, but no master leads right now (as far as it knows).
    NoLeader { message: String },
    /// It could not be reached, or failed otherwise.
    Unreachable { error: String },
}

impl MasterAnswer {
    /// One phrase for logs and the final error.
    pub fn describe(&self) -> String {
        match self {
            MasterAnswer::Following { leader } => format!("does not lead (names {leader})"),
            MasterAnswer::NoLeader { .. } => "answers, but no master leads".into(),
            MasterAnswer::Unreachable { error } => error.clone(),
        }
    }
}

/// A connection to the Operator API of whichever master leads.
pub struct Operator {
    transport: Transport,
    /// Remembers the last leader (tried first by the next call) between calls.
    search: LeaderSearch,
}

impl Operator {
    /// Checks `--masters` and the connection flags; connects nothing yet.
    pub fn new(ctx: &Context, args: &ConnectArgs) -> anyhow::Result<Operator> {
        let masters = match Endpoints::parse(&ctx.masters) {
            Ok(m) => m,
            Err(EndpointsError::Empty) => bail!("--masters is empty; give at least one host:port"),
            Err(e) => bail!("--masters: {e}"),
        };
        if args.retry_backoff_min_ms > args.retry_backoff_max_ms {
            bail!(
                "--retry-backoff-min-ms ({}) is greater than --retry-backoff-max-ms ({})",
                args.retry_backoff_min_ms,
                args.retry_backoff_max_ms
            );
        }
        if args.leader_wait_ms == 0 {
            bail!("--leader-wait-ms must be more than 0");
        }
        let limits = SearchLimits {
            redirects_max: REDIRECTS_MAX_DEFAULT,
            backoff_min: Duration::from_millis(args.retry_backoff_min_ms),
            backoff_max: Duration::from_millis(args.retry_backoff_max_ms),
            total_wait: Some(Duration::from_millis(args.leader_wait_ms)),
        };
        let transport = Transport {
            tls: ctx.tls.clone(),
            token: ctx.token.clone(),
            ..Transport::plaintext(
                Duration::from_millis(args.connect_timeout_ms),
                Duration::from_millis(args.request_timeout_ms),
            )
        };
        Ok(Operator {
            search: LeaderSearch::new(&masters, &limits, random_seed()),
            transport,
        })
    }

    /// The leading master's `ClusterState`.
    pub async fn state(&mut self) -> anyhow::Result<v1::ClusterState> {
        self.call(|mut c| async move { c.get_state(v1::GetStateRequest {}).await })
            .await
    }

    /// The address of the master that answered the last call as leader.
    pub fn leader(&self) -> Option<&str> {
        self.search.leader()
    }

    /// Runs `rpc` on the leading master, following redirects and waiting (bounded) while none
    /// leads. See the module doc for the rules.
    pub async fn call<T, F, Fut>(&mut self, rpc: F) -> anyhow::Result<T>
    where
        F: FnMut(OperatorClient<MasterChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(operator_client, rpc).await
    }

    /// `call`, on the ACL API (`drover acl ...`).
    pub async fn acl<T, F, Fut>(&mut self, rpc: F) -> anyhow::Result<T>
    where
        F: FnMut(AclApiClient<MasterChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(
            |channel| {
                AclApiClient::new(channel)
                    .max_decoding_message_size(drover_proto::MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(drover_proto::MESSAGE_BYTES_MAX)
            },
            rpc,
        )
        .await
    }

    async fn call_with<C, T, F, Fut>(
        &mut self,
        make: fn(MasterChannel) -> C,
        mut rpc: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let found = find_leader(&mut self.search, &self.transport, |channel, addr| {
            let call = rpc(make(channel));
            async move {
                match call.await {
                    Ok(response) => Outcome::Done(response.into_inner()),
                    Err(status) => outcome(&status, &addr),
                }
            }
        })
        .await;
        match found {
            Ok(value) => Ok(value),
            Err(SearchError::Stopped { addr, error }) => bail!("{addr}: {error}"),
            Err(SearchError::GaveUp { answers, .. }) if !answers.is_empty() => {
                let answers = answers
                    .into_iter()
                    .map(|(addr, a)| (addr, MasterAnswer::from(a)))
                    .collect();
                bail!("{}", no_leader_error(&answers))
            }
            Err(SearchError::GaveUp { last_error, .. }) => {
                bail!("cannot reach any master ({last_error})")
            }
        }
    }
}

/// An Operator API client on `channel`, with the message size limits set.
fn operator_client(channel: MasterChannel) -> OperatorClient<MasterChannel> {
    OperatorClient::new(channel)
        .max_decoding_message_size(drover_proto::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(drover_proto::MESSAGE_BYTES_MAX)
}

impl From<Answer> for MasterAnswer {
    fn from(answer: Answer) -> MasterAnswer {
        match answer {
            Answer::Redirected { leader } => MasterAnswer::Following { leader },
            Answer::NotLeading(message) => MasterAnswer::NoLeader { message },
            Answer::Unreachable(error) => MasterAnswer::Unreachable { error },
        }
    }
}

/// What a failed call at `addr` means for the leader search.
fn outcome<T>(status: &tonic::Status, addr: &str) -> Outcome<T, String> {
    match classify(status) {
        MasterAnswer::Following { leader } if leader != addr => Outcome::Redirect(leader),
        MasterAnswer::Following { leader } => {
            Outcome::NotLeading(format!("names itself ({leader}) as leader"))
        }
        MasterAnswer::NoLeader { message } => Outcome::NotLeading(message),
        // A leader that refuses the request itself: asking elsewhere or later will not help.
        MasterAnswer::Unreachable { error } if is_refusal(status) => Outcome::Stop(error),
        MasterAnswer::Unreachable { error } => Outcome::Unreachable(error),
    }
}

/// What a failed call says about the master that answered it.
fn classify(status: &tonic::Status) -> MasterAnswer {
    if status.code() == tonic::Code::Unavailable {
        if let Some(leader) = leader_hint(status).and_then(|l| validate_addr(&l).ok()) {
            return MasterAnswer::Following { leader };
        }
        // A master's own refusal says so in its message; a transport failure has no metadata and
        // a source error.
        if is_master_answer(status) {
            return MasterAnswer::NoLeader {
                message: status.message().to_string(),
            };
        }
    }
    MasterAnswer::Unreachable {
        error: status_text(status),
    }
}

/// True when `status` came from a master (it answered), not from a broken transport.
fn is_master_answer(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    // tonic turns transport failures into UNAVAILABLE statuses that carry the transport error
    // as their source; a master's own UNAVAILABLE has none.
    status.source().is_none()
}

/// Codes with which a master refuses the request itself (not "ask someone else").
fn is_refusal(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::OutOfRange
    )
}

/// The one-line failure when no master answered as leader.
fn no_leader_error(answers: &BTreeMap<String, MasterAnswer>) -> String {
    let any_answered = answers
        .values()
        .any(|a| !matches!(a, MasterAnswer::Unreachable { .. }));
    let details = answers
        .iter()
        .map(|(addr, a)| format!("{addr} {}", a.describe()))
        .collect::<Vec<_>>()
        .join("; ");
    if any_answered {
        format!("no master leads right now ({details})")
    } else {
        format!("cannot reach any master ({details})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_client::LEADER_METADATA_KEY;

    fn unavailable_with_leader(leader: &str) -> tonic::Status {
        let mut s = tonic::Status::unavailable("not leading");
        s.metadata_mut()
            .insert(LEADER_METADATA_KEY, leader.parse().expect("ascii"));
        s
    }

    #[test]
    fn unavailable_is_a_redirect_only_with_a_valid_leader() {
        // Proves the redirect rule: UNAVAILABLE + a HOST:PORT in drover-leader names the leader;
        // without it (or with garbage) the master answers but nobody leads; other codes do not
        // redirect.
        assert_eq!(
            classify(&unavailable_with_leader("127.0.0.1:5060")),
            MasterAnswer::Following {
                leader: "127.0.0.1:5060".into()
            }
        );
        assert!(matches!(
            classify(&unavailable_with_leader("nonsense")),
            MasterAnswer::NoLeader { .. }
        ));
        assert!(matches!(
            classify(&tonic::Status::unavailable("no master leads")),
            MasterAnswer::NoLeader { .. }
        ));
        assert!(matches!(
            classify(&tonic::Status::internal("boom")),
            MasterAnswer::Unreachable { .. }
        ));
    }

    #[test]
    fn bad_flags_are_refused_naming_the_flag() {
        // Proves --masters is validated through Endpoints (naming the bad entry) and a zero
        // --leader-wait-ms is refused, before anything connects.
        let ctx = |masters: &str| Context {
            masters: masters.into(),
            output: super::super::Output::Human,
            tls: None,
            token: None,
        };
        let err = |masters: &str, args: &ConnectArgs| match Operator::new(&ctx(masters), args) {
            Ok(_) => panic!("{masters:?} accepted"),
            Err(e) => e.to_string(),
        };
        let args = ConnectArgs::default();
        assert_eq!(
            err(" , ", &args),
            "--masters is empty; give at least one host:port"
        );
        assert_eq!(
            err("a:1,localhost", &args),
            "--masters: \"localhost\" is not HOST:PORT (no port)"
        );
        let zero = ConnectArgs {
            leader_wait_ms: 0,
            ..ConnectArgs::default()
        };
        assert_eq!(err("a:1", &zero), "--leader-wait-ms must be more than 0");
        assert!(Operator::new(&ctx("127.0.0.1:5050,[::1]:5050"), &args).is_ok());
    }

    #[test]
    fn the_final_error_tells_unreachable_from_leaderless() {
        let mut answers = BTreeMap::new();
        answers.insert(
            "a:1".to_string(),
            MasterAnswer::Unreachable {
                error: "connection refused".into(),
            },
        );
        assert_eq!(
            no_leader_error(&answers),
            "cannot reach any master (a:1 connection refused)"
        );
        answers.insert(
            "b:1".to_string(),
            MasterAnswer::NoLeader {
                message: "x".into(),
            },
        );
        assert_eq!(
            no_leader_error(&answers),
            "no master leads right now (a:1 connection refused; b:1 answers, but no master leads)"
        );
    }

    #[tokio::test]
    async fn nobody_listening_fails_after_the_leader_wait_with_one_line() {
        // Proves the wait is bounded by --leader-wait-ms and the error names the address.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let ctx = Context {
            masters: format!("127.0.0.1:{port}"),
            output: super::super::Output::Human,
            tls: None,
            token: None,
        };
        let args = ConnectArgs {
            leader_wait_ms: 300,
            ..ConnectArgs::default()
        };
        let mut op = Operator::new(&ctx, &args).expect("valid");
        let started = std::time::Instant::now();
        let err = op.state().await.expect_err("nobody listens").to_string();
        assert!(started.elapsed() < Duration::from_secs(5), "bounded wait");
        assert!(
            err.starts_with("cannot reach any master (127.0.0.1:"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}
