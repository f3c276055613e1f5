//! `drover coord` against a real `drover master` process: the round trip a user does by hand, and
//! the one-line errors bad input gets.

mod util;

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
