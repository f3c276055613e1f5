//! Who a task runs as: the agent's rules ([`TaskUserPolicy`]), set once at start from
//! `--task-user` and `--allow-root-tasks`, and applied to every task's `TaskInfo.user` before its
//! supervisor starts.
//!
//! - An agent running as root switches every task to an unprivileged user: the task's own
//!   `TaskInfo.user`, else `--task-user` (default `nobody`). Root (uid 0, whatever the account is
//!   called) only with `--allow-root-tasks`; a user this machine does not have is refused.
//! - An agent not running as root cannot switch users: its tasks run as the agent's own user, and
//!   a task (or `--task-user`) naming anyone else is refused.
//!
//! The rules are pure over a [`UserLookup`] (the system's passwd database in production, a table
//! in tests). Whether a *framework* may use a user is not decided here: that is the master's ACL
//! check, which comes before a task ever reaches an agent. The supervisor does the switch itself
//! ([`crate::privileges`]).

use std::path::PathBuf;

use nix::errno::Errno;

/// Who tasks run as on an agent running as root, when neither the task nor `--task-user` says.
pub const TASK_USER_DEFAULT: &str = "nobody";

/// One account of the passwd database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    pub home: PathBuf,
}

/// Looks accounts up by name.
pub trait UserLookup {
    /// `Ok(None)` when there is no such user.
    fn by_name(&self, name: &str) -> Result<Option<UserEntry>, Errno>;
}

/// The system's passwd database (`getpwnam_r`, so NSS sources count too).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemUsers;

impl UserLookup for SystemUsers {
    fn by_name(&self, name: &str) -> Result<Option<UserEntry>, Errno> {
        Ok(nix::unistd::User::from_name(name)?.map(UserEntry::from))
    }
}

impl From<nix::unistd::User> for UserEntry {
    fn from(u: nix::unistd::User) -> Self {
        UserEntry {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        }
    }
}

/// The account of `uid`, if it has one.
pub fn user_of_uid(uid: u32) -> Result<Option<UserEntry>, Errno> {
    Ok(nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))?.map(UserEntry::from))
}

/// Why the agent cannot start with its `--task-user` / `--allow-root-tasks`. Each message names
/// the flag and the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskUserError {
    #[error("--task-user {user:?}: {reason}")]
    InvalidName { user: String, reason: String },
    #[error("--task-user {user}{default}: no such user on this machine")]
    NoSuchUser {
        user: String,
        /// ` (the default)` when the flag was not given.
        default: &'static str,
    },
    #[error("--task-user {user}: cannot look the user up: {errno}")]
    Lookup { user: String, errno: Errno },
    #[error("--task-user {user} is uid 0 (root): tasks run as root only with --allow-root-tasks")]
    RootNotAllowed { user: String },
    #[error(
        "--task-user {user}: the agent is not root (it runs as {agent}), so its tasks run as the agent's own user and no other"
    )]
    NotRoot { user: String, agent: String },
    #[error(
        "--allow-root-tasks: the agent is not root (it runs as {agent}), so it cannot run tasks as root"
    )]
    RootTasksWithoutRoot { agent: String },
}

/// Why one task's user is refused: the reason, for `invalid task.user: ...` in its `TASK_ERROR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserRefusal {
    #[error("{user:?}: {reason}")]
    InvalidName { user: String, reason: String },
    #[error("user {user} does not exist on this agent")]
    NoSuchUser { user: String },
    #[error("cannot look user {user} up on this agent: {errno}")]
    Lookup { user: String, errno: Errno },
    #[error(
        "user {user} is uid 0 (root); this agent runs tasks as root only with --allow-root-tasks"
    )]
    Root { user: String },
    #[error(
        "user {user}: this agent is not root (it runs as {agent}), so it runs tasks only as its own user"
    )]
    NotRoot { user: String, agent: String },
}

