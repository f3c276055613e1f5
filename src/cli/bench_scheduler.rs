//! `drover bench scheduler` and the hidden `drover bench sim-agents`: the flags and the report
//! of `drover_devcluster::bench::scheduler`, which measures the placement throughput of a real
//! master (its own unless `--masters` names one) with simulated agents in a second process and
//! SDK frameworks in this one: placements per second, offer-to-launch latency, the master's
//! allocation-cycle p99 and its RSS.

use super::Context;
use anyhow::{Context as _, bail};
use drover_devcluster::bench::scheduler::{self, SchedulerConfig, SimAgentsConfig};
use drover_sdk::Resources;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct SchedulerBenchArgs {
    /// Simulated agents (in one separate process).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=50_000))]
    pub agents: u64,
    /// SDK frameworks sharing the work.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub frameworks: u64,
    /// Tasks to place in all.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub tasks: u64,
    /// Cpus each simulated agent offers.
    #[arg(long, default_value_t = 4.0)]
    pub agent_cpus: f64,
    /// Memory each simulated agent offers.
    #[arg(long, default_value = "16GiB")]
    pub agent_mem: String,
    /// Cpus per task.
    #[arg(long, default_value_t = 0.1)]
    pub task_cpus: f64,
    /// Memory per task.
    #[arg(long, default_value = "32MiB")]
    pub task_mem: String,
    /// Longest the run may take before it gives up.
    #[arg(long, default_value = "10m", value_parser = drover_types::units::parse_duration)]
    pub timeout: Duration,
    /// A flag for the bench's own master, e.g. `--master-arg=--allocation-interval-ms=20`.
    #[arg(long = "master-arg", allow_hyphen_values = true)]
    pub master_args: Vec<String>,
    /// Security on the bench's own master: `on` is TLS for it, its simulated agents and
    /// frameworks, and ACLs (`--acl`, frameworks with a token); off, on, or both (two runs,
    /// plaintext first, and what it costs).
    #[arg(long, value_enum, default_value_t = super::bench::TlsMode::Off)]
    pub tls: super::bench::TlsMode,
}

#[derive(clap::Args, Debug)]
pub struct SimAgentsArgs {
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    #[arg(long, default_value_t = 4.0)]
    pub cpus: f64,
    #[arg(long, default_value = "16GiB")]
    pub mem: String,
    /// HTTP/2 connections the agent links share.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub connections: u64,
}

/// `drover bench sim-agents`: `--count` agents over `--connections` HTTP/2 connections.
pub async fn sim_agents(ctx: &Context, args: SimAgentsArgs) -> anyhow::Result<()> {
    let addr = ctx
        .master_addrs()
        .into_iter()
        .next()
        .context("--masters is empty")?;
    let mem = Resources::parse_mem(&args.mem).map_err(|e| anyhow::anyhow!("--mem: {e}"))?;
    let millicpus = (args.cpus * 1000.0).round();
    if !(1.0..1e12).contains(&millicpus) {
        bail!("--cpus: {} is not a positive number of cpus", args.cpus);
    }
    let config = SimAgentsConfig {
        master: addr,
        count: args.count,
        millicpus: millicpus as u64,
        mem_bytes: mem,
        connections: args.connections,
        tls: ctx.tls.clone(),
    };
    scheduler::sim_agents(&config, Arc::new(|line| eprintln!("{line}"))).await
}

