//! Starting and finding the processes of a dev cluster: each child is this very executable in
//! a process group of its own, logging to a file, killed by the kernel if its parent dies; and
//! the processes left running under a work dir (task supervisors, detached on purpose).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Most bytes read from the end of a log for a tail.
const LOG_TAIL_BYTES_MAX: u64 = 64 << 10;

/// `master --id ID --listen ADDR --data-dir DIR`: how every dev master's command line starts
/// (callers add `--peers`, `--http` and their own flags).
pub fn master_args(id: u32, listen: &str, data_dir: &Path) -> Vec<OsString> {
    vec![
        "master".into(),
        "--id".into(),
        id.to_string().into(),
        "--listen".into(),
        listen.into(),
        "--data-dir".into(),
        data_dir.into(),
    ]
}

/// How to start one child.
pub struct Spawn<'a> {
    pub exe: &'a Path,
    pub args: Vec<OsString>,
    /// stdout and stderr go here (appended).
    pub log: &'a Path,
    /// `RUST_LOG` for the child when this process has none.
    pub log_filter: &'a str,
    /// Ask the kernel to SIGKILL the child when the thread that spawns it exits (see [`spawn`]).
    /// Off for callers whose spawning thread may end before the child should (test threads).
    pub die_with_parent: bool,
    /// Environment variables set for the child (secrets go here, never on the command line,
    /// which `ps` shows to everyone).
    pub env: Vec<(String, String)>,
}

/// Starts `spec.exe` with `spec.args` in its own process group (a Ctrl-C at the terminal
/// reaches only the parent, which then stops the children in order), with no colours, its
/// output appended to `spec.log`, and (with `die_with_parent`) `PR_SET_PDEATHSIG` = SIGKILL, so
/// even a `kill -9` of the parent takes it down.
///
/// The death signal fires when the *thread* that forked exits: call this from the main thread
/// (the future `block_on` runs), not from a worker that may go away.
pub fn spawn(spec: Spawn<'_>) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log)
        .with_context(|| format!("cannot open {}", spec.log.display()))?;
    let file_err = file.try_clone().context("cannot share a log file")?;
    let mut cmd = Command::new(spec.exe);
    cmd.args(spec.args)
        .env("NO_COLOR", "1")
        // A process started here gets its TLS material from its flags, never the operator's
        // from the environment (a master must not run on the operator's certificate).
        .env_remove("DROVER_TLS_CA")
        .env_remove("DROVER_TLS_CERT")
        .env_remove("DROVER_TLS_KEY")
        .env_remove("DROVER_INSECURE")
        // Nor the operator's token: a child gets its own, through `spec.env`.
        .env_remove("DROVER_TOKEN")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(file_err)
        .process_group(0);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", spec.log_filter);
    }
    cmd.envs(spec.env);
    if spec.die_with_parent {
        // SAFETY: the closure runs in the child between fork and exec and makes one
        // async-signal-safe system call.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", spec.exe.display()))
}

/// The process group of a child started by [`spawn`] (its pid), while it has not been reaped.
pub fn group_of(child: &Child) -> Option<Pid> {
    i32::try_from(child.id()).ok().map(Pid::from_raw)
}

/// SIGKILL to the child's whole process group, then reap it.
pub fn kill_group(child: &mut Child) {
    if let Some(group) = group_of(child) {
        let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
    }
    let _ = child.wait();
}

/// A child killed with its whole process group (SIGKILL) when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        kill_group(&mut self.0);
    }
}

/// Processes (other than `exclude` and this one) that run under one of `dirs`: a working
/// directory there (a task in its sandbox) or a path there on the command line (a supervisor's
/// spec). Processes of other users, and zombies, have neither to read and are not found.
pub fn processes_under(dirs: &[PathBuf], exclude: &[i32]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let dir_strs: Vec<String> = dirs.iter().map(|d| d.to_string_lossy().into()).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && !exclude.contains(pid))
        .filter(|pid| {
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let cwd = std::fs::read_link(proc_dir.join("cwd")).unwrap_or_default();
            if dirs.iter().any(|d| cwd.starts_with(d)) {
                return true;
            }
            let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
            cmdline
                .split(|&b| b == 0)
                .map(String::from_utf8_lossy)
                .any(|arg| {
                    dir_strs
                        .iter()
                        .any(|d| Path::new(arg.as_ref()).starts_with(d))
                })
        })
        .collect()
}

/// The last `lines` lines of a log file (at most 64 KiB of it).
pub fn log_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return "(no log)".into();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES_MAX)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
