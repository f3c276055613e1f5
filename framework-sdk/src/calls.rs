//! The scheduler calls on a [`Framework`]: launch, decline, revive, suppress, kill, acknowledge,
//! reconcile, teardown.
//!
//! Every call goes to the master the subscription is with, follows `drover-leader` redirects (at
//! most `redirects_max`), and gives up after `call_timeout`, redirects included. A call while the
//! subscription is down fails at once with [`CallError::NotConnected`] rather than waiting: offers
//! are void after a disconnect anyway, and a framework re-issues what it still wants after
//! [`Event::Reconnected`](crate::Event::Reconnected).

use std::sync::atomic::Ordering;
use std::time::Duration;

use drover_client::MasterChannel;
use drover_proto::v1;
use drover_proto::v1::scheduler_client::SchedulerClient;
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use crate::connection::{Framework, connect_client};
use crate::convert::duration_ms;
use crate::error::CallError;
use crate::ids::{AgentId, OfferId, TaskId};
use crate::leader::{Verdict, classify};
use crate::tasks::{TaskInfo, TaskStatus};

/// What an accept does with the resources it leaves unused.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Filters {
    /// How long the unused resources are not offered again to this framework; `None`: the
    /// master's default (5 s); `Some(Duration::ZERO)`: no filter. At most 31 days (the master
    /// refuses more).
    pub refuse: Option<Duration>,
}

impl Filters {
    /// Filters refusing the unused resources for `refuse`.
    pub fn refuse(refuse: Duration) -> Filters {
        Filters {
            refuse: Some(refuse),
        }
    }

    fn to_proto(self) -> v1::Filters {
        v1::Filters {
            refuse_seconds: self.refuse.map(|d| d.as_secs_f64()),
        }
    }
}

/// One task to reconcile: its id and, when known, its agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileTask {
    pub task_id: TaskId,
    pub agent_id: Option<AgentId>,
}

impl From<TaskId> for ReconcileTask {
    fn from(task_id: TaskId) -> ReconcileTask {
        ReconcileTask {
            task_id,
            agent_id: None,
        }
    }
}

impl From<&TaskStatus> for ReconcileTask {
    fn from(status: &TaskStatus) -> ReconcileTask {
        ReconcileTask {
            task_id: status.task_id.clone(),
            agent_id: (!status.agent_id.as_str().is_empty()).then(|| status.agent_id.clone()),
        }
    }
}

/// One call's request, so the retry loop can send it again after a redirect.
enum Request {
    Accept(v1::AcceptRequest),
    Decline(v1::DeclineRequest),
    Revive(v1::ReviveRequest),
    Suppress(v1::SuppressRequest),
    Kill(v1::KillRequest),
    Acknowledge(v1::AcknowledgeRequest),
    Reconcile(v1::ReconcileRequest),
    Teardown(v1::TeardownRequest),
}

impl Request {
    fn name(&self) -> &'static str {
        match self {
            Request::Accept(_) => "launch",
            Request::Decline(_) => "decline",
            Request::Revive(r) if r.clear_filters => "revive_and_clear_filters",
            Request::Revive(_) => "revive",
            Request::Suppress(_) => "suppress",
            Request::Kill(_) => "kill",
            Request::Acknowledge(_) => "acknowledge",
            Request::Reconcile(_) => "reconcile",
            Request::Teardown(_) => "teardown",
        }
    }

    async fn send(&self, client: &mut SchedulerClient<MasterChannel>) -> Result<(), tonic::Status> {
        match self {
            Request::Accept(r) => client.accept(r.clone()).await.map(drop),
            Request::Decline(r) => client.decline(r.clone()).await.map(drop),
            Request::Revive(r) => client.revive(r.clone()).await.map(drop),
            Request::Suppress(r) => client.suppress(r.clone()).await.map(drop),
            Request::Kill(r) => client.kill(r.clone()).await.map(drop),
            Request::Acknowledge(r) => client.acknowledge(r.clone()).await.map(drop),
            Request::Reconcile(r) => client.reconcile(r.clone()).await.map(drop),
            Request::Teardown(r) => client.teardown(r.clone()).await.map(drop),
        }
    }
}

impl Framework {
    fn id_string(&self) -> String {
        self.inner.framework_id.0.clone()
    }

