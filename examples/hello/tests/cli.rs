//! `hello`'s command line: bad input is refused before it reaches any master. (Its real runs,
//! against a master and agents, are in the workspace's `tests/scheduler.rs`; this test target
//! also makes `cargo test --workspace` build the `hello` binary those tests start.)

use std::process::Command;

fn hello(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hello"))
        .args(args)
        // A master nobody runs: nothing here may get as far as connecting.
        .env("DROVER_MASTERS", "127.0.0.1:1")
        .output()
        .expect("run hello")
}

#[test]
fn bad_arguments_are_refused_naming_the_flag() {
    // Proves the flags are checked up front, each error naming the flag, with a non-zero exit.
    let help = hello(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--instances"));
    let cases: [(&[&str], &str); 3] = [
        (&["--instances", "2"], "<COMMAND>"),
        (&["--mem", "lots", "--", "true"], "--mem"),
        (&["--cpus=-1", "--", "true"], "--cpus"),
    ];
    for (args, flag) in cases {
        let out = hello(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
