//! The identity a supervisor gives its task, and the switch to it in the forked child.
//!
//! [`TaskIdentity::resolve`] runs in the supervisor before it forks: it looks the user up (uid,
//! primary gid, home) and computes its supplementary groups (`getgrouplist`), so the child has
//! nothing left to look up. [`TaskIdentity::enter`] runs in the child between `fork` and `exec`,
//! after it joined its cgroup and set its rlimits (both need root), in this order:
//! 1. drop from the bounding set every capability the task does not keep (`PR_CAPBSET_DROP`
//!    needs `CAP_SETPCAP`, which only the still-privileged child has), and clear the ambient set;
//! 2. `setgroups` (the user's groups), `setgid`, then `setuid`: groups and gid while the child may
//!    still change them, the uid last, since after it nothing else can be changed;
//! 3. effective and permitted to what the task keeps, inheritable to nothing (`capset`), then
//!    checked with `capget` and `getresuid`: a switch that did not fully happen fails the start;
//! 4. `PR_SET_NO_NEW_PRIVS`: no `exec` of the task gains privileges (setuid binaries, file
//!    capabilities).
//!
//! A task running as any user but root keeps no capability at all. A root task (only with
//! `--allow-root-tasks`) keeps Docker's default set, [`ROOT_TASK_CAPS`]: `CHOWN`,
//! `DAC_OVERRIDE`, `FSETID`, `FOWNER`, `MKNOD`, `NET_RAW`, `SETGID`, `SETUID`, `SETFCAP`,
//! `SETPCAP`, `NET_BIND_SERVICE`, `SYS_CHROOT`, `KILL` and `AUDIT_WRITE` (moby's
//! `oci/caps/defaults.go`), so no `SYS_ADMIN`, `SYS_PTRACE`, `SYS_MODULE`, `NET_ADMIN`,
//! `DAC_READ_SEARCH`, ... A supervisor that is not root does not switch users (the agent only
//! asks it to run tasks as itself), but still clears whatever capabilities it has.
//!
//! Everything in `enter` is a plain system call on values computed before the fork: no
//! allocation, no lock, nothing that is not async-signal-safe.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::libc;
use nix::unistd::{Gid, Uid, User};

/// Capability numbers (`linux/capability.h`) of [`ROOT_TASK_CAPS`].
mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const FOWNER: u32 = 3;
    pub const FSETID: u32 = 4;
    pub const KILL: u32 = 5;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const SETPCAP: u32 = 8;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_RAW: u32 = 13;
    pub const SYS_CHROOT: u32 = 18;
    pub const MKNOD: u32 = 27;
    pub const AUDIT_WRITE: u32 = 29;
    pub const SETFCAP: u32 = 31;
}

/// What a root task keeps: Docker's default capability set (see the module docs), as a mask
/// (bit `n` = capability `n`).
pub const ROOT_TASK_CAPS: u64 = {
    let caps = [
        cap::CHOWN,
        cap::DAC_OVERRIDE,
        cap::FSETID,
        cap::FOWNER,
        cap::MKNOD,
        cap::NET_RAW,
        cap::SETGID,
        cap::SETUID,
        cap::SETFCAP,
        cap::SETPCAP,
        cap::NET_BIND_SERVICE,
        cap::SYS_CHROOT,
        cap::KILL,
        cap::AUDIT_WRITE,
    ];
    let mut mask = 0u64;
    let mut i = 0;
    while i < caps.len() {
        mask |= 1 << caps[i];
        i += 1;
    }
    mask
};

/// Capabilities are numbered below this (the kernel's `CAP_LAST_CAP` is 40 in 2024); the
/// bounding-set walk stops earlier, at the first number the kernel does not know.
const CAPS_MAX: u32 = 64;

/// Who the task runs as; resolved before the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskIdentity {
    /// Account name (`USER`, `LOGNAME`), when the uid has one.
    name: Option<String>,
    uid: Uid,
    gid: Gid,
    /// `HOME`, when the uid has an account.
    home: Option<PathBuf>,
    /// The supplementary groups to set; `None`: no switch, the task keeps the supervisor's
    /// uid, gid and groups (a supervisor that is not root, or one told to run the task as
    /// itself).
    groups: Option<Vec<Gid>>,
    /// Capabilities the task keeps (bounding, permitted and effective set); see the module docs.
    keep_caps: u64,
}

