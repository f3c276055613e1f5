//! The harnesses behind `drover bench`: each module takes a plain config (no flags), runs the
//! measurement against real processes, a real disk or a real master, and returns its figures as
//! a result struct. Rendering them (tables, `--output json`) is the binary's. Lines meant for the
//! person watching (progress, what was started where) go to the caller's `notify`, whole lines
//! for stderr; the harnesses never print.
//!
//! `coord`: coord throughput, latency and leader failover against an ensemble. `scheduler`:
//! placement throughput of a master with simulated agents (`scheduler::sim_agents`) and SDK
//! frameworks. `deploy`: a deploy's timeline on a `LocalCluster`. `disk`: what a durable coord
//! write costs on a disk.

use hdrhistogram::Histogram;

pub mod coord;
pub mod deploy;
pub mod disk;
pub mod scheduler;

/// Highest latency the coord and disk histograms track; slower ops are recorded at this value.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// A latency histogram in µs from 1 to [`LATENCY_US_MAX`], 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Bounds and precision are constants: failure here is a bug.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}
