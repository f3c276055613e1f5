//! `Resources`, `PortRanges` and `Scalars`: what an agent has, what an offer carries, what a task
//! asks for and uses.
//!
//! CPU is fixed-point (millicpus) inside, so sums and differences over thousands of agents and
//! offers never drift the way `f64` would; the API speaks `f64` cpus and converts at the edge,
//! rounding to the nearest millicpu. Memory is bytes. Ports are a set of inclusive ranges.
//! Arithmetic is checked: subtracting what is not there, or adding a port twice, is an error naming
//! the field, never a panic or a silent wrap.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::units::format_mem;
use crate::units::{self, UnitError};

/// One CPU in millicpus.
pub const MILLICPUS_PER_CPU: u64 = 1000;

/// Resource input or arithmetic that does not make sense; `field` names the resource. Every
/// message starts with `{field}: `, so a caller may put a path in front (`task.resources.ports: ...`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResourcesError {
    #[error("{field}: {value} is not a finite, non-negative number of cpus")]
    InvalidCpus { field: &'static str, value: f64 },
    #[error("{field}: {source}")]
    InvalidMem {
        field: &'static str,
        #[source]
        source: UnitError,
    },
    #[error("{field}: {value} is not a port (0..=65535)")]
    InvalidPort { field: &'static str, value: u32 },
    #[error("{field}: range {start}-{end} has its start after its end")]
    InvalidRange {
        field: &'static str,
        start: u16,
        end: u16,
    },
    #[error("{field}: the sum overflows")]
    Overflow { field: &'static str },
    #[error("{field}: subtracting more than is there")]
    Insufficient { field: &'static str },
    #[error("{field}: adding ports that are already present")]
    Overlap { field: &'static str },
}

/// Converts fractional cpus to millicpus, rounding to the nearest millicpu. NaN, negative,
/// infinite or absurdly large values are `InvalidCpus` naming `field`.
pub fn millicpus_from_cpus(field: &'static str, cpus: f64) -> Result<u64, ResourcesError> {
    // 2^53 millicpus is far beyond any cluster and keeps the conversion exact.
    const MILLICPUS_MAX: f64 = 9_007_199_254_740_992.0;
    let milli = (cpus * MILLICPUS_PER_CPU as f64).round();
    if !cpus.is_finite() || cpus < 0.0 || milli > MILLICPUS_MAX {
        return Err(ResourcesError::InvalidCpus { field, value: cpus });
    }
    // Finite, non-negative, integral and below 2^53, checked just above: the cast is exact.
    Ok(milli as u64)
}

/// Millicpus as the `f64` cpus the API speaks (exact for any realistic amount).
pub fn cpus_from_millicpus(millicpus: u64) -> f64 {
    millicpus as f64 / MILLICPUS_PER_CPU as f64
}

/// A set of ports as inclusive ranges.
///
/// Invariant: `ranges` is sorted, every range has `start <= end`, and ranges neither overlap nor
/// touch (`a.end + 1 < b.start`), so equal sets have equal representations and `==` is set
/// equality. Deserializing goes through [`PortRanges::from_ranges`], so it cannot break this.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<(u16, u16)>", into = "Vec<(u16, u16)>")]
pub struct PortRanges {
    ranges: Vec<(u16, u16)>,
}

impl PortRanges {
    /// The empty set.
    pub fn new() -> PortRanges {
        PortRanges::default()
    }

    /// The union of `ranges` (overlapping or touching inputs merge); a range with its start after
    /// its end is `InvalidRange`.
    pub fn from_ranges(ranges: &[(u16, u16)]) -> Result<PortRanges, ResourcesError> {
        if let Some(&(start, end)) = ranges.iter().find(|(s, e)| s > e) {
            return Err(ResourcesError::InvalidRange {
                field: "ports",
                start,
                end,
            });
        }
        Ok(PortRanges {
            ranges: normalize(ranges.to_vec()),
        })
    }

    /// The set of the given ports (duplicates collapse).
    pub fn from_ports(ports: impl IntoIterator<Item = u16>) -> PortRanges {
        PortRanges {
            ranges: normalize(ports.into_iter().map(|p| (p, p)).collect()),
        }
    }

    /// The sorted, merged ranges.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// Every port, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges.iter().flat_map(|&(s, e)| s..=e)
    }

    /// Number of ports in the set (at most 65536, so it fits in `u32`).
    pub fn count(&self) -> u32 {
        self.ranges
            .iter()
            .map(|&(s, e)| u32::from(e) - u32::from(s) + 1)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains_port(&self, port: u16) -> bool {
        self.range_index_containing(port).is_some()
    }

    fn range_index_containing(&self, port: u16) -> Option<usize> {
        // The last range starting at or before `port`.
        let i = self.ranges.partition_point(|&(s, _)| s <= port);
        let i = i.checked_sub(1)?;
        (self.ranges[i].1 >= port).then_some(i)
    }

    /// Whether every port of `other` is in `self`.
    pub fn contains(&self, other: &PortRanges) -> bool {
        other.ranges.iter().all(|&(s, e)| {
            self.range_index_containing(s)
                .is_some_and(|i| self.ranges[i].1 >= e)
        })
    }

    /// Whether `self` and `other` share at least one port.
    pub fn overlaps(&self, other: &PortRanges) -> bool {
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a, b) = (self.ranges[i], other.ranges[j]);
            if a.1 < b.0 {
                i += 1;
            } else if b.1 < a.0 {
                j += 1;
            } else {
                return true;
            }
        }
        false
    }

    /// The set union; a port in both is kept once.
    pub fn union(&self, other: &PortRanges) -> PortRanges {
        let mut all = self.ranges.clone();
        all.extend_from_slice(&other.ranges);
        PortRanges {
            ranges: normalize(all),
        }
    }

    /// Adds disjoint ports. A port already present is `Overlap`: when adding what was offered to
    /// what is in use, a shared port means it is counted twice, which is a bookkeeping error the
    /// caller wants to hear about (use [`PortRanges::union`] for plain set union).
    pub fn checked_add(&self, other: &PortRanges) -> Result<PortRanges, ResourcesError> {
        if self.overlaps(other) {
            return Err(ResourcesError::Overlap { field: "ports" });
        }
        Ok(self.union(other))
    }

    /// `self` without `other`; `Insufficient` unless `self.contains(other)`.
    pub fn checked_sub(&self, other: &PortRanges) -> Result<PortRanges, ResourcesError> {
        if !self.contains(other) {
            return Err(ResourcesError::Insufficient { field: "ports" });
        }
        Ok(self.difference(other))
    }

    /// `self` without any port of `other` (ports of `other` not in `self` are ignored).
    pub fn difference(&self, other: &PortRanges) -> PortRanges {
        // u32 so that `end + 1` and `start - 1` at the u16 edges need no special cases.
        let mut out = Vec::with_capacity(self.ranges.len() + other.ranges.len());
        let mut j = 0;
        for &(s, e) in &self.ranges {
            let (mut start, end) = (u32::from(s), u32::from(e));
            // Skip removals entirely below this range.
            while j < other.ranges.len() && u32::from(other.ranges[j].1) < start {
                j += 1;
            }
            let mut k = j;
            while k < other.ranges.len() && u32::from(other.ranges[k].0) <= end {
                let (os, oe) = (u32::from(other.ranges[k].0), u32::from(other.ranges[k].1));
                if os > start {
                    out.push((start, os - 1));
                }
                start = start.max(oe + 1);
                if oe > end {
                    // This removal reaches into the next range too; look at it again there.
                    break;
                }
                k += 1;
            }
            j = k;
            if start <= end {
                out.push((start, end));
            }
        }
        // Every bound is a u16 bound, or a bound ±1 that stayed inside some [s, e].
        PortRanges {
            ranges: out
                .into_iter()
                .map(|(s, e)| (narrow(s), narrow(e)))
                .collect(),
        }
    }

    /// Removes and returns the `n` lowest ports, or `None` (leaving `self` as it was) if there are
    /// fewer than `n`. Lowest first keeps choices deterministic and the free set compact.
    pub fn take_n(&mut self, n: u32) -> Option<Vec<u16>> {
        if n > self.count() {
            return None;
        }
        // n ≤ count ≤ 65536, so this allocation is bounded.
        let taken: Vec<u16> = self.iter().take(n as usize).collect();
        *self = self.difference(&PortRanges::from_ports(taken.iter().copied()));
        Some(taken)
    }
}

impl TryFrom<Vec<(u16, u16)>> for PortRanges {
    type Error = ResourcesError;

    fn try_from(ranges: Vec<(u16, u16)>) -> Result<PortRanges, ResourcesError> {
        PortRanges::from_ranges(&ranges)
    }
}

impl From<PortRanges> for Vec<(u16, u16)> {
    fn from(ports: PortRanges) -> Vec<(u16, u16)> {
        ports.ranges
    }
}

impl From<&BTreeSet<u16>> for PortRanges {
    fn from(ports: &BTreeSet<u16>) -> PortRanges {
        PortRanges::from_ports(ports.iter().copied())
    }
}

fn narrow(v: u32) -> u16 {
    u16::try_from(v).expect("port arithmetic stays within the u16 bounds it started from")
}

fn normalize(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(s) <= u32::from(last.1) + 1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (s, e)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if s == e {
                write!(f, "{s}")?;
            } else {
                write!(f, "{s}-{e}")?;
            }
        }
        f.write_str("]")
    }
}