impl fmt::Display for TaskIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} (uid {}, gid {})", self.uid, self.gid),
            None => write!(f, "uid {} (gid {})", self.uid, self.gid),
        }
    }
}

impl TaskIdentity {
    /// Looks up `user` (`None`: the supervisor's own user) and everything the switch needs. The
    /// error says why the task cannot run as that user.
    pub fn resolve(user: Option<&str>) -> Result<TaskIdentity, String> {
        let euid = nix::unistd::geteuid();
        let Some(name) = user else {
            let me = User::from_uid(euid).ok().flatten();
            return Ok(TaskIdentity {
                name: me.as_ref().map(|u| u.name.clone()),
                uid: euid,
                gid: nix::unistd::getegid(),
                home: me.map(|u| u.dir),
                groups: None,
                keep_caps: keep_caps_of(euid),
            });
        };
        let entry = match User::from_name(name) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Err(format!("user {name} does not exist on this agent")),
            Err(e) => return Err(format!("cannot look user {name} up: {e}")),
        };
        let groups = if euid.is_root() {
            let cname = CString::new(name).map_err(|_| format!("user {name:?} contains NUL"))?;
            let groups = nix::unistd::getgrouplist(&cname, entry.gid)
                .map_err(|e| format!("cannot list the groups of user {name}: {e}"))?;
            Some(groups)
        } else if entry.uid == euid {
            None
        } else {
            return Err(format!(
                "the supervisor is not root (uid {euid}), so it cannot run the task as {name} (uid {})",
                entry.uid
            ));
        };
        Ok(TaskIdentity {
            keep_caps: keep_caps_of(entry.uid),
            name: Some(entry.name),
            uid: entry.uid,
            gid: entry.gid,
            home: Some(entry.dir),
            groups,
        })
    }

    pub fn uid(&self) -> Uid {
        self.uid
    }

    pub fn gid(&self) -> Gid {
        self.gid
    }

    /// Who should own the task's sandbox: the task's user and primary group when the supervisor
    /// switches to it; `None` when the task runs as the supervisor itself.
    pub fn sandbox_owner(&self) -> Option<(Uid, Gid)> {
        self.groups.as_ref().map(|_| (self.uid, self.gid))
    }

    /// `HOME`, `USER` and `LOGNAME` of the user, for the task's environment (none without an
    /// account).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(home) = &self.home {
            env.push(("HOME".to_owned(), home.display().to_string()));
        }
        if let Some(name) = &self.name {
            env.push(("USER".to_owned(), name.clone()));
            env.push(("LOGNAME".to_owned(), name.clone()));
        }
        env
    }

    /// Becomes the task's user with only the capabilities it keeps (see the module docs). Call
    /// it only in the forked child, right before `exec`: it is async-signal-safe (system calls on
    /// precomputed values, no allocation) and leaves the process unable to regain anything. A
    /// failed step also writes a line naming it to fd 2 (the task's `stderr` file).
    pub fn enter(&self) -> io::Result<()> {
        let switching = self.groups.is_some();
        let dropped = drop_bounding_set(self.keep_caps);
        // A supervisor that is not root may lack CAP_SETPCAP; with no capabilities left and
        // no_new_privs set, its task can gain none from the bounding set either.
        if switching || dropped != Err(Errno::EPERM) {
            step(dropped, b"drop capabilities from the bounding set")?;
        }
        step(clear_ambient(), b"clear the ambient capabilities")?;
        if let Some(groups) = &self.groups {
            step(nix::unistd::setgroups(groups), b"setgroups")?;
            step(nix::unistd::setgid(self.gid), b"setgid")?;
            step(nix::unistd::setuid(self.uid), b"setuid")?;
            let ids = step(nix::unistd::getresuid(), b"getresuid")?;
            if [ids.real, ids.effective, ids.saved] != [self.uid; 3] {
                return Err(step_failed(Errno::EPERM, b"setuid (uids unchanged)"));
            }
        }
        let (_, permitted, _) = step(capget(), b"capget")?;
        let keep = self.keep_caps & permitted;
        step(capset(keep, keep, 0), b"capset")?;
        if step(capget(), b"capget")? != (keep, keep, 0) {
            return Err(step_failed(Errno::EPERM, b"capset (capabilities left)"));
        }
        step(
            nix::sys::prctl::set_no_new_privs(),
            b"prctl(PR_SET_NO_NEW_PRIVS)",
        )?;
        Ok(())
    }
}

