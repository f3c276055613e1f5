//! The leader-search rules: which address to try next, when to follow a `drover-leader`
//! redirect, how long to wait when nobody leads, and when a short-lived caller gives up. Pure
//! logic: no clock (the driver passes the time elapsed), no global RNG (the jitter comes from a
//! generator seeded at construction), no I/O. `driver::find_leader` runs it.
//!
//! The rules:
//! 1. A redirect (`UNAVAILABLE` with a `drover-leader` address) is tried next, at once. At most
//!    `redirects_max` redirects are followed in a row, so two masters with stale views cannot
//!    bounce a client forever; past that, or when a master names itself, the attempt counts as
//!    failed.
//! 2. Otherwise the addresses are tried in turn (round robin).
//! 3. After as many failed attempts as there are addresses (a full round), wait: the ceiling of
//!    the first wait is `backoff_min`, each next one doubles, capped at `backoff_max`; the wait
//!    itself is drawn between half the ceiling and the ceiling (jitter, so clients that lost the
//!    same leader do not come back in lockstep). Success resets it.
//! 4. With a `total_wait` (short-lived callers): once that much time has passed, or when the
//!    next wait would reach it, the search gives up (sleeping only to give up says nothing new).
//! 5. After a success the next search (a reconnect, the next call) starts at the address that
//!    led, which is usually still the leader and otherwise refuses fast.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Redirects followed in a row when the caller has no setting of its own.
pub const REDIRECTS_MAX_DEFAULT: u32 = 3;

/// The smallest fraction of the backoff ceiling a jittered wait can be.
pub const JITTER_FLOOR: f64 = 0.5;

/// The bounds of one search. See the module doc for how each is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchLimits {
    /// Redirects followed in a row before the attempt counts as failed.
    pub redirects_max: u32,
    /// Ceiling of the first wait after a failed round; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a search may take before it gives up; `None`: search until found.
    pub total_wait: Option<Duration>,
}

/// Why a [`SearchLimits`] is unusable; names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("backoff_min must be more than zero")]
    BackoffMinZero,
    #[error("backoff_max ({max:?}) is less than backoff_min ({min:?})")]
    BackoffMaxBelowMin { min: Duration, max: Duration },
    #[error("total_wait must be more than zero")]
    TotalWaitZero,
}

impl SearchLimits {
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.backoff_min.is_zero() {
            return Err(LimitsError::BackoffMinZero);
        }
        if self.backoff_max < self.backoff_min {
            return Err(LimitsError::BackoffMaxBelowMin {
                min: self.backoff_min,
                max: self.backoff_max,
            });
        }
        if self.total_wait.is_some_and(|t| t.is_zero()) {
            return Err(LimitsError::TotalWaitZero);
        }
        Ok(())
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Attempt the call at this address.
    Try(String),
    /// Nobody led in a whole round: sleep this long, then ask again.
    Wait(Duration),
    /// The total wait is used up.
    GiveUp,
}

/// Bounded exponential backoff with jitter: ceilings `min`, doubling, never above `max`; each
/// wait is drawn in `[ceiling * JITTER_FLOOR, ceiling]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// The ceiling of the next wait; always within `[min.min(max), max]`.
    ceiling: Duration,
    rng: StdRng,
}

impl Backoff {
    /// `seed` drives the jitter: a fixed seed gives a fixed sequence (tests), a random one
    /// (`rand::random()`) spreads clients apart.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            min,
            max,
            ceiling: min.min(max),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = self.ceiling.saturating_mul(2).min(self.max);
        ceiling.mul_f64(self.rng.random_range(JITTER_FLOOR..=1.0))
    }

    pub fn reset(&mut self) {
        self.ceiling = self.min.min(self.max);
    }
}

/// Where to look for the leader next. See the module doc for the rules.
///
/// Invariant: `masters` is not empty (it comes from `Endpoints`) and `cursor < masters.len()`.
#[derive(Debug, Clone)]
pub struct LeaderSearch {
    masters: Vec<String>,
    cursor: usize,
    /// Tried before the round robin: a redirect target, or the last leader when reconnecting.
    preferred: Option<String>,
    /// The address that answered as leader last.
    leader: Option<String>,
    redirects_in_a_row: u32,
    redirects_max: u32,
    failed_in_round: usize,
    total_wait: Option<Duration>,
    backoff: Backoff,
}

impl LeaderSearch {
    pub fn new(masters: &crate::Endpoints, limits: &SearchLimits, seed: u64) -> LeaderSearch {
        let masters = masters.to_vec();
        assert!(!masters.is_empty(), "Endpoints is never empty");
        LeaderSearch {
            masters,
            cursor: 0,
            preferred: None,
            leader: None,
            redirects_in_a_row: 0,
            redirects_max: limits.redirects_max,
            failed_in_round: 0,
            total_wait: limits.total_wait,
            backoff: Backoff::new(limits.backoff_min, limits.backoff_max, seed),
        }
    }