/// CPU, memory and ports: an offer's contents or a launch's share of it.
///
/// ```
/// use drover_types::{PortRanges, Resources};
///
/// let offer = Resources::new(2.0, Resources::parse_mem("1GiB")?, PortRanges::from_ranges(&[(31000, 31009)])?)?;
/// let task = Resources::new(0.5, Resources::parse_mem("256MiB")?, PortRanges::from_ports([31000]))?;
/// assert!(offer.contains(&task));
///
/// let left = offer.checked_sub(&task)?;
/// assert_eq!(left.cpus(), 1.5);
/// assert_eq!(left.mem_bytes(), 768 * 1024 * 1024);
/// assert_eq!(left.ports().ranges(), &[(31001, 31009)]);
/// assert_eq!(left.checked_add(&task)?, offer);
///
/// // Taking more than is there is an error naming the field.
/// let err = task.checked_sub(&offer).unwrap_err();
/// assert_eq!(err.to_string(), "cpus: subtracting more than is there");
/// # Ok::<(), drover_types::ResourcesError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    millicpus: u64,
    mem_bytes: u64,
    ports: PortRanges,
}

impl Resources {
    /// From fractional cpus, rounded to the nearest millicpu; bad cpus are `InvalidCpus`.
    pub fn new(cpus: f64, mem_bytes: u64, ports: PortRanges) -> Result<Resources, ResourcesError> {
        Ok(Resources::from_millicpus(
            millicpus_from_cpus("cpus", cpus)?,
            mem_bytes,
            ports,
        ))
    }