    /// Sends `request` to the current leader, following redirects, within the call timeout.
    async fn call(&self, request: Request) -> Result<(), CallError> {
        let call = request.name();
        let options = &self.inner.options;
        let timeout = options.call_timeout;
        let deadline = Instant::now() + timeout;
        let link = self
            .inner
            .link
            .borrow()
            .clone()
            .ok_or(CallError::NotConnected { call })?;
        let (mut addr, mut client) = (link.addr, link.client);
        let mut redirects = 0;
        loop {
            let status = match timeout_at(deadline, request.send(&mut client)).await {
                Err(_) => return Err(CallError::Timeout { call, timeout }),
                Ok(Ok(())) => return Ok(()),
                Ok(Err(status)) => status,
            };
            match classify(&status, &addr) {
                Verdict::Redirect(leader) if redirects < options.redirects_max => {
                    debug!(call, from = %addr, to = %leader, "following the leader redirect");
                    redirects += 1;
                    client = timeout_at(deadline, connect_client(&leader, options))
                        .await
                        .map_err(|_| CallError::Timeout { call, timeout })?
                        .map_err(|message| CallError::Unavailable { call, message })?;
                    addr = leader;
                }
                Verdict::Redirect(leader) => {
                    return Err(CallError::Unavailable {
                        call,
                        message: format!(
                            "{addr}: redirected to {leader} after {redirects} redirects already"
                        ),
                    });
                }
                Verdict::Retry(message) => return Err(CallError::Unavailable { call, message }),
                Verdict::NotFound(message) => {
                    return Err(CallError::FrameworkNotFound {
                        call,
                        framework_id: self.inner.framework_id.clone(),
                        message,
                    });
                }
                Verdict::InvalidArgument(message) => {
                    return Err(CallError::InvalidArgument { call, message });
                }
                Verdict::Refused(code, message) => {
                    return Err(CallError::Refused {
                        call,
                        code,
                        message,
                    });
                }
            }
        }
    }

