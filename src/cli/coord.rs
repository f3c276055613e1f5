//! `drover coord ls|get|create|set|rm|watch`: read and write the coord store by hand.
//!
//! Each command opens its own short session on the first master that answers and closes it at
//! the end, so nothing lingers: in particular an `--ephemeral` node dies when the command exits,
//! unless `--hold` keeps the session (and the node) until Ctrl-C.

use super::render;
use super::{Context, Output};
use anyhow::{Context as _, bail};
use drover_coord::client::{Client, ClientError, ClientOptions, SessionState};
use drover_coord::op::{CreateMode, ErrorCode, EventType, Stat};
use futures::StreamExt;
use serde_json::json;
use std::io::Read;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum CoordCmd {
    /// List the children of PATH, one name a line.
    Ls { path: String },
    /// Print the data of PATH (raw bytes); `--stat` prints its stat instead.
    Get {
        path: String,
        /// Print the node's stat (version, zxids, times, ...) instead of its data.
        #[arg(long)]
        stat: bool,
    },
    /// Create PATH and print the path created (with its sequence suffix for --sequential).
    ///
    /// An --ephemeral node belongs to this command's session, which ends when the command exits:
    /// the node is deleted right away unless --hold keeps the session open until Ctrl-C.
    Create {
        path: String,
        /// The node's data; `-` reads it from stdin. Empty when left out.
        #[arg(allow_hyphen_values = true)]
        data: Option<String>,
        /// Delete the node when this command's session ends.
        #[arg(long)]
        ephemeral: bool,
        /// Append a 10-digit sequence number from the parent's counter to the name.
        #[arg(long)]
        sequential: bool,
        /// Keep the session (and so an ephemeral node) until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
    /// Replace the data of PATH.
    Set {
        path: String,
        /// The new data; `-` reads it from stdin.
        #[arg(allow_hyphen_values = true)]
        data: String,
        /// Only if the node is at this version.
        #[arg(long)]
        version: Option<i32>,
    },
    /// Delete PATH.
    Rm {
        path: String,
        /// Only if the node is at this version.
        #[arg(long, conflicts_with = "recursive")]
        version: Option<i32>,
        /// Delete the children first, depth first.
        #[arg(long, short)]
        recursive: bool,
    },
    /// Print the events on PATH, one a line, until Ctrl-C or --count events.
    Watch {
        path: String,
        /// Also watch every descendant (child-list changes are then not reported).
        #[arg(long)]
        recursive: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// Session timeout of a CLI session: short, so whatever a killed CLI leaves (an ephemeral of
/// `--hold`) goes soon. The server clamps it to its minimum.
const CLI_SESSION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the CLI looks for a master before it gives up.
const CLI_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Most nodes `rm --recursive` deletes, so a typo at `/` cannot run for ever.
const RM_RECURSIVE_NODES_MAX: usize = 100_000;

pub async fn run(ctx: &Context, cmd: CoordCmd) -> anyhow::Result<()> {
    let client = connect(ctx, cli_options()).await?;
    let result = execute(ctx, &client, cmd).await;
    // Always end the session, even after a failure, so its ephemerals and watches go now rather
    // than a session timeout later. A failure to close matters less than the command's own.
    let closed = client.close().await;
    result?;
    closed.map_err(cli_error)?;
    Ok(())
}

pub(crate) fn cli_options() -> ClientOptions {
    ClientOptions {
        session_timeout: CLI_SESSION_TIMEOUT,
        establish_timeout: CLI_ESTABLISH_TIMEOUT,
        ..ClientOptions::default()
    }
}

/// Opens a session on the context's masters, with the CLI's wording of the failure.
pub(crate) async fn connect(ctx: &Context, mut options: ClientOptions) -> anyhow::Result<Client> {
    options.tls = ctx.tls.clone();
    let addrs = ctx.master_addrs();
    if addrs.is_empty() {
        bail!("--masters is empty; give at least one host:port");
    }
    Client::connect(addrs, options).await.map_err(cli_error)
}

/// Creates `path` (empty, persistent) unless it exists.
pub(crate) async fn ensure_node(client: &Client, path: &str) -> anyhow::Result<()> {
    client.ensure_node(path).await.map_err(cli_error)
}

/// The CLI's one-line wording of a client error.
pub(crate) fn cli_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::NoServer { addrs, last_error } => {
            anyhow::anyhow!("cannot reach any master at {addrs} ({last_error})")
        }
        other => anyhow::Error::new(other),
    }
}

async fn execute(ctx: &Context, client: &Client, cmd: CoordCmd) -> anyhow::Result<()> {
    let json = ctx.output == Output::Json;
    match cmd {
        CoordCmd::Ls { path } => {
            let children = client.children(&path).await.map_err(cli_error)?;
            if json {
                render::outln!("{}", json!(children))?;
            } else {
                let mut lines = String::new();
                for c in children {
                    lines.push_str(&c);
                    lines.push('\n');
                }
                render::write_stdout(lines.as_bytes())?;
            }
        }
        CoordCmd::Get { path, stat } => {
            let (data, st) = client.get(&path).await.map_err(cli_error)?;
            if json {
                render::outln!(
                    "{}",
                    json!({ "path": path, "data": data_json(&data), "stat": stat_json(&st) })
                )?;
            } else if stat {
                render::out!("{}", stat_human(&st))?;
            } else {
                render::write_stdout(&data)?;
            }
        }
        CoordCmd::Create {
            path,
            data,
            ephemeral,
            sequential,
            hold,
        } => {
            let data = match data {
                Some(d) => read_data(&d)?,
                None => Vec::new(),
            };
            let mode = match (ephemeral, sequential) {
                (false, false) => CreateMode::Persistent,
                (true, false) => CreateMode::Ephemeral,
                (false, true) => CreateMode::PersistentSequential,
                (true, true) => CreateMode::EphemeralSequential,
            };
            let (created, st) = client
                .create_with_stat(&path, data, mode)
                .await
                .map_err(cli_error)?;
            if json {
                render::outln!("{}", json!({ "path": created, "stat": stat_json(&st) }))?;
            } else {
                render::outln!("{created}")?;
            }
            if hold {
                hold_session(client).await?;
            }
        }
        CoordCmd::Set {
            path,
            data,
            version,
        } => {
            let data = read_data(&data)?;
            let st = client.set(&path, data, version).await.map_err(cli_error)?;
            if json {
                render::outln!("{}", json!({ "path": path, "stat": stat_json(&st) }))?;
            }
        }
        CoordCmd::Rm {
            path,
            version,
            recursive,
        } => {
            let deleted = if recursive {
                rm_recursive(client, &path).await?
            } else {
                client.delete(&path, version).await.map_err(cli_error)?;
                vec![path]
            };
            if json {
                render::outln!("{}", json!({ "deleted": deleted }))?;
            }
        }
        CoordCmd::Watch {
            path,
            recursive,
            count,
        } => watch(client, &path, recursive, count, json).await?,
    }
    Ok(())
}

/// DATA as given, or stdin for `-`.
fn read_data(arg: &str) -> anyhow::Result<Vec<u8>> {
    if arg != "-" {
        return Ok(arg.as_bytes().to_vec());
    }
    // Read one byte past the znode limit at most: enough for the size check to name the limit,
    // without reading an endless pipe.
    let cap = drover_coord::op::ZNODE_BYTES_MAX as u64 + 1;
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(cap)
        .read_to_end(&mut buf)
        .context("cannot read the data from stdin")?;
    Ok(buf)
}

async fn hold_session(client: &Client) -> anyhow::Result<()> {
    eprintln!("holding session {} until Ctrl-C", client.session_id());
    let mut events = client.session_events();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            e = events.next() => match e {
                Some(drover_coord::client::SessionEvent::Expired) => bail!("session {} expired", client.session_id()),
                Some(_) => {}
                None => bail!("session {} ended", client.session_id()),
            },
        }
    }
}

