//! The `drover` binary: parses flags, installs tracing, and hands over to the libraries.
#![allow(
    clippy::print_stderr,
    reason = "the binary's diagnostics and progress lines go to stderr; libraries use tracing"
)]

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "drover",
    version,
    about = "Drover: a two-level cluster resource scheduler"
)]
struct Cli {
    /// Masters to reach, comma-separated host:port list.
    #[arg(
        long,
        global = true,
        env = "DROVER_MASTERS",
        default_value = "127.0.0.1:5050"
    )]
    masters: String,
    /// Output format of user commands.
    #[arg(long, global = true, value_enum, default_value_t = cli::Output::Human)]
    output: cli::Output,
    #[command(flatten)]
    tls: drover_security::TlsArgs,
    /// ACL token (its secret) for masters started with `--acl`; sent as `authorization: Bearer`
    /// on every call. `drover acl bootstrap` prints the first one.
    #[arg(long, global = true, env = "DROVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a master: a coord replica (--peers for an ensemble) and, while its replica leads, the
    /// leading master (scheduler, agent and operator APIs).
    Master(cli::master::MasterArgs),
    /// Run an agent: register with the leading master (from --masters) and run its tasks;
    /// `drover agent ls` lists the cluster's agents.
    Agent(cli::agent::AgentCmd),
    /// Services run by the services framework: deploy, ls, status, scale, rm.
    Service {
        #[command(subcommand)]
        command: cli::service::ServiceCmd,
    },
    /// Run the services framework (keeps every service at its spec); run several for HA.
    Services(cli::services::ServicesArgs),
    /// Tasks the leading master knows: ls [--service NAME].
    Task {
        #[command(subcommand)]
        command: cli::task::TaskCmd,
    },
    /// Frameworks the leading master knows: ls.
    Framework {
        #[command(subcommand)]
        command: cli::framework::FrameworkCmd,
    },
    /// A task's stdout (or --stderr) from its agent's sandbox; --follow until the task ends.
    Logs(cli::logs::LogsArgs),
    /// The cluster at a glance: status (fails while no master leads).
    Cluster {
        #[command(subcommand)]
        command: cli::cluster::ClusterCmd,
    },
    /// Read and write the coord store: ls, get, create, set, rm, watch, getacl, setacl, digest.
    Coord(cli::coord::CoordArgs),
    /// Supervise one task (started by the agent; not for interactive use): reads the
    /// `SupervisorSpec` JSON from SPEC, runs the task, records its exit in the sandbox.
    #[command(hide = true)]
    Supervise {
        /// Path of the spec file.
        spec: std::path::PathBuf,
    },
    /// The whole cluster on this machine: masters, agents and the services framework as real
    /// processes, until Ctrl-C. `--masters N` here is how many masters to start (1 or 3).
    Local(cli::local::LocalArgs),
    /// Benchmarks against real processes.
    Bench {
        #[command(subcommand)]
        command: cli::bench::BenchCmd,
    },
    /// ACL tokens and policies (masters started with --acl): bootstrap, token create|ls|revoke,
    /// policy apply|ls|rm.
    Acl {
        #[command(subcommand)]
        command: cli::acl::AclCmd,
    },
    /// Certificates: `init DIR --masters HOSTS --agents N` writes a CA and role certificates.
    Tls {
        #[command(subcommand)]
        command: cli::tls::TlsCmd,
    },
}

/// The async runtime: one worker per core, or what `drover master --worker-threads` asks for.
fn runtime_for(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Master(args) = command
        && args.worker_threads > 0
    {
        builder.worker_threads(args.worker_threads);
    }
    builder.enable_all().build()
}

/// The log level when `RUST_LOG` is unset: processes that run until stopped log their life at
/// info; a user command prints its result and logs only what went wrong.
fn default_log_level(command: &Command) -> &'static str {
    match command {
        Command::Master(_)
        | Command::Services(_)
        | Command::Local(_)
        | Command::Supervise { .. } => "info",
        Command::Agent(agent) if agent.command.is_none() => "info",
        _ => "warn",
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(default_log_level(&cli.command))
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::Supervise { spec } = &cli.command {
        // The supervisor owns its signals and children: it runs before (and without) any async
        // runtime, as a process of its own.
        std::process::exit(cli::supervise::run(spec));
    }
    let runtime = match runtime_for(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        let tls = cli.tls.load()?;
        let token = cli
            .token
            .as_deref()
            .map(drover_security::Secret::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--token (DROVER_TOKEN): {e}"))?;
        let ctx = cli::Context {
            masters: cli.masters,
            output: cli.output,
            tls,
            token,
        };
        match cli.command {
            Command::Master(args) => cli::master::run(&ctx, args).await,
            Command::Agent(cmd) => cli::agent::run_cmd(&ctx, cmd).await,
            Command::Service { command } => cli::service::run(&ctx, command).await,
            Command::Services(args) => cli::services::run(&ctx, args).await,
            Command::Task { command } => cli::task::run(&ctx, command).await,
            Command::Framework { command } => cli::framework::run(&ctx, command).await,
            Command::Cluster { command } => cli::cluster::run(&ctx, command).await,
            Command::Logs(args) => cli::logs::run(&ctx, args).await,
            Command::Coord(args) => cli::coord::run(&ctx, args).await,
            Command::Local(args) => cli::local::run(&ctx, args).await,
            Command::Bench { command } => cli::bench::run(&ctx, command).await,
            Command::Tls { command } => cli::tls::run(&ctx, command),
            Command::Acl { command } => cli::acl::run(&ctx, command).await,
            Command::Supervise { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    if let Err(e) = result {
        if cli::render::is_reader_gone(&e) {
            // `drover agent ls | head -1`: the reader had enough; not a failure (render's doc).
            std::process::exit(0);
        }
        eprintln!("drover: {e:#}");
        std::process::exit(1);
    }
}
