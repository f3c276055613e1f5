//! What framework authors use: connecting to the leading master, the event stream, the scheduler
//! calls, resource arithmetic, the SDK's offer and task types, and a placement helper that turns
//! offers into launches for N instances.
//!
//! Must not depend on the master or coord (frameworks talk to the master over gRPC only). Only
//! `convert` sees wire types; everything else speaks the SDK's own types. Start at
//! [`Framework::builder`] and [`Event`], then [`place`], [`TaskSpec`] and [`Resources`].
//!
//! Modules: `connection` (builder, subscribe attempts, re-subscription; the leader search
//! rules and driver are `drover-client`'s), `leader` (what a master's failed answer means), `events` (the stream), `calls` (launch, decline, ...), `convert`
//! (proto ↔ SDK), `tasks`, `offers`, `placement`, `resources`.
//!
//! ```no_run
//! use std::time::Duration;
//! use drover_sdk::{place, Command, Event, Filters, Framework, Placement, TaskRequest, TaskSpec};
//! use futures::StreamExt;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let (framework, mut events) = Framework::builder()
//!     .name("sleepers")
//!     .masters(["127.0.0.1:5050"])
//!     .connect()
//!     .await?;
//! let request = TaskRequest::new(0.1, 16 << 20, 0)?;
//! let mut launched = 0u32;
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Offers(offers) => {
//!             let plan = place(&offers, &request, 2 - launched, &[], &Placement::default());
//!             for launch in &plan.launches {
//!                 let task = TaskSpec::new(format!("sleeper-{launched}"), Command::argv(["sleep", "60"]))
//!                     .build_for(launch)?;
//!                 framework.launch(&[launch.offer_id.clone()], vec![task], Filters::default()).await?;
//!                 launched += 1;
//!             }
//!             let used: Vec<_> = plan.launches.iter().map(|l| &l.offer_id).collect();
//!             let unused: Vec<_> = offers.iter().map(|o| o.id.clone()).filter(|id| !used.contains(&id)).collect();
//!             framework.decline(&unused, Duration::from_secs(30)).await?;
//!         }
//!         Event::Update(status) => println!("{status}"),
//!         Event::Error(message) => return Err(message.into()),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Resource arithmetic and placement are pure functions:
//!
//! ```
//! use std::collections::BTreeMap;
//! use drover_sdk::{place, AgentId, Offer, OfferId, Placement, PortRanges, Resources, TaskRequest};
//!
//! let offer = Offer {
//!     id: OfferId::from("o1"),
//!     agent_id: AgentId::from("a1"),
//!     hostname: "node1".to_string(),
//!     attributes: BTreeMap::new(),
//!     resources: Resources::new(2.0, Resources::parse_mem("2GiB")?, PortRanges::from_ranges(&[(31000, 31999)])?)?,
//! };
//! let request = TaskRequest::new(0.5, Resources::parse_mem("512MiB")?, 1)?;
//! let plan = place(&[offer], &request, 2, &[], &Placement::default());
//! assert_eq!(plan.launches.len(), 2);
//! assert_eq!(plan.launches[1].ports, [31001]);
//! # Ok::<(), drover_sdk::ResourcesError>(())
//! ```

pub mod calls;
pub mod connection;
pub mod convert;
pub mod error;
pub mod events;
pub mod ids;
mod leader;
pub mod offers;
pub mod placement;
pub mod tasks;

/// Resource arithmetic lives in `drover-types`, shared with the master and the agents.
pub use drover_types::resources;
/// The one grammar for durations and memory sizes, shared with the master, agents and CLI.
pub use drover_types::units;

pub use calls::{Filters, ReconcileTask};
pub use connection::{ConnectionOptions, Framework, FrameworkBuilder};
pub use convert::ConvertError;
/// The metadata key naming the leader, and the master address list, from `drover-client`.
pub use drover_client::{Endpoints, EndpointsError, LEADER_METADATA_KEY};
/// TLS material and the `--tls-*` flags (`TlsArgs`, for a framework's own clap parser).
pub use drover_security::{Secret, TlsArgs, TlsConfig, TlsError};
pub use error::{CallError, ConnectError};
pub use events::{
    ACKNOWLEDGEMENTS_IN_FLIGHT_MAX, ACKNOWLEDGEMENTS_QUEUE_CAPACITY, EVENTS_QUEUE_CAPACITY, Event,
    Events,
};
pub use ids::{AgentId, FrameworkId, OfferId, TaskId};
pub use offers::{Offer, TaskRequest};
pub use placement::{ExistingInstance, Launch, Placement, PlacementPlan, Strategy, Unfit, place};
pub use resources::{MILLICPUS_PER_CPU, PortRanges, Resources, ResourcesError, format_mem};
pub use tasks::{
    Command, StatusSource, TASK_ID_BYTES_MAX, TaskError, TaskInfo, TaskSpec, TaskState, TaskStatus,
};
