//! `drover service deploy|scale --wait`: follows `/services/status/NAME` until the service is at
//! the deployed spec, or fails with the framework's reason.
//!
//! The status node is watched (a persistent watch: every write wakes us) and also re-read every
//! `--poll-ms`, so a lost watch or a lost session costs at most one interval. What to make of a
//! status is [`Judge`]'s job, a plain struct fed `(now, status)`, so the rules are tested without
//! coord or a clock:
//! - **done** when the status is of the deployed version, `at_spec`, and wants the deployed
//!   number of instances;
//! - **failed** when the framework counts instances of the deployed spec as stuck
//!   (`pending.unplaceable` or `pending.backing_off`) and nothing moved for `--place-grace-ms`: a
//!   placement the cluster cannot satisfy ("1 instance pending: needs 4 cpus per instance, the
//!   most offered is 2"), or a replacement backing off after repeated failures; the `message` is
//!   the reason given, never what is judged. Instances waiting for offers, instances that run
//!   but are not healthy yet (health checks have their grace) and a rolling upgrade held by its
//!   surge are waited for; so is everything with a status from a framework too old to count;
//! - otherwise wait, up to `--timeout-ms`.

use std::time::Duration;

use anyhow::Context as _;
use drover_coord::client::{Client, WatchStream};
use drover_coord::op::ErrorCode;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use services::status::{Health, ServiceStatus};
use tokio::time::Instant;

use super::coord::cli_error;

/// How long and how often `--wait` follows the status.
#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// Give up waiting after this long (the spec stays stored).
    #[arg(long, default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// With instances the framework cannot place (or backing off after failures), how long
    /// nothing may move before the deploy counts as failed (the framework's time to place).
    #[arg(long, default_value_t = 10_000)]
    pub place_grace_ms: u64,
    /// Re-read the status this often besides watching it.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_ms: u64,
}

/// The deployed version's instances, counted from a status. Cumulative, as a progress display
/// wants them: every running instance was staged, every healthy one runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Launched and not ended: staging, starting or running.
    pub staged: u32,
    pub running: u32,
    /// Running and healthy (or running with no health check).
    pub healthy: u32,
    /// Wanted and not launched.
    pub pending: u32,
}

impl Counts {
    pub fn of(status: &ServiceStatus, version: &str, desired: u32) -> Counts {
        let mut c = Counts::default();
        let mut live = 0u32;
        for i in status.instances.iter().filter(|i| i.version == version) {
            match i.state.as_str() {
                "TASK_STAGING" | "TASK_STARTING" => {
                    c.staged += 1;
                    live += 1;
                }
                "TASK_RUNNING" => {
                    c.staged += 1;
                    c.running += 1;
                    live += 1;
                    if matches!(i.health, Health::Healthy | Health::None) {
                        c.healthy += 1;
                    }
                }
                _ => {}
            }
        }
        c.pending = desired.saturating_sub(live);
        c
    }
}

/// What the waiting command should do after a status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Done,
    Failed(String),
    Wait,
}

/// Decides from a stream of statuses; see the module doc for the rules.
#[derive(Debug)]
pub struct Judge {
    version: String,
    desired: u32,
    place_grace: Duration,
    /// The counts last seen and since when they have not changed.
    last: Option<(Counts, Instant)>,
}

impl Judge {
    pub fn new(version: String, desired: u32, place_grace: Duration) -> Judge {
        Judge {
            version,
            desired,
            place_grace,
            last: None,
        }
    }

    pub fn step(&mut self, now: Instant, status: Option<&ServiceStatus>) -> Verdict {
        let Some(status) = status else {
            return Verdict::Wait;
        };
        if status.version != self.version {
            // The framework has not seen the new spec yet.
            return Verdict::Wait;
        }
        if status.at_spec && status.desired == self.desired {
            return Verdict::Done;
        }
        let counts = Counts::of(status, &self.version, self.desired);
        let since = match &self.last {
            Some((c, since)) if *c == counts => *since,
            _ => now,
        };
        self.last = Some((counts.clone(), since));
        let stuck = status.pending.stuck();
        // A status from before a scale counts the instances of another spec.
        if stuck > 0
            && status.desired == self.desired
            && now.saturating_duration_since(since) >= self.place_grace
        {
            let reason = if status.message.is_empty() {
                format!("{stuck} instance(s) cannot be launched")
            } else {
                status.message.clone()
            };
            return Verdict::Failed(reason);
        }
        Verdict::Wait
    }
}

