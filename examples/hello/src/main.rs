//! `hello`: the smallest fw. Keeps N copies of a command running: launches missing
//! instances from offers (spread over hosts), declines what it does not need, replaces instances
//! that end, suppresses offers while satisfied, and prints one line per status update.
//! Ctrl-C tears the framework down, which kills its tasks.
//!
//! `hello --masters 127.0.0.1:5050 --instances 3 --cpus 0.1 --mem 16MiB -- sleep 600`
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example whose output is one line per status update, and its errors"
)]
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use drover_sdk::{Command, Event, ExistingInstance, Filters, Framework, Placement, Resources};
use drover_sdk::{TaskId, TaskRequest, TaskSpec, place};

#[derive(Parser)]
#[command(about = "Keeps N copies of a command running on a Drover cluster")]
struct Args {
    /// Masters to find the leader at, HOST:PORT,...
    #[arg(long, env = "DROVER_MASTERS", default_value = "127.0.0.1:5050")]
    masters: String,
    /// `--tls-ca`, `--tls-cert`, `--tls-key` (or DROVER_TLS_*): a framework certificate.
    #[command(flatten)]
    tls: drover_sdk::TlsArgs,
    #[arg(long, default_value_t = 1)]
    instances: usize,
    #[arg(long, default_value_t = 0.1)]
    cpus: f64,
    #[arg(long, default_value = "16MiB", value_parser = |s: &str| Resources::parse_mem(s))]
    mem: u64,
    /// The command and its arguments (no shell), after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init(); // RUST_LOG=info shows the SDK's connection log
    let args = Args::parse();
    let request = TaskRequest::new(args.cpus, args.mem, 0).context("--cpus")?;
    let builder = Framework::builder()
        .name("hello")
        .masters([&args.masters])
        .tls(args.tls.load()?);
    let (fw, mut events) = builder.connect().await?;
    // Instances launched and not yet terminal, with where they run (for spreading).
    let mut live: BTreeMap<TaskId, ExistingInstance> = BTreeMap::new();
    let (mut next_index, mut suppressed) = (0u64, false);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::signal::ctrl_c() => return Ok(fw.teardown().await?),
        };
        match event {
            None => bail!("the event stream ended"),
            Some(Event::Error(message)) => bail!("the master ended the framework: {message}"),
            Some(Event::Update(status)) => {
                println!("{status}");
                if status.state.is_terminal() {
                    live.remove(&status.task_id);
                }
            }
            Some(Event::Reconnected) => {
                println!("reconnected; reconciling");
                report(fw.reconcile(Vec::new()).await);
            }
            Some(Event::Offers(offers)) => {
                let missing = u32::try_from(args.instances.saturating_sub(live.len()))?;
                let existing: Vec<_> = live.values().cloned().collect();
                let plan = place(&offers, &request, missing, &existing, &Placement::default());
                for offer in &offers {
                    let mine = plan.launches.iter().filter(|l| l.offer_id == offer.id);
                    let tasks = mine
                        .map(|launch| {
                            next_index += 1;
                            let id = format!("hello-{next_index}");
                            TaskSpec::new(id, Command::Argv(args.command.clone())).build_for(launch)
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let this = std::slice::from_ref(&offer.id);
                    let sent = match tasks.is_empty() {
                        true => fw.decline(this, Duration::from_secs(5)).await,
                        false => fw.launch(this, tasks.clone(), Filters::default()).await,
                    };
                    if report(sent) {
                        live.extend(tasks.iter().map(|t| (t.task_id.clone(), offer.into())));
                    }
                }
            }
            Some(other) => println!("{other:?}"),
        }
        let short = live.len() < args.instances;
        if short == suppressed {
            let done = match short {
                true => fw.revive().await,
                false => fw.suppress().await,
            };
            suppressed = if report(done) { !short } else { suppressed };
        }
    }
}

/// Prints a failed call (a later event fixes it: a reconnection, an offer); true if it worked.
fn report(result: Result<(), drover_sdk::CallError>) -> bool {
    result.inspect_err(|e| eprintln!("{e}")).is_ok()
}