    /// From exact millicpus (what a proto offer carries).
    pub fn from_millicpus(millicpus: u64, mem_bytes: u64, ports: PortRanges) -> Resources {
        Resources {
            millicpus,
            mem_bytes,
            ports,
        }
    }

    pub fn cpus(&self) -> f64 {
        cpus_from_millicpus(self.millicpus)
    }

    pub fn millicpus(&self) -> u64 {
        self.millicpus
    }

    pub fn mem_bytes(&self) -> u64 {
        self.mem_bytes
    }

    pub fn ports(&self) -> &PortRanges {
        &self.ports
    }

    pub fn is_empty(&self) -> bool {
        self.millicpus == 0 && self.mem_bytes == 0 && self.ports.is_empty()
    }

    /// Whether `other` fits inside `self` (every scalar ≤, every port present).
    pub fn contains(&self, other: &Resources) -> bool {
        self.millicpus >= other.millicpus
            && self.mem_bytes >= other.mem_bytes
            && self.ports.contains(&other.ports)
    }

    /// `self + other`; `Overflow` naming the scalar that overflows, `Overlap` if a port is in both.
    pub fn checked_add(&self, other: &Resources) -> Result<Resources, ResourcesError> {
        Ok(Resources {
            millicpus: self
                .millicpus
                .checked_add(other.millicpus)
                .ok_or(ResourcesError::Overflow { field: "cpus" })?,
            mem_bytes: self
                .mem_bytes
                .checked_add(other.mem_bytes)
                .ok_or(ResourcesError::Overflow { field: "mem_bytes" })?,
            ports: self.ports.checked_add(&other.ports)?,
        })
    }

    /// `self - other`; `Insufficient` naming the first field that does not cover `other`.
    pub fn checked_sub(&self, other: &Resources) -> Result<Resources, ResourcesError> {
        Ok(Resources {
            millicpus: self
                .millicpus
                .checked_sub(other.millicpus)
                .ok_or(ResourcesError::Insufficient { field: "cpus" })?,
            mem_bytes: self
                .mem_bytes
                .checked_sub(other.mem_bytes)
                .ok_or(ResourcesError::Insufficient { field: "mem_bytes" })?,
            ports: self.ports.checked_sub(&other.ports)?,
        })
    }

