//! Finding the leading master: which address to try next, when to follow a `drover-leader`
//! redirect, and how long to wait when nobody leads. Pure logic, no I/O, so it is tested without
//! a network; `connection` drives it.
//!
//! The rules:
//! 1. A redirect (`UNAVAILABLE` with a `drover-leader` address) is tried next, at once. At most
//!    `redirects_max` redirects are followed in a row, so two masters with stale views cannot
//!    bounce a client forever; past that, or when a master names itself, the attempt counts as
//!    failed.
//! 2. Otherwise the `--masters` addresses are tried in turn (round robin).
//! 3. After as many failed attempts as there are addresses (a full round), wait: the first wait is
//!    `backoff_initial`, each next one doubles, capped at `backoff_max`. Success resets it.
//! 4. After a success the next search (a reconnect) starts at the address that led, which is
//!    usually still the leader after a broken stream and otherwise refuses fast.

use std::time::Duration;

/// The response metadata key in which a non-leading master names the leader (`HOST:PORT`).
pub const LEADER_METADATA_KEY: &str = "drover-leader";

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Try(String),
    Wait(Duration),
}

/// Bounded exponential backoff: `initial`, then doubling, never above `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial.min(max),
        }
    }

    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next.saturating_mul(2)).min(self.max);
        wait
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }
}

/// Where to look for the leader next. See the module doc for the rules.
///
/// Invariant: `masters` is not empty and `cursor < masters.len()`.
#[derive(Debug, Clone)]
pub(crate) struct LeaderSearch {
    masters: Vec<String>,
    cursor: usize,
    /// Tried before the round robin: a redirect target, or the last leader when reconnecting.
    preferred: Option<String>,
    redirects_in_a_row: u32,
    redirects_max: u32,
    failed_in_round: usize,
    backoff: Backoff,
}

impl LeaderSearch {
    pub(crate) fn new(masters: Vec<String>, redirects_max: u32, backoff: Backoff) -> LeaderSearch {
        assert!(
            !masters.is_empty(),
            "validated: at least one master address"
        );
        LeaderSearch {
            masters,
            cursor: 0,
            preferred: None,
            redirects_in_a_row: 0,
            redirects_max,
            failed_in_round: 0,
            backoff,
        }
    }

    pub(crate) fn next_step(&mut self) -> Step {
        if let Some(addr) = self.preferred.take() {
            return Step::Try(addr);
        }
        if self.failed_in_round >= self.masters.len() {
            self.failed_in_round = 0;
            self.redirects_in_a_row = 0;
            return Step::Wait(self.backoff.next_wait());
        }
        let addr = self.masters[self.cursor].clone();
        self.cursor = (self.cursor + 1) % self.masters.len();
        Step::Try(addr)
    }

    /// `from` answered that `to` leads.
    pub(crate) fn redirected(&mut self, from: &str, to: String) {
        if to == from || self.redirects_in_a_row >= self.redirects_max {
            self.failed();
            return;
        }
        self.redirects_in_a_row += 1;
        self.preferred = Some(to);
    }

    /// The attempt failed without naming a leader.
    pub(crate) fn failed(&mut self) {
        self.failed_in_round += 1;
        self.redirects_in_a_row = 0;
    }

    /// A subscription at `addr` succeeded; the next search starts there.
    pub(crate) fn connected(&mut self, addr: &str) {
        self.failed_in_round = 0;
        self.redirects_in_a_row = 0;
        self.backoff.reset();
        self.preferred = Some(addr.to_string());
    }

    /// A hint from outside an attempt (a leader named by the status that ended a stream).
    pub(crate) fn prefer(&mut self, addr: String) {
        self.preferred = Some(addr);
    }
}

/// Checks a master address is `HOST:PORT` (IPv6 hosts in brackets) and returns it trimmed.
pub(crate) fn validate_master_addr(addr: &str) -> Result<String, String> {
    let addr = addr.trim();
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not HOST:PORT (no port)"));
    };
    if host.is_empty() {
        return Err(format!("{addr:?} is not HOST:PORT (no host)"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{addr:?} is not HOST:PORT (write IPv6 hosts in brackets)"
        ));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("{addr:?} is not HOST:PORT (bad host)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(addr.to_string()),
        _ => Err(format!(
            "{addr:?} is not HOST:PORT ({port:?} is not a port 1..=65535)"
        )),
    }
}

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