/// `masters_given`: the user named the master (`--masters` or `DROVER_MASTERS`), so the bench
/// uses it instead of starting its own.
pub async fn bench_scheduler(
    ctx: &Context,
    args: SchedulerBenchArgs,
    masters_given: bool,
) -> anyhow::Result<()> {
    let task_mem =
        Resources::parse_mem(&args.task_mem).map_err(|e| anyhow::anyhow!("--task-mem: {e}"))?;
    let task = Resources::new(args.task_cpus, task_mem, Default::default())
        .map_err(|e| anyhow::anyhow!("--task-cpus: {e}"))?;
    let agent_mem =
        Resources::parse_mem(&args.agent_mem).map_err(|e| anyhow::anyhow!("--agent-mem: {e}"))?;
    let agent = Resources::new(args.agent_cpus, agent_mem, Default::default())
        .map_err(|e| anyhow::anyhow!("--agent-cpus: {e}"))?;
    let capacity = scheduler::capacity(&agent, &task, args.agents);
    if capacity < args.tasks {
        bail!(
            "--tasks {} do not fit: {} agents hold {capacity} tasks of {} cpus / {}",
            args.tasks,
            args.agents,
            args.task_cpus,
            args.task_mem
        );
    }
    let master = if masters_given {
        let addr = ctx
            .master_addrs()
            .into_iter()
            .next()
            .context("--masters is empty")?;
        Some(addr)
    } else {
        None
    };
    let modes: &[bool] = match args.tls {
        super::bench::TlsMode::Off => &[false],
        super::bench::TlsMode::On => &[true],
        super::bench::TlsMode::Both => &[false, true],
    };
    let mut rates = Vec::new();
    for &tls in modes {
        if modes.len() > 1 && ctx.output == super::Output::Human {
            println!("TLS {}:", if tls { "on" } else { "off" });
        }
        let config = SchedulerConfig {
            master: master.clone(),
            agents: args.agents,
            frameworks: args.frameworks,
            tasks: args.tasks,
            agent: agent.clone(),
            task: task.clone(),
            timeout: args.timeout,
            master_args: args.master_args.clone(),
            tls,
        };
        let report = scheduler::run(&config, &|line| eprintln!("{line}")).await?;
        rates.push(report.placements_per_s);
        print_report(ctx, &args, &report, tls);
    }
    if let [off, on] = rates.as_slice()
        && ctx.output == super::Output::Human
    {
        println!(
            "TLS cost: {off:.0} placements/s off, {on:.0} on ({:+.1}%)",
            (on - off) / off * 100.0
        );
    }
    Ok(())
}

fn print_report(
    ctx: &Context,
    args: &SchedulerBenchArgs,
    report: &scheduler::SchedulerReport,
    tls: bool,
) {
    let (h, placements, elapsed) = (
        &report.offer_to_launch_us,
        report.placements_per_s,
        report.seconds,
    );
    let rss = report.master_rss_kib;
    let ms = |us: u64| us as f64 / 1000.0;
    if ctx.output == super::Output::Json {
        println!(
            "{}",
            serde_json::json!({
                "agents": args.agents, "tls": tls, "frameworks": args.frameworks, "tasks": args.tasks,
                "seconds": elapsed, "placements_per_s": placements,
                "offer_to_launch_ms": {"p50": ms(h.value_at_quantile(0.5)), "p99": ms(h.value_at_quantile(0.99))},
                "allocation_cycle_ms": {"p50": ms(report.allocation_cycle_p50_us), "p99": ms(report.allocation_cycle_p99_us), "max": ms(report.allocation_cycle_max_us), "cycles": report.allocation_cycles},
                "master_rss_mib": rss.map(|(r, _)| r as f64 / 1024.0),
                "master_peak_rss_mib": rss.map(|(_, p)| p as f64 / 1024.0),
            })
        );
    } else {
        println!(
            "{} tasks on {} agents by {} frameworks: {:.1} s, {:.0} placements/s (RUNNING)",
            args.tasks, args.agents, args.frameworks, elapsed, placements
        );
        println!(
            "offer-to-launch: p50 {:.2} ms, p99 {:.2} ms ({} accepts)",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            h.len()
        );
        println!(
            "allocation cycle: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} cycles)",
            ms(report.allocation_cycle_p50_us),
            ms(report.allocation_cycle_p99_us),
            ms(report.allocation_cycle_max_us),
            report.allocation_cycles
        );
        match rss {
            Some((now, peak)) => println!(
                "master RSS: {:.0} MiB now, {:.0} MiB peak",
                now as f64 / 1024.0,
                peak as f64 / 1024.0
            ),
            None => println!("master RSS: not measured (the master is not the bench's own)"),
        }
    }
}