/// The agent's rules for task users; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskUserPolicy {
    /// The agent runs as root and switches every task to a user.
    Switch {
        /// Tasks that name no user run as this one (`--task-user`, else [`TASK_USER_DEFAULT`]);
        /// never uid 0 unless `allow_root`.
        default: UserEntry,
        /// `--allow-root-tasks`: a task may ask for uid 0.
        allow_root: bool,
    },
    /// The agent is not root: every task runs as the agent's own user, unchanged.
    AsAgent {
        uid: u32,
        /// The agent's account name, if its uid has one.
        name: Option<String>,
    },
}

impl TaskUserPolicy {
    /// The rules for an agent running as `agent_uid` (its account, if any, in `agent`), from
    /// `--task-user` (`None`: not given) and `--allow-root-tasks`.
    pub fn new(
        task_user: Option<&str>,
        allow_root: bool,
        agent_uid: u32,
        agent: Option<&UserEntry>,
        users: &dyn UserLookup,
    ) -> Result<TaskUserPolicy, TaskUserError> {
        if let Some(name) = task_user
            && let Err(e) = drover_types::UserName::parse(name)
        {
            return Err(TaskUserError::InvalidName {
                user: name.to_owned(),
                reason: e.to_string(),
            });
        }
        if agent_uid != 0 {
            let agent_desc = describe_uid(agent_uid, agent.map(|a| a.name.as_str()));
            if allow_root {
                return Err(TaskUserError::RootTasksWithoutRoot { agent: agent_desc });
            }
            if let Some(name) = task_user
                && agent.is_none_or(|a| a.name != name)
            {
                return Err(TaskUserError::NotRoot {
                    user: name.to_owned(),
                    agent: agent_desc,
                });
            }
            return Ok(TaskUserPolicy::AsAgent {
                uid: agent_uid,
                name: agent.map(|a| a.name.clone()),
            });
        }
        let (name, default) = match task_user {
            Some(name) => (name, ""),
            None => (TASK_USER_DEFAULT, " (the default)"),
        };
        let entry = match users.by_name(name) {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                return Err(TaskUserError::NoSuchUser {
                    user: name.to_owned(),
                    default,
                });
            }
            Err(errno) => {
                return Err(TaskUserError::Lookup {
                    user: name.to_owned(),
                    errno,
                });
            }
        };
        if entry.uid == 0 && !allow_root {
            return Err(TaskUserError::RootNotAllowed {
                user: name.to_owned(),
            });
        }
        Ok(TaskUserPolicy::Switch {
            default: entry,
            allow_root,
        })
    }

    /// The rules for this process, from the flags; see [`TaskUserPolicy::new`].
    pub fn for_this_process(
        task_user: Option<&str>,
        allow_root: bool,
    ) -> Result<TaskUserPolicy, TaskUserError> {
        let uid = nix::unistd::geteuid().as_raw();
        // An agent whose uid has no account (a container started with a bare uid) still works:
        // its tasks run as that uid.
        let agent = user_of_uid(uid).ok().flatten();
        TaskUserPolicy::new(task_user, allow_root, uid, agent.as_ref(), &SystemUsers)
    }

    /// The user one task runs as, from its `TaskInfo.user` (empty: the default). `Ok(Some(name))`:
    /// the supervisor switches to `name`; `Ok(None)`: it runs the task as itself (the agent is not
    /// root).
    pub fn resolve(
        &self,
        requested: &str,
        users: &dyn UserLookup,
    ) -> Result<Option<String>, UserRefusal> {
        if !requested.is_empty()
            && let Err(e) = drover_types::UserName::parse(requested)
        {
            return Err(UserRefusal::InvalidName {
                user: requested.to_owned(),
                reason: e.to_string(),
            });
        }
        match self {
            TaskUserPolicy::AsAgent { uid, name } => {
                if requested.is_empty() || name.as_deref() == Some(requested) {
                    return Ok(None);
                }
                Err(UserRefusal::NotRoot {
                    user: requested.to_owned(),
                    agent: describe_uid(*uid, name.as_deref()),
                })
            }
            TaskUserPolicy::Switch {
                default,
                allow_root,
            } => {
                if requested.is_empty() {
                    return Ok(Some(default.name.clone()));
                }
                let entry = match users.by_name(requested) {
                    Ok(Some(entry)) => entry,
                    Ok(None) => {
                        return Err(UserRefusal::NoSuchUser {
                            user: requested.to_owned(),
                        });
                    }
                    Err(errno) => {
                        return Err(UserRefusal::Lookup {
                            user: requested.to_owned(),
                            errno,
                        });
                    }
                };
                if entry.uid == 0 && !allow_root {
                    return Err(UserRefusal::Root {
                        user: requested.to_owned(),
                    });
                }
                Ok(Some(entry.name))
            }
        }
    }

    /// One line for the agent's start-up log.
    pub fn describe(&self) -> String {
        match self {
            TaskUserPolicy::Switch {
                default,
                allow_root,
            } => format!(
                "tasks run as {} (uid {}) unless they name another user; root tasks {}",
                default.name,
                default.uid,
                if *allow_root { "allowed" } else { "refused" }
            ),
            TaskUserPolicy::AsAgent { uid, name } => format!(
                "the agent is not root: tasks run as {}",
                describe_uid(*uid, name.as_deref())
            ),
        }
    }
}

