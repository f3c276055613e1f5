//! ACLs with ZooKeeper's model: each znode holds a list of entries `(scheme, id, perms)`, and a
//! session may do an operation on a node when some entry grants the permission the operation
//! needs to one of the session's ids. Pure values and rules: no state, no I/O.
//!
//! Schemes (ZooKeeper's built-in providers):
//! - `world`: the one id `anyone`, which every session holds.
//! - `auth`: not an id of its own. At create / setACL time it stands for every id the session
//!   authenticated with (`digest`, `x509`; never `ip`), expanded by the leader before the
//!   transaction is proposed (`expand`); with no such id the ACL is invalid.
//! - `digest`: id `user:BASE64(SHA1(user:password))`; a session gets it with
//!   `addAuth("digest", "user:password")` (`digest_id`).
//! - `ip`: id `addr` or `addr/prefix_bits`, IPv4 or IPv6, matched against the address the server
//!   saw the client connect from.
//! - `x509`: the client certificate's principal name, taken from the connection's TLS identity.
//!
//! Permission bits are ZooKeeper's (`READ = 1`, `WRITE = 2`, `CREATE = 4`, `DELETE = 8`,
//! `ADMIN = 16`), so the ZooKeeper wire maps 1:1. The text form is zkCli's:
//! `scheme:id:perms[,scheme:id:perms...]` with perms a subset of `cdrwa`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};
use std::fmt;
use std::net::IpAddr;

/// Most entries in one node's ACL (and in a `--acl` list).
pub const ACL_ENTRIES_PER_NODE_MAX: usize = 64;
/// Most ids one session holds: its connection's (`ip`, `x509`) plus those `addAuth` gave it.
pub const AUTH_IDS_PER_SESSION_MAX: usize = 64;
/// Longest id (and `addAuth` credential), in bytes.
pub const ACL_ID_BYTES_MAX: usize = 1024;

pub const SCHEME_WORLD: &str = "world";
pub const SCHEME_AUTH: &str = "auth";
pub const SCHEME_DIGEST: &str = "digest";
pub const SCHEME_IP: &str = "ip";
pub const SCHEME_X509: &str = "x509";
/// The one id of the `world` scheme.
pub const ANYONE: &str = "anyone";

/// A set of permissions, ZooKeeper's bit values.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Perms(u8);

impl Perms {
    pub const NONE: Perms = Perms(0);
    pub const READ: Perms = Perms(1);
    pub const WRITE: Perms = Perms(2);
    pub const CREATE: Perms = Perms(4);
    pub const DELETE: Perms = Perms(8);
    pub const ADMIN: Perms = Perms(16);
    pub const ALL: Perms = Perms(31);

    /// ZooKeeper's integer form; bits above ADMIN are refused, naming the value.
    pub fn from_bits(bits: i32) -> Result<Perms, String> {
        if !(0..=31).contains(&bits) {
            return Err(format!(
                "perms {bits} has bits outside READ|WRITE|CREATE|DELETE|ADMIN (0..=31)"
            ));
        }
        Ok(Perms(bits as u8))
    }

    pub fn bits(self) -> i32 {
        i32::from(self.0)
    }

    /// True if `self` holds any of `other`'s permissions (ZooKeeper's `perms & wanted != 0`).
    pub fn intersects(self, other: Perms) -> bool {
        self.0 & other.0 != 0
    }

    pub fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    /// zkCli letters: any of `c d r w a`, in any order; empty is refused.
    pub fn parse(letters: &str) -> Result<Perms, String> {
        if letters.is_empty() {
            return Err("perms are empty; use letters from cdrwa".into());
        }
        let mut p = Perms::NONE;
        for c in letters.chars() {
            p = p.union(match c {
                'c' => Perms::CREATE,
                'd' => Perms::DELETE,
                'r' => Perms::READ,
                'w' => Perms::WRITE,
                'a' => Perms::ADMIN,
                other => {
                    return Err(format!(
                        "perms {letters:?}: {other:?} is not one of c, d, r, w, a"
                    ));
                }
            });
        }
        Ok(p)
    }

    /// zkCli letters in zkCli's order (`cdrwa`).
    pub fn letters(self) -> String {
        [
            (Perms::CREATE, 'c'),
            (Perms::DELETE, 'd'),
            (Perms::READ, 'r'),
            (Perms::WRITE, 'w'),
            (Perms::ADMIN, 'a'),
        ]
        .into_iter()
        .filter(|(p, _)| self.intersects(*p))
        .map(|(_, c)| c)
        .collect()
    }

