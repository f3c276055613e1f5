//! `Resources`: what an agent has, what an offer carries, what a task uses.
//!
//! CPU is fixed-point (`millicpus: u64`), so sums and differences over thousands of agents never
//! drift the way `f64` would; `cpus()` / `from_cpus()` convert at the edge. Ports are a set of
//! inclusive ranges. All arithmetic is checked: subtracting what is not there, or adding ports
//! that are already present, is an error naming the field, never a panic or a silent wrap.

use std::fmt;

/// One CPU in millicpus.
pub const MILLICPUS_PER_CPU: u64 = 1000;

/// Resource arithmetic or input that does not make sense; `field` names the resource.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResourcesError {
    #[error("{field}: {value} is not a finite, non-negative number of cpus")]
    InvalidCpus { field: &'static str, value: f64 },
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

/// A set of ports as inclusive ranges.
///
/// Invariant: `ranges` is sorted, every range has `start <= end`, and ranges neither overlap nor
/// touch (`a.end + 1 < b.start`), so equal sets have equal representations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ports {
    ranges: Vec<(u16, u16)>,
}

impl Ports {
    pub fn new() -> Ports {
        Ports::default()
    }

    /// The union of `ranges` (overlapping inputs merge). A range with start > end is an error.
    pub fn from_ranges(ranges: &[(u16, u16)]) -> Result<Ports, ResourcesError> {
        for &(start, end) in ranges {
            if start > end {
                return Err(ResourcesError::InvalidRange {
                    field: "ports",
                    start,
                    end,
                });
            }
        }
        Ok(Ports {
            ranges: normalize(ranges.to_vec()),
        })
    }

    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// Number of ports in the set.
    pub fn count(&self) -> u64 {
        self.ranges
            .iter()
            .map(|&(s, e)| u64::from(e) - u64::from(s) + 1)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains_port(&self, port: u16) -> bool {
        self.range_index_containing(port).is_some()
    }

    fn range_index_containing(&self, port: u16) -> Option<usize> {
        // Last range starting at or before `port`.
        let i = self.ranges.partition_point(|&(s, _)| s <= port);
        let i = i.checked_sub(1)?;
        (self.ranges[i].1 >= port).then_some(i)
    }

    /// Whether every port of `other` is in `self`.
    pub fn contains(&self, other: &Ports) -> bool {
        other.ranges.iter().all(|&(s, e)| {
            self.range_index_containing(s)
                .is_some_and(|i| self.ranges[i].1 >= e)
        })
    }

    fn overlaps(&self, other: &Ports) -> bool {
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

    /// Adds disjoint ports; adding a port already present is `Overlap` (it would mean the same
    /// port is counted twice, e.g. offered and in use at once).
    pub fn checked_add(&self, other: &Ports) -> Result<Ports, ResourcesError> {
        if self.overlaps(other) {
            return Err(ResourcesError::Overlap { field: "ports" });
        }
        let mut all = self.ranges.clone();
        all.extend_from_slice(&other.ranges);
        Ok(Ports {
            ranges: normalize(all),
        })
    }

    /// `self` without `other`; `Insufficient` unless `self.contains(other)`.
    pub fn checked_sub(&self, other: &Ports) -> Result<Ports, ResourcesError> {
        if !self.contains(other) {
            return Err(ResourcesError::Insufficient { field: "ports" });
        }
        let mut out = Vec::with_capacity(self.ranges.len() + other.ranges.len());
        let mut j = 0;
        for &(s, e) in &self.ranges {
            let mut start = u32::from(s);
            let end = u32::from(e);
            while j < other.ranges.len() && u32::from(other.ranges[j].1) <= end {
                let (os, oe) = (u32::from(other.ranges[j].0), u32::from(other.ranges[j].1));
                if os > start {
                    out.push((start, os - 1));
                }
                start = oe + 1;
                j += 1;
            }
            if start <= end {
                out.push((start, end));
            }
        }
        // Every value came from a u16 range bound, or a bound ±1 that stayed inside [s, e].
        Ok(Ports {
            ranges: out
                .into_iter()
                .map(|(s, e)| (narrow(s), narrow(e)))
                .collect(),
        })
    }

    /// Removes and returns the `n` lowest ports; `Insufficient` if there are fewer than `n`.
    pub fn split_off(&mut self, n: u64) -> Result<Ports, ResourcesError> {
        if n > self.count() {
            return Err(ResourcesError::Insufficient { field: "ports" });
        }
        let mut taken = Vec::new();
        let mut left = n;
        for &(s, e) in &self.ranges {
            if left == 0 {
                break;
            }
            let len = u64::from(e) - u64::from(s) + 1;
            if len <= left {
                taken.push((s, e));
                left -= len;
            } else {
                // left < len <= 65536, so s + left - 1 < e fits in u16.
                taken.push((s, narrow(u32::from(s) + narrow_u32(left) - 1)));
                left = 0;
            }
        }
        let taken = Ports { ranges: taken };
        *self = self.checked_sub(&taken)?;
        Ok(taken)
    }
}

fn narrow(v: u32) -> u16 {
    u16::try_from(v).expect("port arithmetic stays within the u16 bounds it started from")
}

fn narrow_u32(v: u64) -> u32 {
    u32::try_from(v).expect("a port count fits in u32")
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

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (s, e)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{s}-{e}")?;
        }
        f.write_str("]")
    }
}

