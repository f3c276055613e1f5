//! The driver tells its embedder who leads: a one-replica ensemble reports itself leading once
//! it has established its epoch (the master will write `/drover/leader` on exactly this signal).

use drover_coord::driver::{self, CoordConfig};
use std::time::Duration;

#[tokio::test]
async fn a_single_replica_reports_itself_leading() {
    let dir = tempfile::tempdir().expect("temp dir");
    let handle = driver::start(CoordConfig::new(dir.path().to_path_buf())).expect("start coord");
    let mut leadership = handle.leadership.clone();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let now = *leadership.borrow_and_update();
            if now.leading {
                return now;
            }
            leadership
                .changed()
                .await
                .expect("the driver keeps running");
        }
    })
    .await
    .expect("leading within 10 s");
    assert_eq!(seen.leader, Some(1));
    assert!(
        seen.epoch >= 1,
        "an established leader has an epoch: {seen:?}"
    );
}