    /// Parses the `mem` of a spec or request with the one memory grammar
    /// ([`crate::units::parse_mem`]: `64MiB`, `1.5GiB`, or bytes); a refusal is `InvalidMem`
    /// naming the `mem` field.
    ///
    /// ```
    /// use drover_types::Resources;
    ///
    /// assert_eq!(Resources::parse_mem("64MiB")?, 64 * 1024 * 1024);
    /// assert_eq!(Resources::parse_mem("1.5 GiB")?, 3 * 512 * 1024 * 1024);
    /// assert!(Resources::parse_mem("lots").is_err());
    /// # Ok::<(), drover_types::ResourcesError>(())
    /// ```
    pub fn parse_mem(input: &str) -> Result<u64, ResourcesError> {
        units::parse_mem(input).map_err(|source| ResourcesError::InvalidMem {
            field: "mem",
            source,
        })
    }

    /// The scalar part, which is what fair sharing counts.
    pub fn scalars(&self) -> Scalars {
        Scalars {
            millicpus: self.millicpus,
            mem_bytes: self.mem_bytes,
        }
    }

    /// The largest share of `total` this uses, over cpus and memory (see
    /// [`Scalars::dominant_share`]).
    pub fn dominant_share(&self, total: &Resources) -> f64 {
        self.scalars().dominant_share(&total.scalars())
    }
}

/// The scalar resources DRF shares out. Ports are left out, as Mesos' sorter leaves out ranges:
/// a port is not a fraction of capacity anyone is short of in the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scalars {
    pub millicpus: u64,
    pub mem_bytes: u64,
}

impl Scalars {
    /// Millicpus as the `f64` cpus the API speaks.
    pub fn cpus(&self) -> f64 {
        cpus_from_millicpus(self.millicpus)
    }

