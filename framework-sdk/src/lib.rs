//! What framework authors use: resource arithmetic, the SDK's offer types, and a placement helper
//! that turns offers into launches for N instances. Connecting to the leading master, the event
//! stream and the scheduler calls come later; they will convert proto offers into [`Offer`], so
//! nothing here sees wire types.
//!
//! Must not depend on the master or coord (frameworks talk to the master over gRPC only), and does
//! no I/O: everything here is a pure function of its inputs. Start at [`place`], then
//! [`Resources`] and [`PortRanges`].
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

pub mod offers;
pub mod placement;
pub mod resources;

pub use offers::{AgentId, Offer, OfferId, TaskRequest};
pub use placement::{ExistingInstance, Launch, Placement, PlacementPlan, Strategy, Unfit, place};
pub use resources::{MILLICPUS_PER_CPU, PortRanges, Resources, ResourcesError, format_mem};
