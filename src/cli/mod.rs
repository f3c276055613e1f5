//! One module per command family; each parses its own flags and calls into the libraries.

pub mod acl;
pub mod agent;
pub mod agents;
#[allow(
    clippy::print_stdout,
    reason = "a benchmark prints its report for people (or as JSON)"
)]
pub mod bench;
#[allow(
    clippy::print_stdout,
    reason = "a benchmark prints its report for people (or as JSON)"
)]
pub mod bench_deploy;
#[allow(
    clippy::print_stdout,
    reason = "a benchmark prints its report for people (or as JSON)"
)]
pub mod bench_disk;
#[allow(
    clippy::print_stdout,
    reason = "a benchmark prints its report for people (or as JSON)"
)]
pub mod bench_scheduler;
pub mod cluster;
pub mod coord;
pub mod framework;
#[allow(
    clippy::print_stdout,
    reason = "the dashboard URL and `export DROVER_MASTERS=` lines for people"
)]
pub mod local;
pub mod logs;
pub mod master;
pub mod operator;
pub mod render;
pub mod service;
pub mod service_wait;
pub mod services;
#[allow(
    clippy::print_stdout,
    reason = "the exit record on stdout is what `drover supervise` returns"
)]
pub mod supervise;
pub mod task;
pub mod tls;

/// How user commands print their results.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Human,
    Json,
}

/// Global flags every user command sees.
pub struct Context {
    /// Comma-separated `host:port` list.
    pub masters: String,
    pub output: Output,
    /// Loaded from `tls_args`; `None`: TLS is off.
    pub tls: Option<drover_security::TlsConfig>,
    /// `--token` / `DROVER_TOKEN`: sent as `authorization: Bearer` on every call to a master.
    pub token: Option<drover_security::Secret>,
}

impl Context {
    pub fn master_addrs(&self) -> Vec<String> {
        self.masters
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }
}