    /// Max over cpus and memory of `self / total`; a dimension with a zero total is ignored.
    pub fn dominant_share(&self, total: &Scalars) -> f64 {
        let share = |used: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                used as f64 / total as f64
            }
        };
        share(self.millicpus, total.millicpus).max(share(self.mem_bytes, total.mem_bytes))
    }

    /// Saturating: the callers keep sums bounded by the cluster total, which fits.
    pub fn add(&mut self, other: Scalars) {
        self.millicpus = self.millicpus.saturating_add(other.millicpus);
        self.mem_bytes = self.mem_bytes.saturating_add(other.mem_bytes);
    }

    /// Panics if `other` exceeds `self`: the callers only take back what they added, so an
    /// underflow is a bookkeeping bug, not bad input.
    pub fn sub(&mut self, other: Scalars) {
        self.millicpus = self
            .millicpus
            .checked_sub(other.millicpus)
            .expect("scalar bookkeeping: removing cpus that were never added");
        self.mem_bytes = self
            .mem_bytes
            .checked_sub(other.mem_bytes)
            .expect("scalar bookkeeping: removing memory that was never added");
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpus:{} mem:{} ports:{}",
            self.cpus(),
            format_mem(self.mem_bytes),
            self.ports
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ports(r: &[(u16, u16)]) -> PortRanges {
        PortRanges::from_ranges(r).expect("valid test ranges")
    }

    #[test]
    fn port_ranges_merge_subtract_and_take() {
        // Proves normalisation merges touching ranges, subtraction leaves holes, and take_n picks
        // the lowest free ports and refuses (unchanged) when there are too few.
        let p = ports(&[(10, 12), (13, 15), (20, 20), (5, 6)]);
        assert_eq!(p.ranges(), &[(5, 6), (10, 15), (20, 20)]);
        assert_eq!(p.count(), 9);
        assert!(p.contains(&ports(&[(11, 14), (20, 20)])));
        assert!(!p.contains(&ports(&[(15, 16)])));
        let mut q = p
            .checked_sub(&ports(&[(11, 12), (15, 15)]))
            .expect("contained");
        assert_eq!(q.ranges(), &[(5, 6), (10, 10), (13, 14), (20, 20)]);
        assert_eq!(q.take_n(4), Some(vec![5, 6, 10, 13]));
        assert_eq!(q.ranges(), &[(14, 14), (20, 20)]);
        assert_eq!(q.take_n(3), None);
        assert_eq!(q.ranges(), &[(14, 14), (20, 20)]);
        assert_eq!(q.take_n(0), Some(vec![]));
        let full = ports(&[(0, u16::MAX)]);
        assert_eq!(full.count(), 65536);
        assert!(full.checked_sub(&full).expect("contained").is_empty());
        assert_eq!(full.to_string(), "[0-65535]");
        assert_eq!(
            ports(&[(1, 1), (3, 4)]).checked_add(&ports(&[(4, 9)])),
            Err(ResourcesError::Overlap { field: "ports" })
        );
    }

    #[test]
    fn bad_inputs_name_the_field() {
        // Proves invalid values and impossible arithmetic are errors naming the field.
        for cpus in [f64::NAN, -1.0, f64::INFINITY, 1e300] {
            assert!(matches!(
                Resources::new(cpus, 0, PortRanges::new()),
                Err(ResourcesError::InvalidCpus { field: "cpus", .. })
            ));
        }
        assert_eq!(
            PortRanges::from_ranges(&[(9, 8)]),
            Err(ResourcesError::InvalidRange {
                field: "ports",
                start: 9,
                end: 8
            })
        );
        let big = Resources::from_millicpus(u64::MAX, 1, PortRanges::new());
        assert_eq!(
            big.checked_add(&big),
            Err(ResourcesError::Overflow { field: "cpus" })
        );
        let small = Resources::from_millicpus(1, 1, PortRanges::new());
        let more_mem = Resources::from_millicpus(1, 2, PortRanges::new());
        assert_eq!(
            small.checked_sub(&more_mem),
            Err(ResourcesError::Insufficient { field: "mem_bytes" })
        );
        let err = Resources::parse_mem("64 furlongs").expect_err("unknown unit");
        assert!(
            err.to_string().starts_with("mem: unknown unit `furlongs`"),
            "{err}"
        );
    }

    #[test]
    fn cpus_round_to_the_nearest_millicpu() {
        // Proves f64 cpus convert to fixed point by rounding, so 0.1 + 0.2 is exactly 0.3.
        let a = Resources::new(0.1, 0, PortRanges::new()).expect("valid");
        let b = Resources::new(0.2, 0, PortRanges::new()).expect("valid");
        let sum = a.checked_add(&b).expect("no overflow");
        assert_eq!(sum.millicpus(), 300);
        assert_eq!(sum.cpus(), 0.3);
        assert_eq!(
            Resources::new(0.0004, 0, PortRanges::new()).map(|r| r.millicpus()),
            Ok(0)
        );
        assert_eq!(
            Resources::new(1.2345, 0, PortRanges::new()).map(|r| r.millicpus()),
            Ok(1235)
        );
    }

    #[test]
    fn dominant_share_is_the_larger_scalar_share() {
        // Proves the dominant share is the max over cpus and memory, and a zero total counts 0.
        let r = Resources::new(0.25, 512, PortRanges::new()).expect("valid");
        let total = Resources::from_millicpus(1000, 1024, PortRanges::new());
        assert_eq!(r.dominant_share(&total), 0.5);
        assert_eq!(
            Resources::default().dominant_share(&Resources::default()),
            0.0
        );
    }

    #[test]
    fn parse_mem_names_the_mem_field_and_keeps_the_cause() {
        // Proves Resources::parse_mem is the units grammar with the field name in front.
        assert_eq!(Resources::parse_mem("1.5GiB"), Ok(3 << 29));
        let err = Resources::parse_mem("2GB").expect_err("ambiguous");
        assert!(
            matches!(
                &err,
                ResourcesError::InvalidMem {
                    field: "mem",
                    source: UnitError::AmbiguousUnit { .. }
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("mem: ambiguous unit `GB`"),
            "{err}"
        );
    }

    /// Ports near both ends of the u16 range, so the edge arithmetic is exercised.
    fn port() -> impl Strategy<Value = u16> {
        prop_oneof![0u16..48, 65_500u16..=u16::MAX]
    }

    fn range() -> impl Strategy<Value = (u16, u16)> {
        (port(), 0u16..6).prop_map(|(s, len)| (s, s.saturating_add(len)))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Union(Vec<(u16, u16)>),
        Add(Vec<(u16, u16)>),
        Sub(Vec<(u16, u16)>),
        Difference(Vec<(u16, u16)>),
        Take(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        let ranges = || proptest::collection::vec(range(), 0..4);
        prop_oneof![
            ranges().prop_map(Op::Union),
            ranges().prop_map(Op::Add),
            ranges().prop_map(Op::Sub),
            ranges().prop_map(Op::Difference),
            (0u32..8).prop_map(Op::Take),
        ]
    }

    fn model_of(ranges: &[(u16, u16)]) -> BTreeSet<u16> {
        ranges.iter().flat_map(|&(s, e)| s..=e).collect()
    }

    fn check_invariant(p: &PortRanges) {
        for w in p.ranges().windows(2) {
            assert!(
                u32::from(w[0].1) + 1 < u32::from(w[1].0),
                "{p:?} not merged"
            );
        }
        assert!(p.ranges().iter().all(|(s, e)| s <= e), "{p:?} inverted");
    }

    proptest! {
        #[test]
        fn port_ranges_match_a_btreeset_model(ops in proptest::collection::vec(op(), 1..24)) {
            // Proves every PortRanges operation agrees with the same operation on a BTreeSet<u16>,
            // and the sorted/merged invariant holds after each one.
            let mut p = PortRanges::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Union(r) => {
                        p = p.union(&ports(&r));
                        model.extend(model_of(&r));
                    }
                    Op::Add(r) => {
                        let other = model_of(&r);
                        let result = p.checked_add(&ports(&r));
                        if model.is_disjoint(&other) {
                            p = result.expect("disjoint add succeeds");
                            model.extend(other);
                        } else {
                            prop_assert_eq!(result, Err(ResourcesError::Overlap { field: "ports" }));
                        }
                    }
                    Op::Sub(r) => {
                        let other = model_of(&r);
                        let result = p.checked_sub(&ports(&r));
                        prop_assert_eq!(p.contains(&ports(&r)), other.is_subset(&model));
                        if other.is_subset(&model) {
                            p = result.expect("contained sub succeeds");
                            model.retain(|x| !other.contains(x));
                        } else {
                            prop_assert_eq!(result, Err(ResourcesError::Insufficient { field: "ports" }));
                        }
                    }
                    Op::Difference(r) => {
                        let other = model_of(&r);
                        p = p.difference(&ports(&r));
                        model.retain(|x| !other.contains(x));
                    }
                    Op::Take(n) => {
                        let taken = p.take_n(n);
                        if n as usize <= model.len() {
                            let want: Vec<u16> = model.iter().copied().take(n as usize).collect();
                            for x in &want {
                                model.remove(x);
                            }
                            prop_assert_eq!(taken, Some(want));
                        } else {
                            prop_assert_eq!(taken, None);
                        }
                    }
                }
                check_invariant(&p);
                prop_assert_eq!(p.iter().collect::<BTreeSet<_>>(), model.clone());
                prop_assert_eq!(p.count() as usize, model.len());
                prop_assert_eq!(&p, &PortRanges::from(&model));
                for x in [0u16, 1, 5, 47, 65_534, 65_535] {
                    prop_assert_eq!(p.contains_port(x), model.contains(&x));
                }
            }
        }

        #[test]
        fn resources_add_then_sub_round_trips(
            a_milli in 0u64..1_000_000, a_mem in 0u64..1 << 40, a_ports in proptest::collection::vec(range(), 0..3),
            b_milli in 0u64..1_000_000, b_mem in 0u64..1 << 40, b_ports in proptest::collection::vec(range(), 0..3),
        ) {
            // Proves (a + b) - b == a when the ports are disjoint, that a + b contains both, and
            // that contains agrees with checked_sub succeeding.
            let a = Resources::from_millicpus(a_milli, a_mem, ports(&a_ports));
            let b = Resources::from_millicpus(b_milli, b_mem, ports(&b_ports));
            match a.checked_add(&b) {
                Ok(sum) => {
                    prop_assert!(sum.contains(&a) && sum.contains(&b));
                    prop_assert_eq!(sum.checked_sub(&b), Ok(a.clone()));
                    prop_assert_eq!(sum.checked_sub(&a), Ok(b.clone()));
                }
                Err(e) => {
                    prop_assert_eq!(e, ResourcesError::Overlap { field: "ports" });
                    prop_assert!(a.ports().overlaps(b.ports()));
                }
            }
            prop_assert_eq!(a.contains(&b), a.checked_sub(&b).is_ok());
        }
    }
}
