//! The validated list of master addresses a client looks for the leader at.

/// Why a master address list is unusable. Callers prefix the flag or setting it came from
/// (`--masters: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointsError {
    #[error("no master address given")]
    Empty,
    /// `entry` (as given, untrimmed) is not `HOST:PORT`; `reason` says which part is wrong.
    #[error("{reason}")]
    BadAddress { entry: String, reason: String },
}

/// The masters' addresses, `HOST:PORT` each (IPv6 hosts in brackets), in the order given.
///
/// Invariant: not empty, every entry valid, no entry twice (a repeat is collapsed onto its first
/// occurrence, so the same list from a flag and from `$DROVER_MASTERS` does not skew the round
/// robin towards one master).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    addrs: Vec<String>,
}

impl Endpoints {
    /// Parses `host:port,host:port` (spaces around entries and empty entries ignored).
    pub fn parse(list: &str) -> Result<Endpoints, EndpointsError> {
        Endpoints::from_list([list])
    }

    /// Builds the list from items each of which may itself be a comma-separated list.
    pub fn from_list<I, S>(items: I) -> Result<Endpoints, EndpointsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut addrs: Vec<String> = Vec::new();
        for item in items {
            for entry in item.as_ref().split(',') {
                if entry.trim().is_empty() {
                    continue;
                }
                let addr = validate_addr(entry).map_err(|reason| EndpointsError::BadAddress {
                    entry: entry.to_string(),
                    reason,
                })?;
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        if addrs.is_empty() {
            return Err(EndpointsError::Empty);
        }
        Ok(Endpoints { addrs })
    }

    pub fn as_slice(&self) -> &[String] {
        &self.addrs
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.addrs.clone()
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Always false (the list is never empty); here because clippy asks for it beside `len`.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addrs.join(","))
    }
}

/// Checks a master address is `HOST:PORT` (IPv6 hosts in brackets) and returns it trimmed; the
/// error names the address and what is wrong with it.
pub fn validate_addr(addr: &str) -> Result<String, String> {
    let addr = addr.trim();
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not HOST:PORT (no port)"));
    };
    if host.is_empty() {
        return Err(format!("{addr:?} is not HOST:PORT (no host)"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{addr:?} is not HOST:PORT (write IPv6 hosts in brackets)"
        ));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("{addr:?} is not HOST:PORT (bad host)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(addr.to_string()),
        _ => Err(format!(
            "{addr:?} is not HOST:PORT ({port:?} is not a port 1..=65535)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_addresses_are_host_port() {
        // Proves HOST:PORT is accepted (names, IPv4, bracketed IPv6) and anything else is refused.
        for ok in ["127.0.0.1:5050", "master-1:1", "[::1]:5050", " node:80 "] {
            assert_eq!(validate_addr(ok), Ok(ok.trim().to_string()));
        }
        for bad in [
            "",
            "5050",
            ":5050",
            "host:",
            "host:0",
            "host:70000",
            "::1:5050",
            "http://h:1",
            "a b:1",
        ] {
            assert!(validate_addr(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn lists_are_split_trimmed_and_collapsed() {
        // Proves comma lists (also inside items) are split and trimmed, empty entries skipped,
        // and a repeated address kept once, at its first place.
        let e = Endpoints::from_list(["a:1, b:2,", "c:3", " a:1"]).expect("valid");
        assert_eq!(e.as_slice(), ["a:1", "b:2", "c:3"]);
        assert_eq!(e.to_string(), "a:1,b:2,c:3");
        assert_eq!(Endpoints::parse("x:9").expect("valid").len(), 1);
    }

    #[test]
    fn bad_lists_name_the_bad_entry() {
        // Proves an empty list is refused, and a bad entry is named in the error.
        assert_eq!(Endpoints::parse(" , "), Err(EndpointsError::Empty));
        assert_eq!(
            Endpoints::from_list(Vec::<String>::new()),
            Err(EndpointsError::Empty)
        );
        let err = Endpoints::parse("a:1,h:0").expect_err("port 0");
        assert_eq!(
            err,
            EndpointsError::BadAddress {
                entry: "h:0".into(),
                reason: "\"h:0\" is not HOST:PORT (\"0\" is not a port 1..=65535)".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "\"h:0\" is not HOST:PORT (\"0\" is not a port 1..=65535)"
        );
    }
}
