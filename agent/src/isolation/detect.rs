//! Finding our own cgroups from `/proc/self/mountinfo` and `/proc/self/cgroup`.

use std::fs;
use std::path::PathBuf;

use nix::unistd::{AccessFlags, access};

use super::{Backend, Isolation, IsolationKind};

/// One cgroup filesystem mount: where it is, which subtree of the hierarchy it shows, and (v1) its
/// controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    v2: bool,
    root: String,
    mount_point: PathBuf,
    controllers: Vec<String>,
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Membership {
    controllers: Vec<String>,
    path: String,
}

pub(super) fn detect() -> Isolation {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroups = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = parse_mountinfo(&mountinfo);
    let members = parse_proc_cgroup(&cgroups);

    let v2 = match try_v2(&mounts, &members) {
        Ok(iso) => return iso,
        Err(why) => why,
    };
    let v1 = match try_v1(&mounts, &members) {
        Ok(iso) => return iso,
        Err(why) => why,
    };
    Isolation::rlimits(format!(
        "rlimits (RLIMIT_DATA for memory, no CPU limit): WARNING no usable cgroups ({v2}; {v1})"
    ))
}

fn try_v2(mounts: &[CgroupMount], members: &[Membership]) -> Result<Isolation, String> {
    let mount = mounts
        .iter()
        .find(|m| m.v2)
        .ok_or("cgroup v2 not mounted")?;
    let me = members
        .iter()
        .find(|m| m.controllers.is_empty())
        .ok_or("not in a cgroup v2 hierarchy")?;
    let own = own_dir(mount, &me.path).ok_or("own v2 cgroup not visible")?;
    let available = fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| available.split_whitespace().any(|a| a == c);
    if !(has("cpu") && has("memory")) {
        return Err(format!(
            "cgroup v2 at {} lacks cpu/memory controllers",
            own.display()
        ));
    }
    if access(&own, AccessFlags::W_OK).is_err() {
        return Err(format!("cgroup v2 {} not writable", own.display()));
    }
    let control = own.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).unwrap_or_default();
    let on = |c: &str| enabled.split_whitespace().any(|a| a == c);
    if !(on("cpu") && on("memory")) && fs::write(&control, "+cpu +memory").is_err() {
        // Typically EBUSY: our cgroup holds processes, and v2 allows controllers only on inner
        // nodes without them. The agent must then run in a leaf below a delegated cgroup.
        return Err(format!("cannot enable cpu+memory in {}", control.display()));
    }
    Ok(Isolation {
        kind: IsolationKind::CgroupV2,
        description: format!("cgroup v2 (cpu.max, memory.max) under {}", own.display()),
        backend: Backend::V2 { own },
    })
}

fn try_v1(mounts: &[CgroupMount], members: &[Membership]) -> Result<Isolation, String> {
    let own_v1 = |controller: &str| -> Option<PathBuf> {
        let mount = mounts
            .iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))?;
        let me = members
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == controller))?;
        let dir = own_dir(mount, &me.path)?;
        access(&dir, AccessFlags::W_OK).ok()?;
        dir.join("cgroup.procs").exists().then_some(dir)
    };
    let memory = own_v1("memory").ok_or("no writable cgroup v1 memory hierarchy")?;
    let cpu = own_v1("cpu");
    let description = match &cpu {
        Some(cpu) => format!(
            "cgroup v1 (memory.limit_in_bytes under {}, cpu.cfs_quota_us under {})",
            memory.display(),
            cpu.display()
        ),
        None => format!(
            "cgroup v1 (memory.limit_in_bytes under {}); WARNING no cpu hierarchy, no CPU limit",
            memory.display()
        ),
    };
    Ok(Isolation {
        kind: IsolationKind::CgroupV1,
        description,
        backend: Backend::V1 { memory, cpu },
    })
}

/// Our cgroup directory: the mount point plus our path relative to the mount's root.
fn own_dir(mount: &CgroupMount, path: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let rel = path.strip_prefix(root)?;
    if !(rel.is_empty() || rel.starts_with('/')) {
        return None;
    }
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount.mount_point.clone()
    } else {
        mount.mount_point.join(rel)
    })
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            // id parent maj:min root mount_point options [optional...] - fstype source super_options
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let fstype = *right.first()?;
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let controllers = if v2 {
                Vec::new()
            } else {
                right.get(2)?.split(',').map(str::to_owned).collect()
            };
            Some(CgroupMount {
                v2,
                root: unescape(left.get(3)?),
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                controllers,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime shared:6 - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 30 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 30 0:31 /nested /sys/fs/cgroup/my\\040memory rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn finds_hybrid_v1_mounts_and_own_paths() {
        // Proves hybrid hosts resolve our v1 memory/cpu dirs (mount root stripped, octal escapes undone) and skip cpuacct for cpu.
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 4);
        let mem = mounts
            .iter()
            .find(|m| m.controllers.contains(&"memory".into()))
            .unwrap();
        assert_eq!(mem.mount_point, PathBuf::from("/sys/fs/cgroup/my memory"));
        assert_eq!(
            own_dir(mem, "/nested/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/my memory/a/b"))
        );
        assert_eq!(own_dir(mem, "/other"), None);
        assert_eq!(own_dir(mem, "/nestedx"), None);
        let cpu: Vec<_> = mounts
            .iter()
            .filter(|m| m.controllers.iter().any(|c| c == "cpu"))
            .collect();
        assert_eq!(cpu.len(), 1);
        let members = parse_proc_cgroup("4:memory:/nested/x\n1:cpu:/\n0::/\n");
        assert_eq!(members[0].controllers, vec!["memory".to_string()]);
        assert!(members[2].controllers.is_empty());
        assert_eq!(
            own_dir(cpu[0], &members[1].path),
            Some(PathBuf::from("/sys/fs/cgroup/cpu"))
        );
    }

    #[test]
    fn detect_always_answers_with_a_description() {
        // Proves detection on this host returns a kind and a one-line reason, whatever the host has.
        let iso = Isolation::detect();
        assert!(!iso.description().is_empty());
        assert!(!iso.description().contains('\n'));
        eprintln!(
            "isolation on this host: {:?}: {}",
            iso.kind(),
            iso.description()
        );
    }
}
