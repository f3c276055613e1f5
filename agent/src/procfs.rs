//! The few facts the agent reads from `/proc/PID/stat`: parent, process group, state and start time.
//! The start time (clock ticks since boot) is what tells a live process from a reused pid.

use std::fs;

/// Fields of `/proc/PID/stat` the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub start_ticks: u64,
}

impl ProcStat {
    pub fn is_zombie_or_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/PID/stat`; `None` when the process does not exist (or the file cannot be parsed).
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // `comm` (field 2) is in parentheses and may itself contain spaces and ')'; the fields after the
    // last ')' are space separated: state(3) ppid(4) pgrp(5) ... starttime(22).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let pgrp = fields.get(2)?.parse().ok()?;
    let start_ticks = fields.get(19)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        pgrp,
        start_ticks,
    })
}

/// Pids of every live process whose parent is `parent`.
pub(crate) fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent && !s.is_zombie_or_dead()))
        .collect()
}

/// Every process whose process group is `pgid`, with its stat (zombies included).
pub(crate) fn group_members(pgid: i32) -> Vec<(i32, ProcStat)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| stat(pid).map(|s| (pid, s)))
        .filter(|(_, s)| s.pgrp == pgid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_comm_with_spaces_and_parens() {
        // Proves the parser anchors on the last ')' so odd process names cannot shift the fields.
        let line = "42 (a b) c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        let s = parse_stat(line).expect("parses");
        assert_eq!(
            s,
            ProcStat {
                state: 'S',
                ppid: 7,
                pgrp: 42,
                start_ticks: 123456
            }
        );
    }

    #[test]
    fn reads_our_own_stat() {
        // Proves the live /proc reader agrees with getpid/getpgrp for this very process.
        let me = std::process::id() as i32;
        let s = stat(me).expect("own stat");
        assert_eq!(s.pgrp, nix::unistd::getpgrp().as_raw());
        assert!(s.start_ticks > 0);
    }
}
