//! The user commands' way to the leading master's Operator API.
//!
//! The rules are the SDK's (`drover_sdk`'s leader search), for a short-lived command:
//! 1. The `--masters` addresses are tried in turn. A master that does not lead answers
//!    `UNAVAILABLE` with the leader's `HOST:PORT` in `drover-leader`; that address is tried next,
//!    at once, at most `REDIRECTS_MAX` times in a row (two masters with stale views cannot bounce
//!    a command for ever).
//! 2. After a round in which nobody answered as leader, wait (`--retry-backoff-min-ms`, doubling
//!    up to `--retry-backoff-max-ms`) and try again, until `--leader-wait-ms` has passed since the
//!    command started. Then fail with one line saying what each master answered.
//! 3. Every connection attempt and every call has its own deadline (`--connect-timeout-ms`,
//!    `--request-timeout-ms`).
//!
//! Other errors (a leader that refuses the request) end the command at once.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use drover_proto::v1;
use drover_proto::v1::operator_client::OperatorClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::Context;

/// The response metadata key in which a non-leading master names the leader.
pub const LEADER_METADATA_KEY: &str = "drover-leader";

/// Redirects followed in a row before the attempt counts as failed.
pub const REDIRECTS_MAX: u32 = 3;

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
    /// failover) before giving up.
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
    masters: Vec<String>,
    args: ConnectArgs,
    /// One lazily connected channel per address seen (configured masters and redirect targets).
    channels: BTreeMap<String, Channel>,
    /// The master that answered last as leader: tried first by the next call.
    leader: Option<String>,
}

impl Operator {
    /// Checks `--masters`; connects nothing yet.
    pub fn new(ctx: &Context, args: &ConnectArgs) -> anyhow::Result<Operator> {
        let masters = ctx.master_addrs();
        if masters.is_empty() {
            bail!("--masters is empty; give at least one host:port");
        }
        for m in &masters {
            check_addr(m).map_err(|e| anyhow::anyhow!("--masters: {e}"))?;
        }
        if args.retry_backoff_min_ms > args.retry_backoff_max_ms {
            bail!(
                "--retry-backoff-min-ms ({}) is greater than --retry-backoff-max-ms ({})",
                args.retry_backoff_min_ms,
                args.retry_backoff_max_ms
            );
        }
        Ok(Operator {
            masters,
            args: args.clone(),
            channels: BTreeMap::new(),
            leader: None,
        })
    }

    /// The leading master's `ClusterState`.
    pub async fn state(&mut self) -> anyhow::Result<v1::ClusterState> {
        self.call(|mut c| async move { c.get_state(v1::GetStateRequest {}).await })
            .await
    }

    /// The address of the master that answered the last call as leader.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// Runs `rpc` on the leading master, following redirects and waiting (bounded) while none
    /// leads. See the module doc for the rules.
    pub async fn call<T, F, Fut>(&mut self, mut rpc: F) -> anyhow::Result<T>
    where
        F: FnMut(OperatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + Duration::from_millis(self.args.leader_wait_ms);
        let mut backoff = Duration::from_millis(self.args.retry_backoff_min_ms);
        let backoff_max = Duration::from_millis(self.args.retry_backoff_max_ms);
        // What each address answered last, for the final error.
        let mut answers: BTreeMap<String, MasterAnswer> = BTreeMap::new();
        loop {
            let mut round: Vec<String> = Vec::new();
            if let Some(l) = self.leader.take() {
                round.push(l);
            }
            round.extend(self.masters.iter().cloned());
            let mut i = 0;
            let mut redirects = 0u32;
            while i < round.len() {
                let addr = round[i].clone();
                i += 1;
                let client = self.client(&addr)?;
                let timeout = Duration::from_millis(self.args.request_timeout_ms);
                let result = match tokio::time::timeout(timeout, rpc(client)).await {
                    Ok(r) => r,
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                        "no answer within {timeout:?}"
                    ))),
                };
                match result {
                    Ok(response) => {
                        self.leader = Some(addr);
                        return Ok(response.into_inner());
                    }
                    Err(status) => {
                        let answer = classify(&status);
                        if let MasterAnswer::Following { leader } = &answer
                            && *leader != addr
                            && redirects < REDIRECTS_MAX
                        {
                            redirects += 1;
                            // Tried next, at once.
                            round.insert(i, leader.clone());
                        } else if matches!(answer, MasterAnswer::Unreachable { .. })
                            && is_refusal(&status)
                        {
                            // A leader that refuses the request itself: asking elsewhere or
                            // later will not help.
                            bail!("{addr}: {}", status_text(&status));
                        }
                        answers.insert(addr, answer);
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("{}", no_leader_error(&answers));
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(backoff_max);
        }
    }

    fn client(&mut self, addr: &str) -> anyhow::Result<OperatorClient<Channel>> {
        let channel = match self.channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| anyhow::anyhow!("{addr:?} is not a master address: {e}"))?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_millis(self.args.connect_timeout_ms))
                    .connect_lazy();
                self.channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(OperatorClient::new(channel)
            .max_decoding_message_size(drover_proto::MESSAGE_BYTES_MAX)
            .max_encoding_message_size(drover_proto::MESSAGE_BYTES_MAX))
    }
}

/// Checks a master address is `HOST:PORT` (IPv6 hosts in brackets).
fn check_addr(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not HOST:PORT (no port)"));
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("{addr:?} is not HOST:PORT (bad host)"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{addr:?} is not HOST:PORT (write IPv6 hosts in brackets)"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "{addr:?} is not HOST:PORT ({port:?} is not a port 1..=65535)"
        )),
    }
}

/// What a failed call says about the master that answered it.
fn classify(status: &tonic::Status) -> MasterAnswer {
    if status.code() == tonic::Code::Unavailable {
        let leader = status
            .metadata()
            .get(LEADER_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && check_addr(v).is_ok());
        if let Some(leader) = leader {
            return MasterAnswer::Following {
                leader: leader.to_string(),
            };
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

/// A status as one line: its message, or its code, with the transport cause when there is one.
fn status_text(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    };
    // The deepest cause says most ("Connection refused (os error 111)").
    let mut cause = status.source();
    let mut deepest = None;
    while let Some(c) = cause {
        deepest = Some(c.to_string());
        cause = c.source();
    }
    if let Some(d) = deepest
        && !text.contains(&d)
    {
        text = format!("{text}: {d}");
    }
    text.replace('\n', " ")
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
    fn master_addresses_must_be_host_port() {
        assert!(check_addr("127.0.0.1:5050").is_ok());
        assert!(check_addr("[::1]:5050").is_ok());
        assert!(check_addr("localhost").is_err());
        assert!(check_addr(":5050").is_err());
        assert!(check_addr("h:0").is_err());
        assert!(check_addr("::1:5050").is_err());
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
