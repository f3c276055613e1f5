//! What this agent offers to the cluster: CPUs, memory, port ranges and attributes.
//!
//! Owns the parsing of `drover agent --cpus/--mem/--mem-reserve/--ports/--attr` and the discovery of
//! the machine's logical CPUs and memory through `sysinfo`. Start at [`discover`], which turns a
//! [`ResourceOverrides`] (build it from raw flag strings with [`ResourceOverrides::from_flags`]) into
//! [`AgentResources`].
//!
//! Rules:
//! - **CPUs**: the machine's logical CPUs (capped at [`CPUS_MAX`]), nothing reserved for the agent (it is mostly idle; task
//!   CPU limits are shares and quotas, so a busy agent still gets scheduled).
//! - **Memory**: total RAM (or the agent's cgroup memory limit, if lower) minus a reservation for the agent, its supervisors and the page cache.
//!   The default reservation is the larger of [`MEM_RESERVE_DEFAULT_BYTES`] (256 MiB) and
//!   [`MEM_RESERVE_DEFAULT_PERCENT`] (5 %) of RAM, but never more than half the machine, so a 1 GiB
//!   test VM still offers 512 MiB. `--mem-reserve` takes bytes (`512MiB`) or a percentage (`10%`).
//! - **Ports**: `--ports`, else Mesos's default `31000-32000`.
//! - **Overrides win**: `--cpus` and `--mem` replace what was discovered (and `--mem` is not reduced
//!   by the reservation: the operator said exactly what to offer). An override above what the
//!   machine has is accepted with a `warn`: it lets a laptop or a 2-core CI box pretend to be a big
//!   host, to test packing and many tasks; tasks then just compete for the real hardware.
//!
//! Every parse error names the flag and the bad value ([`ResourceError::InvalidFlag`]).

use std::collections::BTreeMap;

use drover_types::PortRanges;

use crate::limits::CPUS_MAX;

/// Reservation floor for the agent's own memory when `--mem-reserve` is not given.
pub const MEM_RESERVE_DEFAULT_BYTES: u64 = 256 * MIB;
/// Reservation as a share of RAM when `--mem-reserve` is not given (the larger of the two wins).
pub const MEM_RESERVE_DEFAULT_PERCENT: u8 = 5;
/// Ports offered when `--ports` is not given (Mesos's default).
pub const PORTS_DEFAULT: (u16, u16) = (31000, 32000);
/// Most comma-separated items in one `--ports` value.
pub const PORT_RANGE_ITEMS_MAX: usize = 1024;
/// Most `--attr` flags.
pub const ATTRIBUTES_MAX: usize = 64;
/// Longest attribute key (a DNS label).
pub const ATTRIBUTE_KEY_BYTES_MAX: usize = 63;
/// Longest attribute value.
pub const ATTRIBUTE_VALUE_BYTES_MAX: usize = 255;
/// Longest flag value a parser looks at (anything longer is a mistake, not a size).
pub const FLAG_VALUE_BYTES_MAX: usize = 64 * 1024;

const MIB: u64 = 1 << 20;

/// Errors from parsing resource flags and from discovery.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// A flag value that does not parse or is out of range.
    #[error("invalid {flag} value {value:?}: {reason}")]
    InvalidFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    /// `sysinfo` could not read the machine.
    #[error("cannot discover {what}")]
    Discovery {
        what: &'static str,
        #[source]
        source: sysinfo::Error,
    },
    /// The machine reported nothing usable (0 CPUs, 0 bytes of RAM, or nothing left after the
    /// reservation) and no override was given.
    #[error("no {what} to offer: {reason}; pass {flag}")]
    NothingToOffer {
        what: &'static str,
        flag: &'static str,
        reason: String,
    },
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ResourceError {
    // Keep the echoed value short: it ends up in one log line.
    let mut shown: String = value.chars().take(100).collect();
    if shown.len() < value.len() {
        shown.push('…');
    }
    ResourceError::InvalidFlag {
        flag,
        value: shown,
        reason: reason.into(),
    }
}

/// What this agent offers.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentResources {
    /// Logical CPUs, > 0 and finite.
    pub cpus: f64,
    /// Bytes of memory, > 0.
    pub mem_bytes: u64,
    /// Inclusive port ranges, sorted, non-overlapping, non-adjacent, within 1..=65535.
    pub ports: Vec<(u16, u16)>,
    pub attributes: BTreeMap<String, String>,
}

