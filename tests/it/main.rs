//! The root package's integration tests, one module per area, built as one test binary: each test
//! binary links the whole dependency tree, so one binary instead of one per file saves those
//! links (most of a fresh build's time spent on tests). `tests/util` is what they share.
//!
//! A new test file goes in this directory with a `mod` line here.
#![allow(
    clippy::print_stderr,
    reason = "test diagnostics (process logs of a failed test); the harness captures them"
)]

#[path = "../util/mod.rs"]
mod util;

mod acl;
mod agent_daemon;
mod cli;
mod coord_cli;
mod coord_crash;
mod coord_ensemble;
mod local;
mod logs;
mod scheduler;
mod services;
mod task_users;
mod tls;
