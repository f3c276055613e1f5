//! `drover service deploy|ls|status|scale|rm`: services as the services framework runs them.
//!
//! The CLI never talks to the framework. It writes the desired state to coord and reads what the
//! framework publishes there (the layout is the contract between them):
//! - `/services/specs/NAME`: the validated spec as JSON (`services::spec`), written here by
//!   `deploy` (create or replace) and `scale` (a conditional set on the node's version), deleted
//!   by `rm`;
//! - `/services/status/NAME`: the `services::status::ServiceStatus` the leading framework copy
//!   publishes; deleted by the framework once a removed service has no instance left.
//!
//! Specs are validated with `services::spec` before anything is stored: a bad spec changes
//! nothing in coord. `rm` also asks the leading master (Operator API) whether any task labelled
//! `service=NAME` still runs.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use drover_coord::client::{Client, ClientOptions};
use drover_coord::op::{CreateMode, ErrorCode};
use serde_json::json;
use services::spec::{self, Format, ServiceSpec, SpecError};
use services::status::{Health, ServiceStatus};
use tokio::time::Instant;

use super::coord::{cli_error, ensure_node};
use super::operator::{ConnectArgs, Operator};
use super::render::{self, Table};
use super::service_wait::{self, Display, StatusWake, WaitArgs, read_status};
use super::task;
use super::{Context, Output};
use services::paths;