/// How much memory the agent keeps for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemReserve {
    /// max(256 MiB, 5 % of RAM), at most half of RAM.
    Default,
    Bytes(u64),
    /// 0..=100 percent of RAM.
    Percent(u8),
}

impl MemReserve {
    /// Bytes reserved on a machine with `total` bytes of RAM.
    pub fn bytes_of(self, total: u64) -> u64 {
        let reserve = match self {
            MemReserve::Default => MEM_RESERVE_DEFAULT_BYTES
                .max(percent_of(total, MEM_RESERVE_DEFAULT_PERCENT))
                .min(total / 2),
            MemReserve::Bytes(b) => b,
            MemReserve::Percent(p) => percent_of(total, p),
        };
        reserve.min(total)
    }
}

fn percent_of(total: u64, percent: u8) -> u64 {
    // u128: total * 100 overflows u64 near 184 PB, which no machine has, but no truncation either.
    u64::try_from(u128::from(total) * u128::from(percent) / 100).unwrap_or(u64::MAX)
}

/// Operator overrides; `None` means "discover" (or the default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceOverrides {
    pub cpus: Option<f64>,
    pub mem_bytes: Option<u64>,
    /// Ignored when `mem_bytes` is given.
    pub mem_reserve: Option<MemReserve>,
    /// Already normalized by [`parse_ports`]; `None` means [`PORTS_DEFAULT`].
    pub ports: Option<Vec<(u16, u16)>>,
    pub attributes: BTreeMap<String, String>,
}

impl ResourceOverrides {
    /// Parses the raw flag values of `drover agent` (each `None` when the flag is absent; one
    /// entry per `--attr`). A key given twice in `--attr` is an error.
    pub fn from_flags(
        cpus: Option<&str>,
        mem: Option<&str>,
        mem_reserve: Option<&str>,
        ports: Option<&str>,
        attrs: &[String],
    ) -> Result<ResourceOverrides, ResourceError> {
        if attrs.len() > ATTRIBUTES_MAX {
            return Err(invalid(
                "--attr",
                &attrs.join(","),
                format!("{} attributes, limit is {ATTRIBUTES_MAX}", attrs.len()),
            ));
        }
        let mut attributes = BTreeMap::new();
        for raw in attrs {
            let (k, v) = parse_attr(raw)?;
            if attributes.contains_key(&k) {
                return Err(invalid("--attr", raw, format!("key {k:?} given twice")));
            }
            attributes.insert(k, v);
        }
        Ok(ResourceOverrides {
            cpus: cpus.map(parse_cpus).transpose()?,
            mem_bytes: mem.map(parse_mem).transpose()?,
            mem_reserve: mem_reserve.map(parse_mem_reserve).transpose()?,
            ports: ports.map(parse_ports).transpose()?,
            attributes,
        })
    }
}

/// What the machine has, as `sysinfo` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineResources {
    pub logical_cpus: usize,
    pub total_mem_bytes: u64,
}

/// Reads logical CPUs and total RAM from `sysinfo`; RAM is capped by the memory limit of the cgroup
/// the agent runs in (a container), if any. A CPU quota on that cgroup is not applied: pass
/// `--cpus`.
pub fn machine() -> Result<MachineResources, ResourceError> {
    use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
    let refresh = RefreshKind::nothing()
        .with_cpu(CpuRefreshKind::nothing())
        .with_memory(MemoryRefreshKind::nothing().with_ram());
    let sys = System::new_with_specifics(refresh).map_err(|source| ResourceError::Discovery {
        what: "cpus and memory",
        source,
    })?;
    // Inside a container the memory limit of its cgroup, not the host's RAM, is what tasks get.
    let total_mem_bytes = match sys.cgroup_limits() {
        Some(limits) if limits.total_memory > 0 => sys.total_memory().min(limits.total_memory),
        _ => sys.total_memory(),
    };
    Ok(MachineResources {
        logical_cpus: sys.cpus().len(),
        total_mem_bytes,
    })
}

/// The resources to offer: discovered from this machine, with `overrides` applied.
pub fn discover(overrides: ResourceOverrides) -> Result<AgentResources, ResourceError> {
    resolve(machine()?, overrides)
}

