//! The master's maxima, in one place, with units. At a limit the allocator refuses with a named
//! error (`AllocatorError::AgentsMax`, …) or, for outstanding offers, stops offering to that
//! framework and records `SkipReason::OfferLimit`; it never grows silently. The master core
//! refuses what the allocator does not see: an agent past `agents_max` gets `AgentRefused`
//! naming it, a framework past `frameworks_max` a subscribe error, a launch past
//! `tasks_per_framework_max` a `TASK_ERROR` with that reason.

/// Registered agents. Mesos runs 35,000+ in production; the target bench is 5,000.
pub const AGENTS_MAX: usize = 50_000;
/// Registered frameworks.
pub const FRAMEWORKS_MAX: usize = 1_000;
/// Offers one framework may hold at once (one per agent at most, so this caps hoarding).
pub const OFFERS_OUTSTANDING_PER_FRAMEWORK_MAX: usize = 10_000;
/// Non-terminal tasks one framework may hold; a launch past it is refused with `TASK_ERROR`
/// naming the limit. 50,000 agents × 20 tasks; it bounds the master's task table per framework.
pub const TASKS_PER_FRAMEWORK_MAX: usize = 1_000_000;
/// Longest decline filter: 31 days, as Mesos (`refuse_seconds` above it is refused).
pub const REFUSE_SECONDS_MAX: u64 = 31 * 24 * 60 * 60;
/// Largest role or framework weight; weights must be finite and > 0.
pub const WEIGHT_MAX: f64 = 1_000_000.0;

/// The limits one allocator enforces; `Default` is the constants above. Tests lower them.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub agents_max: usize,
    pub frameworks_max: usize,
    pub offers_outstanding_per_framework_max: usize,
    pub tasks_per_framework_max: usize,
    pub refuse_seconds_max: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            agents_max: AGENTS_MAX,
            frameworks_max: FRAMEWORKS_MAX,
            offers_outstanding_per_framework_max: OFFERS_OUTSTANDING_PER_FRAMEWORK_MAX,
            tasks_per_framework_max: TASKS_PER_FRAMEWORK_MAX,
            refuse_seconds_max: REFUSE_SECONDS_MAX,
        }
    }
}
