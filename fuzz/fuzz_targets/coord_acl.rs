//! Coord ACL text: zkCli's `scheme:id:perms` lists (`acl::parse_acl`, then `validate`, `expand`,
//! `redacted`), digest credentials (`digest_id`, `authenticate`), super ids (`parse_super_id`)
//! and id matching (`id_matches`, `Access::allows`, including `ip` prefixes).
//!
//! Input: a selector byte, then UTF-8 text.
//!
//! Checks: nothing panics; a parsed ACL formats (`format_acl`) to text that parses equal; the id
//! `digest_id` makes is one `validate_id` accepts; a valid super id matches itself.
#![no_main]

use drover_coord::acl::{self, Access, Id, Perms};
use drover_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let selector = input.u8();
    let Ok(text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    match selector % 4 {
        0 => {
            let Ok(entries) = acl::parse_acl(text) else {
                return;
            };
            let again = acl::parse_acl(&acl::format_acl(&entries)).expect("a formatted ACL parses");
            assert_eq!(again, entries, "ACL text round trip");
            if acl::validate(&entries).is_ok() {
                // A session's ids as it gets them: addAuth digest, and its address.
                let bob = acl::authenticate(acl::SCHEME_DIGEST, b"bob:secret").expect("digest");
                let ids = [bob, Id::new(acl::SCHEME_IP, "10.0.0.1")];
                if let Ok(expanded) = acl::expand(&entries, &ids) {
                    acl::validate(&expanded).expect("an expanded ACL is valid");
                }
            }
            let _ = acl::redacted(&entries);
        }
        1 => {
            if let Ok(id) = acl::digest_id(text) {
                acl::validate_id(&Id::new(acl::SCHEME_DIGEST, &id))
                    .expect("digest_id makes a valid digest id");
            }
            let _ = acl::authenticate(acl::SCHEME_DIGEST, text.as_bytes());
        }
        2 => {
            if let Ok(id) = acl::parse_super_id(text) {
                let access = Access {
                    ids: std::slice::from_ref(&id),
                    super_ids: std::slice::from_ref(&id),
                };
                // An ip super id is a prefix; the session holds the bare address instead.
                if id.scheme != acl::SCHEME_IP {
                    assert!(access.is_super(), "super id {id} matches itself");
                }
            }
        }
        _ => {
            // An ACL entry's id and a session's id, one per line.
            let (entry, session) = text.split_once('\n').unwrap_or((text, ""));
            let (Ok(entry), Ok(session)) = (Id::parse(entry), Id::parse(session)) else {
                return;
            };
            let _ = acl::validate_id(&entry);
            let matched = acl::id_matches(&entry, &session);
            let access = Access {
                ids: std::slice::from_ref(&session),
                super_ids: &[],
            };
            let entries = [acl::AclEntry {
                perms: Perms::READ,
                id: entry,
            }];
            assert_eq!(access.allows(&entries, Perms::READ), matched);
        }
    }
});
