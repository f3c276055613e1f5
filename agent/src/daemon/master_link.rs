//! The agent's connection to the leading master: find it, open `AgentApi.Attach`, register.
//!
//! [`connect`] tries the masters in `--masters` in turn (a redirect hint first, when the last
//! stream ended with one). A master that does not lead answers `UNAVAILABLE` with the leader's
//! address in the `drover-leader` metadata; that address is tried next at once. When a whole round
//! finds no leader, [`connect`] sleeps with bounded exponential backoff (with jitter, so agents do
//! not reconnect in lockstep after a failover) and starts over. Every attempt has a deadline.
//!
//! An attempt sends the latest hello (`Register` or `Reregister`, read from a `watch` channel the
//! driver keeps current) as the first message and waits for `Registered` (success) or
//! `AgentRefused` (fatal: [`LinkError::Refused`]).

use std::time::Duration;

use drover_proto::MESSAGE_BYTES_MAX;
use drover_proto::v1::{self, agent_api_client::AgentApiClient, master_message};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, timeout_at};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

/// Metadata key naming the leading master in a non-leader's `UNAVAILABLE` answer.
pub const LEADER_METADATA_KEY: &str = "drover-leader";
/// Messages the agent may have queued towards the master on one stream (updates, heartbeats).
pub const OUTBOUND_MESSAGES_MAX: usize = 1024;

/// Timing of the connection to the masters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// `host:port` of every master.
    pub masters: Vec<String>,
    /// Deadline of the TCP/HTTP2 connect of one attempt.
    pub connect_timeout: Duration,
    /// Deadline, from the start of one attempt, for the master's answer to the hello.
    pub registration_timeout: Duration,
    /// First backoff after a round of attempts found no leader; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// HTTP/2 keepalive pings on the stream, so a dead master is noticed without traffic.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// A registered stream to the leading master.
#[derive(Debug)]
pub struct Link {
    /// The master's address.
    pub addr: String,
    pub registered: v1::Registered,
    /// Messages to the master (bounded; the driver uses `try_send`).
    pub out: mpsc::Sender<v1::AgentMessage>,
    /// Messages from the master after `Registered`.
    pub inbound: Streaming<v1::MasterMessage>,
}

/// Why [`connect`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The master refused the agent; retrying with the same id would be refused again.
    #[error("master {master} refused this agent: {message}")]
    Refused { master: String, message: String },
    #[error("no master address to connect to")]
    NoMasters,
}

enum Attempt {
    Registered(Box<Link>),
    Refused(String),
    Redirect(String),
    Failed(String),
}

