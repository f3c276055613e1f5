//! The event stream a framework reads: what the master sends, plus the connection's own
//! `Disconnected` / `Reconnected`.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tracing::warn;

use crate::ids::{AgentId, FrameworkId, OfferId};
use crate::offers::Offer;
use crate::tasks::TaskStatus;

/// Events queued between the connection task and [`Events`]. When the consumer falls behind the
/// connection task stops reading from the master, and HTTP/2 flow control pushes back on it.
pub const EVENTS_QUEUE_CAPACITY: usize = 64;

/// Updates handed to the consumer and waiting for the auto-acknowledge task. When it is full an
/// update is left unacknowledged, and the agent sends it again: nothing is lost, only repeated.
pub const ACKNOWLEDGEMENTS_QUEUE_CAPACITY: usize = 256;

/// Acknowledgements the auto-acknowledge task has in flight at once (one call each): a burst of
/// updates is acknowledged at the pace of the master, not of one round trip per update.
pub const ACKNOWLEDGEMENTS_IN_FLIGHT_MAX: usize = 64;

/// Least time between two warnings about updates left unacknowledged (queue full, or the call
/// failed); those in between are counted in the next one.
const UNACKNOWLEDGED_WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One event of a subscription.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The first event: the master accepted the subscription under `framework_id` (assigned on a
    /// first subscription, the one given to the builder on a resumed one).
    Subscribed { framework_id: FrameworkId },
    /// Resources to accept (with [`Framework::launch`]) or decline. An offer is valid until it is
    /// used, declined, rescinded, or the connection is lost.
    ///
    /// [`Framework::launch`]: crate::Framework::launch
    Offers(Vec<Offer>),
    /// The offer is gone (its agent left, or it timed out); launches on it would fail.
    Rescind(OfferId),
    /// A task changed state. With auto-acknowledgement on (the default), agent updates are
    /// acknowledged as soon as the stream yields them.
    Update(TaskStatus),
    /// The agent is gone (unreachable past its timeout, or removed).
    Failure { agent_id: AgentId },
    /// The master ended the subscription for good (another connection took over the framework
    /// id, or the framework was torn down); the stream ends after it.
    Error(String),
    /// The subscription was lost (master failover, broken connection, missed heartbeats). Every
    /// outstanding offer is void; calls fail with `NotConnected` until `Reconnected`. The SDK keeps
    /// trying, following the leader, with backoff.
    Disconnected,
    /// Subscribed again with the same framework id. Tasks survived (the failover timeout had not
    /// passed); reconciling is a good idea, since updates may have been missed.
    Reconnected,
}

/// The stream of [`Event`]s of one subscription. It ends after an [`Event::Error`], after a
/// successful [`Framework::teardown`], or never. Dropping it ends the subscription's connection
/// task (the framework is then disconnected and the master keeps its tasks for the failover
/// timeout).
///
/// [`Framework::teardown`]: crate::Framework::teardown
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
    /// Where yielded agent updates go to be acknowledged; `None` when auto-acknowledge is off.
    pub(crate) acknowledgements: Option<mpsc::Sender<TaskStatus>>,
    /// Updates left unacknowledged because the queue was full, warned about once a second.
    pub(crate) unacknowledged: WarnEvery,
}

/// Rate limit for a warning that can repeat once per update: [`WarnEvery::count`] counts an
/// occurrence and says how many to report when a warning is due (at most one a second).
#[derive(Debug, Default)]
pub(crate) struct WarnEvery {
    since_warning: u64,
    warned_at: Option<std::time::Instant>,
}

impl WarnEvery {
    pub(crate) fn count(&mut self) -> Option<u64> {
        self.since_warning += 1;
        let now = std::time::Instant::now();
        if self
            .warned_at
            .is_some_and(|at| now.duration_since(at) < UNACKNOWLEDGED_WARN_INTERVAL)
        {
            return None;
        }
        self.warned_at = Some(now);
        Some(std::mem::take(&mut self.since_warning))
    }
}

impl Events {
    /// The next event, `None` once the stream has ended. The same as `StreamExt::next`.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let polled = self.rx.poll_recv(cx);
        if let (Poll::Ready(Some(Event::Update(status))), Some(acks)) =
            (&polled, &self.acknowledgements)
            && status.needs_acknowledgement()
            && acks.try_send(status.clone()).is_err()
            && let Some(updates) = self.unacknowledged.count()
        {
            warn!(
                task_id = %status.task_id,
                updates,
                "acknowledgement queue full; these updates stay unacknowledged and the agent \
                 sends them again"
            );
        }
        polled
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("auto_acknowledge", &self.acknowledgements.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TaskId;
    use crate::tasks::{StatusSource, TaskState};

    fn status(task: &str, uuid: &[u8], source: StatusSource) -> TaskStatus {
        TaskStatus {
            task_id: TaskId::from(task),
            agent_id: AgentId::from("a1"),
            state: TaskState::Running,
            message: String::new(),
            reason: String::new(),
            uuid: uuid.to_vec(),
            exit_code: None,
            signal: None,
            timestamp_ms: 0,
            source,
        }
    }

    #[test]
    fn a_repeated_warning_is_due_once_a_second_with_the_count_since_the_last() {
        // Proves a burst of unacknowledged updates logs one line (not one per update), and the
        // next line reports how many were left meanwhile.
        let mut warn = WarnEvery::default();
        assert_eq!(warn.count(), Some(1), "the first is reported at once");
        assert_eq!(warn.count(), None);
        assert_eq!(warn.count(), None);
        warn.warned_at = Some(std::time::Instant::now() - UNACKNOWLEDGED_WARN_INTERVAL);
        assert_eq!(warn.count(), Some(3), "two quiet ones and this one");
        assert_eq!(warn.count(), None);
    }

    #[tokio::test]
    async fn agent_updates_are_queued_for_acknowledgement_only_once_yielded() {
        // Proves an update is queued for acknowledgement when the consumer receives it, not when
        // the connection task queues it, and master updates (no uuid) are never queued.
        let (tx, rx) = mpsc::channel(8);
        let (ack_tx, mut ack_rx) = mpsc::channel(8);
        let mut events = Events {
            rx,
            acknowledgements: Some(ack_tx),
            unacknowledged: WarnEvery::default(),
        };
        let master = status("t0", &[], StatusSource::Master);
        let agent = status("t1", &[9; 16], StatusSource::Agent);
        tx.send(Event::Update(master.clone())).await.expect("open");
        tx.send(Event::Update(agent.clone())).await.expect("open");
        assert!(ack_rx.try_recv().is_err(), "nothing yielded yet");
        assert_eq!(events.recv().await, Some(Event::Update(master)));
        assert!(ack_rx.try_recv().is_err(), "master updates need no ack");
        assert_eq!(events.recv().await, Some(Event::Update(agent.clone())));
        assert_eq!(ack_rx.try_recv().ok(), Some(agent));
        drop(tx);
        assert_eq!(events.recv().await, None);
    }
}
