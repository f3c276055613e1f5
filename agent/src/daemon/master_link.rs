//! The agent's connection to the leading master: find it, open `AgentApi.Attach`, register.
//!
//! [`connect`] runs `drover_client`'s leader search over `--masters` (a redirect hint first,
//! when the last stream ended with one): a master that does not lead answers `UNAVAILABLE` with
//! the leader's address in the `drover-leader` metadata, and that address is tried next at once;
//! when a whole round finds no leader it sleeps with bounded, jittered exponential backoff (so
//! agents do not reconnect in lockstep after a failover) and starts over, until it succeeds or a
//! master refuses the agent. Every attempt has a deadline (connect, then registration).
//!
//! An attempt sends the latest hello (`Register` or `Reregister`, read from a `watch` channel the
//! driver keeps current) as the first message and waits for `Registered` (success) or
//! `AgentRefused` (fatal: [`LinkError::Refused`]).

use std::time::Duration;

use drover_client::MasterChannel;
use drover_client::{
    Endpoints, EndpointsError, Keepalive, LeaderSearch, Outcome, REDIRECTS_MAX_DEFAULT, Redirect,
    SearchError, SearchLimits, Transport, find_leader, random_seed,
};
use drover_proto::MESSAGE_BYTES_MAX;
use drover_proto::v1::{self, agent_api_client::AgentApiClient, master_message};
use tokio::sync::{mpsc, watch};
use tokio::time::sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

pub use drover_client::leader_hint;

/// Messages the agent may have queued towards the master on one stream (updates, heartbeats).
pub const OUTBOUND_MESSAGES_MAX: usize = 1024;

/// Timing of the connection to the masters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// `host:port` of every master.
    pub masters: Vec<String>,
    /// Deadline of the TCP/HTTP2 connect of one attempt.
    pub connect_timeout: Duration,
    /// Deadline, once connected, for the master's answer to the hello.
    pub registration_timeout: Duration,
    /// Ceiling of the first backoff after a round of attempts found no leader; doubles up to
    /// `backoff_max`. Each wait is jittered below its ceiling.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// HTTP/2 keepalive pings on the stream, so a dead master is noticed without traffic.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// The agent's certificate, presented to the masters; `None`: plaintext.
    pub tls: Option<drover_security::TlsConfig>,
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
    #[error("masters: {0}")]
    BadMasters(#[source] EndpointsError),
}

/// Connects and registers with the leading master; loops (with backoff) until it succeeds or a
/// master refuses the agent. `hint` is tried first. `initial_delay` is slept before the first try.
pub async fn connect(
    config: LinkConfig,
    hello: watch::Receiver<v1::AgentMessage>,
    hint: Option<String>,
    initial_delay: Duration,
) -> Result<Link, LinkError> {
    let masters = Endpoints::from_list(&config.masters).map_err(LinkError::BadMasters)?;
    if !initial_delay.is_zero() {
        sleep(initial_delay).await;
    }
    let limits = SearchLimits {
        redirects_max: REDIRECTS_MAX_DEFAULT,
        backoff_min: config.backoff_min,
        backoff_max: config.backoff_max,
        total_wait: None,
    };
    let mut search = LeaderSearch::new(&masters, &limits, random_seed());
    if let Some(hint) = hint {
        search.prefer(hint);
    }
    let transport = Transport {
        connect_timeout: config.connect_timeout,
        call_timeout: config.registration_timeout,
        keepalive: Some(Keepalive {
            interval: config.keepalive_interval,
            timeout: config.keepalive_timeout,
        }),
        tls: config.tls.clone(),
        // Agents are known by their certificates; they carry no token.
        token: None,
    };
    let found = find_leader(&mut search, &transport, |channel, addr| {
        let first = hello.borrow().clone();
        attempt(channel, addr, first)
    })
    .await;
    match found {
        Ok(link) => Ok(link),
        Err(SearchError::Stopped { addr, error }) => Err(LinkError::Refused {
            master: addr,
            message: error,
        }),
        Err(SearchError::GaveUp { .. }) => {
            unreachable!("a search without a total wait never gives up")
        }
    }
}