/// Deletes `path` and everything under it, children first. Nodes that vanish meanwhile are
/// fine (someone else deleted them); anything else stops the walk.
async fn rm_recursive(client: &Client, path: &str) -> anyhow::Result<Vec<String>> {
    // Depth-first, post-order, with an explicit stack: (path, children listed yet?).
    let mut stack = vec![(path.to_string(), false)];
    let mut deleted = Vec::new();
    while let Some((p, expanded)) = stack.pop() {
        if !expanded {
            let children = match client.children(&p).await {
                Ok(c) => c,
                Err(e) if e.code() == Some(ErrorCode::NoNode) && p != path => continue,
                Err(e) => return Err(cli_error(e)),
            };
            stack.push((p.clone(), true));
            for c in children {
                let child = if p == "/" {
                    format!("/{c}")
                } else {
                    format!("{p}/{c}")
                };
                stack.push((child, false));
            }
            if stack.len() + deleted.len() > RM_RECURSIVE_NODES_MAX {
                bail!(
                    "{path} holds more than {RM_RECURSIVE_NODES_MAX} nodes; delete parts of it first"
                );
            }
            continue;
        }
        match client.delete(&p, None).await {
            Ok(()) => deleted.push(p),
            Err(e) if e.code() == Some(ErrorCode::NoNode) && p != path => {}
            Err(e) => return Err(cli_error(e)),
        }
    }
    Ok(deleted)
}