/// `alice (uid 1000)`, or `uid 1000` for a uid without an account.
fn describe_uid(uid: u32, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Table(BTreeMap<&'static str, u32>);

    impl UserLookup for Table {
        fn by_name(&self, name: &str) -> Result<Option<UserEntry>, Errno> {
            if name == "ldap-down" {
                return Err(Errno::EIO);
            }
            Ok(self.0.get(name).map(|&uid| UserEntry {
                name: name.to_owned(),
                uid,
                gid: uid,
                home: PathBuf::from(format!("/home/{name}")),
            }))
        }
    }

    fn users() -> Table {
        Table(BTreeMap::from([
            ("root", 0),
            ("toor", 0),
            ("nobody", 65534),
            ("www-data", 33),
            ("alice", 1000),
        ]))
    }

    fn entry(name: &str, uid: u32) -> UserEntry {
        users()
            .by_name(name)
            .unwrap()
            .filter(|e| e.uid == uid)
            .unwrap()
    }

    #[test]
    fn a_root_agent_defaults_to_nobody_and_validates_its_flags_naming_flag_and_user() {
        // Proves the start-up rules of an agent running as root: no --task-user means `nobody`;
        // a given user must exist and be a valid name; uid 0 (under any name) only with
        // --allow-root-tasks; each error is one line naming the flag and the user.
        let u = users();
        let policy = TaskUserPolicy::new(None, false, 0, None, &u).unwrap();
        assert_eq!(
            policy,
            TaskUserPolicy::Switch {
                default: entry("nobody", 65534),
                allow_root: false
            }
        );
        let www = TaskUserPolicy::new(Some("www-data"), false, 0, None, &u).unwrap();
        assert!(matches!(www, TaskUserPolicy::Switch { ref default, .. } if default.uid == 33));

        let err = |flag: Option<&str>, allow_root: bool| {
            TaskUserPolicy::new(flag, allow_root, 0, None, &u)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(Some("bob"), false),
            "--task-user bob: no such user on this machine"
        );
        assert_eq!(
            err(Some("root"), false),
            "--task-user root is uid 0 (root): tasks run as root only with --allow-root-tasks"
        );
        assert!(err(Some("toor"), false).contains("uid 0"));
        assert!(err(Some("a b"), false).starts_with("--task-user \"a b\": user: "));
        assert!(err(Some("ldap-down"), false).starts_with("--task-user ldap-down: cannot look"));
        assert!(TaskUserPolicy::new(Some("root"), true, 0, None, &u).is_ok());

        let no_nobody = Table(BTreeMap::from([("root", 0)]));
        assert_eq!(
            TaskUserPolicy::new(None, false, 0, None, &no_nobody)
                .unwrap_err()
                .to_string(),
            "--task-user nobody (the default): no such user on this machine"
        );
    }

    #[test]
    fn an_agent_that_is_not_root_runs_tasks_only_as_itself() {
        // Proves a non-root agent accepts no other --task-user and no --allow-root-tasks, and
        // that its tasks run as the agent (None: no switch) unless they name another user.
        let u = users();
        let alice = entry("alice", 1000);
        let policy = TaskUserPolicy::new(None, false, 1000, Some(&alice), &u).unwrap();
        assert_eq!(
            policy,
            TaskUserPolicy::AsAgent {
                uid: 1000,
                name: Some("alice".into())
            }
        );
        assert!(TaskUserPolicy::new(Some("alice"), false, 1000, Some(&alice), &u).is_ok());
        assert_eq!(
            TaskUserPolicy::new(Some("nobody"), false, 1000, Some(&alice), &u)
                .unwrap_err()
                .to_string(),
            "--task-user nobody: the agent is not root (it runs as alice (uid 1000)), so its tasks run as the agent's own user and no other"
        );
        assert_eq!(
            TaskUserPolicy::new(None, true, 1000, Some(&alice), &u)
                .unwrap_err()
                .to_string(),
            "--allow-root-tasks: the agent is not root (it runs as alice (uid 1000)), so it cannot run tasks as root"
        );

        assert_eq!(policy.resolve("", &u), Ok(None));
        assert_eq!(policy.resolve("alice", &u), Ok(None));
        let refused = policy.resolve("www-data", &u).unwrap_err().to_string();
        assert_eq!(
            refused,
            "user www-data: this agent is not root (it runs as alice (uid 1000)), so it runs tasks only as its own user"
        );
        // A uid without an account: tasks run as that uid; naming any user is refused.
        let bare = TaskUserPolicy::new(None, false, 4242, None, &u).unwrap();
        assert_eq!(bare.resolve("", &u), Ok(None));
        assert!(
            bare.resolve("alice", &u)
                .unwrap_err()
                .to_string()
                .contains("uid 4242")
        );
    }

    #[test]
    fn a_task_asking_for_root_or_a_missing_user_is_refused_naming_the_user() {
        // Proves the per-task rules of a root agent: empty means the default user; an existing
        // user passes; uid 0 is refused without --allow-root-tasks (also under another name);
        // a user that does not exist, a bad name and a failed lookup are refused naming the user.
        let u = users();
        let policy = TaskUserPolicy::new(None, false, 0, None, &u).unwrap();
        assert_eq!(policy.resolve("", &u), Ok(Some("nobody".into())));
        assert_eq!(policy.resolve("www-data", &u), Ok(Some("www-data".into())));
        assert_eq!(
            policy.resolve("root", &u).unwrap_err().to_string(),
            "user root is uid 0 (root); this agent runs tasks as root only with --allow-root-tasks"
        );
        assert_eq!(
            policy.resolve("toor", &u),
            Err(UserRefusal::Root {
                user: "toor".into()
            })
        );
        assert_eq!(
            policy.resolve("bob", &u).unwrap_err().to_string(),
            "user bob does not exist on this agent"
        );
        assert!(matches!(
            policy.resolve("-x", &u),
            Err(UserRefusal::InvalidName { .. })
        ));
        assert!(
            policy
                .resolve("ldap-down", &u)
                .unwrap_err()
                .to_string()
                .contains("ldap-down")
        );

        let permissive = TaskUserPolicy::new(None, true, 0, None, &u).unwrap();
        assert_eq!(permissive.resolve("root", &u), Ok(Some("root".into())));
        assert_eq!(permissive.resolve("", &u), Ok(Some("nobody".into())));
    }
}
