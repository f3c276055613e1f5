//! `drover coord ls|get|create|set|rm|watch|getacl|setacl|digest`: read and write the coord store
//! by hand.
//!
//! Each command opens its own short session on the first master that answers and closes it at
//! the end, so nothing lingers: in particular an `--ephemeral` node dies when the command exits,
//! unless `--hold` keeps the session (and the node) until Ctrl-C. `--auth scheme:credentials`
//! authenticates that session before the command runs. ACLs use zkCli's text form.

use super::render;
use super::{Context, Output};
use anyhow::{Context as _, bail};
use drover_coord::acl::{self, AclEntry};
use drover_coord::client::{Client, ClientError, ClientOptions, SessionState};
use drover_coord::op::{CreateMode, ErrorCode, EventType, Stat};
use futures::StreamExt;
use serde_json::json;
use std::io::Read;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct CoordArgs {
    /// Authenticate the session first, as scheme:credentials (e.g. digest:bob:secret);
    /// repeatable.
    #[arg(long = "auth", global = true, value_name = "SCHEME:CREDENTIALS")]
    pub auth: Vec<String>,
    #[command(subcommand)]
    pub command: CoordCmd,
}

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
        /// The node's ACL, zkCli's scheme:id:perms comma-separated (e.g.
        /// digest:bob:HASH:cdrwa,world:anyone:r). Default world:anyone:cdrwa.
        #[arg(long, value_parser = parse_acl_arg)]
        acl: Option<AclArg>,
    },
    /// Print the ACL of PATH, one scheme:id:perms entry a line.
    Getacl { path: String },
    /// Replace the ACL of PATH (zkCli's scheme:id:perms, comma-separated).
    Setacl {
        path: String,
        #[arg(value_parser = parse_acl_arg)]
        acl: AclArg,
        /// Only if the node's ACL is at this version (its aversion).
        #[arg(long)]
        aversion: Option<i32>,
    },
    /// Print the digest id of USER:PASSWORD, for a digest ACL entry (digest:ID:perms).
    Digest {
        #[arg(value_name = "USER:PASSWORD")]
        user_password: String,
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

/// An ACL flag, parsed and validated (one value, not clap's list of many).
#[derive(Clone, Debug)]
pub struct AclArg(Vec<AclEntry>);

fn parse_acl_arg(text: &str) -> Result<AclArg, String> {
    let acl = acl::parse_acl(text)?;
    acl::validate(&acl)?;
    Ok(AclArg(acl))
}

pub async fn run(ctx: &Context, args: CoordArgs) -> anyhow::Result<()> {
    let CoordArgs { auth, command: cmd } = args;
    if let CoordCmd::Digest { user_password } = &cmd {
        // Nothing to ask a master: the digest is computed here.
        let id = acl::digest_id(user_password).map_err(|e| anyhow::anyhow!("digest: {e}"))?;
        if ctx.output == Output::Json {
            render::outln!("{}", json!({ "scheme": "digest", "id": id }))?;
        } else {
            render::outln!("{id}")?;
        }
        return Ok(());
    }
    let mut creds = Vec::with_capacity(auth.len());
    for a in &auth {
        // Never echo the credentials in an error.
        let Some((scheme, secret)) = a.split_once(':') else {
            bail!("--auth takes scheme:credentials (e.g. digest:user:password)");
        };
        creds.push((scheme.to_string(), secret.to_string()));
    }
    let client = connect(ctx, cli_options()).await?;
    let mut result = Ok(());
    for (scheme, secret) in creds {
        if let Err(e) = client.add_auth(&scheme, secret.into_bytes()).await {
            result = Err(anyhow::Error::new(e).context(format!("--auth {scheme}:… refused")));
            break;
        }
    }
    let result = match result {
        Ok(()) => execute(ctx, &client, cmd).await,
        Err(e) => Err(e),
    };
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
    options.token = ctx.token.clone();
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
            acl,
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
                .create_with_acl(&path, data, mode, acl.map_or_else(acl::open_acl, |a| a.0))
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
        CoordCmd::Getacl { path } => {
            let (entries, st) = client.get_acl(&path).await.map_err(cli_error)?;
            if json {
                let entries: Vec<serde_json::Value> = entries.iter().map(acl_entry_json).collect();
                render::outln!(
                    "{}",
                    json!({ "path": path, "acl": entries, "stat": stat_json(&st) })
                )?;
            } else {
                let mut lines = String::new();
                for e in &entries {
                    lines.push_str(&e.to_string());
                    lines.push('\n');
                }
                render::write_stdout(lines.as_bytes())?;
            }
        }
        CoordCmd::Setacl {
            path,
            acl,
            aversion,
        } => {
            let st = client
                .set_acl(&path, acl.0, aversion)
                .await
                .map_err(cli_error)?;
            if json {
                render::outln!("{}", json!({ "path": path, "stat": stat_json(&st) }))?;
            }
        }
        CoordCmd::Digest { .. } => unreachable!("answered before connecting"),
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

fn acl_entry_json(e: &AclEntry) -> serde_json::Value {
    json!({
        "scheme": e.id.scheme,
        "id": e.id.id,
        "perms": e.perms.letters(),
        "perms_bits": e.perms.bits(),
    })
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

/// Standard base64 with padding (RFC 4648), from the `base64` crate coord's digests use too.
fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
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
