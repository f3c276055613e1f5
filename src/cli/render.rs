//! How the user commands print for people: plain aligned columns (the `kubectl get` shape: no
//! borders, so `grep` and `awk` still work on them) and one format per kind of cell.
//!
//! A table crate would do the alignment too; twenty lines that print exactly this shape are
//! simpler than configuring one.
//!
//! User commands print through [`outln!`]/[`out!`]/[`write_stdout`], never `println!`: a reader
//! that stops early (`drover agent ls | head -1`) closes the pipe, and `println!` panics on the
//! `EPIPE` that follows (Rust ignores `SIGPIPE`). These return a [`StdoutError`] instead, and
//! `main` ends the command quietly with status 0 when the reader has gone (as ripgrep does; a
//! Go CLI such as kubectl dies of `SIGPIPE`, 141, which fails `set -o pipefail` scripts for a
//! reader's choice). `SIGPIPE` stays ignored in every process, so a user command's gRPC
//! socket or a daemon's child pipe closing is an error to handle, never a silent death.

use std::fmt;
use std::io::{self, Write as _};

use drover_proto::v1;

/// Spaces between columns.
const COLUMN_GAP: usize = 3;

/// Rows of cells under a header, printed with each column as wide as its widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; an empty cell prints as `-` so columns stay countable.
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(
            cells.len(),
            self.header.len(),
            "a row has one cell per column"
        );
        let cells = cells
            .into_iter()
            .map(|c| if c.is_empty() { "-".to_string() } else { c })
            .collect();
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', w - width(cell) + COLUMN_GAP));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Writing a command's output to stdout failed.
#[derive(Debug)]
pub struct StdoutError(io::Error);

impl StdoutError {
    /// True when nobody reads stdout any more (`EPIPE`: `| head -1` has what it wanted).
    pub fn is_reader_gone(&self) -> bool {
        self.0.kind() == io::ErrorKind::BrokenPipe
    }
}

impl fmt::Display for StdoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cause follows as the source (`drover: cannot write to stdout: No space left...`).
        f.write_str("cannot write to stdout")
    }
}

impl std::error::Error for StdoutError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// True when `error` comes from writing to a stdout nobody reads any more: the command stops
/// quietly, successfully (see the module doc).
pub fn is_reader_gone(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<StdoutError>()
            .is_some_and(StdoutError::is_reader_gone)
    })
}

/// Writes `bytes` to stdout and flushes them, so a closed pipe is an error here and now.
pub fn write_stdout(bytes: &[u8]) -> Result<(), StdoutError> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(StdoutError)
}

/// `print!` for user commands: returns `Result<(), StdoutError>` instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::render::write_stdout(format!($($arg)*).as_bytes())
    };
}

