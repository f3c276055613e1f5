//! Path grants: a bound on what one client connection may touch, set by whoever admitted the
//! stream (a master with `--acl` maps the caller's token to them) and checked by the server the
//! client is connected to before an op is queued, in addition to the znodes' ACLs.
//!
//! A connection without grants (`None` in `ConnIdentity`) is bounded by ACLs alone. With grants,
//! every path an op names must lie under a granted prefix (the prefix itself or below it) with
//! enough access: reads (`getData`, `exists`, `getChildren`, `getACL`, watches, `check`) need
//! read, writes (`create`, `delete`, `setData`, `setACL`) need write. Reserved prefixes are never
//! reachable through grants, whatever they say. Pure values and rules: no state, no I/O.

use crate::op::{Op, OpError, ReadOp, WriteOp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    Read,
    /// Read and write.
    Write,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathGrants {
    /// Who the grants belong to, for refusals (`token "ci" (accessor …)`).
    pub principal: String,
    pub prefixes: Vec<(String, Access)>,
    /// Subtrees no grant reaches (the masters' own, `/drover`).
    pub reserved: Vec<String>,
}

/// `path` is `prefix` or below it (`/app` covers `/app` and `/app/x`, not `/apple`).
pub fn covers(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl PathGrants {
    /// `Ok` if `access` on `path` is granted.
    pub fn check_path(&self, path: &str, access: Access) -> Result<(), OpError> {
        let reserved = self.reserved.iter().any(|r| covers(r, path));
        let granted = !reserved
            && self
                .prefixes
                .iter()
                .any(|(prefix, a)| *a >= access && covers(prefix, path));
        if granted {
            Ok(())
        } else {
            Err(OpError::NotGranted {
                path: path.to_string(),
                access: access.as_str().to_string(),
                by: self.principal.clone(),
            })
        }
    }

    /// `Ok` if every path `op` names is granted the access it needs.
    pub fn check(&self, op: &Op) -> Result<(), OpError> {
        match op {
            Op::Write(w) => self.check_write(w),
            Op::Read(r) => match r {
                ReadOp::GetData { path, .. }
                | ReadOp::Exists { path, .. }
                | ReadOp::GetChildren { path, .. }
                | ReadOp::GetAcl { path }
                | ReadOp::AddWatch { path, .. } => self.check_path(path, Access::Read),
                ReadOp::SetWatches(w) => {
                    for path in w
                        .data
                        .iter()
                        .chain(&w.exist)
                        .chain(&w.child)
                        .chain(&w.persistent)
                        .chain(&w.persistent_recursive)
                    {
                        self.check_path(path, Access::Read)?;
                    }
                    Ok(())
                }
                // Nothing is read: about the session, or a barrier.
                ReadOp::AddAuth { .. } | ReadOp::RemoveWatches { .. } | ReadOp::Sync { .. } => {
                    Ok(())
                }
            },
        }
    }

    fn check_write(&self, w: &WriteOp) -> Result<(), OpError> {
        match w {
            WriteOp::Create { path, .. }
            | WriteOp::Delete { path, .. }
            | WriteOp::SetData { path, .. }
            | WriteOp::SetAcl { path, .. } => self.check_path(path, Access::Write),
            WriteOp::Check { path, .. } => self.check_path(path, Access::Read),
            WriteOp::Multi(ops) => ops.iter().try_for_each(|op| self.check_write(op)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::CreateMode;

    fn grants() -> PathGrants {
        PathGrants {
            principal: "token \"t\"".into(),
            prefixes: vec![
                ("/app".into(), Access::Read),
                ("/services".into(), Access::Write),
                ("/".into(), Access::Read),
            ],
            reserved: vec!["/drover".into()],
        }
    }

    fn create(path: &str) -> Op {
        Op::Write(WriteOp::Create {
            path: path.into(),
            data: Default::default(),
            mode: CreateMode::Persistent,
            acl: vec![],
        })
    }

    #[test]
    fn prefixes_cover_their_subtree_with_their_access_and_reserved_paths_are_out() {
        // Proves prefix matching by path component, read vs write, multi checked op by op, and
        // that a reserved subtree is refused even under a "/" grant.
        let g = grants();
        assert!(covers("/app", "/app") && covers("/app", "/app/x") && !covers("/app", "/apple"));
        assert!(g.check(&create("/services/specs/web")).is_ok());
        let e = g.check(&create("/app/x")).expect_err("read only");
        assert_eq!(
            e.to_string(),
            "not authorized: token \"t\" has no coord write grant covering /app/x"
        );
        assert!(
            g.check(&Op::Read(ReadOp::GetData {
                path: "/anything".into(),
                watch: false
            }))
            .is_ok()
        );
        assert!(
            g.check(&Op::Read(ReadOp::GetData {
                path: "/drover/acl/tokens".into(),
                watch: false
            }))
            .is_err()
        );
        let multi = Op::Write(WriteOp::Multi(vec![
            WriteOp::Check {
                path: "/app".into(),
                version: 0,
            },
            WriteOp::Delete {
                path: "/app/y".into(),
                version: -1,
            },
        ]));
        assert!(
            matches!(g.check(&multi), Err(OpError::NotGranted { path, .. }) if path == "/app/y")
        );
        let none = PathGrants {
            principal: "p".into(),
            prefixes: vec![],
            reserved: vec![],
        };
        assert!(
            none.check(&Op::Read(ReadOp::Exists {
                path: "/".into(),
                watch: false
            }))
            .is_err()
        );
        assert!(
            none.check(&Op::Read(ReadOp::Sync { path: "/".into() }))
                .is_ok()
        );
    }
}