/// [`discover`] for a given machine (what tests and [`discover`] share).
pub fn resolve(
    machine: MachineResources,
    overrides: ResourceOverrides,
) -> Result<AgentResources, ResourceError> {
    let cpus = match overrides.cpus {
        Some(c) => {
            // Values up to CPUS_MAX (4096) are exact in f64; usize -> f64 is exact below 2^53.
            let have = machine.logical_cpus as f64;
            if c > have {
                tracing::warn!(
                    cpus = c,
                    logical_cpus = machine.logical_cpus,
                    "--cpus is more than this machine has; offering it anyway (tasks will share the real CPUs)"
                );
            }
            c
        }
        None if machine.logical_cpus == 0 => {
            return Err(ResourceError::NothingToOffer {
                what: "cpus",
                flag: "--cpus",
                reason: "the machine reports 0 logical CPUs".into(),
            });
        }
        None => (machine.logical_cpus.min(CPUS_MAX as usize)) as f64,
    };
    let mem_bytes = match overrides.mem_bytes {
        Some(m) => {
            if m > machine.total_mem_bytes {
                tracing::warn!(
                    mem_bytes = m,
                    total_mem_bytes = machine.total_mem_bytes,
                    "--mem is more than this machine has; offering it anyway (tasks may be OOM-killed)"
                );
            }
            m
        }
        None => {
            let reserve = overrides
                .mem_reserve
                .unwrap_or(MemReserve::Default)
                .bytes_of(machine.total_mem_bytes);
            let left = machine.total_mem_bytes - reserve;
            if left == 0 {
                return Err(ResourceError::NothingToOffer {
                    what: "memory",
                    flag: "--mem",
                    reason: format!(
                        "the machine has {} bytes and {reserve} are reserved for the agent",
                        machine.total_mem_bytes
                    ),
                });
            }
            left
        }
    };
    Ok(AgentResources {
        cpus,
        mem_bytes,
        ports: overrides.ports.unwrap_or_else(|| vec![PORTS_DEFAULT]),
        attributes: overrides.attributes,
    })
}

fn check_length(flag: &'static str, value: &str) -> Result<(), ResourceError> {
    if value.len() > FLAG_VALUE_BYTES_MAX {
        return Err(invalid(
            flag,
            value,
            format!("longer than {FLAG_VALUE_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// Parses `--cpus`: a decimal number, > 0, finite, at most [`CPUS_MAX`] (`4`, `0.5`).
pub fn parse_cpus(value: &str) -> Result<f64, ResourceError> {
    const FLAG: &str = "--cpus";
    check_length(FLAG, value)?;
    let s = value.trim();
    // Rust's f64 parser accepts "inf", "NaN" and "1e3"; only plain decimals are meant here.
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(invalid(FLAG, value, "expected a positive decimal number"));
    }
    let cpus: f64 = s
        .parse()
        .map_err(|_| invalid(FLAG, value, "expected a positive decimal number"))?;
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(invalid(FLAG, value, "must be > 0"));
    }
    if cpus > CPUS_MAX {
        return Err(invalid(FLAG, value, format!("limit is {CPUS_MAX}")));
    }
    Ok(cpus)
}

/// Parses `--mem`: bytes, > 0. See [`parse_bytes`] for the syntax.
pub fn parse_mem(value: &str) -> Result<u64, ResourceError> {
    let bytes = parse_bytes("--mem", value)?;
    if bytes == 0 {
        return Err(invalid("--mem", value, "must be > 0"));
    }
    Ok(bytes)
}

/// Parses `--mem-reserve`: bytes (`512MiB`, may be 0) or a percentage of RAM (`10%`, 0..=100).
pub fn parse_mem_reserve(value: &str) -> Result<MemReserve, ResourceError> {
    const FLAG: &str = "--mem-reserve";
    check_length(FLAG, value)?;
    let s = value.trim();
    if let Some(p) = s.strip_suffix('%') {
        let p = p.trim();
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid(FLAG, value, "expected a whole percentage like 10%"));
        }
        return match p.parse::<u8>() {
            Ok(p) if p <= 100 => Ok(MemReserve::Percent(p)),
            _ => Err(invalid(FLAG, value, "percentage must be 0..=100")),
        };
    }
    parse_bytes(FLAG, value).map(MemReserve::Bytes)
}

/// Parses a byte size for `flag` with the one memory grammar, [`drover_types::units::parse_mem`]
/// (`1024`, `512MiB`, `1.5GiB`; `KB`/`MB`/`G` refused as ambiguous), naming the flag on error.
pub fn parse_bytes(flag: &'static str, value: &str) -> Result<u64, ResourceError> {
    check_length(flag, value)?;
    drover_types::units::parse_mem(value).map_err(|e| invalid(flag, value, e.to_string()))
}

/// Parses `--ports`: comma-separated ports (`33000`) and inclusive ranges (`31000-32000`), each in
/// 1..=65535. The result is sorted; overlapping and adjacent ranges are merged (overlaps are
/// harmless: the same port listed twice is still one port). A reversed range (`32000-31000`) is
/// an error, since it is more likely a typo than a wish for nothing.
pub fn parse_ports(value: &str) -> Result<Vec<(u16, u16)>, ResourceError> {
    const FLAG: &str = "--ports";
    check_length(FLAG, value)?;
    if value.trim().is_empty() {
        return Err(invalid(FLAG, value, "empty"));
    }
    let port = |p: &str| -> Result<u16, ResourceError> {
        let p = p.trim();
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid(FLAG, value, format!("{p:?} is not a port number")));
        }
        match p.parse::<u16>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(invalid(
                FLAG,
                value,
                format!("port {p} is not in 1..=65535"),
            )),
        }
    };
    let mut ranges = Vec::new();
    for (i, item) in value.split(',').enumerate() {
        if i >= PORT_RANGE_ITEMS_MAX {
            return Err(invalid(
                FLAG,
                value,
                format!("more than {PORT_RANGE_ITEMS_MAX} items"),
            ));
        }
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(item)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(invalid(FLAG, value, format!("range {lo}-{hi} is reversed")));
        }
        ranges.push((lo, hi));
    }
    // Sorted and merged the way every port set is (reversed ranges were refused above).
    PortRanges::from_ranges(&ranges)
        .map(Vec::from)
        .map_err(|e| invalid(FLAG, value, e.to_string()))
}

