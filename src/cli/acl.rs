//! `drover acl ...`: bootstrap, tokens and policies through a master's `drover.v1.AclApi` (the
//! CLI never touches `/drover/acl` in coord; only masters may). A secret is printed once, by the
//! command that creates it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use drover_proto::v1;
use serde_json::json;

use super::operator::{ConnectArgs, Operator};
use super::render::{self, Table};
use super::{Context, Output};

/// Longest policy file read (the master refuses more than 64 KiB anyway).
const POLICY_FILE_BYTES_MAX: u64 = 64 * 1024;

#[derive(clap::Subcommand, Debug)]
pub enum AclCmd {
    /// Create the first management token (once; a second bootstrap is refused).
    Bootstrap {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Tokens: create, ls, revoke.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Policies (TOML): apply, ls, rm.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once.
    Create {
        /// A name for people and the audit log.
        #[arg(long)]
        name: String,
        /// A policy the token gets; repeat for more.
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// `client` (what its policies grant) or `management` (everything).
        #[arg(long = "type", default_value = "client", value_parser = ["client", "management"])]
        kind: String,
        /// Lifetime, e.g. `24h` (default: no expiry).
        #[arg(long, value_parser = drover_types::units::parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List tokens (accessors, names, policies; never secrets).
    Ls {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Revoke a token by accessor; streams opened with it end within a second.
    Revoke {
        accessor: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCmd {
    /// Create or replace the policy NAME from a TOML file.
    Apply {
        name: String,
        file: PathBuf,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List policies.
    Ls {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove a policy (tokens naming it lose what it granted).
    Rm {
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub async fn run(ctx: &Context, cmd: AclCmd) -> anyhow::Result<()> {
    match cmd {
        AclCmd::Bootstrap { connect } => {
            let created = Operator::new(ctx, &connect)?
                .acl(|mut c| async move { c.bootstrap(v1::BootstrapRequest {}).await })
                .await?;
            print_created(ctx, &created)
        }
        AclCmd::Token { command } => match command {
            TokenCmd::Create {
                name,
                policies,
                kind,
                ttl,
                connect,
            } => {
                let request = v1::CreateTokenRequest {
                    name,
                    policies,
                    r#type: kind,
                    ttl_ms: ttl.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                };
                let created = Operator::new(ctx, &connect)?
                    .acl(|mut c| {
                        let r = request.clone();
                        async move { c.create_token(r).await }
                    })
                    .await?;
                print_created(ctx, &created)
            }
            TokenCmd::Ls { connect } => {
                let list = Operator::new(ctx, &connect)?
                    .acl(|mut c| async move { c.list_tokens(v1::ListTokensRequest {}).await })
                    .await?;
                print_tokens(ctx, &list.tokens)
            }
            TokenCmd::Revoke { accessor, connect } => {
                let request = v1::RevokeTokenRequest {
                    accessor: accessor.clone(),
                };
                Operator::new(ctx, &connect)?
                    .acl(|mut c| {
                        let r = request.clone();
                        async move { c.revoke_token(r).await }
                    })
                    .await?;
                render::outln!("revoked token {accessor}")?;
                Ok(())
            }
        },
        AclCmd::Policy { command } => match command {
            PolicyCmd::Apply {
                name,
                file,
                connect,
            } => {
                let text = read_policy(&file)?;
                let request = v1::ApplyPolicyRequest { name, text };
                let applied = Operator::new(ctx, &connect)?
                    .acl(|mut c| {
                        let r = request.clone();
                        async move { c.apply_policy(r).await }
                    })
                    .await?;
                render::outln!("applied policy {}", applied.name)?;
                Ok(())
            }
            PolicyCmd::Ls { connect } => {
                let list = Operator::new(ctx, &connect)?
                    .acl(|mut c| async move { c.list_policies(v1::ListPoliciesRequest {}).await })
                    .await?;
                if ctx.output == Output::Json {
                    let v: Vec<_> = list
                        .policies
                        .iter()
                        .map(|p| json!({"name": p.name, "description": p.description, "text": p.text}))
                        .collect();
                    render::outln!("{}", serde_json::to_string_pretty(&v)?)?;
                    return Ok(());
                }
                let mut t = Table::new(&["NAME", "DESCRIPTION"]);
                for p in &list.policies {
                    t.row(vec![p.name.clone(), p.description.clone()]);
                }
                render::out!("{}", t.render())?;
                Ok(())
            }
            PolicyCmd::Rm { name, connect } => {
                let request = v1::DeletePolicyRequest { name: name.clone() };
                Operator::new(ctx, &connect)?
                    .acl(|mut c| {
                        let r = request.clone();
                        async move { c.delete_policy(r).await }
                    })
                    .await?;
                render::outln!("removed policy {name}")?;
                Ok(())
            }
        },
    }
}

/// The policy file's text, refusing what cannot be a policy before anything connects.
fn read_policy(file: &PathBuf) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    if meta.len() > POLICY_FILE_BYTES_MAX {
        anyhow::bail!(
            "{}: {} bytes; a policy has at most {POLICY_FILE_BYTES_MAX}",
            file.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {} as UTF-8", file.display()))
}

fn expires(t: &v1::TokenInfo) -> String {
    match t.expires_unix_ms {
        0 => "never".into(),
        ms => format!("unix ms {ms}"),
    }
}

fn token_json(t: &v1::TokenInfo) -> serde_json::Value {
    json!({
        "accessor": t.accessor,
        "name": t.name,
        "policies": t.policies,
        "type": t.r#type,
        "created_unix_ms": t.created_unix_ms,
        "expires_unix_ms": (t.expires_unix_ms != 0).then_some(t.expires_unix_ms),
    })
}

fn print_created(ctx: &Context, created: &v1::CreatedToken) -> anyhow::Result<()> {
    let t = created.token.clone().unwrap_or_default();
    if ctx.output == Output::Json {
        let mut v = token_json(&t);
        v["secret"] = json!(created.secret);
        render::outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    render::outln!("Accessor:  {}", t.accessor)?;
    render::outln!("Secret:    {}", created.secret)?;
    render::outln!("Name:      {}", t.name)?;
    render::outln!("Type:      {}", t.r#type)?;
    render::outln!("Policies:  {}", t.policies.join(", "))?;
    render::outln!("Expires:   {}", expires(&t))?;
    render::outln!("The secret is shown only now; only its SHA-256 is stored.")?;
    render::outln!("export DROVER_TOKEN={}", created.secret)?;
    Ok(())
}

fn print_tokens(ctx: &Context, tokens: &[v1::TokenInfo]) -> anyhow::Result<()> {
    if ctx.output == Output::Json {
        let v: Vec<_> = tokens.iter().map(token_json).collect();
        render::outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let mut t = Table::new(&["ACCESSOR", "NAME", "TYPE", "POLICIES", "EXPIRES"]);
    for tok in tokens {
        t.row(vec![
            tok.accessor.clone(),
            tok.name.clone(),
            tok.r#type.clone(),
            tok.policies.join(","),
            expires(tok),
        ]);
    }
    render::out!("{}", t.render())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use drover_master::acl::{CoordAccess, Policy, policy::SERVICES_PREFIX};

    #[test]
    fn the_services_grants_match_the_services_frameworks_paths() {
        // Proves `service-read`/`service-write` and drover local's services policy cover where
        // the services framework keeps its state (the master cannot depend on the example).
        assert_eq!(SERVICES_PREFIX, services::paths::ROOT);
        let p = Policy::parse("services", drover_devcluster::local::SERVICES_POLICY)
            .expect("drover local's services policy parses");
        assert_eq!(p.coord.len(), 1);
        assert_eq!(p.coord[0].prefix, services::paths::ROOT);
        assert_eq!(p.coord[0].access, CoordAccess::Write);
        let f = p.framework.expect("a framework grant");
        assert_eq!(f.roles, ["*"]);
    }
}