    /// Upper-case names joined with " or ", for errors: `READ`, `READ or ADMIN`.
    pub fn names(self) -> String {
        let names: Vec<&str> = [
            (Perms::READ, "READ"),
            (Perms::WRITE, "WRITE"),
            (Perms::CREATE, "CREATE"),
            (Perms::DELETE, "DELETE"),
            (Perms::ADMIN, "ADMIN"),
        ]
        .into_iter()
        .filter(|(p, _)| self.intersects(*p))
        .map(|(_, n)| n)
        .collect();
        if names.is_empty() {
            "no permission".into()
        } else {
            names.join(" or ")
        }
    }
}

/// An identity: a scheme and an id within it (ZooKeeper's `Id`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Id {
    pub scheme: String,
    pub id: String,
}

impl Id {
    pub fn new(scheme: &str, id: &str) -> Id {
        Id {
            scheme: scheme.into(),
            id: id.into(),
        }
    }

    /// `world:anyone`.
    pub fn anyone() -> Id {
        Id::new(SCHEME_WORLD, ANYONE)
    }

    /// Parses `scheme:id` (the id may hold colons, as digest ids do).
    pub fn parse(text: &str) -> Result<Id, String> {
        let (scheme, id) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not scheme:id"))?;
        Ok(Id::new(scheme, id))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scheme, self.id)
    }
}

/// One ACL entry (ZooKeeper's `ACL`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclEntry {
    pub perms: Perms,
    pub id: Id,
}

impl AclEntry {
    pub fn new(scheme: &str, id: &str, perms: Perms) -> AclEntry {
        AclEntry {
            perms,
            id: Id::new(scheme, id),
        }
    }
}

impl fmt::Display for AclEntry {
    /// zkCli's form, `scheme:id:perms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, self.perms.letters())
    }
}

/// ZooKeeper's `OPEN_ACL_UNSAFE`: `world:anyone:cdrwa`, the ACL of a node created without one,
/// and of every node stored before ACLs existed.
pub fn open_acl() -> Vec<AclEntry> {
    vec![AclEntry {
        perms: Perms::ALL,
        id: Id::anyone(),
    }]
}

/// Parses zkCli's comma-separated `scheme:id:perms` list: the scheme ends at the first colon,
/// the perms start after the last one, and the id is what lies between (so `digest:bob:HASH:r`
/// and `ip:::1:r` read as expected). Errors name the entry. The entries are not validated here
/// (`validate` does that, where the ACL is used).
pub fn parse_acl(text: &str) -> Result<Vec<AclEntry>, String> {
    let mut entries = Vec::new();
    for (i, part) in text.split(',').enumerate() {
        let part = part.trim();
        let bad = |why: String| format!("ACL entry {i} ({part:?}): {why}");
        let (scheme, rest) = part
            .split_once(':')
            .ok_or_else(|| bad("not scheme:id:perms".into()))?;
        let (id, perms) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("not scheme:id:perms".into()))?;
        if scheme.is_empty() {
            return Err(bad("the scheme is empty".into()));
        }
        let perms = Perms::parse(perms).map_err(bad)?;
        entries.push(AclEntry::new(scheme, id, perms));
        if entries.len() > ACL_ENTRIES_PER_NODE_MAX {
            return Err(format!(
                "the ACL has more than {ACL_ENTRIES_PER_NODE_MAX} entries, the limit"
            ));
        }
    }
    Ok(entries)
}

/// zkCli's text form of an ACL, entries comma-separated.
pub fn format_acl(acl: &[AclEntry]) -> String {
    let parts: Vec<String> = acl.iter().map(AclEntry::to_string).collect();
    parts.join(",")
}