async fn watch(
    client: &Client,
    path: &str,
    recursive: bool,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let mut stream = client.watch(path, recursive).await.map_err(cli_error)?;
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            e = stream.next() => e,
        };
        let Some(e) = event else {
            let why = match client.state() {
                SessionState::Expired => "the session expired",
                SessionState::Closed => "the session was closed",
                _ => "this watcher fell too far behind",
            };
            bail!("the watch on {path} ended: {why}");
        };
        let kind = event_name(e.kind);
        if json {
            render::outln!(
                "{}",
                json!({ "type": kind, "path": e.path, "zxid": e.zxid.0 })
            )?;
        } else {
            render::outln!("{kind} {} {}", e.path, e.zxid)?;
        }
        seen += 1;
    }
    Ok(())
}

fn event_name(kind: EventType) -> &'static str {
    match kind {
        EventType::NodeCreated => "NODE_CREATED",
        EventType::NodeDeleted => "NODE_DELETED",
        EventType::NodeDataChanged => "NODE_DATA_CHANGED",
        EventType::NodeChildrenChanged => "NODE_CHILDREN_CHANGED",
    }
}

fn stat_json(s: &Stat) -> serde_json::Value {
    json!({
        "czxid": s.czxid.0,
        "mzxid": s.mzxid.0,
        "pzxid": s.pzxid.0,
        "ctime": s.ctime,
        "mtime": s.mtime,
        "version": s.version,
        "cversion": s.cversion,
        "aversion": s.aversion,
        "ephemeral_owner": s.ephemeral_owner,
        "data_length": s.data_length,
        "num_children": s.num_children,
    })
}

fn stat_human(s: &Stat) -> String {
    format!(
        "czxid = {}\nmzxid = {}\npzxid = {}\nctime = {}\nmtime = {}\nversion = {}\ncversion = {}\n\
         aversion = {}\nephemeral_owner = 0x{:x}\ndata_length = {}\nnum_children = {}\n",
        s.czxid,
        s.mzxid,
        s.pzxid,
        s.ctime,
        s.mtime,
        s.version,
        s.cversion,
        s.aversion,
        s.ephemeral_owner,
        s.data_length,
        s.num_children
    )
}

/// Data as JSON: the text when it is UTF-8, else base64, with the encoding named.
fn data_json(data: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(data) {
        Ok(s) => json!({ "encoding": "utf8", "value": s }),
        Err(_) => json!({ "encoding": "base64", "value": base64(data) }),
    }
}

/// Standard base64 with padding (RFC 4648); a dependency for twenty lines is not worth it.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn data_is_utf8_text_or_base64() {
        assert_eq!(data_json(b"hi"), json!({"encoding": "utf8", "value": "hi"}));
        assert_eq!(
            data_json(&[0xff]),
            json!({"encoding": "base64", "value": "/w=="})
        );
    }
}
