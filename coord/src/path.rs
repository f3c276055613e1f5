//! Znode path validation, with ZooKeeper's rules.

use crate::op::OpError;

/// Longest accepted path, in bytes.
pub const PATH_BYTES_MAX: usize = 4096;

/// Checks `path` the way ZooKeeper's `PathUtils.validatePath` does: it starts with `/`, has no
/// empty, `.` or `..` component, no trailing `/` (except the root itself), and no NUL or other
/// control character. `sequential` allows the trailing `/` a sequential create may end with
/// (`/queue/` creates `/queue/0000000003`).
pub fn validate(path: &str, sequential: bool) -> Result<(), OpError> {
    let bad = |reason: &str| {
        Err(OpError::BadPath {
            path: path.to_string(),
            reason: reason.to_string(),
        })
    };
    if path.is_empty() {
        return bad("path is empty");
    }
    if path.len() > PATH_BYTES_MAX {
        return bad("path is longer than 4096 bytes");
    }
    if !path.starts_with('/') {
        return bad("path must start with /");
    }
    if path == "/" {
        return if sequential {
            bad("cannot create a sequential node under / without a name")
        } else {
            Ok(())
        };
    }
    let body = if sequential && path.ends_with('/') {
        &path[1..path.len() - 1]
    } else {
        &path[1..]
    };
    if body.is_empty() && !sequential {
        return bad("path must not end with /");
    }
    if path.ends_with('/') && !sequential {
        return bad("path must not end with /");
    }
    for c in path.chars() {
        if c == '\0' {
            return bad("path contains a NUL character");
        }
        if c.is_control()
            || ('\u{e000}'..='\u{f8ff}').contains(&c)
            || ('\u{fff0}'..='\u{ffff}').contains(&c)
        {
            return bad("path contains an invalid character");
        }
    }
    if body.is_empty() {
        return Ok(());
    }
    for component in body.split('/') {
        match component {
            "" => return bad("path has an empty component (//)"),
            "." => return bad("path has a relative component (.)"),
            ".." => return bad("path has a relative component (..)"),
            _ => {}
        }
    }
    Ok(())
}

/// The parent of a valid, non-root path.
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "/",
    }
}

/// The last component of a valid, non-root path.
pub fn name(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// `parent` joined with a child `name`.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_zookeeper_valid_paths() {
        // Same accepted set as ZooKeeper's PathUtils for ordinary names.
        for p in [
            "/",
            "/a",
            "/a/b",
            "/a.b/c-d_e",
            "/..a",
            "/a/...",
            "/ünïcode",
        ] {
            assert!(validate(p, false).is_ok(), "{p}");
        }
        assert!(validate("/queue/", true).is_ok());
        assert!(validate("/queue/job-", true).is_ok());
    }

    #[test]
    fn refuses_malformed_paths_with_a_reason() {
        for (p, why) in [
            ("", "empty"),
            ("a", "start with /"),
            ("/a/", "end with /"),
            ("//a", "empty component"),
            ("/a//b", "empty component"),
            ("/a/./b", "(.)"),
            ("/a/../b", "(..)"),
            ("/a\0b", "NUL"),
            ("/a\u{1}b", "invalid character"),
        ] {
            let err = validate(p, false).unwrap_err().to_string();
            assert!(err.contains(why), "{p:?}: {err}");
        }
        assert!(validate("/", true).is_err());
        assert!(validate(&format!("/{}", "x".repeat(5000)), false).is_err());
    }

    #[test]
    fn parent_and_name() {
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(name("/a/b/c"), "c");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }
}