/// The digest id of `user:password`: `user:BASE64(SHA1(user:password))`, as ZooKeeper's
/// `DigestAuthenticationProvider.generateDigest` (the hash covers the whole string).
pub fn digest_id(user_password: &str) -> Result<String, String> {
    let (user, _) = user_password
        .split_once(':')
        .ok_or_else(|| "digest credentials must be user:password".to_string())?;
    if user.is_empty() {
        return Err("digest credentials must be user:password; the user is empty".into());
    }
    if user_password.len() > ACL_ID_BYTES_MAX {
        return Err(format!(
            "digest credentials are {} bytes; the limit is {ACL_ID_BYTES_MAX}",
            user_password.len()
        ));
    }
    let hash = Sha1::digest(user_password.as_bytes());
    Ok(format!(
        "{user}:{}",
        base64::engine::general_purpose::STANDARD.encode(hash)
    ))
}

/// An `ip` id: an address and how many leading bits of it must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IpPrefix {
    addr: IpAddr,
    bits: u8,
}

fn parse_ip_id(id: &str) -> Result<IpPrefix, String> {
    let (addr, bits) = match id.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (id, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => b
            .parse::<u8>()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("prefix /{b} is not a number of bits in 0..={max}"))?,
    };
    Ok(IpPrefix { addr, bits })
}

fn ip_matches(prefix: IpPrefix, client: IpAddr) -> bool {
    // A v4 client reaching a dual-stack socket shows up as ::ffff:a.b.c.d.
    let client = client.to_canonical();
    let (want, got, bits): (Vec<u8>, Vec<u8>, u8) = match (prefix.addr.to_canonical(), client) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (
            a.octets().to_vec(),
            b.octets().to_vec(),
            if prefix.addr.is_ipv4() {
                prefix.bits
            } else {
                // ::ffff:a.b.c.d/N as an ACL: N counts the 96 bits of the mapping too.
                prefix.bits.saturating_sub(96)
            },
        ),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.octets().to_vec(), b.octets().to_vec(), prefix.bits),
        _ => return false,
    };
    let full = usize::from(bits / 8);
    if want[..full] != got[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    want[full] & mask == got[full] & mask
}

/// Checks one id of an ACL entry or of the super ids: the scheme is known and the id well
/// formed for it. `auth` is accepted with any id here (it is expanded, not matched).
pub fn validate_id(id: &Id) -> Result<(), String> {
    if id.id.len() > ACL_ID_BYTES_MAX {
        return Err(format!(
            "the id is {} bytes; the limit is {ACL_ID_BYTES_MAX}",
            id.id.len()
        ));
    }
    match id.scheme.as_str() {
        SCHEME_WORLD if id.id == ANYONE => Ok(()),
        SCHEME_WORLD => Err(format!(
            "the world scheme has the one id {ANYONE}, not {:?}",
            id.id
        )),
        SCHEME_AUTH => Ok(()),
        SCHEME_DIGEST => validate_digest_id(&id.id),
        SCHEME_IP => parse_ip_id(&id.id).map(|_| ()),
        SCHEME_X509 if id.id.is_empty() => Err("the x509 principal is empty".into()),
        SCHEME_X509 => Ok(()),
        other => Err(format!(
            "unknown scheme {other:?}; the schemes are world, auth, digest, ip, x509"
        )),
    }
}

fn validate_digest_id(id: &str) -> Result<(), String> {
    let why = "a digest id is user:BASE64(SHA1(user:password)) (`drover coord digest` prints it)";
    let Some((user, hash)) = id.split_once(':') else {
        return Err(format!("{id:?} has no ':'; {why}"));
    };
    if user.is_empty() {
        return Err(format!("the user of {id:?} is empty; {why}"));
    }
    match base64::engine::general_purpose::STANDARD.decode(hash) {
        Ok(bytes) if bytes.len() == 20 => Ok(()),
        _ => Err(format!(
            "{hash:?} is not the base64 of a 20-byte SHA1; {why}"
        )),
    }
}

/// Checks an ACL as given to create or setACL: 1 to `ACL_ENTRIES_PER_NODE_MAX` entries, each
/// well formed. Errors name the entry.
pub fn validate(acl: &[AclEntry]) -> Result<(), String> {
    if acl.is_empty() {
        return Err(
            "the ACL is empty; give at least one entry (world:anyone:cdrwa opens it)".into(),
        );
    }
    if acl.len() > ACL_ENTRIES_PER_NODE_MAX {
        return Err(format!(
            "the ACL has {} entries; the limit is {ACL_ENTRIES_PER_NODE_MAX}",
            acl.len()
        ));
    }
    for (i, e) in acl.iter().enumerate() {
        validate_id(&e.id).map_err(|why| format!("entry {i} ({e}): {why}"))?;
    }
    Ok(())
}