/// One attempt on a connected `channel`: attach, send `hello`, wait for `Registered`. The driver
/// bounds it by the registration timeout.
async fn attempt(
    channel: MasterChannel,
    addr: String,
    hello: v1::AgentMessage,
) -> Outcome<Link, String> {
    let mut client = AgentApiClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let (out, out_rx) = mpsc::channel(OUTBOUND_MESSAGES_MAX);
    if out.try_send(hello).is_err() {
        return Outcome::Unreachable("cannot queue the hello".into());
    }
    let mut inbound = match client.attach(ReceiverStream::new(out_rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return failed(&status, &addr),
    };
    let first = match inbound.message().await {
        Ok(Some(m)) => m,
        Ok(None) => return Outcome::Unreachable("the master closed the stream".into()),
        Err(status) => return failed(&status, &addr),
    };
    match first.message {
        Some(master_message::Message::Registered(registered)) => Outcome::Done(Link {
            addr,
            registered,
            out,
            inbound,
        }),
        Some(master_message::Message::Refused(r)) => Outcome::Stop(r.message),
        other => Outcome::Unreachable(format!(
            "the master answered the hello with {other:?} instead of Registered"
        )),
    }
}

/// What a failed `Attach` means for the search: a redirect, or a failure to count.
fn failed(status: &Status, addr: &str) -> Outcome<Link, String> {
    let text = format!("{:?}: {}", status.code(), status.message());
    match drover_client::redirect(status, addr) {
        Redirect::To(leader) => Outcome::Redirect(leader),
        Redirect::Unusable(why) => Outcome::NotLeading(format!("{text} ({why})")),
        Redirect::None if status.code() == tonic::Code::Unavailable => Outcome::NotLeading(text),
        Redirect::None => Outcome::Unreachable(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_client::LEADER_METADATA_KEY;

    #[test]
    fn only_unavailable_naming_another_master_is_a_redirect() {
        // Proves the agent follows UNAVAILABLE + a valid drover-leader naming another master,
        // and counts anything else (no hint, itself, garbage, other codes) as a failure.
        let with = |status: Status, hint: &str| {
            let mut status = status;
            status
                .metadata_mut()
                .insert(LEADER_METADATA_KEY, hint.parse().expect("ascii"));
            status
        };
        let s = with(Status::unavailable("not leading"), "127.0.0.1:5060");
        assert!(
            matches!(failed(&s, "127.0.0.1:5050"), Outcome::Redirect(l) if l == "127.0.0.1:5060")
        );
        assert!(matches!(
            failed(&s, "127.0.0.1:5060"),
            Outcome::NotLeading(_)
        ));
        let garbage = with(Status::unavailable("x"), "nonsense");
        assert!(
            matches!(failed(&garbage, "a:1"), Outcome::NotLeading(m) if m.contains("bad leader address"))
        );
        let other = with(Status::internal("x"), "127.0.0.1:1");
        assert!(matches!(failed(&other, "a:1"), Outcome::Unreachable(_)));
    }

    #[tokio::test]
    async fn bad_masters_are_refused_before_any_attempt() {
        // Proves connect names the bad --masters entry instead of searching forever.
        let (_tx, rx) = watch::channel(v1::AgentMessage::default());
        let config = LinkConfig {
            masters: vec!["a:1".into(), "nohost".into()],
            connect_timeout: Duration::from_secs(1),
            registration_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(10),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            tls: None,
        };
        let err = connect(config, rx, None, Duration::ZERO)
            .await
            .expect_err("bad address");
        assert_eq!(
            err.to_string(),
            "masters: \"nohost\" is not HOST:PORT (no port)"
        );
    }
}