fn keep_caps_of(uid: Uid) -> u64 {
    if uid.is_root() { ROOT_TASK_CAPS } else { 0 }
}

/// `r`, with a failure reported to fd 2 as `drover: cannot start the task: <what> failed`.
/// Async-signal-safe.
fn step<T>(r: Result<T, Errno>, what: &'static [u8]) -> io::Result<T> {
    r.map_err(|e| step_failed(e, what))
}

fn step_failed(errno: Errno, what: &'static [u8]) -> io::Error {
    // SAFETY: fd 2 stays open until exec (it is the task's stderr); a write to a closed fd only
    // fails.
    let stderr = unsafe { BorrowedFd::borrow_raw(2) };
    for part in [
        b"drover: cannot start the task: ".as_slice(),
        what,
        b" failed\n",
    ] {
        let _ = nix::unistd::write(stderr, part);
    }
    io::Error::from(errno)
}

/// Drops every capability not in `keep` from the bounding set, up to the last one the kernel
/// knows.
fn drop_bounding_set(keep: u64) -> Result<(), Errno> {
    for cap in 0..CAPS_MAX {
        // SAFETY: prctl with integer arguments reads and writes no memory of ours.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap)) };
        if present < 0 {
            return match Errno::last() {
                // Past the kernel's last capability.
                Errno::EINVAL => Ok(()),
                e => Err(e),
            };
        }
        if present == 1 && keep & (1 << cap) == 0 {
            // SAFETY: as above.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap)) };
            Errno::result(r)?;
        }
    }
    Ok(())
}

fn clear_ambient() -> Result<(), Errno> {
    const CLEAR_ALL: libc::c_ulong = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
    // SAFETY: prctl with integer arguments reads and writes no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, CLEAR_ALL, 0 as libc::c_ulong, 0, 0) };
    match Errno::result(r) {
        // Kernels before 4.3 have no ambient set: nothing to clear.
        Err(Errno::EINVAL) => Ok(()),
        other => other.map(drop),
    }
}

/// `linux/capability.h`'s `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// This thread's (effective, permitted, inheritable) sets.
fn capget() -> Result<(u64, u64, u64), Errno> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes one header and two data structs, which we own, of the v3 layout.
    let r = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    Errno::result(r)?;
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // Truncation is the point: each set is split into its low and high 32-bit words.
    let word = |set: u64, i: u32| (set >> (32 * i)) as u32;
    let data = [0, 1].map(|i| CapData {
        effective: word(effective, i),
        permitted: word(permitted, i),
        inheritable: word(inheritable, i),
    });
    // SAFETY: capset reads one header and two data structs of the v3 layout, which we own.
    let r = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_tasks_keep_exactly_dockers_fourteen_default_capabilities() {
        // Proves the mask: 14 capabilities, the ones moby grants by default, and none of the
        // dangerous ones (SYS_ADMIN 21, SYS_PTRACE 19, SYS_MODULE 16, NET_ADMIN 12,
        // DAC_READ_SEARCH 2).
        assert_eq!(ROOT_TASK_CAPS.count_ones(), 14);
        assert_eq!(ROOT_TASK_CAPS, 0xa804_25fb);
        for dangerous in [2, 12, 16, 19, 21] {
            assert_eq!(ROOT_TASK_CAPS & (1 << dangerous), 0, "cap {dangerous}");
        }
        assert_eq!(keep_caps_of(Uid::from_raw(65534)), 0);
    }

    #[test]
    fn the_supervisors_own_identity_needs_no_switch_and_names_its_user() {
        // Proves `None` (run the task as the supervisor) resolves without a switch, and that a
        // user who does not exist is refused naming it.
        let me = TaskIdentity::resolve(None).unwrap();
        assert_eq!(me.uid(), nix::unistd::geteuid());
        assert_eq!(me.sandbox_owner(), None);
        let err = TaskIdentity::resolve(Some("no-such-user-drover")).unwrap_err();
        assert_eq!(err, "user no-such-user-drover does not exist on this agent");
    }

    #[test]
    fn capget_reads_the_sets_of_this_process() {
        // Proves the v3 capget layout against /proc/self/status (a wrong layout reads garbage).
        let (effective, permitted, _) = capget().unwrap();
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let field = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
        };
        assert_eq!(effective, field("CapEff:"));
        assert_eq!(permitted, field("CapPrm:"));
    }
}