/// `println!` for user commands: returns `Result<(), StdoutError>` instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::render::write_stdout(b"\n")
    };
    ($($arg:tt)*) => {
        $crate::cli::render::write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

pub(crate) use {out, outln};

/// Cores from millicpus, without trailing zeros: `1`, `0.25`, `1.5`.
pub fn cpus(millicpus: u64) -> String {
    let whole = millicpus / 1000;
    let frac = millicpus % 1000;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Bytes in the largest binary unit that keeps a number ≥ 1: `64MiB`, `1.5GiB`, `512B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scale = 1u64;
    while unit + 1 < UNITS.len() && n >= scale * 1024 {
        scale *= 1024;
        unit += 1;
    }
    if n.is_multiple_of(scale) {
        format!("{}{}", n / scale, UNITS[unit])
    } else {
        // One decimal, rounded down, so a value never looks bigger than it is.
        let tenths = n.saturating_mul(10) / scale;
        format!("{}.{}{}", tenths / 10, tenths % 10, UNITS[unit])
    }
}

/// Port ranges as `31000-31002,31005`.
pub fn ports(ranges: &[v1::PortRange]) -> String {
    ranges
        .iter()
        .map(|r| {
            if r.begin == r.end {
                r.begin.to_string()
            } else {
                format!("{}-{}", r.begin, r.end)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Ports as a flat list of numbers (JSON output), capped so a huge range cannot explode.
pub fn port_numbers(ranges: &[v1::PortRange]) -> Vec<u32> {
    /// More numbers than any task asks for; past it the list is cut.
    const PORT_NUMBERS_MAX: usize = 65_536;
    ranges
        .iter()
        .flat_map(|r| r.begin..=r.end)
        .take(PORT_NUMBERS_MAX)
        .collect()
}

/// How long ago `then_ms` (Unix ms) was, in the largest unit: `12s`, `3m`, `2h`, `4d`.
pub fn age(then_ms: u64, now_ms: u64) -> String {
    if then_ms == 0 {
        return String::new();
    }
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Unix time in ms, now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `TASK_RUNNING` for scripts (the proto's name).
pub fn state_name(state: i32) -> &'static str {
    v1::TaskState::try_from(state)
        .unwrap_or(v1::TaskState::Unspecified)
        .as_str_name()
}

/// `RUNNING` for people.
pub fn state_short(state: i32) -> &'static str {
    let name = state_name(state);
    name.strip_prefix("TASK_").unwrap_or(name)
}

/// Terminal task states (Mesos'): the task will not run again.
pub fn is_terminal(state: i32) -> bool {
    use v1::TaskState as S;
    matches!(
        S::try_from(state),
        Ok(S::TaskFinished
            | S::TaskFailed
            | S::TaskKilled
            | S::TaskError
            | S::TaskLost
            | S::TaskDropped
            | S::TaskGone
            | S::TaskGoneByOperator)
    )
}

/// How a task ended, for people: `exit 1`, `signal 9`, with the reason and message if any.
pub fn exit_info(status: &v1::TaskStatus) -> String {
    let mut parts = Vec::new();
    if let Some(code) = status.exit_code {
        parts.push(format!("exit {code}"));
    }
    if let Some(sig) = status.signal {
        parts.push(format!("signal {sig}"));
    }
    if !status.reason.is_empty() {
        parts.push(status.reason.clone());
    }
    let message = one_line(&status.message);
    if !message.is_empty() && message != status.reason {
        parts.push(message);
    }
    parts.join(", ")
}

/// `text` on one line (newlines become spaces), for a table cell.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell_and_empty_cells_show_a_dash() {
        let mut t = Table::new(&["ID", "NAME", "X"]);
        t.row(vec!["a".into(), "longer".into(), "1".into()]);
        t.row(vec!["bbbb".into(), String::new(), "22".into()]);
        assert_eq!(
            t.render(),
            "ID     NAME     X\na      longer   1\nbbbb   -        22\n"
        );
    }

    #[test]
    fn cells_format_resources_compactly() {
        assert_eq!(cpus(0), "0");
        assert_eq!(cpus(1500), "1.5");
        assert_eq!(cpus(250), "0.25");
        assert_eq!(cpus(2000), "2");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(64 << 20), "64MiB");
        assert_eq!(bytes(1536 << 20), "1.5GiB");
        assert_eq!(
            ports(&[
                v1::PortRange {
                    begin: 31000,
                    end: 31002
                },
                v1::PortRange {
                    begin: 31005,
                    end: 31005
                }
            ]),
            "31000-31002,31005"
        );
        assert_eq!(age(1_000, 13_500), "12s");
        assert_eq!(age(0, 13_500), "");
        assert_eq!(age(1, 2 * 3_600_000), "1h");
    }

    #[test]
    fn only_a_closed_stdout_counts_as_the_reader_gone() {
        // Proves `main` ends quietly on EPIPE from stdout, even under context, and on nothing
        // else; other stdout failures name their cause once.
        let gone = anyhow::Error::new(StdoutError(io::ErrorKind::BrokenPipe.into()))
            .context("listing agents");
        assert!(is_reader_gone(&gone));
        let full = anyhow::Error::new(StdoutError(io::Error::other("disk full")));
        assert!(!is_reader_gone(&full));
        assert_eq!(format!("{full:#}"), "cannot write to stdout: disk full");
        let socket = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_reader_gone(&socket), "a broken socket is a failure");
    }

    #[test]
    fn task_states_read_both_ways() {
        let running = v1::TaskState::TaskRunning as i32;
        assert_eq!(state_name(running), "TASK_RUNNING");
        assert_eq!(state_short(running), "RUNNING");
        assert!(!is_terminal(running));
        assert!(is_terminal(v1::TaskState::TaskKilled as i32));
        assert!(!is_terminal(v1::TaskState::TaskUnreachable as i32));
    }
}