/// The ACL to store for `acl` as given by a session holding `ids`: every `auth` entry becomes one
/// entry per authenticated id of the session (`digest`, `x509`; an `ip` id is not an
/// authentication, as in ZooKeeper), with the entry's perms. Validates first; an `auth` entry with
/// nothing to expand to is invalid. Duplicates are dropped, order is kept.
pub fn expand(acl: &[AclEntry], ids: &[Id]) -> Result<Vec<AclEntry>, String> {
    validate(acl)?;
    let mut out: Vec<AclEntry> = Vec::with_capacity(acl.len());
    let mut push = |e: AclEntry| {
        if !out.contains(&e) {
            out.push(e);
        }
    };
    for (i, e) in acl.iter().enumerate() {
        if e.id.scheme != SCHEME_AUTH {
            push(e.clone());
            continue;
        }
        let authenticated: Vec<&Id> = ids.iter().filter(|id| is_authenticated(id)).collect();
        if authenticated.is_empty() {
            return Err(format!(
                "entry {i} ({e}): the auth scheme needs an authenticated session (addAuth \
                 digest, or a TLS client certificate); this one has none"
            ));
        }
        for id in authenticated {
            push(AclEntry {
                perms: e.perms,
                id: id.clone(),
            });
        }
    }
    if out.len() > ACL_ENTRIES_PER_NODE_MAX {
        return Err(format!(
            "the ACL expands to {} entries; the limit is {ACL_ENTRIES_PER_NODE_MAX}",
            out.len()
        ));
    }
    Ok(out)
}

/// Whether `id` counts for the `auth` scheme (ZooKeeper's `isAuthenticated`).
fn is_authenticated(id: &Id) -> bool {
    matches!(id.scheme.as_str(), SCHEME_DIGEST | SCHEME_X509)
}

/// Whether `entry` (an ACL entry's id, or a super id) names `session` (one of a session's ids).
pub fn id_matches(entry: &Id, session: &Id) -> bool {
    match entry.scheme.as_str() {
        SCHEME_WORLD => entry.id == ANYONE,
        SCHEME_IP => {
            if session.scheme != SCHEME_IP {
                return false;
            }
            match (parse_ip_id(&entry.id), session.id.parse::<IpAddr>()) {
                (Ok(prefix), Ok(client)) => ip_matches(prefix, client),
                _ => false,
            }
        }
        SCHEME_DIGEST | SCHEME_X509 => entry.scheme == session.scheme && entry.id == session.id,
        // `auth` never reaches a stored ACL; anything else grants nothing.
        _ => false,
    }
}

/// Who is asking, as an ACL check sees it: the session's ids and the server's super ids.
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    pub ids: &'a [Id],
    pub super_ids: &'a [Id],
}

impl Access<'_> {
    /// A session holding any super id may do anything (ZooKeeper's superDigest).
    pub fn is_super(&self) -> bool {
        self.super_ids
            .iter()
            .any(|s| self.ids.iter().any(|id| id_matches(s, id)))
    }

    /// Whether some entry of `acl` grants any of `wanted` to one of the session's ids. An empty
    /// ACL grants everything, as in ZooKeeper (none can be stored: create and setACL refuse it).
    pub fn allows(&self, acl: &[AclEntry], wanted: Perms) -> bool {
        if acl.is_empty() || self.is_super() {
            return true;
        }
        acl.iter().any(|e| {
            e.perms.intersects(wanted)
                && (e.id.scheme == SCHEME_WORLD && e.id.id == ANYONE
                    || self.ids.iter().any(|id| id_matches(&e.id, id)))
        })
    }
}

/// What `addAuth(scheme, auth)` adds to a session: the id it authenticates, or why not. Only
/// `digest` is added this way; `ip` and `x509` ids come from the connection itself.
pub fn authenticate(scheme: &str, auth: &[u8]) -> Result<Id, String> {
    if auth.len() > ACL_ID_BYTES_MAX {
        return Err(format!(
            "the credentials are {} bytes; the limit is {ACL_ID_BYTES_MAX}",
            auth.len()
        ));
    }
    match scheme {
        SCHEME_DIGEST => {
            let text = std::str::from_utf8(auth)
                .map_err(|_| "digest credentials must be UTF-8 user:password".to_string())?;
            Ok(Id::new(SCHEME_DIGEST, &digest_id(text)?))
        }
        SCHEME_IP | SCHEME_X509 => Err(format!(
            "{scheme} ids come from the connection (the client's address, its TLS \
             certificate), not from addAuth"
        )),
        other => Err(format!(
            "unknown auth scheme {other:?}; addAuth takes digest (user:password)"
        )),
    }
}

