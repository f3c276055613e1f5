//! The SDK's errors: [`ConnectError`] from [`FrameworkBuilder::connect`], [`CallError`] from the
//! calls on a [`Framework`].
//!
//! [`FrameworkBuilder::connect`]: crate::FrameworkBuilder::connect
//! [`Framework`]: crate::Framework

use std::time::Duration;

use crate::ids::FrameworkId;

/// Why [`FrameworkBuilder::connect`](crate::FrameworkBuilder::connect) failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConnectError {
    /// A builder setting is unusable; nothing was sent.
    #[error("{field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// Re-subscribing with a framework id the master does not know (never assigned, or torn down
    /// after its failover timeout).
    #[error("framework {framework_id} is not known to the master: {message}")]
    FrameworkNotFound {
        framework_id: FrameworkId,
        message: String,
    },
    /// The master refused the subscription (bad framework info, not authorized, an `Error` event,
    /// or the address is not a master that serves the scheduler API).
    #[error("the master refused the subscription: {message}")]
    Refused { message: String },
    /// No master answered as leader within the subscribe timeout.
    #[error("no leading master found at {masters} within {waited:?}; last error: {last_error}")]
    NoLeader {
        masters: String,
        waited: Duration,
        last_error: String,
    },
}

/// Why a call on a [`Framework`](crate::Framework) failed. `call` names it (`"decline"`, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The master does not know this framework (torn down); the event stream ends too.
    #[error("{call}: framework {framework_id} is not known to the master: {message}")]
    FrameworkNotFound {
        call: &'static str,
        framework_id: FrameworkId,
        message: String,
    },
    /// The master refused the arguments; its message names the field.
    #[error("{call}: invalid argument: {message}")]
    InvalidArgument { call: &'static str, message: String },
    /// No subscription right now: the connection is being re-established (wait for
    /// `Event::Reconnected`), or the event stream has ended.
    #[error("{call}: not connected to the leading master")]
    NotConnected { call: &'static str },
    /// No answer within the call timeout (redirects included).
    #[error("{call}: no answer within {timeout:?}")]
    Timeout {
        call: &'static str,
        timeout: Duration,
    },
    /// The master could not take the call now (no leader, connection lost, too many redirects).
    #[error("{call}: the master is unavailable: {message}")]
    Unavailable { call: &'static str, message: String },
    /// The master will not do it (not authorized, unimplemented, ...).
    #[error("{call}: refused by the master ({code:?}): {message}")]
    Refused {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
}