/// CPU, memory and ports. Plain value; no invariant beyond `Ports`' own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub millicpus: u64,
    pub mem_bytes: u64,
    pub ports: Ports,
}

impl Resources {
    pub fn new(millicpus: u64, mem_bytes: u64, ports: Ports) -> Resources {
        Resources {
            millicpus,
            mem_bytes,
            ports,
        }
    }

    /// From fractional cpus (as a user or a framework writes them), rounded to the nearest
    /// millicpu. NaN, negative, infinite or absurdly large values are errors naming `cpus`.
    pub fn from_cpus(cpus: f64, mem_bytes: u64, ports: Ports) -> Result<Resources, ResourcesError> {
        // 2^53 millicpus is far beyond any cluster and keeps the conversion exact.
        const MILLICPUS_MAX: f64 = 9_007_199_254_740_992.0;
        let milli = (cpus * MILLICPUS_PER_CPU as f64).round();
        if !cpus.is_finite() || cpus < 0.0 || milli > MILLICPUS_MAX {
            return Err(ResourcesError::InvalidCpus {
                field: "cpus",
                value: cpus,
            });
        }
        // In range and integral, checked just above.
        let millicpus = milli as u64;
        Ok(Resources::new(millicpus, mem_bytes, ports))
    }

    pub fn cpus(&self) -> f64 {
        self.millicpus as f64 / MILLICPUS_PER_CPU as f64
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

    /// The scalar part, which is what fair sharing counts.
    pub fn scalars(&self) -> Scalars {
        Scalars {
            millicpus: self.millicpus,
            mem_bytes: self.mem_bytes,
        }
    }

    /// The largest share of `total` this uses, over cpus and memory (see `Scalars::dominant_share`).
    pub fn dominant_share(&self, total: &Resources) -> f64 {
        self.scalars().dominant_share(&total.scalars())
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpus:{} mem:{}B ports:{}",
            self.cpus(),
            self.mem_bytes,
            self.ports
        )
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
    pub(crate) fn sub(&mut self, other: Scalars) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ports(r: &[(u16, u16)]) -> Ports {
        Ports::from_ranges(r).expect("valid test ranges")
    }

    #[test]
    fn port_ranges_merge_subtract_and_split() {
        // Proves range normalisation, containment, subtraction with holes and split_off.
        let p = ports(&[(10, 12), (13, 15), (20, 20), (5, 6)]);
        assert_eq!(p.ranges(), &[(5, 6), (10, 15), (20, 20)]);
        assert_eq!(p.count(), 9);
        assert!(p.contains(&ports(&[(11, 14), (20, 20)])));
        assert!(!p.contains(&ports(&[(15, 16)])));
        let q = p
            .checked_sub(&ports(&[(11, 12), (15, 15)]))
            .expect("contained");
        assert_eq!(q.ranges(), &[(5, 6), (10, 10), (13, 14), (20, 20)]);
        let mut r = q.clone();
        let taken = r.split_off(4).expect("enough ports");
        assert_eq!(taken.ranges(), &[(5, 6), (10, 10), (13, 13)]);
        assert_eq!(r.ranges(), &[(14, 14), (20, 20)]);
        assert_eq!(
            r.split_off(3),
            Err(ResourcesError::Insufficient { field: "ports" })
        );
        let full = ports(&[(0, u16::MAX)]);
        assert_eq!(full.count(), 65536);
        assert_eq!(full.checked_sub(&full).map(|p| p.is_empty()), Ok(true));
    }

    #[test]
    fn bad_inputs_name_the_field() {
        // Proves invalid values and impossible arithmetic are errors naming the field.
        assert!(matches!(
            Resources::from_cpus(f64::NAN, 0, Ports::new()),
            Err(ResourcesError::InvalidCpus { field: "cpus", .. })
        ));
        assert!(Resources::from_cpus(-1.0, 0, Ports::new()).is_err());
        assert!(Resources::from_cpus(1e300, 0, Ports::new()).is_err());
        assert_eq!(
            Ports::from_ranges(&[(5, 4)]),
            Err(ResourcesError::InvalidRange {
                field: "ports",
                start: 5,
                end: 4
            })
        );
        let a = Resources::new(1000, 10, ports(&[(1, 2)]));
        let b = Resources::new(500, 20, Ports::new());
        assert_eq!(
            a.checked_sub(&b),
            Err(ResourcesError::Insufficient { field: "mem_bytes" })
        );
        assert_eq!(
            a.checked_add(&a),
            Err(ResourcesError::Overlap { field: "ports" })
        );
        let max = Resources::new(u64::MAX, 0, Ports::new());
        assert_eq!(
            max.checked_add(&max),
            Err(ResourcesError::Overflow { field: "cpus" })
        );
    }

    #[test]
    fn cpus_convert_and_dominant_share() {
        // Proves fixed-point cpu conversion and the dominant share over cpus and memory.
        let r = Resources::from_cpus(0.25, 512, Ports::new()).expect("valid");
        assert_eq!(r.millicpus, 250);
        assert_eq!(r.cpus(), 0.25);
        let total = Resources::new(1000, 1024, Ports::new());
        assert_eq!(r.dominant_share(&total), 0.5);
        assert_eq!(
            Resources::default().dominant_share(&Resources::default()),
            0.0
        );
    }

    fn arb_ports() -> impl Strategy<Value = Ports> {
        prop::collection::vec((0u16..200, 0u16..20), 0..6).prop_map(|v| {
            let r: Vec<(u16, u16)> = v.into_iter().map(|(s, l)| (s, s + l)).collect();
            Ports::from_ranges(&r).expect("start <= end by construction")
        })
    }

    fn set(p: &Ports) -> std::collections::BTreeSet<u16> {
        p.ranges().iter().flat_map(|&(s, e)| s..=e).collect()
    }

    proptest! {
        #[test]
        fn ports_behave_like_a_set(a in arb_ports(), b in arb_ports(), n in 0u64..60) {
            // Proves port-range arithmetic matches a plain BTreeSet<u16> model.
            let (sa, sb) = (set(&a), set(&b));
            prop_assert_eq!(a.contains(&b), sb.is_subset(&sa));
            prop_assert_eq!(a.count(), sa.len() as u64);
            match a.checked_add(&b) {
                Ok(sum) => {
                    prop_assert!(sa.is_disjoint(&sb));
                    prop_assert_eq!(set(&sum), sa.union(&sb).copied().collect());
                }
                Err(_) => prop_assert!(!sa.is_disjoint(&sb)),
            }
            let inter: Vec<(u16, u16)> = sa.intersection(&sb).map(|&p| (p, p)).collect();
            let inter = Ports::from_ranges(&inter).expect("single ports");
            let diff = a.checked_sub(&inter).expect("intersection is contained");
            prop_assert_eq!(set(&diff), sa.difference(&sb).copied().collect());
            let mut rest = a.clone();
            match rest.split_off(n) {
                Ok(taken) => {
                    prop_assert_eq!(set(&taken), sa.iter().take(n as usize).copied().collect());
                    prop_assert_eq!(taken.count() + rest.count(), a.count());
                }
                Err(_) => prop_assert!(n > a.count()),
            }
        }
    }
}