/// Super ids as configured (`scheme:id` each): digest, ip or x509 ids; `world` and `auth` are
/// refused (either would turn checks off for everyone, or mean nothing).
pub fn parse_super_id(text: &str) -> Result<Id, String> {
    let id = Id::parse(text)?;
    match id.scheme.as_str() {
        SCHEME_DIGEST | SCHEME_IP | SCHEME_X509 => {
            validate_id(&id).map_err(|why| format!("super id {text:?}: {why}"))?;
            Ok(id)
        }
        other => Err(format!(
            "super id {text:?}: scheme {other:?} cannot be a super id; use digest, ip or x509"
        )),
    }
}

/// An ACL as shown to a caller that may READ the node but not ADMIN it: digest ids lose their
/// hash (`user:x`), as ZooKeeper does since CVE-2019-0201, so the hash cannot be attacked offline.
pub fn redacted(acl: &[AclEntry]) -> Vec<AclEntry> {
    acl.iter()
        .map(|e| {
            if e.id.scheme != SCHEME_DIGEST {
                return e.clone();
            }
            let user = e.id.id.split(':').next().unwrap_or_default();
            AclEntry::new(SCHEME_DIGEST, &format!("{user}:x"), e.perms)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<Id> {
        list.iter().map(|s| Id::parse(s).unwrap()).collect()
    }

    #[test]
    fn perms_use_zookeepers_bits_and_letters() {
        // The ZooKeeper wire port maps these 1:1.
        assert_eq!(Perms::READ.bits(), 1);
        assert_eq!(Perms::WRITE.bits(), 2);
        assert_eq!(Perms::CREATE.bits(), 4);
        assert_eq!(Perms::DELETE.bits(), 8);
        assert_eq!(Perms::ADMIN.bits(), 16);
        assert_eq!(Perms::ALL.bits(), 31);
        assert_eq!(Perms::parse("arwdc").unwrap(), Perms::ALL);
        assert_eq!(Perms::ALL.letters(), "cdrwa");
        assert_eq!(Perms::parse("rw").unwrap().bits(), 3);
        assert!(Perms::parse("").is_err());
        assert!(Perms::parse("rx").unwrap_err().contains("'x'"));
        assert!(Perms::from_bits(32).is_err() && Perms::from_bits(-1).is_err());
        assert_eq!(Perms::READ.union(Perms::ADMIN).names(), "READ or ADMIN");
    }

    #[test]
    fn digest_ids_match_zookeepers_generate_digest() {
        // The value ZooKeeper's documentation gives for super:admin.
        assert_eq!(
            digest_id("super:admin").unwrap(),
            "super:xQJmxLMiHGwaqBvst5y6rkB6HQs="
        );
        // The hash covers the whole string, colons in the password included.
        assert_ne!(digest_id("bob:a:b").unwrap(), digest_id("bob:a").unwrap());
        assert!(digest_id("nocolon").is_err());
        assert!(digest_id(":pw").is_err());
        assert!(validate_id(&Id::new("digest", &digest_id("bob:pw").unwrap())).is_ok());
    }

    #[test]
    fn zkcli_text_round_trips_and_errors_name_the_entry() {
        let acl = parse_acl("digest:bob:xQJmxLMiHGwaqBvst5y6rkB6HQs=:cdrwa, world:anyone:r,ip:::1:rw,ip:10.0.0.0/8:r")
            .unwrap();
        assert_eq!(
            acl[0].id,
            Id::new("digest", "bob:xQJmxLMiHGwaqBvst5y6rkB6HQs=")
        );
        assert_eq!(acl[0].perms, Perms::ALL);
        assert_eq!(acl[1], AclEntry::new("world", "anyone", Perms::READ));
        assert_eq!(acl[2].id, Id::new("ip", "::1"));
        assert_eq!(acl[3].id, Id::new("ip", "10.0.0.0/8"));
        assert_eq!(
            format_acl(&acl),
            "digest:bob:xQJmxLMiHGwaqBvst5y6rkB6HQs=:cdrwa,world:anyone:r,ip:::1:rw,ip:10.0.0.0/8:r"
        );
        let e = parse_acl("world:anyone:r,nonsense").unwrap_err();
        assert!(e.contains("entry 1") && e.contains("nonsense"), "{e}");
        let e = parse_acl("world:anyone:rz").unwrap_err();
        assert!(e.contains("entry 0"), "{e}");
        let many = vec!["world:anyone:r"; ACL_ENTRIES_PER_NODE_MAX + 1].join(",");
        assert!(parse_acl(&many).unwrap_err().contains("64"));
    }

    #[test]
    fn invalid_acls_are_refused_naming_the_entry() {
        let bad = |text: &str, want: &str| {
            let acl = parse_acl(text).unwrap();
            let e = validate(&acl).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        };
        bad("world:everyone:r", "entry 0");
        bad("world:anyone:r,sasl:bob:r", "unknown scheme \"sasl\"");
        bad("digest:bob:r", "has no ':'");
        bad("digest:bob:nothash:r", "not the base64 of a 20-byte SHA1");
        bad("digest::xQJmxLMiHGwaqBvst5y6rkB6HQs=:r", "user");
        bad("ip:10.0.0.256:r", "not an IPv4 or IPv6 address");
        bad("ip:10.0.0.0/33:r", "0..=32");
        bad("ip:::1/129:r", "0..=128");
        bad("x509::r", "principal is empty");
        assert!(validate(&[]).unwrap_err().contains("empty"));
        let too_many = vec![AclEntry::new("world", "anyone", Perms::READ); 65];
        assert!(validate(&too_many).unwrap_err().contains("limit is 64"));
        let long = AclEntry::new("x509", &"x".repeat(ACL_ID_BYTES_MAX + 1), Perms::READ);
        assert!(validate(&[long]).unwrap_err().contains("limit is 1024"));
    }

    #[test]
    fn ip_ids_match_by_prefix_for_v4_and_v6() {
        let m =
            |acl_id: &str, client: &str| id_matches(&Id::new("ip", acl_id), &Id::new("ip", client));
        assert!(m("10.1.2.3", "10.1.2.3"));
        assert!(!m("10.1.2.3", "10.1.2.4"));
        assert!(m("10.0.0.0/8", "10.200.3.4"));
        assert!(!m("10.0.0.0/8", "11.0.0.1"));
        assert!(m("192.168.1.128/25", "192.168.1.200"));
        assert!(!m("192.168.1.128/25", "192.168.1.127"));
        assert!(m("0.0.0.0/0", "8.8.8.8"));
        assert!(m("2001:db8::/32", "2001:db8:1::5"));
        assert!(!m("2001:db8::/32", "2001:db9::5"));
        assert!(m("::1", "::1"));
        // Families do not mix, except a v4 client seen through a dual-stack socket.
        assert!(!m("::1", "127.0.0.1"));
        assert!(m("127.0.0.1", "::ffff:127.0.0.1"));
        // An ip entry never matches another scheme's id, nor a malformed client address.
        assert!(!id_matches(
            &Id::new("ip", "10.0.0.0/8"),
            &Id::new("x509", "10.0.0.1")
        ));
        assert!(!m("10.0.0.0/8", "garbage"));
    }

    #[test]
    fn access_checks_each_scheme_and_super_ids() {
        let bob = digest_id("bob:secret").unwrap();
        let acl = vec![
            AclEntry::new("digest", &bob, Perms::ALL),
            AclEntry::new("ip", "10.0.0.0/8", Perms::READ),
            AclEntry::new("x509", "CN=alice", Perms::WRITE),
        ];
        let check = |session: &[Id], p: Perms| {
            Access {
                ids: session,
                super_ids: &[],
            }
            .allows(&acl, p)
        };
        assert!(check(&[Id::new("digest", &bob)], Perms::ADMIN));
        let wrong = digest_id("bob:wrong").unwrap();
        assert!(!check(&[Id::new("digest", &wrong)], Perms::READ));
        assert!(check(&ids(&["ip:10.9.9.9"]), Perms::READ));
        assert!(!check(&ids(&["ip:10.9.9.9"]), Perms::WRITE));
        assert!(!check(&ids(&["ip:127.0.0.1"]), Perms::READ));
        assert!(check(&ids(&["x509:CN=alice"]), Perms::WRITE));
        assert!(!check(&ids(&["x509:CN=alice"]), Perms::READ));
        // Any of several wanted perms will do (getACL asks for READ or ADMIN).
        assert!(check(
            &ids(&["x509:CN=alice"]),
            Perms::READ.union(Perms::WRITE)
        ));
        assert!(!check(&[], Perms::READ));
        // world:anyone is held by every session, even one with no ids.
        let open = open_acl();
        assert!(
            Access {
                ids: &[],
                super_ids: &[]
            }
            .allows(&open, Perms::DELETE)
        );
        // A super id bypasses every check.
        let admin = digest_id("super:admin").unwrap();
        let supers = vec![Id::new("digest", &admin)];
        let session = vec![Id::new("digest", &admin)];
        let a = Access {
            ids: &session,
            super_ids: &supers,
        };
        assert!(a.is_super() && a.allows(&acl, Perms::ADMIN));
        let not = Access {
            ids: &ids(&["ip:10.0.0.1"]),
            super_ids: &supers,
        };
        assert!(!not.is_super() && !not.allows(&acl, Perms::ADMIN));
        // Super ids may be ip prefixes too.
        let net = vec![Id::new("ip", "127.0.0.0/8")];
        assert!(
            Access {
                ids: &ids(&["ip:127.0.0.1"]),
                super_ids: &net
            }
            .is_super()
        );
    }

    #[test]
    fn the_auth_scheme_expands_to_the_sessions_authenticated_ids() {
        let bob = Id::new("digest", &digest_id("bob:pw").unwrap());
        let session = vec![
            Id::new("ip", "127.0.0.1"),
            bob.clone(),
            Id::new("x509", "CN=a"),
        ];
        let acl = parse_acl("auth::cdrwa,world:anyone:r").unwrap();
        let got = expand(&acl, &session).unwrap();
        assert_eq!(
            got,
            vec![
                AclEntry {
                    perms: Perms::ALL,
                    id: bob
                },
                AclEntry::new("x509", "CN=a", Perms::ALL),
                AclEntry::new("world", "anyone", Perms::READ),
            ]
        );
        // ip is not an authentication: alone, it leaves auth with nothing to expand to.
        let e = expand(&acl, &[Id::new("ip", "127.0.0.1")]).unwrap_err();
        assert!(e.contains("entry 0") && e.contains("authenticated"), "{e}");
        // Without auth entries expansion is validation only.
        assert_eq!(expand(&open_acl(), &[]).unwrap(), open_acl());
        assert!(expand(&[], &session).is_err());
    }

    #[test]
    fn add_auth_takes_digest_only_and_super_ids_are_checked() {
        let id = authenticate("digest", b"bob:pw").unwrap();
        assert_eq!(id, Id::new("digest", &digest_id("bob:pw").unwrap()));
        assert!(
            authenticate("digest", b"bob")
                .unwrap_err()
                .contains("user:password")
        );
        assert!(
            authenticate("digest", &[0xff, b':', b'x'])
                .unwrap_err()
                .contains("UTF-8")
        );
        assert!(
            authenticate("ip", b"1.2.3.4")
                .unwrap_err()
                .contains("connection")
        );
        assert!(
            authenticate("kerberos", b"x")
                .unwrap_err()
                .contains("unknown")
        );
        assert!(
            authenticate("digest", &vec![b'a'; 2000])
                .unwrap_err()
                .contains("1024")
        );
        assert!(parse_super_id("digest:super:xQJmxLMiHGwaqBvst5y6rkB6HQs=").is_ok());
        assert!(
            parse_super_id("world:anyone")
                .unwrap_err()
                .contains("cannot be a super id")
        );
        assert!(parse_super_id("digest:super:short").is_err());
        assert!(parse_super_id("nocolon").is_err());
    }

    #[test]
    fn readers_without_admin_see_digest_ids_without_their_hash() {
        let acl = parse_acl("digest:bob:xQJmxLMiHGwaqBvst5y6rkB6HQs=:r,ip:10.0.0.1:r").unwrap();
        assert_eq!(format_acl(&redacted(&acl)), "digest:bob:x:r,ip:10.0.0.1:r");
    }
}
