//! Who leads, asked of the masters themselves (`Cluster.Status`), never read from their logs.
//!
//! [`ask_all`] asks every address at once, each with a deadline; [`agreement`] is the pure rule
//! for "the ensemble is settled": exactly one master leads an epoch and every other master that
//! answered follows it in that epoch.

use std::time::Duration;

use drover_proto::v1;

use drover_client::cluster;

/// What one address answered: its status, or why there was none.
pub use drover_client::cluster::StatusAnswer as Answer;

/// Asks every address in `addrs` for its status, concurrently, each within `timeout`, over
/// TLS when `tls` is given.
pub async fn ask_all(
    addrs: &[String],
    timeout: Duration,
    tls: Option<&drover_security::TlsConfig>,
) -> Vec<Answer> {
    cluster::ask_all(&cluster::status_transport(timeout, tls.cloned()), addrs).await
}

/// The settled leadership of an ensemble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    pub leader: u32,
    pub epoch: u32,
    /// When the leader was established (Unix ms), by its own account.
    pub since_unix_ms: u64,
}

/// `Some` when exactly one master leads and every other status follows it in the same epoch.
/// `serving` also asks that the leader's term serves the scheduler side (registry taken over).
/// Masters that did not answer do not count against it (a killed master does not answer); pass
/// `expected` to require that many answers.
pub fn agreement(answers: &[Answer], expected: usize, serving: bool) -> Option<Agreement> {
    let statuses: Vec<&v1::MasterStatus> = answers
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .collect();
    if statuses.len() < expected {
        return None;
    }
    let is = |s: &v1::MasterStatus, role: v1::MasterRole| s.role == role as i32;
    let mut leaders = statuses.iter().filter(|s| is(s, v1::MasterRole::Leading));
    let leader = leaders.next()?;
    if leaders.next().is_some() || (serving && !leader.serving) {
        return None;
    }
    let all_follow = statuses.iter().all(|s| {
        s.master_id == leader.master_id
            || (is(s, v1::MasterRole::Following)
                && s.leader_id == Some(leader.master_id)
                && s.epoch == leader.epoch)
    });
    all_follow.then_some(Agreement {
        leader: leader.master_id,
        epoch: leader.epoch,
        since_unix_ms: leader.role_since_unix_ms,
    })
}

/// One line per address for an error report: `1 127.0.0.1:5050 leading epoch 3`.
pub fn describe(answers: &[Answer]) -> String {
    answers
        .iter()
        .map(|(addr, s)| match s {
            Ok(s) => format!(
                "{} {addr} {} epoch {}",
                s.master_id,
                cluster::role_name(s.role),
                s.epoch
            ),
            Err(e) => format!("{addr} unreachable ({e})"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u32, role: v1::MasterRole, leader: Option<u32>, epoch: u32) -> Answer {
        (
            format!("127.0.0.1:{}", 5000 + id),
            Ok(v1::MasterStatus {
                master_id: id,
                role: role as i32,
                leader_id: leader,
                epoch,
                serving: role == v1::MasterRole::Leading,
                role_since_unix_ms: 7,
                ..Default::default()
            }),
        )
    }

    #[test]
    fn one_leader_followed_in_its_epoch_is_agreement() {
        // Proves the rule: one leader, every other answer follows it in the same epoch; a
        // master that does not answer does not count unless `expected` asks for it.
        use v1::MasterRole::*;
        let settled = vec![
            status(1, Following, Some(2), 4),
            status(2, Leading, Some(2), 4),
            ("127.0.0.1:5003".into(), Err("down".into())),
        ];
        assert_eq!(
            agreement(&settled, 2, true),
            Some(Agreement {
                leader: 2,
                epoch: 4,
                since_unix_ms: 7
            })
        );
        assert_eq!(agreement(&settled, 3, true), None, "3 answers expected");
        let stale = vec![
            status(1, Following, Some(3), 3),
            status(2, Leading, Some(2), 4),
        ];
        assert_eq!(
            agreement(&stale, 0, false),
            None,
            "a follower of another epoch"
        );
        let looking = vec![status(1, Looking, None, 4), status(2, Leading, Some(2), 4)];
        assert_eq!(agreement(&looking, 0, false), None, "one still looking");
        let two = vec![
            status(1, Leading, Some(1), 4),
            status(2, Leading, Some(2), 5),
        ];
        assert_eq!(agreement(&two, 0, false), None, "two leaders");
        let mut not_serving = vec![status(2, Leading, Some(2), 4)];
        if let Ok(s) = &mut not_serving[0].1 {
            s.serving = false;
        }
        assert!(agreement(&not_serving, 1, false).is_some());
        assert_eq!(
            agreement(&not_serving, 1, true),
            None,
            "term not serving yet"
        );
    }
}