    /// The next step of a search that started `elapsed` ago.
    pub fn next_step(&mut self, elapsed: Duration) -> Step {
        if self.total_wait.is_some_and(|t| elapsed >= t) {
            return self.give_up();
        }
        if let Some(addr) = self.preferred.take() {
            return Step::Try(addr);
        }
        if self.failed_in_round >= self.masters.len() {
            self.failed_in_round = 0;
            self.redirects_in_a_row = 0;
            let wait = self.backoff.next_wait();
            if self
                .total_wait
                .is_some_and(|t| elapsed.saturating_add(wait) >= t)
            {
                return self.give_up();
            }
            return Step::Wait(wait);
        }
        let addr = self.masters[self.cursor].clone();
        self.cursor = (self.cursor + 1) % self.masters.len();
        Step::Try(addr)
    }

    /// A later search (the next call of a short-lived caller) starts afresh.
    fn give_up(&mut self) -> Step {
        self.failed_in_round = 0;
        self.redirects_in_a_row = 0;
        self.backoff.reset();
        Step::GiveUp
    }

    /// `from` answered that `to` leads.
    pub fn redirected(&mut self, from: &str, to: String) {
        if to == from || self.redirects_in_a_row >= self.redirects_max {
            self.failed();
            return;
        }
        self.redirects_in_a_row += 1;
        self.preferred = Some(to);
    }

    /// The attempt failed without naming a leader.
    pub fn failed(&mut self) {
        self.failed_in_round += 1;
        self.redirects_in_a_row = 0;
    }

    /// The attempt at `addr` succeeded; the next search starts there.
    pub fn connected(&mut self, addr: &str) {
        self.failed_in_round = 0;
        self.redirects_in_a_row = 0;
        self.backoff.reset();
        self.preferred = Some(addr.to_string());
        self.leader = Some(addr.to_string());
    }

    /// A hint from outside an attempt (a leader named by the status that ended a stream).
    pub fn prefer(&mut self, addr: String) {
        self.preferred = Some(addr);
    }

    /// Changes the total wait of the searches from now on (e.g. a bounded first connect, then
    /// unbounded reconnects).
    pub fn set_total_wait(&mut self, total_wait: Option<Duration>) {
        self.total_wait = total_wait;
    }

    /// How long one search may take; `None`: until found.
    pub fn total_wait(&self) -> Option<Duration> {
        self.total_wait
    }

