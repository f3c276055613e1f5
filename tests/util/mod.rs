//! Shared helpers for tests that start real `drover` processes: free loopback ports, temp dirs,
//! readiness waits, and processes killed (whole process group) when the test ends, with their
//! logs printed if it failed.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn drover_bin() -> &'static str {
    env!("CARGO_BIN_EXE_drover")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A `drover` process in its own process group, killed with the group on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], log_dir: &Path) -> Proc {
        use std::os::unix::process::CommandExt;
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(drover_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("spawn drover");
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// SIGKILL to the whole process group, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} -----\n{}\n----- end of {} -----",
                self.name,
                self.log_text(),
                self.name
            );
        }
    }
}

/// Waits until `f` returns Some, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: &str) {
    wait_for(
        &format!("{addr} to listen"),
        Duration::from_secs(30),
        || std::net::TcpStream::connect(addr).ok().map(|_| ()),
    );
}

/// A single-replica master on a fresh port, with its data in `dir`.
pub fn start_master(dir: &Path, port: u16, name: &str, extra: &[&str]) -> Proc {
    let addr = format!("127.0.0.1:{port}");
    let data = dir.join("data");
    let mut args = vec![
        "master",
        "--id",
        "1",
        "--listen",
        &addr,
        "--data-dir",
        data.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let p = Proc::spawn(name, &args, dir);
    wait_listening(&addr);
    p
}

/// Runs a `drover` user command to completion with `--masters addr`.
pub fn drover(addr: &str, args: &[&str]) -> Output {
    Command::new(drover_bin())
        .arg("--masters")
        .arg(addr)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run drover")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}