    /// Accepts `offer_ids` (all on one agent) and launches `tasks` on them; what the tasks leave
    /// unused returns to the pool under `filters`. A task that cannot run comes back as a
    /// `TASK_ERROR` update (its `reason` says why) and affects no other task.
    ///
    /// ```no_run
    /// # async fn example(framework: drover_sdk::Framework, offer: drover_sdk::Offer)
    /// #     -> Result<(), Box<dyn std::error::Error>> {
    /// use drover_sdk::{Command, Filters, Resources, TaskRequest, TaskSpec};
    /// let request = TaskRequest::new(0.1, Resources::parse_mem("16MiB")?, 0)?;
    /// let task = TaskSpec::new("sleeper-1", Command::argv(["sleep", "60"]))
    ///     .build_from_offer(&offer, &request)?;
    /// framework.launch(&[offer.id.clone()], vec![task], Filters::default()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn launch(
        &self,
        offer_ids: &[OfferId],
        tasks: Vec<TaskInfo>,
        filters: Filters,
    ) -> Result<(), CallError> {
        let launch = v1::Launch {
            tasks: tasks.iter().map(v1::TaskInfo::from).collect(),
        };
        self.call(Request::Accept(v1::AcceptRequest {
            framework_id: self.id_string(),
            offer_ids: offer_ids.iter().map(|id| id.0.clone()).collect(),
            operations: vec![v1::Operation {
                operation: Some(v1::operation::Operation::Launch(launch)),
            }],
            filters: Some(filters.to_proto()),
        }))
        .await
    }

    /// Declines `offer_ids`: their resources are not offered to this framework again for
    /// `refuse` (`Duration::ZERO`: no filter, offered again at the next allocation), unless it
    /// revives with [`Framework::revive_and_clear_filters`].
    pub async fn decline(&self, offer_ids: &[OfferId], refuse: Duration) -> Result<(), CallError> {
        let filters = Filters::refuse(refuse);
        self.call(Request::Decline(v1::DeclineRequest {
            framework_id: self.id_string(),
            offer_ids: offer_ids.iter().map(|id| id.0.clone()).collect(),
            filters: Some(filters.to_proto()),
        }))
        .await
    }

    /// Asks for offers again after [`Framework::suppress`]; decline filters stay.
    pub async fn revive(&self) -> Result<(), CallError> {
        self.revive_with(false).await
    }

    /// Asks for offers again and drops this framework's decline filters.
    pub async fn revive_and_clear_filters(&self) -> Result<(), CallError> {
        self.revive_with(true).await
    }

    async fn revive_with(&self, clear_filters: bool) -> Result<(), CallError> {
        self.call(Request::Revive(v1::ReviveRequest {
            framework_id: self.id_string(),
            clear_filters,
        }))
        .await?;
        self.inner.suppressed.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Stops offers until [`Framework::revive`]; kept across re-subscriptions.
    pub async fn suppress(&self) -> Result<(), CallError> {
        self.call(Request::Suppress(v1::SuppressRequest {
            framework_id: self.id_string(),
        }))
        .await?;
        self.inner.suppressed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Kills a task: SIGTERM, `grace` (`None`: the task's own), then SIGKILL. The outcome arrives
    /// as an update (`TASK_KILLED`, or `TASK_LOST` for a task the agent does not know).
    pub async fn kill(&self, task_id: &TaskId, grace: Option<Duration>) -> Result<(), CallError> {
        self.call(Request::Kill(v1::KillRequest {
            framework_id: self.id_string(),
            task_id: task_id.0.clone(),
            agent_id: String::new(),
            kill_grace_period_ms: grace.map_or(0, duration_ms),
        }))
        .await
    }

    /// Acknowledges an update so its agent stops sending it. Updates without a uuid (from the
    /// master) need none: for them this does nothing. With auto-acknowledge on (the default) the
    /// SDK does this itself.
    pub async fn acknowledge(&self, status: &TaskStatus) -> Result<(), CallError> {
        if !status.needs_acknowledgement() {
            return Ok(());
        }
        self.call(Request::Acknowledge(v1::AcknowledgeRequest {
            framework_id: self.id_string(),
            agent_id: status.agent_id.0.clone(),
            task_id: status.task_id.0.clone(),
            uuid: status.uuid.clone(),
        }))
        .await
    }

    /// Asks for the latest state of `tasks` (explicit reconciliation), or of every task the
    /// master knows for this framework when `tasks` is empty (implicit). Answers arrive as
    /// updates with reason `reconciliation`.
    pub async fn reconcile(&self, tasks: Vec<ReconcileTask>) -> Result<(), CallError> {
        self.call(Request::Reconcile(v1::ReconcileRequest {
            framework_id: self.id_string(),
            tasks: tasks
                .into_iter()
                .map(|t| v1::ReconcileTask {
                    task_id: t.task_id.0,
                    agent_id: t.agent_id.map(|a| a.0).unwrap_or_default(),
                })
                .collect(),
        }))
        .await
    }

    /// Ends the framework: the master kills its tasks and forgets it. The event stream then ends
    /// without an error, and the framework id cannot be resumed.
    pub async fn teardown(&self) -> Result<(), CallError> {
        // Set first: the master may end the stream before this call's answer arrives, and the
        // connection task must not take that for a failure and re-subscribe.
        self.inner.torn_down.store(true, Ordering::SeqCst);
        let result = self
            .call(Request::Teardown(v1::TeardownRequest {
                framework_id: self.id_string(),
            }))
            .await;
        if result.is_err() {
            self.inner.torn_down.store(false, Ordering::SeqCst);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_on_the_wire() {
        // Proves the default filters leave refuse_seconds unset (the master's default), and a
        // refusal, zero included, sends its seconds.
        assert_eq!(Filters::default().to_proto().refuse_seconds, None);
        assert_eq!(
            Filters::refuse(Duration::from_millis(2500))
                .to_proto()
                .refuse_seconds,
            Some(2.5)
        );
        assert_eq!(
            Filters::refuse(Duration::ZERO).to_proto().refuse_seconds,
            Some(0.0)
        );
    }

    #[test]
    fn reconcile_task_from_a_status() {
        // Proves a status becomes a reconcile entry with its agent, and an empty agent is None.
        let mut status = TaskStatus {
            task_id: TaskId::from("t"),
            agent_id: AgentId::from("a"),
            state: crate::TaskState::Running,
            message: String::new(),
            reason: String::new(),
            uuid: Vec::new(),
            exit_code: None,
            signal: None,
            timestamp_ms: 0,
            source: crate::StatusSource::Master,
        };
        assert_eq!(
            ReconcileTask::from(&status).agent_id,
            Some(AgentId::from("a"))
        );
        status.agent_id = AgentId::from("");
        assert_eq!(ReconcileTask::from(&status).agent_id, None);
    }
}
