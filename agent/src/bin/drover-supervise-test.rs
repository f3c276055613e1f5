//! Test-only stand-in for the hidden `drover supervise` subcommand: reads a `SupervisorSpec` as
//! JSON from the file named by the first argument (after an optional `supervise`, so a test can
//! start it with the production argv `drover supervise SPEC`), supervises the task, prints the exit record as
//! JSON on stdout. Exit status 0 when a record was written, 1 otherwise. Lets `agent/tests/` run a
//! real, separate supervisor process without the root binary.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a test tool: the exit record on stdout and failures on stderr are its output"
)]

use std::process::ExitCode;

use drover_agent::{SupervisorSpec, run_supervisor};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "supervise") {
        args.next();
    }
    let Some(path) = args.next() else {
        eprintln!("usage: drover-supervise-test [supervise] SPEC.json");
        return ExitCode::FAILURE;
    };
    let spec: SupervisorSpec = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("cannot read spec {}: {e}", path.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    match run_supervisor(spec) {
        Ok(record) => {
            println!("{}", serde_json::to_string(&record).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                msg.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("supervisor failed: {msg}");
            ExitCode::FAILURE
        }
    }
}