/// Parent of the specs.
/// Longest spec file read; a spec is small, and coord refuses nodes above 1 MiB anyway.
pub const SPEC_FILE_BYTES_MAX: u64 = 1 << 20;
/// `scale` re-reads and retries this often when someone else changed the spec in between.
pub const SCALE_ATTEMPTS_MAX: u32 = 5;
/// Session timeout of a service command's coord session: short, nothing ephemeral is made.
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Subcommand, Debug)]
pub enum ServiceCmd {
    /// Validate FILE (.toml, .json, .yaml or .yml) and store it as the service's spec; with
    /// --wait, follow the rollout until every instance of the new spec runs and is healthy.
    Deploy {
        file: PathBuf,
        /// Wait until the service is at this spec (or fail with the framework's reason).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        wait_args: WaitArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List services: instances running/desired, healthy, version, what keeps them from their spec.
    Ls {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// One service's instances: task, agent, host, ports, state, health, restarts.
    Status {
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Set the number of instances (0..=10000); nothing else of the spec changes, so nothing restarts.
    Scale {
        name: String,
        /// The new number of instances.
        #[arg(allow_hyphen_values = true)]
        instances: String,
        /// Wait until the service runs that many healthy instances.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        wait_args: WaitArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove the service: its spec goes, the framework stops every instance and then removes its
    /// status. Waits for that unless --no-wait.
    Rm {
        name: String,
        /// Return once the spec is deleted, without waiting for the instances to stop.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_ms: u64,
        /// Check this often (besides watching the status node).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
        poll_ms: u64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub async fn run(ctx: &Context, cmd: ServiceCmd) -> anyhow::Result<()> {
    let json = ctx.output == Output::Json;
    match cmd {
        ServiceCmd::Deploy {
            file,
            wait,
            wait_args,
            connect,
        } => {
            // Validate before connecting: a bad spec fails the same with or without a cluster.
            let spec = read_spec(&file)?;
            let client = open(ctx, &connect).await?;
            let result = deploy(&client, spec, wait.then_some(&wait_args), json).await;
            close(client, result).await
        }
        ServiceCmd::Ls { connect } => {
            let client = open(ctx, &connect).await?;
            let result = ls(&client, json).await;
            close(client, result).await
        }
        ServiceCmd::Status { name, connect } => {
            check_name(&name)?;
            let client = open(ctx, &connect).await?;
            let result = status(&client, &name, json).await;
            close(client, result).await
        }
        ServiceCmd::Scale {
            name,
            instances,
            wait,
            wait_args,
            connect,
        } => {
            check_name(&name)?;
            let instances = parse_instances(&instances)?;
            let client = open(ctx, &connect).await?;
            let result = scale(&client, &name, instances, wait.then_some(&wait_args), json).await;
            close(client, result).await
        }
        ServiceCmd::Rm {
            name,
            no_wait,
            timeout_ms,
            poll_ms,
            connect,
        } => {
            check_name(&name)?;
            let wait = (!no_wait).then_some(RmWait {
                timeout: Duration::from_millis(timeout_ms),
                poll: Duration::from_millis(poll_ms),
            });
            let client = open(ctx, &connect).await?;
            let result = rm(ctx, &connect, &client, &name, wait, json).await;
            close(client, result).await
        }
    }
}

/// Opens a coord session on `--masters` for one command. Any master serves coord, so no leader
/// is needed: `--leader-wait-ms` bounds the search for a master that answers.
async fn open(ctx: &Context, connect: &ConnectArgs) -> anyhow::Result<Client> {
    let options = ClientOptions {
        session_timeout: SESSION_TIMEOUT,
        connect_timeout: Duration::from_millis(connect.connect_timeout_ms),
        establish_timeout: Duration::from_millis(connect.leader_wait_ms),
        request_timeout: Duration::from_millis(connect.request_timeout_ms),
        ..ClientOptions::default()
    };
    super::coord::connect(ctx, options).await
}

/// Ends the session whatever the command's result; the command's own failure matters more.
async fn close(client: Client, result: anyhow::Result<()>) -> anyhow::Result<()> {
    let closed = client.close().await;
    result?;
    closed.map_err(cli_error)?;
    Ok(())
}

/// Reads, parses and validates a spec file; the error is one line naming the file and field.
pub fn read_spec(file: &std::path::Path) -> anyhow::Result<ServiceSpec> {
    let shown = file.display();
    let format = Format::from_path(file).map_err(|e| anyhow::anyhow!("{}", spec_error_line(&e)))?;
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {shown}"))?;
    let mut text = String::new();
    f.take(SPEC_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {shown} as UTF-8 text"))?;
    if text.len() as u64 > SPEC_FILE_BYTES_MAX {
        bail!("{shown}: a spec file is at most {SPEC_FILE_BYTES_MAX} bytes");
    }
    spec::parse(&text, format).map_err(|e| anyhow::anyhow!("{shown}: {}", spec_error_line(&e)))
}

/// A spec error on one line. Parser messages (TOML's in particular) come with a source excerpt
/// over several lines; the location (first line) and the reason (last line) say it all.
pub fn spec_error_line(e: &SpecError) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [first, .., last] => format!("{}: {last}", first.trim_end_matches(':')),
    }
}

/// A service name must be a DNS label; anything else cannot name a service (nor a coord node).
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= spec::NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "{name:?} is not a service name (a DNS label: 1..={} characters of a-z, 0-9 and '-')",
            spec::NAME_BYTES_MAX
        );
    }
    Ok(())
}

fn parse_instances(text: &str) -> anyhow::Result<u32> {
    let n: i64 = text
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("instances: {text:?} is not a whole number"))?;
    if !(0..=i64::from(spec::INSTANCES_MAX)).contains(&n) {
        bail!(
            "instances: {n} is out of range (0..={})",
            spec::INSTANCES_MAX
        );
    }
    u32::try_from(n).map_err(|_| anyhow::anyhow!("instances: {n} is out of range"))
}

fn no_service(name: &str) -> anyhow::Error {
    anyhow::anyhow!("no service named {name}")
}

/// The stored spec of `name` and the node's version; `None` when there is none.
async fn read_stored(client: &Client, name: &str) -> anyhow::Result<Option<(ServiceSpec, i32)>> {
    let path = paths::spec(name);
    match client.get(&path).await {
        Ok((data, stat)) => {
            let text = std::str::from_utf8(&data)
                .with_context(|| format!("{path} does not hold UTF-8 JSON"))?;
            let spec = ServiceSpec::from_json(text).map_err(|e| {
                anyhow::anyhow!("{path} holds an invalid spec: {}", spec_error_line(&e))
            })?;
            Ok(Some((spec, stat.version)))
        }
        Err(e) if e.code() == Some(ErrorCode::NoNode) => Ok(None),
        Err(e) => Err(cli_error(e)),
    }
}

async fn deploy(
    client: &Client,
    spec: ServiceSpec,
    wait: Option<&WaitArgs>,
    json: bool,
) -> anyhow::Result<()> {
    let name = spec.name.clone();
    let path = paths::spec(&name);
    let data = spec.to_json();
    let version = spec.version();
    ensure_node(client, paths::ROOT).await?;
    ensure_node(client, paths::SPECS).await?;
    let stored = match client
        .create(&path, data.clone().into_bytes(), CreateMode::Persistent)
        .await
    {
        Ok(_) => "created",
        Err(e) if e.code() == Some(ErrorCode::NodeExists) => {
            let (old, _) = client.get(&path).await.map_err(cli_error)?;
            if old.as_ref() == data.as_bytes() {
                "unchanged"
            } else {
                client
                    .set(&path, data.into_bytes(), None)
                    .await
                    .map_err(cli_error)?;
                "updated"
            }
        }
        Err(e) => return Err(cli_error(e)),
    };
    let mut result = json!({
        "name": name,
        "version": version,
        "instances": spec.instances,
        "stored": stored,
    });
    let Some(wait_args) = wait else {
        if json {
            render::outln!("{}", serde_json::to_string_pretty(&result)?)?;
        } else {
            render::outln!(
                "service {name} {stored}: {} instance{}, version {version}",
                spec.instances,
                plural(spec.instances)
            )?;
        }
        return Ok(());
    };
    if !json {
        eprintln!(
            "service {name} {stored}: version {version}; waiting for {} instance{}",
            spec.instances,
            plural(spec.instances)
        );
    }
    finish_wait(
        client,
        &name,
        &version,
        spec.instances,
        wait_args,
        json,
        &mut result,
    )
    .await
}

/// Waits for the service to be at its spec and prints the result.
async fn finish_wait(
    client: &Client,
    name: &str,
    version: &str,
    desired: u32,
    wait_args: &WaitArgs,
    json: bool,
    result: &mut serde_json::Value,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut display = Display::new(json, desired);
    let waited =
        service_wait::wait_at_spec(client, name, version, desired, wait_args, &mut display).await;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    result["waited_ms"] = json!(elapsed_ms);
    match waited {
        Ok(status) => {
            if json {
                result["at_spec"] = json!(true);
                result["status"] = serde_json::to_value(&status)?;
                render::outln!("{}", serde_json::to_string_pretty(result)?)?;
            } else {
                render::outln!(
                    "service {name} is at its spec: {desired} instance{} running and healthy (version {version}, {:.1}s)",
                    plural(desired),
                    elapsed_ms as f64 / 1000.0
                )?;
            }
            Ok(())
        }
        Err(e) => {
            if json {
                result["at_spec"] = json!(false);
                result["error"] = json!(format!("{e:#}"));
                // The wait's failure is the exit status to keep, whether or not stdout is read.
                let _ = render::outln!("{}", serde_json::to_string_pretty(result)?);
            }
            Err(e)
        }
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

async fn ls(client: &Client, json: bool) -> anyhow::Result<()> {
    let mut names = match client.children(paths::SPECS).await {
        Ok(n) => n,
        Err(e) if e.code() == Some(ErrorCode::NoNode) => Vec::new(),
        Err(e) => return Err(cli_error(e)),
    };
    names.sort();
    let mut rows = Vec::new();
    for name in names {
        // A spec removed between the listing and the read is simply gone.
        let Some((spec, _)) = read_stored(client, &name).await? else {
            continue;
        };
        let status = read_status(client, &name).await?;
        rows.push((name, spec, status));
    }
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(name, spec, status)| {
                json!({
                    "name": name,
                    "version": spec.version(),
                    "instances": spec.instances,
                    "staged": status.as_ref().map(|s| s.staged),
                    "running": status.as_ref().map(|s| s.running),
                    "healthy": status.as_ref().map(|s| s.healthy),
                    "at_spec": status.as_ref().is_some_and(|s| s.at_spec && s.version == spec.version()),
                    "status_version": status.as_ref().map(|s| s.version.clone()),
                    "message": message_of(spec, status.as_ref()),
                })
            })
            .collect();
        render::outln!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let mut t = Table::new(&["NAME", "INSTANCES", "HEALTHY", "VERSION", "MESSAGE"]);
    for (name, spec, status) in &rows {
        let (running, healthy) = match status {
            Some(s) => (s.running.to_string(), s.healthy.to_string()),
            None => ("-".to_string(), "-".to_string()),
        };
        t.row(vec![
            name.clone(),
            format!("{running}/{}", spec.instances),
            healthy,
            spec.version(),
            render::one_line(&message_of(spec, status.as_ref())),
        ]);
    }
    render::out!("{}", t.render())?;
    Ok(())
}

/// What keeps a service from its spec, as far as the CLI can tell.
fn message_of(spec: &ServiceSpec, status: Option<&ServiceStatus>) -> String {
    match status {
        None => "no status yet (is the services framework running?)".into(),
        Some(s) if s.version != spec.version() => {
            format!("the framework still works on version {}", s.version)
        }
        Some(s) => s.message.clone(),
    }
}

async fn status(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let Some((spec, _)) = read_stored(client, name).await? else {
        return Err(no_service(name));
    };
    let status = read_status(client, name).await?;
    let version = spec.version();
    if json {
        let spec_value: serde_json::Value = serde_json::from_str(&spec.to_json())?;
        let out = json!({
            "name": name,
            "version": version,
            "spec": spec_value,
            "status": status,
        });
        render::outln!("{}", serde_json::to_string_pretty(&out)?)?;
        return Ok(());
    }
    render::outln!("service:    {name}")?;
    render::outln!("version:    {version}")?;
    match &status {
        None => {
            render::outln!("instances:  {} desired", spec.instances)?;
            render::outln!("message:    {}", message_of(&spec, None))?;
        }
        Some(s) => {
            render::outln!(
                "instances:  {} desired, {} staged, {} running, {} healthy{}",
                spec.instances,
                s.staged,
                s.running,
                s.healthy,
                if s.at_spec && s.version == version {
                    " (at spec)"
                } else {
                    ""
                }
            )?;
            let message = message_of(&spec, Some(s));
            if !message.is_empty() {
                render::outln!("message:    {}", render::one_line(&message))?;
            }
        }
    }
    let now = render::now_unix_ms();
    let mut t = Table::new(&[
        "INSTANCE", "TASK", "AGENT", "HOST", "PORTS", "STATE", "HEALTH", "RESTARTS", "VERSION",
        "STARTED",
    ]);
    for i in status.iter().flat_map(|s| &s.instances) {
        t.row(vec![
            i.instance.to_string(),
            i.task_id.clone(),
            i.agent_id.clone(),
            i.host.clone(),
            i.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
            i.state
                .strip_prefix("TASK_")
                .unwrap_or(&i.state)
                .to_string(),
            health_name(i.health).to_string(),
            i.restarts.to_string(),
            i.version.clone(),
            i.started_at_ms
                .map(|t| render::age(t, now))
                .unwrap_or_default(),
        ]);
    }
    render::outln!()?;
    render::out!("{}", t.render())?;
    Ok(())
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::None => "-",
        Health::Unknown => "unknown",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

async fn scale(
    client: &Client,
    name: &str,
    instances: u32,
    wait: Option<&WaitArgs>,
    json: bool,
) -> anyhow::Result<()> {
    let path = paths::spec(name);
    let mut attempt = 0;
    let (previous, spec) = loop {
        attempt += 1;
        let Some((mut spec, node_version)) = read_stored(client, name).await? else {
            return Err(no_service(name));
        };
        let previous = spec.instances;
        spec.instances = instances;
        // The stored form must read back valid (the same checks as deploy).
        let data = spec.to_json();
        ServiceSpec::from_json(&data).map_err(|e| anyhow::anyhow!("{}", spec_error_line(&e)))?;
        match client
            .set(&path, data.into_bytes(), Some(node_version))
            .await
        {
            Ok(_) => break (previous, spec),
            Err(e) if e.code() == Some(ErrorCode::BadVersion) && attempt < SCALE_ATTEMPTS_MAX => {
                // Someone changed the spec meanwhile: apply the scale to theirs.
                continue;
            }
            Err(e) if e.code() == Some(ErrorCode::BadVersion) => bail!(
                "the spec of {name} kept changing during {SCALE_ATTEMPTS_MAX} attempts; try again"
            ),
            Err(e) if e.code() == Some(ErrorCode::NoNode) => return Err(no_service(name)),
            Err(e) => return Err(cli_error(e)),
        }
    };
    let version = spec.version();
    let mut result = json!({
        "name": name,
        "version": version,
        "instances": instances,
        "previous": previous,
    });
    let Some(wait_args) = wait else {
        if json {
            render::outln!("{}", serde_json::to_string_pretty(&result)?)?;
        } else {
            render::outln!(
                "service {name} scaled from {previous} to {instances} instance{}",
                plural(instances)
            )?;
        }
        return Ok(());
    };
    if !json {
        eprintln!("service {name} scaled from {previous} to {instances}; waiting");
    }
    finish_wait(
        client,
        name,
        &version,
        instances,
        wait_args,
        json,
        &mut result,
    )
    .await
}

struct RmWait {
    timeout: Duration,
    poll: Duration,
}

async fn rm(
    ctx: &Context,
    connect: &ConnectArgs,
    client: &Client,
    name: &str,
    wait: Option<RmWait>,
    json: bool,
) -> anyhow::Result<()> {
    match client.delete(&paths::spec(name), None).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(ErrorCode::NoNode) => return Err(no_service(name)),
        Err(e) => return Err(cli_error(e)),
    }
    let Some(wait) = wait else {
        if json {
            render::outln!(
                "{}",
                json!({ "name": name, "removed": true, "stopped": null })
            )?;
        } else {
            render::outln!("service {name} removed; the framework stops its instances")?;
        }
        return Ok(());
    };
    if !json {
        eprintln!("service {name} removed; waiting for its instances to stop");
    }
    let started = Instant::now();
    let deadline = started + wait.timeout;
    let mut operator = Operator::new(ctx, connect)?;
    let mut wake = StatusWake::new(client, name, wait.poll).await;
    loop {
        let status_left = client
            .exists(&paths::status(name))
            .await
            .map_err(cli_error)?
            .is_some();
        let state = operator.state().await?;
        let running: Vec<String> = task::select(&state, Some(name))
            .into_iter()
            .filter(|t| !render::is_terminal(task::state_of(t)))
            .filter_map(|t| t.task.as_ref().map(|i| i.task_id.clone()))
            .collect();
        if !status_left && running.is_empty() {
            break;
        }
        tokio::select! {
            _ = wake.next() => {}
            _ = tokio::time::sleep_until(deadline) => {
                let mut why = Vec::new();
                if !running.is_empty() {
                    why.push(format!("{} task{} still run ({})", running.len(), plural(running.len() as u32), running.join(", ")));
                }
                if status_left {
                    why.push(format!("{} is still there", paths::status(name)));
                }
                bail!(
                    "the spec of {name} is removed, but after {:?} {} (is the services framework running?)",
                    wait.timeout,
                    why.join(" and ")
                );
            }
            _ = tokio::signal::ctrl_c() => bail!("interrupted; the spec of {name} is removed and the framework goes on stopping its instances"),
        }
    }
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if json {
        render::outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "name": name, "removed": true, "stopped": true, "waited_ms": elapsed_ms })
            )?
        )?;
    } else {
        render::outln!(
            "service {name} removed: no instance runs ({:.1}s)",
            elapsed_ms as f64 / 1000.0
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_parser_errors_become_one_line() {
        // Proves TOML's excerpt-style messages keep their location and reason on one line.
        let e = spec::parse("name = \"web\"\ninstancez = 4\n", Format::Toml)
            .expect_err("unknown field");
        let line = spec_error_line(&e);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("instancez"), "{line}");
        assert!(line.contains("line 2"), "{line}");
    }

    #[test]
    fn names_and_instance_counts_are_checked_before_any_coord_call() {
        assert!(check_name("web-1").is_ok());
        for bad in ["", "Web", "-web", "web-", "a/b", "..", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_instances("6").expect("valid"), 6);
        assert_eq!(
            parse_instances("-1").expect_err("negative").to_string(),
            "instances: -1 is out of range (0..=10000)"
        );
        assert_eq!(
            parse_instances("20000").expect_err("too many").to_string(),
            "instances: 20000 is out of range (0..=10000)"
        );
        assert_eq!(
            parse_instances("two")
                .expect_err("not a number")
                .to_string(),
            "instances: \"two\" is not a whole number"
        );
    }
}
