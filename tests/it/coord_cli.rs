//! `drover coord` against a real `drover master` process: the round trip a user does by hand, and
//! the one-line errors bad input gets.

use crate::util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use util::*;

#[test]
fn coord_cli_round_trip_on_a_running_master() {
    // create, get, set with version, a watch that fires, sequential naming, ls, rm.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _master = start_master(dir.path(), port, "master", &[]);
    let addr = format!("127.0.0.1:{port}");

    let out = drover(&addr, &["coord", "create", "/app", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "/app");
    let out = drover(&addr, &["coord", "get", "/app"]);
    assert_eq!(stdout(&out), "hello");

    // A watcher in its own process, waiting for one event.
    let mut watcher = Command::new(drover_bin())
        .args(["--masters", &addr, "coord", "watch", "/app", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The watch is registered once the watcher prints that it is watching (on stderr) — or wait
    // for its session to show up: simplest robust signal is to retry the set until the watcher exits.
    std::thread::sleep(Duration::from_millis(0));
    let out = drover(&addr, &["coord", "set", "/app", "world", "--version", "5"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad version"), "{}", stderr(&out));
    let mut version = 0;
    let line = wait_for("the watch to fire", Duration::from_secs(20), || {
        let out = drover(
            &addr,
            &[
                "coord",
                "set",
                "/app",
                "world",
                "--version",
                &version.to_string(),
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        version += 1;
        match watcher.try_wait().unwrap() {
            Some(_) => {
                let mut s = String::new();
                BufReader::new(watcher.stdout.take().unwrap())
                    .read_line(&mut s)
                    .unwrap();
                Some(s)
            }
            None => {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        }
    });
    assert!(
        line.contains("NODE_DATA_CHANGED") && line.contains("/app"),
        "{line}"
    );
    let out = drover(&addr, &["coord", "get", "/app"]);
    assert_eq!(stdout(&out), "world");

    let out = drover(&addr, &["coord", "create", "/app/job-", "--sequential"]);
    assert_eq!(stdout(&out).trim(), "/app/job-0000000000");
    let out = drover(&addr, &["coord", "create", "/app/job-", "--sequential"]);
    assert_eq!(stdout(&out).trim(), "/app/job-0000000001");
    let out = drover(&addr, &["coord", "ls", "/app"]);
    assert_eq!(stdout(&out), "job-0000000000\njob-0000000001\n");

    let out = drover(&addr, &["coord", "rm", "/app"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has children"), "{}", stderr(&out));
    for p in ["/app/job-0000000000", "/app/job-0000000001", "/app"] {
        let out = drover(&addr, &["coord", "rm", p]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = drover(&addr, &["coord", "get", "/app"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no node at /app"), "{}", stderr(&out));
}

#[test]
fn bad_input_gets_a_one_line_reason_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _master = start_master(dir.path(), port, "master", &[]);
    let addr = format!("127.0.0.1:{port}");
    assert!(
        drover(&addr, &["coord", "create", "/e", "x", "--ephemeral"])
            .status
            .success()
    );
    let cases: &[(&[&str], &str)] = &[
        (&["coord", "create", "nope"], "must start with /"),
        (&["coord", "create", "/a/"], "must not end with /"),
        (&["coord", "create", "/a//b"], "empty component"),
        (&["coord", "create", "/a/../b"], "(..)"),
        (
            &["coord", "create", "/missing/child"],
            "no node at /missing",
        ),
        (&["coord", "get", "/missing"], "no node at /missing"),
        (&["coord", "set", "/missing", "x"], "no node at /missing"),
        (&["coord", "rm", "/"], "cannot be deleted"),
    ];
    for (args, reason) in cases {
        let out = drover(&addr, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert!(err.contains(reason), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
    }
    // The CLI's ephemeral died with its session; nothing else was created (`/drover` is the
    // leading master's registry).
    let out = drover(&addr, &["coord", "ls", "/"]);
    assert_eq!(stdout(&out), "drover\n", "{}", stderr(&out));

    // Data over 1 MiB, from stdin.
    let mut child = Command::new(drover_bin())
        .args(["--masters", &addr, "coord", "create", "/big", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(&vec![b'x'; 1024 * 1024 + 1]);
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("limit is 1048576 bytes"),
        "{}",
        stderr(&out)
    );

    // No master at all.
    let out = drover(&format!("127.0.0.1:{}", free_port()), &["coord", "ls", "/"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn bench_disk_measures_each_writer_count_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = Command::new(drover_bin())
        .args(["--output", "json", "bench", "disk", "--dir", d])
        .args([
            "--writers",
            "1,2",
            "--duration",
            "200ms",
            "--record-size",
            "300",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["record_size"], 300);
    let rounds = report["rounds"].as_array().unwrap();
    let writers: Vec<_> = rounds.iter().map(|r| r["writers"].as_u64()).collect();
    assert_eq!(writers, [Some(1), Some(2)]);
    for r in rounds {
        assert!(r["syncs"].as_u64().unwrap() > 0, "{r}");
        assert!(
            r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap(),
            "{r}"
        );
    }
    // The bench's own directory (logs of 64 MiB preallocated each) is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    for (args, names) in [
        (&["--writers", "0"][..], "--writers"),
        (&["--writers", "65"][..], "--writers"),
        (&["--record-size", "0"][..], "--record-size"),
        (&["--duration", "0s"][..], "--duration"),
        (&["--dir", "/nonexistent/drover"][..], "/nonexistent/drover"),
    ] {
        let out = Command::new(drover_bin())
            .args(["bench", "disk"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr(&out).contains(names), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn bench_coord_measures_its_own_ensemble_and_a_leader_kill_then_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let bench = |args: &[&str]| {
        let out = Command::new(drover_bin())
            .args(["--output", "json", "bench", "coord", "--dir", d])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        // Every master stopped and its data removed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()
    };

    let load = bench(&["--clients", "1,3", "--duration", "300ms", "--warmup", "0"]);
    let rows = load["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{load}");
    for (row, clients) in rows.iter().zip([1, 3]) {
        assert_eq!(row["clients"], clients, "{row}");
        for phase in ["writes", "reads"] {
            assert!(row[phase]["ops"].as_u64().unwrap() > 0, "{row}");
            assert_eq!(row[phase]["errors"], 0, "{row}");
        }
    }

    let failover = bench(&["--kill-leader", "1", "--writers", "2", "--settle", "200ms"]);
    let kills = failover["kills"].as_array().unwrap();
    assert_eq!(kills.len(), 1, "{failover}");
    assert_eq!(kills[0]["writes_resumed"], true, "{failover}");
    assert_ne!(
        kills[0]["killed_leader"], kills[0]["new_leader"],
        "{failover}"
    );
}

#[test]
fn a_digest_acl_keeps_a_znode_from_sessions_without_its_credentials() {
    // Created with a digest ACL, /secret cannot be read or changed without the credentials (NoAuth
    // naming the path and the permission), the refusal changes nothing, `--auth digest:user:pass`
    // reads it, the ACL survives a restart, and a super id (a master flag) passes every check.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin = drover_coord::acl::digest_id("super:admin-pw").unwrap();
    let super_flag = format!("digest:{admin}");
    let extra = ["--coord-super-id", super_flag.as_str()];
    let master = start_master(dir.path(), port, "master", &extra);
    let addr = format!("127.0.0.1:{port}");

    let out = drover(&addr, &["coord", "digest", "alice:s3cret"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert_eq!(id, drover_coord::acl::digest_id("alice:s3cret").unwrap());
    assert!(id.starts_with("alice:"), "{id}");

    let acl = format!("digest:{id}:cdrwa");
    let out = drover(
        &addr,
        &["coord", "create", "/secret", "the data", "--acl", &acl],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "/secret");

    let alice = ["--auth", "digest:alice:s3cret"];
    let refused = |args: &[&str], perm: &str| {
        let out = drover(&addr, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert!(
            err.contains("not authorized") && err.contains("/secret") && err.contains(perm),
            "{args:?}: {err}"
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(!err.contains("s3cret"), "credentials echoed: {err}");
    };
    refused(&["coord", "get", "/secret"], "READ");
    refused(
        &["coord", "get", "/secret", "--auth", "digest:alice:wrong"],
        "READ",
    );
    refused(&["coord", "set", "/secret", "overwritten"], "WRITE");
    // ZooKeeper's rule: creating (and deleting) a child needs CREATE (DELETE) on the parent.
    refused(&["coord", "create", "/secret/child"], "CREATE");
    refused(&["coord", "getacl", "/secret"], "READ or ADMIN");

    // Nothing changed, as alice can see.
    let out = drover(&addr, &["coord", "get", "/secret", alice[0], alice[1]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "the data");
    let out = drover(
        &addr,
        &[
            "coord",
            "--auth",
            "digest:alice:s3cret",
            "get",
            "/secret",
            "--stat",
        ],
    );
    assert!(stdout(&out).contains("version = 0"), "{}", stdout(&out));
    let out = drover(&addr, &["coord", "getacl", "/secret", alice[0], alice[1]]);
    assert_eq!(stdout(&out), format!("{acl}\n"), "{}", stderr(&out));

    // Bad ACLs are refused naming the entry, and create nothing.
    for (bad, why) in [
        ("digest:alice:r", "entry 0"),
        ("world:anyone:r,ip:10.0.0.300:r", "entry 1"),
        ("world:anyone:q", "entry 0"),
    ] {
        let out = drover(&addr, &["coord", "create", "/bad", "--acl", bad]);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(stderr(&out).contains(why), "{bad}: {}", stderr(&out));
    }
    let out = drover(&addr, &["coord", "get", "/bad"]);
    assert!(stderr(&out).contains("no node at /bad"), "{}", stderr(&out));

    // The ACL is durable: after a restart it still holds.
    drop(master);
    let master = start_master(dir.path(), port, "master-restarted", &extra);
    refused(&["coord", "get", "/secret"], "READ");
    // A super id reads anything.
    let out = drover(
        &addr,
        &["coord", "get", "/secret", "--auth", "digest:super:admin-pw"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "the data");

    // setacl checks the ACL version; then everyone may read.
    let open_read = format!("{acl},world:anyone:r");
    let out = drover(
        &addr,
        &[
            "coord",
            "setacl",
            "/secret",
            &open_read,
            "--aversion",
            "3",
            alice[0],
            alice[1],
        ],
    );
    assert!(stderr(&out).contains("bad version"), "{}", stderr(&out));
    let out = drover(
        &addr,
        &[
            "coord",
            "setacl",
            "/secret",
            &open_read,
            "--aversion",
            "0",
            alice[0],
            alice[1],
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = drover(&addr, &["coord", "get", "/secret"]);
    assert_eq!(stdout(&out), "the data", "{}", stderr(&out));
    // Without ADMIN, getacl hides the digest's hash.
    let out = drover(&addr, &["coord", "getacl", "/secret"]);
    assert_eq!(
        stdout(&out),
        "digest:alice:x:cdrwa\nworld:anyone:r\n",
        "{}",
        stderr(&out)
    );
    drop(master);
}
