//! The async driver of a leader search: [`find_leader`] runs a [`LeaderSearch`] against the
//! network, and the caller supplies what one attempt at one master is (the SDK subscribes, the
//! agent attaches and registers, the CLI makes its operator call).
//!
//! Duties, in order, for each step the search returns:
//! 1. `Wait`: log it at `info` and sleep it (the search already bounded and jittered it).
//! 2. `Try(addr)`: connect through [`Transport::connect`] (connect timeout), then run the
//!    attempt with the channel, bounded by [`Transport::call_timeout`]; both are also cut at the
//!    search's total deadline, when there is one.
//! 3. Report the outcome to the search: success ends the search; a redirect is followed; any
//!    other failure is recorded per address (for the caller's final error) and counts against
//!    the round; `Stop` ends the search at once.
//! 4. `GiveUp`: end with the last error and what every address answered.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::transport::MasterChannel;
use tokio::time::{Instant, sleep, timeout_at};
use tracing::{debug, info};

use crate::search::{LeaderSearch, Step};
use crate::transport::Transport;

/// How one attempt at one master ended. Messages leave out the address; the driver adds it.
#[derive(Debug)]
pub enum Outcome<T, E> {
    /// The master led and the attempt did what it was for.
    Done(T),
    /// The master does not lead and named this (valid, other) address as the leader.
    Redirect(String),
    /// The master answered, but cannot serve now (it does not lead and names nobody usable).
    NotLeading(String),
    /// The master could not be reached or failed in transit (timeout, broken connection).
    Unreachable(String),
    /// Asking elsewhere or later will not help (the request itself is refused).
    Stop(E),
}

/// What one address answered last during a search, for the caller's final error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It does not lead and named `leader`.
    Redirected { leader: String },
    /// It answered, but no usable leader.
    NotLeading(String),
    /// It could not be reached.
    Unreachable(String),
}

impl Answer {
    /// One phrase for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Answer::Redirected { leader } => format!("not leading, redirected to {leader}"),
            Answer::NotLeading(message) | Answer::Unreachable(message) => message.clone(),
        }
    }
}

/// Why a search ended without success.
#[derive(Debug)]
pub enum SearchError<E> {
    /// An attempt returned [`Outcome::Stop`]; `addr` is where.
    Stopped { addr: String, error: E },
    /// The total wait passed. `last_error` is the last attempt's failure (with its address);
    /// `answers` holds what each address answered last.
    GaveUp {
        waited: Duration,
        last_error: String,
        answers: BTreeMap<String, Answer>,
    },
}

impl<E: std::fmt::Display> std::fmt::Display for SearchError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchError::Stopped { addr, error } => write!(f, "{addr}: {error}"),
            SearchError::GaveUp {
                waited, last_error, ..
            } => write!(
                f,
                "no leading master found within {waited:?}; last error: {last_error}"
            ),
        }
    }
}

/// A seed for a [`LeaderSearch`]'s jitter, different in every process and call.
pub fn random_seed() -> u64 {
    rand::random()
}

/// Runs `search` until an attempt succeeds (`Ok` with its value; `search.leader()` is where),
/// an attempt says stop, or the search's total wait passes. See the module doc.
pub async fn find_leader<T, E, F, Fut>(
    search: &mut LeaderSearch,
    transport: &Transport,
    mut attempt: F,
) -> Result<T, SearchError<E>>
where
    F: FnMut(MasterChannel, String) -> Fut,
    Fut: Future<Output = Outcome<T, E>>,
{
    let started = Instant::now();
    let deadline = search.total_wait().map(|t| started + t);
    let mut last_error: Option<String> = None;
    let mut answers: BTreeMap<String, Answer> = BTreeMap::new();
    loop {
        let addr = match search.next_step(started.elapsed()) {
            Step::GiveUp => {
                return Err(SearchError::GaveUp {
                    waited: started.elapsed(),
                    last_error: last_error.unwrap_or_else(|| "no master answered".into()),
                    answers,
                });
            }
            Step::Wait(wait) => {
                // `info`: one line per failed round (bounded by the backoff), so an operator sees
                // why a daemon is not connected yet.
                info!(
                    delay_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    last_error = last_error.as_deref().unwrap_or(""),
                    "no leading master answered; retrying"
                );
                sleep(wait).await;
                continue;
            }
            Step::Try(addr) => addr,
        };
        let one = async {
            let channel = match transport.connect(&addr).await {
                Ok(channel) => channel,
                Err(e) => return Outcome::Unreachable(e.reason()),
            };
            let call_deadline = Instant::now() + transport.call_timeout;
            match timeout_at(call_deadline, attempt(channel, addr.clone())).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    Outcome::Unreachable(format!("no answer within {:?}", transport.call_timeout))
                }
            }
        };
        let outcome = match deadline {
            None => one.await,
            Some(d) => match timeout_at(d, one).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // The last complete attempt's error says more than this one's.
                    let last_error = last_error
                        .unwrap_or_else(|| format!("{addr}: no answer before the deadline"));
                    return Err(SearchError::GaveUp {
                        waited: started.elapsed(),
                        last_error,
                        answers,
                    });
                }
            },
        };
        let answer = match outcome {
            Outcome::Done(value) => {
                search.connected(&addr);
                return Ok(value);
            }
            Outcome::Stop(error) => return Err(SearchError::Stopped { addr, error }),
            Outcome::Redirect(leader) => {
                debug!(from = %addr, to = %leader, "following the leader redirect");
                search.redirected(&addr, leader.clone());
                Answer::Redirected { leader }
            }
            Outcome::NotLeading(message) => {
                debug!(master = %addr, %message, "not leading");
                search.failed();
                Answer::NotLeading(message)
            }
            Outcome::Unreachable(message) => {
                debug!(master = %addr, %message, "attempt failed");
                search.failed();
                Answer::Unreachable(message)
            }
        };
        last_error = Some(format!("{addr}: {}", answer.describe()));
        answers.insert(addr, answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::SearchLimits;
    use crate::{Endpoints, Transport};

    fn transport() -> Transport {
        Transport {
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(1),
            keepalive: None,
            tls: None,
            token: None,
        }
    }

    /// A port nobody listens on (bound, read, released).
    fn dead_addr() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        format!("127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn nobody_listening_gives_up_after_the_total_wait_naming_each_address() {
        // Proves the driver turns connect failures into per-address answers, backs off, and gives
        // up within the total wait with the last error.
        let (a, b) = (dead_addr(), dead_addr());
        let endpoints = Endpoints::from_list([&a, &b]).expect("valid");
        let limits = SearchLimits {
            redirects_max: 3,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(40),
            total_wait: Some(Duration::from_millis(300)),
        };
        let mut search = LeaderSearch::new(&endpoints, &limits, 1);
        let mut attempts = 0;
        let started = std::time::Instant::now();
        let result: Result<(), SearchError<()>> =
            find_leader(&mut search, &transport(), |_channel, _addr| {
                attempts += 1;
                async { Outcome::Done(()) }
            })
            .await;
        assert!(started.elapsed() < Duration::from_secs(5), "bounded");
        assert_eq!(attempts, 0, "no channel, so the attempt never ran");
        match result {
            Err(SearchError::GaveUp {
                last_error,
                answers,
                ..
            }) => {
                assert!(last_error.ends_with("connection refused"), "{last_error}");
                assert_eq!(
                    answers.get(&a),
                    Some(&Answer::Unreachable("connection refused".into()))
                );
                assert!(answers.contains_key(&b));
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
    }
}