/// Connects and registers with the leading master; loops (with backoff) until it succeeds or a
/// master refuses the agent. `hint` is tried first. `initial_delay` is slept before the first try.
pub async fn connect(
    config: LinkConfig,
    hello: watch::Receiver<v1::AgentMessage>,
    hint: Option<String>,
    initial_delay: Duration,
) -> Result<Link, LinkError> {
    if config.masters.is_empty() {
        return Err(LinkError::NoMasters);
    }
    if !initial_delay.is_zero() {
        sleep(initial_delay).await;
    }
    let mut backoff = config.backoff_min;
    let mut hint = hint;
    loop {
        // One round: the hint, then every configured master; redirects are followed at once but
        // at most once per address per round, so two confused masters cannot ping-pong forever.
        let mut queue: Vec<String> = Vec::new();
        queue.extend(hint.take());
        for m in &config.masters {
            if !queue.contains(m) {
                queue.push(m.clone());
            }
        }
        let mut tried: Vec<String> = Vec::new();
        let mut last_failure = String::new();
        let mut next = 0;
        while next < queue.len() {
            let addr = queue[next].clone();
            next += 1;
            if tried.contains(&addr) {
                continue;
            }
            tried.push(addr.clone());
            let first = hello.borrow().clone();
            match attempt(&config, &addr, first).await {
                Attempt::Registered(link) => return Ok(*link),
                Attempt::Refused(message) => {
                    return Err(LinkError::Refused {
                        master: addr,
                        message,
                    });
                }
                Attempt::Redirect(leader) => {
                    tracing::debug!(master = %addr, %leader, "not the leader, following the redirect");
                    last_failure = format!("{addr}: redirected to {leader}");
                    if !tried.contains(&leader) {
                        queue.insert(next, leader);
                    }
                }
                Attempt::Failed(reason) => {
                    tracing::debug!(master = %addr, %reason, "cannot register with this master");
                    last_failure = format!("{addr}: {reason}");
                }
            }
        }
        let delay = jittered(backoff);
        tracing::info!(
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            last_failure = %last_failure,
            "no leading master answered; retrying"
        );
        sleep(delay).await;
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// `d` scaled by a random factor in [0.5, 1.0].
fn jittered(d: Duration) -> Duration {
    let factor: f64 = rand::rng().random_range(0.5..=1.0);
    d.mul_f64(factor)
}

async fn attempt(config: &LinkConfig, addr: &str, hello: v1::AgentMessage) -> Attempt {
    let start = Instant::now();
    let deadline = start + config.registration_timeout;
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e,
        Err(e) => return Attempt::Failed(format!("bad master address {addr:?}: {e}")),
    };
    let endpoint = endpoint
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true);
    let channel = match timeout_at(start + config.connect_timeout, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Attempt::Failed(format!("connect: {}", source_chain(&e))),
        Err(_) => return Attempt::Failed("connect: timed out".into()),
    };
    let mut client = AgentApiClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let (out, out_rx) = mpsc::channel(OUTBOUND_MESSAGES_MAX);
    if out.try_send(hello).is_err() {
        return Attempt::Failed("cannot queue the hello".into());
    }
    let response = match timeout_at(deadline, client.attach(ReceiverStream::new(out_rx))).await {
        Ok(Ok(r)) => r,
        Ok(Err(status)) => return classify(&status),
        Err(_) => return Attempt::Failed("no answer to Attach in time".into()),
    };
    let mut inbound = response.into_inner();
    let first = match timeout_at(deadline, inbound.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => return Attempt::Failed("the master closed the stream".into()),
        Ok(Err(status)) => return classify(&status),
        Err(_) => return Attempt::Failed("no Registered in time".into()),
    };
    match first.message {
        Some(master_message::Message::Registered(registered)) => {
            Attempt::Registered(Box::new(Link {
                addr: addr.to_owned(),
                registered,
                out,
                inbound,
            }))
        }
        Some(master_message::Message::Refused(r)) => Attempt::Refused(r.message),
        other => Attempt::Failed(format!(
            "the master answered the hello with {other:?} instead of Registered"
        )),
    }
}

fn classify(status: &Status) -> Attempt {
    match leader_hint(status) {
        Some(leader) => Attempt::Redirect(leader),
        None => Attempt::Failed(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// The leader a non-leading master named in an `UNAVAILABLE` answer, if any.
pub fn leader_hint(status: &Status) -> Option<String> {
    if status.code() != Code::Unavailable {
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

fn source_chain(e: &dyn std::error::Error) -> String {
    super::runs::error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_with_a_leader_is_a_redirect() {
        // Proves the redirect rule: UNAVAILABLE + non-empty drover-leader, nothing else.
        let mut s = Status::unavailable("not leading");
        s.metadata_mut()
            .insert(LEADER_METADATA_KEY, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:5060"));
        let mut empty = Status::unavailable("nobody leads");
        empty
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, "".parse().unwrap());
        assert_eq!(leader_hint(&empty), None);
        assert_eq!(leader_hint(&Status::unavailable("x")), None);
        let mut other = Status::internal("x");
        other
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, "127.0.0.1:1".parse().unwrap());
        assert_eq!(leader_hint(&other), None);
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        // Proves the backoff jitter never exceeds the bound nor drops below half of it.
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
        }
    }
}