/// Classifies `status` from the master at `addr`.
pub(crate) fn classify(status: &tonic::Status, addr: &str) -> Verdict {
    use tonic::Code;
    let message = if status.message().is_empty() {
        format!("{addr}: {}", status.code().description())
    } else {
        format!("{addr}: {}", status.message())
    };
    match status.code() {
        Code::Unavailable => {
            let leader = status
                .metadata()
                .get(LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty());
            match leader.map(validate_master_addr) {
                Some(Ok(leader)) if leader != addr => Verdict::Redirect(leader),
                Some(Ok(_)) => Verdict::Retry(format!("{message} (names itself as leader)")),
                Some(Err(bad)) => Verdict::Retry(format!("{message} (bad leader address: {bad})")),
                None => Verdict::Retry(message),
            }
        }
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn search(masters: &[&str]) -> LeaderSearch {
        LeaderSearch::new(
            masters.iter().map(|s| s.to_string()).collect(),
            2,
            Backoff::new(ms(100), ms(350)),
        )
    }

    fn try_(addr: &str) -> Step {
        Step::Try(addr.to_string())
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        // Proves the waits are initial, doubling, capped at max, and start over after a reset.
        let mut b = Backoff::new(ms(100), ms(350));
        let waits: Vec<_> = (0..5).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(350), ms(350), ms(350)]);
        b.reset();
        assert_eq!(b.next_wait(), ms(100));
        let mut tiny_cap = Backoff::new(ms(100), ms(10));
        assert_eq!(tiny_cap.next_wait(), ms(10));
    }

    #[test]
    fn round_robin_then_backoff_while_nobody_leads() {
        // Proves every address is tried once per round, and a wait (growing) follows each failed round.
        let mut s = search(&["a:1", "b:1", "c:1"]);
        for round in 0..3 {
            for addr in ["a:1", "b:1", "c:1"] {
                assert_eq!(s.next_step(), try_(addr), "round {round}");
                s.failed();
            }
            let want = [ms(100), ms(200), ms(350)][round];
            assert_eq!(s.next_step(), Step::Wait(want));
        }
    }

    #[test]
    fn redirects_are_followed_at_once_but_not_forever() {
        // Proves a redirect is tried next without waiting; a ping-pong between stale masters stops
        // after redirects_max and counts as a failure; a self-redirect counts as a failure.
        let mut s = search(&["a:1", "b:1"]);
        assert_eq!(s.next_step(), try_("a:1"));
        s.redirected("a:1", "x:1".into());
        assert_eq!(s.next_step(), try_("x:1"));
        s.redirected("x:1", "a:1".into());
        assert_eq!(s.next_step(), try_("a:1"));
        // Third redirect in a row: over redirects_max = 2, so a failure, and the round robin goes on.
        s.redirected("a:1", "x:1".into());
        assert_eq!(s.next_step(), try_("b:1"));
        s.redirected("b:1", "b:1".into());
        // Two failures in a round of two addresses: wait.
        assert_eq!(s.next_step(), Step::Wait(ms(100)));
        assert_eq!(s.next_step(), try_("a:1"));
        s.redirected("a:1", "y:1".into());
        assert_eq!(s.next_step(), try_("y:1"));
    }

    #[test]
    fn a_reconnect_starts_at_the_last_leader() {
        // Proves success resets the backoff and the next search tries the last leader first, even
        // one that was only known through a redirect.
        let mut s = search(&["a:1", "b:1"]);
        for _ in 0..2 {
            let Step::Try(_) = s.next_step() else {
                panic!("expected an attempt")
            };
            s.failed();
        }
        assert_eq!(s.next_step(), Step::Wait(ms(100)));
        assert_eq!(s.next_step(), try_("a:1"));
        s.redirected("a:1", "z:9".into());
        assert_eq!(s.next_step(), try_("z:9"));
        s.connected("z:9");
        assert_eq!(s.next_step(), try_("z:9"));
        s.failed();
        assert_eq!(s.next_step(), try_("b:1"));
        s.failed();
        // The backoff was reset by the success.
        assert_eq!(s.next_step(), Step::Wait(ms(100)));
        s.prefer("c:3".into());
        assert_eq!(s.next_step(), try_("c:3"));
    }

    #[test]
    fn master_addresses_are_host_port() {
        // Proves HOST:PORT is accepted (names, IPv4, bracketed IPv6) and anything else is refused.
        for ok in ["127.0.0.1:5050", "master-1:1", "[::1]:5050", " node:80 "] {
            assert_eq!(validate_master_addr(ok), Ok(ok.trim().to_string()));
        }
        for bad in [
            "",
            "5050",
            ":5050",
            "host:",
            "host:0",
            "host:70000",
            "::1:5050",
            "http://h:1",
            "a b:1",
        ] {
            assert!(validate_master_addr(bad).is_err(), "{bad:?} accepted");
        }
    }

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
            Verdict::Retry(_)
        ));
        let mut empty = tonic::Status::unavailable("no leader");
        empty
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, "".parse().expect("ascii"));
        assert_eq!(
            classify(&empty, "a:1"),
            Verdict::Retry("a:1: no leader".into())
        );
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