/// Parses one `--attr key=value`. The key is a DNS label: 1..=63 bytes of ASCII letters, digits,
/// `-` and `_`, starting and ending with a letter or digit (so it is safe in constraints, labels
/// and file names). The value is 1..=255 bytes of printable ASCII without spaces or `,`; it may
/// contain `=`. Matching is case-sensitive, so keys are kept as given.
pub fn parse_attr(value: &str) -> Result<(String, String), ResourceError> {
    const FLAG: &str = "--attr";
    check_length(FLAG, value)?;
    let Some((key, val)) = value.split_once('=') else {
        return Err(invalid(FLAG, value, "expected key=value"));
    };
    if key.is_empty() || key.len() > ATTRIBUTE_KEY_BYTES_MAX {
        return Err(invalid(
            FLAG,
            value,
            format!("key must be 1..={ATTRIBUTE_KEY_BYTES_MAX} bytes"),
        ));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            FLAG,
            value,
            "key may hold only ASCII letters, digits, '-' and '_'",
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(key.chars().next()) || !edge_ok(key.chars().last()) {
        return Err(invalid(
            FLAG,
            value,
            "key must start and end with a letter or digit",
        ));
    }
    if val.is_empty() || val.len() > ATTRIBUTE_VALUE_BYTES_MAX {
        return Err(invalid(
            FLAG,
            value,
            format!("value must be 1..={ATTRIBUTE_VALUE_BYTES_MAX} bytes"),
        ));
    }
    if !val.chars().all(|c| c.is_ascii_graphic() && c != ',') {
        return Err(invalid(
            FLAG,
            value,
            "value may hold only printable ASCII without spaces or ','",
        ));
    }
    Ok((key.to_string(), val.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;

    fn flag_of(e: ResourceError) -> (&'static str, String) {
        match e {
            ResourceError::InvalidFlag { flag, value, .. } => (flag, value),
            other => panic!("expected InvalidFlag, got {other:?}"),
        }
    }

    #[test]
    fn parse_mem_accepts_binary_units_and_fractions() {
        // Proves: plain bytes and KiB..TiB (any case) are binary, fractions to whole bytes.
        let cases = [
            ("1024", 1024),
            ("512MiB", 512 * MIB),
            ("8GiB", 8 * GIB),
            ("8Gi", 8 * GIB),
            ("8 gib", 8 * GIB),
            ("1.5GiB", 3 * GIB / 2),
            ("0.5KiB", 512),
            ("2TiB", 2 * TIB),
            ("100B", 100),
            ("16777215TiB", 16_777_215 * TIB),
        ];
        for (input, want) in cases {
            assert_eq!(parse_mem(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn parse_mem_rejects_bad_values_naming_the_flag() {
        // Proves: negatives, empty, zero, unknown/ambiguous units, junk and u64 overflow are errors
        // that name `--mem` and echo the bad value.
        for bad in [
            "",
            "  ",
            "-1",
            "-1GiB",
            "0",
            "0.0001",
            "8XB",
            "8MB",
            "8G",
            "1.0000000000000000000001",
            "GiB",
            "1.2.3G",
            ".",
            "1e9",
            "16777216TiB",
            "18446744073709551616",
            "99999999999999999999999999999999999999999",
        ] {
            let (flag, value) = flag_of(parse_mem(bad).unwrap_err());
            assert_eq!(flag, "--mem", "{bad}");
            assert_eq!(value, bad);
        }
        let msg = parse_mem("8XB").unwrap_err().to_string();
        assert!(msg.contains("--mem") && msg.contains("8XB"), "{msg}");
    }

    #[test]
    fn parse_mem_reserve_takes_bytes_or_percent() {
        // Proves: --mem-reserve accepts 0, bytes and 0..=100 %, and names itself on error.
        assert_eq!(parse_mem_reserve("0").unwrap(), MemReserve::Bytes(0));
        assert_eq!(
            parse_mem_reserve("512MiB").unwrap(),
            MemReserve::Bytes(512 * MIB)
        );
        assert_eq!(parse_mem_reserve("10%").unwrap(), MemReserve::Percent(10));
        for bad in ["101%", "%", "-5%", "1.5%", "x"] {
            assert_eq!(
                flag_of(parse_mem_reserve(bad).unwrap_err()).0,
                "--mem-reserve"
            );
        }
    }

    #[test]
    fn parse_cpus_good_and_bad() {
        // Proves: --cpus takes positive finite decimals up to 4096 and rejects everything else.
        assert_eq!(parse_cpus("4").unwrap(), 4.0);
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        assert_eq!(parse_cpus("4096").unwrap(), 4096.0);
        for bad in [
            "", "0", "0.0", "-1", "4097", "inf", "NaN", "1e3", "two", "1,5",
        ] {
            let (flag, value) = flag_of(parse_cpus(bad).unwrap_err());
            assert_eq!((flag, value.as_str()), ("--cpus", bad));
        }
    }

    #[test]
    fn parse_ports_sorts_merges_and_rejects() {
        // Proves: ranges and single ports are sorted, overlaps and neighbours merged; port 0,
        // > 65535, reversed ranges, empty items and junk are errors naming --ports.
        assert_eq!(
            parse_ports("31000-32000,33000").unwrap(),
            vec![(31000, 32000), (33000, 33000)]
        );
        assert_eq!(
            parse_ports("33000, 31500-32500,31000-32000,32501,1").unwrap(),
            vec![(1, 1), (31000, 32501), (33000, 33000)]
        );
        assert_eq!(parse_ports("65535").unwrap(), vec![(65535, 65535)]);
        assert_eq!(parse_ports("1-65535,80").unwrap(), vec![(1, 65535)]);
        for bad in [
            "",
            "0",
            "0-10",
            "65536",
            "32000-31000",
            "31000-",
            "-5",
            "1,,2",
            "a-b",
            "1-2-3",
        ] {
            let (flag, value) = flag_of(parse_ports(bad).unwrap_err());
            assert_eq!((flag, value.as_str()), ("--ports", bad));
        }
        let too_many = vec!["1"; PORT_RANGE_ITEMS_MAX + 1].join(",");
        assert!(parse_ports(&too_many).is_err());
    }

    #[test]
    fn parse_attr_good_and_bad() {
        // Proves: key=value with a DNS-label key and printable value; bad keys, empty values and
        // over-long parts are errors naming --attr.
        assert_eq!(
            parse_attr("rack=r1").unwrap(),
            ("rack".to_string(), "r1".to_string())
        );
        assert_eq!(
            parse_attr("os_ver=a=b").unwrap(),
            ("os_ver".to_string(), "a=b".to_string())
        );
        let long_key = format!("{}=v", "k".repeat(ATTRIBUTE_KEY_BYTES_MAX + 1));
        let long_val = format!("k={}", "v".repeat(ATTRIBUTE_VALUE_BYTES_MAX + 1));
        for bad in [
            "rack",
            "=r1",
            "rack=",
            "-rack=r1",
            "rack-=r1",
            "ra ck=r1",
            "rack=r 1",
            "rack=a,b",
            "räck=r1",
            long_key.as_str(),
            long_val.as_str(),
        ] {
            assert_eq!(flag_of(parse_attr(bad).unwrap_err()).0, "--attr", "{bad}");
        }
    }

    #[test]
    fn from_flags_parses_all_and_rejects_duplicate_attr_keys() {
        // Proves: from_flags parses every flag and a key given twice in --attr is an error.
        let o = ResourceOverrides::from_flags(
            Some("2"),
            Some("1GiB"),
            Some("5%"),
            Some("40000-40010"),
            &["rack=r1".into(), "zone=z".into()],
        )
        .unwrap();
        assert_eq!(o.cpus, Some(2.0));
        assert_eq!(o.mem_bytes, Some(GIB));
        assert_eq!(o.mem_reserve, Some(MemReserve::Percent(5)));
        assert_eq!(o.ports, Some(vec![(40000, 40010)]));
        assert_eq!(o.attributes.len(), 2);
        let e = ResourceOverrides::from_flags(
            None,
            None,
            None,
            None,
            &["rack=r1".into(), "rack=r2".into()],
        )
        .unwrap_err();
        assert_eq!(flag_of(e).0, "--attr");
    }

    #[test]
    fn discover_on_this_machine_and_overrides_win() {
        // Proves: discovery on this host finds >= 1 CPU and > 0 bytes, the default ports, and
        // that overrides (even above the machine) replace discovered values.
        let r = discover(ResourceOverrides::default()).unwrap();
        assert!(r.cpus >= 1.0, "{r:?}");
        assert!(r.mem_bytes > 0, "{r:?}");
        assert_eq!(r.ports, vec![PORTS_DEFAULT]);
        let m = machine().unwrap();
        assert!(
            r.mem_bytes < m.total_mem_bytes,
            "reservation applied: {r:?} {m:?}"
        );

        let overrides = ResourceOverrides {
            cpus: Some(4000.0),
            mem_bytes: Some(u64::MAX / 2),
            mem_reserve: Some(MemReserve::Percent(100)),
            ports: Some(vec![(5000, 5001)]),
            attributes: BTreeMap::from([("rack".into(), "r1".into())]),
        };
        let r = discover(overrides.clone()).unwrap();
        assert_eq!(r.cpus, 4000.0);
        assert_eq!(r.mem_bytes, u64::MAX / 2);
        assert_eq!(r.ports, overrides.ports.unwrap());
        assert_eq!(r.attributes, overrides.attributes);
    }

    #[test]
    fn memory_reservation_rules() {
        // Proves: the default reservation is max(256 MiB, 5 %) capped at half of RAM, explicit
        // reservations apply, and reserving everything is a named NothingToOffer error.
        let machine = |gib: u64| MachineResources {
            logical_cpus: 2,
            total_mem_bytes: gib * GIB,
        };
        let mem = |m: MachineResources, reserve: Option<MemReserve>| {
            resolve(
                m,
                ResourceOverrides {
                    mem_reserve: reserve,
                    ..Default::default()
                },
            )
            .map(|r| r.mem_bytes)
        };
        assert_eq!(mem(machine(1), None).unwrap(), GIB - 256 * MIB);
        assert_eq!(mem(machine(100), None).unwrap(), 95 * GIB);
        let tiny = MachineResources {
            logical_cpus: 1,
            total_mem_bytes: 256 * MIB,
        };
        assert_eq!(mem(tiny, None).unwrap(), 128 * MIB);
        assert_eq!(
            mem(machine(8), Some(MemReserve::Bytes(GIB))).unwrap(),
            7 * GIB
        );
        assert_eq!(
            mem(machine(10), Some(MemReserve::Percent(10))).unwrap(),
            9 * GIB
        );
        assert!(matches!(
            mem(machine(1), Some(MemReserve::Percent(100))),
            Err(ResourceError::NothingToOffer { flag: "--mem", .. })
        ));
        let no_cpus = MachineResources {
            logical_cpus: 0,
            total_mem_bytes: GIB,
        };
        assert!(matches!(
            resolve(no_cpus, ResourceOverrides::default()),
            Err(ResourceError::NothingToOffer { flag: "--cpus", .. })
        ));
    }
}