/// How progress is shown while waiting.
pub enum Display {
    /// indicatif bars on a terminal.
    Bars(Bars),
    /// One line on stderr per change (stderr is not a terminal).
    Lines { last: Option<String> },
    /// Nothing (`--output json`).
    Quiet,
}

pub struct Bars {
    _multi: MultiProgress,
    staged: ProgressBar,
    running: ProgressBar,
    healthy: ProgressBar,
    message: ProgressBar,
}

impl Display {
    pub fn new(json: bool, desired: u32) -> Display {
        if json {
            return Display::Quiet;
        }
        let target = ProgressDrawTarget::stderr();
        if target.is_hidden() {
            return Display::Lines { last: None };
        }
        let multi = MultiProgress::with_draw_target(target);
        let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = |label: &'static str| {
            let b = multi.add(ProgressBar::new(u64::from(desired)));
            b.set_style(style.clone());
            b.set_prefix(label);
            b
        };
        let staged = bar("staged");
        let running = bar("running");
        let healthy = bar("healthy");
        let message = multi.add(ProgressBar::new_spinner());
        message.set_style(
            ProgressStyle::with_template("{spinner} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        message.enable_steady_tick(Duration::from_millis(120));
        Display::Bars(Bars {
            _multi: multi,
            staged,
            running,
            healthy,
            message,
        })
    }

    pub fn show(&mut self, name: &str, desired: u32, counts: &Counts, message: &str) {
        match self {
            Display::Quiet => {}
            Display::Bars(b) => {
                b.staged.set_position(u64::from(counts.staged));
                b.running.set_position(u64::from(counts.running));
                b.healthy.set_position(u64::from(counts.healthy));
                b.message.set_message(message.to_string());
            }
            Display::Lines { last } => {
                let mut line = format!(
                    "{name}: {}/{desired} staged, {}/{desired} running, {}/{desired} healthy",
                    counts.staged, counts.running, counts.healthy
                );
                if !message.is_empty() {
                    line.push_str(" - ");
                    line.push_str(message);
                }
                if last.as_deref() != Some(line.as_str()) {
                    eprintln!("{line}");
                    *last = Some(line);
                }
            }
        }
    }

    pub fn finish(&mut self) {
        if let Display::Bars(b) = self {
            // Abandon, not finish: finishing would fill the bars whatever they showed.
            for bar in [&b.staged, &b.running, &b.healthy] {
                bar.abandon();
            }
            b.message.finish_and_clear();
        }
    }
}

/// When to read a service's status again: on a change of its node (a watch) or every `poll`,
/// whichever comes first. A watch that fails or ends only costs promptness: the poll still reads.
pub(super) struct StatusWake {
    watch: Option<WatchStream>,
    poll: tokio::time::Interval,
}

impl StatusWake {
    pub(super) async fn new(client: &Client, name: &str, poll: Duration) -> StatusWake {
        let watch = client
            .watch(&services::paths::status(name), false)
            .await
            .ok();
        let mut poll = tokio::time::interval(poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        StatusWake { watch, poll }
    }

    /// Returns at the next change or poll tick.
    pub(super) async fn next(&mut self) {
        let watch = &mut self.watch;
        tokio::select! {
            event = async {
                match watch.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            } => {
                if event.is_none() {
                    *watch = None;
                }
            }
            _ = self.poll.tick() => {}
        }
    }
}

/// The status of `name`, if published.
pub async fn read_status(client: &Client, name: &str) -> anyhow::Result<Option<ServiceStatus>> {
    let path = services::paths::status(name);
    match client.get(&path).await {
        Ok((data, _)) => {
            let text = std::str::from_utf8(&data)
                .with_context(|| format!("{path} does not hold UTF-8 JSON"))?;
            let status = ServiceStatus::from_json(text)
                .with_context(|| format!("{path} does not hold a service status"))?;
            Ok(Some(status))
        }
        Err(e) if e.code() == Some(ErrorCode::NoNode) => Ok(None),
        Err(e) => Err(cli_error(e)),
    }
}

/// Follows the status of `name` until the judge decides or `--timeout-ms` passes. Returns the
/// last status on success.
pub async fn wait_at_spec(
    client: &Client,
    name: &str,
    version: &str,
    desired: u32,
    args: &WaitArgs,
    display: &mut Display,
) -> anyhow::Result<ServiceStatus> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let deadline = Instant::now() + timeout;
    let mut judge = Judge::new(
        version.to_string(),
        desired,
        Duration::from_millis(args.place_grace_ms),
    );
    let mut wake = StatusWake::new(client, name, Duration::from_millis(args.poll_ms)).await;
    let mut last: Option<ServiceStatus> = None;
    loop {
        let status = read_status(client, name).await?;
        let counts = status
            .as_ref()
            .map(|s| Counts::of(s, version, desired))
            .unwrap_or(Counts {
                pending: desired,
                ..Counts::default()
            });
        let message = match &status {
            None => "waiting for the services framework to publish a status".to_string(),
            Some(s) if s.version != version => {
                "waiting for the services framework to pick up the new spec".to_string()
            }
            Some(s) => s.message.clone(),
        };
        display.show(name, desired, &counts, &message);
        match judge.step(Instant::now(), status.as_ref()) {
            Verdict::Done => {
                display.finish();
                return status.context("a done verdict comes with a status");
            }
            Verdict::Failed(reason) => {
                display.finish();
                anyhow::bail!("service {name} cannot reach its spec: {reason}");
            }
            Verdict::Wait => {}
        }
        if status.is_some() {
            last = status;
        }
        tokio::select! {
            _ = wake.next() => {}
            _ = tokio::time::sleep_until(deadline) => {
                display.finish();
                let why = match &last {
                    None => format!(
                        "no status was published at {} (is the services framework running?)",
                        services::paths::status(name)
                    ),
                    Some(s) if s.version != version => format!(
                        "the services framework still works on version {} (is it running?)",
                        s.version
                    ),
                    Some(s) => {
                        let c = Counts::of(s, version, desired);
                        let mut why = format!(
                            "{}/{desired} running, {}/{desired} healthy",
                            c.running, c.healthy
                        );
                        if !s.message.is_empty() {
                            why.push_str(": ");
                            why.push_str(&s.message);
                        }
                        why
                    }
                };
                anyhow::bail!("timed out after {timeout:?} waiting for service {name}: {why}");
            }
            _ = tokio::signal::ctrl_c() => {
                display.finish();
                anyhow::bail!("interrupted; the spec of {name} stays stored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use services::status::{InstanceStatus, PendingInstances};

    fn instance(i: u32, state: &str, health: Health, version: &str) -> InstanceStatus {
        InstanceStatus {
            task_id: format!("web.{i}.abcd"),
            instance: i,
            agent_id: "a1".into(),
            host: "127.0.0.1".into(),
            ports: vec![31000 + i as u16],
            state: state.into(),
            health,
            restarts: 0,
            version: version.into(),
            started_at_ms: None,
            message: String::new(),
        }
    }

    fn status(version: &str, desired: u32, instances: Vec<InstanceStatus>) -> ServiceStatus {
        ServiceStatus {
            name: "web".into(),
            version: version.into(),
            desired,
            staged: 0,
            running: 0,
            healthy: 0,
            at_spec: false,
            removing: false,
            message: String::new(),
            pending: PendingInstances::default(),
            instances,
            updated_at_ms: 0,
        }
    }

    /// Asserts the judge never decides on `s`: not at once, not a minute later.
    fn assert_waits_on(mut j: Judge, s: &ServiceStatus) {
        let t0 = Instant::now();
        assert_eq!(j.step(t0, Some(s)), Verdict::Wait);
        assert_eq!(
            j.step(t0 + Duration::from_secs(60), Some(s)),
            Verdict::Wait,
            "{s:?}"
        );
    }

    #[test]
    fn counts_only_the_deployed_version() {
        // Proves old-version instances (a rolling upgrade) do not count towards the new spec.
        let s = status(
            "v2",
            3,
            vec![
                instance(0, "TASK_RUNNING", Health::Healthy, "v2"),
                instance(1, "TASK_RUNNING", Health::Unknown, "v2"),
                instance(2, "TASK_STAGING", Health::Unknown, "v2"),
                instance(3, "TASK_RUNNING", Health::Healthy, "v1"),
            ],
        );
        assert_eq!(
            Counts::of(&s, "v2", 3),
            Counts {
                staged: 3,
                running: 2,
                healthy: 1,
                pending: 0
            }
        );
        assert_eq!(Counts::of(&s, "v2", 5).pending, 2);
    }

    #[test]
    fn done_only_at_spec_with_the_deployed_version_and_count() {
        let now = Instant::now();
        let mut j = Judge::new("v2".into(), 1, Duration::from_secs(5));
        assert_eq!(j.step(now, None), Verdict::Wait);
        let mut old = status("v1", 1, vec![]);
        old.at_spec = true;
        assert_eq!(j.step(now, Some(&old)), Verdict::Wait, "old version");
        let mut other_count = status("v2", 2, vec![]);
        other_count.at_spec = true;
        assert_eq!(
            j.step(now, Some(&other_count)),
            Verdict::Wait,
            "scaled meanwhile"
        );
        let mut done = status(
            "v2",
            1,
            vec![instance(0, "TASK_RUNNING", Health::None, "v2")],
        );
        done.at_spec = true;
        assert_eq!(j.step(now, Some(&done)), Verdict::Done);
    }

    #[test]
    fn unplaceable_instances_fail_after_the_grace_without_progress() {
        // Proves the failure rule: instances counted unplaceable + no change for place_grace;
        // any change of the counts restarts the grace; the message is the reason given.
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        let mut j = Judge::new("v1".into(), 2, grace);
        let mut s = status("v1", 2, vec![]);
        s.message = "needs 2.0 cpus per instance; the largest agent offers 1.5".into();
        s.pending.unplaceable = 2;
        assert_eq!(j.step(t0, Some(&s)), Verdict::Wait);
        assert_eq!(j.step(t0 + grace / 2, Some(&s)), Verdict::Wait);
        // Progress: one launched. The grace starts over.
        let mut moved = s.clone();
        moved.instances = vec![instance(0, "TASK_STAGING", Health::Unknown, "v1")];
        moved.pending.unplaceable = 1;
        assert_eq!(j.step(t0 + grace, Some(&moved)), Verdict::Wait);
        assert_eq!(j.step(t0 + grace + grace / 2, Some(&moved)), Verdict::Wait);
        assert_eq!(
            j.step(t0 + grace * 2, Some(&moved)),
            Verdict::Failed(s.message.clone())
        );
    }

    #[test]
    fn instances_just_waiting_for_offers_are_waited_for() {
        // Proves instances the framework counts as waiting for offers never fail the wait,
        // whatever the message says.
        let j = Judge::new("v1".into(), 2, Duration::from_secs(1));
        let mut s = status("v1", 2, vec![]);
        s.message = "2 instances pending: offers are slow today".into();
        s.pending.waiting_for_offers = 2;
        assert_waits_on(j, &s);
    }

    #[test]
    fn a_rolling_upgrade_held_by_its_surge_is_waited_for() {
        // Proves a new-version instance not launched yet because an old one still runs (surge
        // 0, the new one not healthy yet) is not taken for a placement failure, though the
        // deployed version has one pending and the message explains.
        let j = Judge::new("v2".into(), 2, Duration::from_secs(1));
        let mut s = status(
            "v2",
            2,
            vec![
                instance(0, "TASK_RUNNING", Health::Unknown, "v2"),
                instance(1, "TASK_RUNNING", Health::Healthy, "v1"),
            ],
        );
        s.message = "upgrading: 1 of 2 at the new version, 1 old instance to stop; \
                     1 instance running but not healthy yet"
            .into();
        assert_eq!(Counts::of(&s, "v2", 2).pending, 1);
        assert_waits_on(j, &s);
    }

    #[test]
    fn a_status_from_before_a_scale_is_no_verdict() {
        // Proves stuck instances counted for another number of instances do not fail a scale.
        let j = Judge::new("v1".into(), 3, Duration::from_secs(1));
        let mut s = status("v1", 2, vec![]);
        s.pending.unplaceable = 2;
        assert_waits_on(j, &s);
    }

    #[test]
    fn unhealthy_but_launched_instances_are_waited_for() {
        // Proves a status with a message but nothing pending (health checks in their grace)
        // never fails the wait by itself.
        let j = Judge::new("v1".into(), 1, Duration::from_secs(1));
        let mut s = status(
            "v1",
            1,
            vec![instance(0, "TASK_RUNNING", Health::Unknown, "v1")],
        );
        s.message = "1 instance not healthy yet".into();
        assert_waits_on(j, &s);
    }
}
