//! Identifiers of the replicated history: zxids and session ids.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A transaction id: the epoch of the leader that proposed it (high 32 bits) and a counter within
/// that epoch (low 32 bits). Zxids order the whole history; comparing the `u64` compares
/// (epoch, counter).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Zxid(pub u64);

impl Zxid {
    pub const ZERO: Zxid = Zxid(0);

    pub fn new(epoch: u32, counter: u32) -> Zxid {
        Zxid((u64::from(epoch) << 32) | u64::from(counter))
    }
    pub fn epoch(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub fn counter(self) -> u32 {
        self.0 as u32
    }
    /// The next zxid in the same epoch, or `None` when the counter would overflow (the leader must
    /// then start a new epoch, as ZooKeeper does).
    pub fn next(self) -> Option<Zxid> {
        self.counter()
            .checked_add(1)
            .map(|c| Zxid::new(self.epoch(), c))
    }
}

impl fmt::Display for Zxid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:x}", self.0)
    }
}

/// A client session. Its id is the zxid of the transaction that created it, which makes ids unique
/// across servers and restarts without any extra state.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zxid_orders_by_epoch_then_counter() {
        // ZAB: a zxid of a later epoch is greater than any zxid of an earlier one.
        assert!(Zxid::new(2, 0) > Zxid::new(1, u32::MAX));
        assert_eq!(Zxid::new(3, 7).epoch(), 3);
        assert_eq!(Zxid::new(3, 7).counter(), 7);
        assert_eq!(Zxid::new(1, u32::MAX).next(), None);
        assert_eq!(Zxid::new(1, 4).next(), Some(Zxid::new(1, 5)));
    }
}