    /// The address whose attempt succeeded last, if any did.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Endpoints;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limits(total_wait: Option<Duration>) -> SearchLimits {
        SearchLimits {
            redirects_max: 2,
            backoff_min: ms(100),
            backoff_max: ms(350),
            total_wait,
        }
    }

    fn search(masters: &[&str]) -> LeaderSearch {
        let e = Endpoints::from_list(masters).expect("valid");
        LeaderSearch::new(&e, &limits(None), 7)
    }

    fn try_(addr: &str) -> Step {
        Step::Try(addr.to_string())
    }

    /// A wait drawn from the ceiling `ceiling`, or a panic naming the step.
    fn wait_within(step: Step, ceiling: Duration) {
        match step {
            Step::Wait(w) => assert!(
                w >= ceiling.mul_f64(JITTER_FLOOR) && w <= ceiling,
                "{w:?} not within [{:?}, {ceiling:?}]",
                ceiling.mul_f64(JITTER_FLOOR)
            ),
            other => panic!("expected a wait below {ceiling:?}, got {other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_within_bounds_and_resets() {
        // Proves each wait lies in [ceiling/2, ceiling], the ceilings double up to the cap, a
        // reset starts over, and the jitter really varies (seeds give different waits).
        for seed in 0..50 {
            let mut b = Backoff::new(ms(100), ms(350), seed);
            for ceiling in [100, 200, 350, 350, 350] {
                wait_within(Step::Wait(b.next_wait()), ms(ceiling));
            }
            b.reset();
            wait_within(Step::Wait(b.next_wait()), ms(100));
            let mut tiny_cap = Backoff::new(ms(100), ms(10), seed);
            wait_within(Step::Wait(tiny_cap.next_wait()), ms(10));
        }
        let draws: std::collections::BTreeSet<Duration> = (0..20)
            .map(|seed| Backoff::new(ms(1000), ms(1000), seed).next_wait())
            .collect();
        assert!(draws.len() > 10, "the jitter hardly varies: {draws:?}");
        let same_seed = |s| Backoff::new(ms(1000), ms(1000), s).next_wait();
        assert_eq!(same_seed(3), same_seed(3), "a seed fixes the sequence");
    }

    #[test]
    fn round_robin_then_backoff_while_nobody_leads() {
        // Proves every address is tried once per round, and a wait (growing) follows each failed round.
        let mut s = search(&["a:1", "b:1", "c:1"]);
        for (round, ceiling) in [100, 200, 350].into_iter().enumerate() {
            for addr in ["a:1", "b:1", "c:1"] {
                assert_eq!(s.next_step(ms(0)), try_(addr), "round {round}");
                s.failed();
            }
            wait_within(s.next_step(ms(0)), ms(ceiling));
        }
    }

    #[test]
    fn redirects_are_followed_at_once_but_not_forever() {
        // Proves a redirect is tried next without waiting; a ping-pong between stale masters stops
        // after redirects_max and counts as a failure; a self-redirect counts as a failure.
        let mut s = search(&["a:1", "b:1"]);
        assert_eq!(s.next_step(ms(0)), try_("a:1"));
        s.redirected("a:1", "x:1".into());
        assert_eq!(s.next_step(ms(0)), try_("x:1"));
        s.redirected("x:1", "a:1".into());
        assert_eq!(s.next_step(ms(0)), try_("a:1"));
        // Third redirect in a row: over redirects_max = 2, so a failure, and the round robin goes on.
        s.redirected("a:1", "x:1".into());
        assert_eq!(s.next_step(ms(0)), try_("b:1"));
        s.redirected("b:1", "b:1".into());
        // Two failures in a round of two addresses: wait.
        wait_within(s.next_step(ms(0)), ms(100));
        assert_eq!(s.next_step(ms(0)), try_("a:1"));
        s.redirected("a:1", "y:1".into());
        assert_eq!(s.next_step(ms(0)), try_("y:1"));
    }

    #[test]
    fn a_reconnect_starts_at_the_last_leader() {
        // Proves success resets the backoff and the next search tries the last leader first, even
        // one that was only known through a redirect.
        let mut s = search(&["a:1", "b:1"]);
        for _ in 0..2 {
            let Step::Try(_) = s.next_step(ms(0)) else {
                panic!("expected an attempt")
            };
            s.failed();
        }
        wait_within(s.next_step(ms(0)), ms(100));
        // The next ceiling would be 200 ms, but the success below resets it.
        assert_eq!(s.next_step(ms(0)), try_("a:1"));
        s.redirected("a:1", "z:9".into());
        assert_eq!(s.next_step(ms(0)), try_("z:9"));
        s.connected("z:9");
        assert_eq!(s.leader(), Some("z:9"));
        assert_eq!(s.next_step(ms(0)), try_("z:9"));
        s.failed();
        assert_eq!(s.next_step(ms(0)), try_("b:1"));
        s.failed();
        wait_within(s.next_step(ms(0)), ms(100));
        s.prefer("c:3".into());
        assert_eq!(s.next_step(ms(0)), try_("c:3"));
    }

    #[test]
    fn the_total_wait_is_respected() {
        // Proves a search with a total wait gives up once it is used up, and gives up instead of
        // a wait that would reach it; afterwards a new search starts with a fresh backoff.
        let e = Endpoints::from_list(["a:1"]).expect("valid");
        let mut s = LeaderSearch::new(&e, &limits(Some(ms(300))), 1);
        assert_eq!(s.next_step(ms(0)), try_("a:1"));
        s.failed();
        wait_within(s.next_step(ms(10)), ms(100));
        assert_eq!(s.next_step(ms(299)), try_("a:1"));
        s.failed();
        // The next wait (ceiling 200 ms, at least 100 ms) would end past 300 ms.
        assert_eq!(s.next_step(ms(250)), Step::GiveUp);
        // Out of time even with an attempt due.
        s.prefer("b:2".into());
        assert_eq!(s.next_step(ms(300)), Step::GiveUp);
        // A new search (elapsed from zero again) starts over, and its first wait is the smallest.
        assert_eq!(s.next_step(ms(0)), try_("b:2"));
        s.failed();
        wait_within(s.next_step(ms(0)), ms(100));
    }

    #[test]
    fn limits_are_checked() {
        // Proves unusable limits are refused, naming the setting.
        assert_eq!(limits(None).validate(), Ok(()));
        let mut l = limits(None);
        l.backoff_min = Duration::ZERO;
        assert_eq!(l.validate(), Err(LimitsError::BackoffMinZero));
        let mut l = limits(None);
        l.backoff_max = ms(1);
        assert!(
            l.validate()
                .unwrap_err()
                .to_string()
                .starts_with("backoff_max")
        );
        assert_eq!(
            limits(Some(Duration::ZERO)).validate(),
            Err(LimitsError::TotalWaitZero)
        );
    }
}
