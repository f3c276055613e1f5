//! Service specs: what `drover service deploy` stores under `/services/specs/NAME` and what the
//! framework keeps running.
//!
//! A spec is parsed from TOML, JSON or YAML ([`parse`], [`Format`]) into a raw, permissive shape
//! (unknown fields refused, every field optional) and then validated field by field into a
//! [`ServiceSpec`], so each mistake comes back as a [`SpecError`] naming the field and the allowed
//! range, e.g. `instances: 20000 is out of range (0..=10000)`. The stored form is JSON
//! ([`ServiceSpec::to_json`]) and goes through the same validation when read back
//! ([`ServiceSpec::from_json`]).
//!
//! ```toml
//! name = "web"
//! cmd = ["python3", "-m", "http.server", "$PORT0"]  # argv; a single string runs under `sh -c`
//! instances = 4
//! cpus = 0.25
//! mem = "64MiB"           # 4MiB..=16TiB (the agent runs nothing smaller)
//! ports = 1
//! env = { GREETING = "hi" }
//! kill_grace = "5s"        # optional: SIGTERM → SIGKILL on a kill (default: the agent's)
//! [health]                 # optional: exactly one of http = "/path", tcp = true, cmd = [...]
//! http = "/"
//! port_index = 0           # which of PORT0.. is checked (http and tcp)
//! interval = "10s"         # 1s..=1h
//! timeout = "5s"           # 100ms..=interval
//! grace = "30s"            # 0s..=1h: failures right after the start do not count
//! max_failures = 3         # 1..=100 consecutive failures make the instance unhealthy
//! [placement]              # optional; max_per_host and spread_by combine
//! max_per_host = 1
//! spread_by = "rack"
//! strategy = "spread"      # or "bin_pack"
//! [upgrade]                # optional rolling upgrade bounds (defaults: surge 1, unavailable 0)
//! max_surge = 1
//! max_unavailable = 0
//! ```
//!
//! Durations and `mem` use the one grammar of `drover_sdk::units`: `500ms`, `1.5s`, `1m30s`, `7d`
//! (a bare number only for 0) and `64MiB`, `1.5GiB` or a number of bytes (`MB`, `G` refused as
//! ambiguous).
//!
//! **`$VAR` expansion.** The agent runs argv as given and does not expand anything. An argv
//! element containing `$NAME` or `${NAME}` is expanded from the task's environment (the spec's
//! `env`, `PORT0..`, `DROVER_TASK_ID`, `DROVER_AGENT_ID` and whatever the agent passes on) by
//! running the argv as `sh -c 'exec …'` with every literal part single-quoted and every reference
//! written as `"${NAME}"` ([`Cmd::to_command`]): exactly the words of the argv, no globbing, no
//! word splitting, and `sh` replaced by the program. `$$` is a literal `$`; a `$` not followed by a
//! name, `{` or `$` stays literal. An argv without `$` runs directly, without a shell. A `cmd`
//! given as one string runs under `sh -c` as written.
//!
//! **Placement.** `max_per_host` and `spread_by` do not conflict and may be combined: spread_by
//! balances instance counts over the attribute's values, max_per_host caps any one host.
//!
//! **Version.** [`ServiceSpec::version`] hashes everything but `instances`: scaling does not
//! restart anything, any other change rolls the instances to the new version.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use drover_sdk::units::{format_duration, parse_duration};
use drover_sdk::{Command, Placement, Strategy, TaskRequest, format_mem};
use serde::{Deserialize, Serialize};

/// Most instances a service may ask for.
pub const INSTANCES_MAX: u32 = 10_000;
/// Most cpus one instance may ask for.
pub const CPUS_MAX: f64 = 1024.0;
/// Most memory one instance may ask for (16 TiB).
pub const MEM_BYTES_MAX: u64 = 16 << 40;
/// Least memory one instance may ask for: what the agent accepts (a task below it gets
/// TASK_ERROR), since the runtime of any program needs a few MiB.
pub const MEM_BYTES_MIN: u64 = 4 << 20;
/// Most ports one instance may ask for.
pub const PORTS_MAX: u32 = 32;
/// Longest service name (a DNS label).
pub const NAME_BYTES_MAX: usize = 63;
/// Most argv elements.
pub const CMD_ARGS_MAX: usize = 4096;
/// Most bytes of all argv elements (or the shell string) together.
pub const CMD_BYTES_MAX: usize = 64 * 1024;
/// Most environment variables.
pub const ENV_VARS_MAX: usize = 1024;
/// Longest environment variable name.
pub const ENV_NAME_BYTES_MAX: usize = 256;
/// Most bytes of all environment values together.
pub const ENV_BYTES_MAX: usize = 256 * 1024;
/// Longest health-check http path.
pub const HEALTH_PATH_BYTES_MAX: usize = 2048;
/// Longest `spread_by` attribute name.
pub const ATTRIBUTE_NAME_BYTES_MAX: usize = 128;
/// Allowed health-check interval.
pub const HEALTH_INTERVAL_MIN: Duration = Duration::from_secs(1);
pub const HEALTH_INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// Allowed health-check timeout (and at most the interval).
pub const HEALTH_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// Longest health-check grace period.
pub const HEALTH_GRACE_MAX: Duration = Duration::from_secs(3600);
/// Allowed consecutive failures before an instance is unhealthy.
pub const HEALTH_MAX_FAILURES_MAX: u32 = 100;
/// Longest kill grace period.
pub const KILL_GRACE_MAX: Duration = Duration::from_secs(3600);

/// Default health-check interval.
pub const HEALTH_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);
/// Default health-check timeout (lowered to the interval when the interval is shorter).
pub const HEALTH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default health-check grace period.
pub const HEALTH_GRACE_DEFAULT: Duration = Duration::from_secs(30);
/// Default consecutive failures before an instance is unhealthy.
pub const HEALTH_MAX_FAILURES_DEFAULT: u32 = 3;
/// Default rolling-upgrade surge.
pub const MAX_SURGE_DEFAULT: u32 = 1;
/// Default rolling-upgrade unavailability.
pub const MAX_UNAVAILABLE_DEFAULT: u32 = 0;

/// The text format of a spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Toml,
    Json,
    Yaml,
}

impl Format {
    /// The format a file name's extension says: `.toml`, `.json`, `.yaml`/`.yml`.
    pub fn from_path(path: impl AsRef<std::path::Path>) -> Result<Format, SpecError> {
        let path = path.as_ref();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("toml") => Ok(Format::Toml),
            Some("json") => Ok(Format::Json),
            Some("yaml" | "yml") => Ok(Format::Yaml),
            _ => Err(SpecError::UnknownFormat {
                path: path.display().to_string(),
            }),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Toml => "TOML",
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        })
    }
}

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The text does not parse, a field has the wrong type, or a field is unknown; the message
    /// from the parser names the field (and for TOML the line).
    #[error("invalid {format} spec: {message}")]
    Syntax { format: Format, message: String },
    /// A field parsed but its value is not allowed.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(
        "{path}: cannot tell the spec format from the extension (expected .toml, .json, .yaml or .yml)"
    )]
    UnknownFormat { path: String },
}

impl SpecError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
        SpecError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The field a validation error names (`None` for syntax errors, whose message names it).
    pub fn field(&self) -> Option<&str> {
        match self {
            SpecError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// What an instance runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cmd {
    /// argv; `$NAME`/`${NAME}` in an element are expanded from the task env (see the module doc).
    Argv(Vec<String>),
    /// One string run under `sh -c`.
    Shell(String),
}

impl Cmd {
    /// The SDK command the agent runs: the argv itself when no element has a `$` reference, else
    /// `sh -c 'exec …'` quoting every literal part, so the words stay exactly the argv's.
    pub fn to_command(&self) -> Command {
        match self {
            Cmd::Shell(script) => Command::Shell(script.clone()),
            Cmd::Argv(argv) => {
                let words: Vec<Vec<Piece>> = argv
                    .iter()
                    .map(|arg| pieces(arg).unwrap_or_else(|_| vec![Piece::Literal(arg.clone())]))
                    .collect();
                if words
                    .iter()
                    .all(|w| w.iter().all(|p| matches!(p, Piece::Literal(_))))
                    && !argv.iter().any(|a| a.contains("$$"))
                {
                    return Command::Argv(argv.clone());
                }
                let mut script = String::from("exec");
                for word in &words {
                    script.push(' ');
                    if word.is_empty() {
                        script.push_str("''");
                    }
                    for piece in word {
                        match piece {
                            Piece::Literal(text) => {
                                script.push('\'');
                                script.push_str(&text.replace('\'', r"'\''"));
                                script.push('\'');
                            }
                            Piece::Var(name) => {
                                script.push_str("\"${");
                                script.push_str(name);
                                script.push_str("}\"");
                            }
                        }
                    }
                }
                Command::Shell(script)
            }
        }
    }

    /// The command as one line for people (argv joined by spaces).
    pub fn display(&self) -> String {
        match self {
            Cmd::Argv(argv) => argv.join(" "),
            Cmd::Shell(script) => script.clone(),
        }
    }
}

/// A part of one argv element: literal text or a variable reference.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Var(String),
}

/// Splits an argv element into literal text and `$NAME`/`${NAME}` references (`$$` is a `$`).
fn pieces(arg: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut chars = arg.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            literal.push(c);
            continue;
        }
        match chars.peek().map(|&(_, c)| c) {
            Some('$') => {
                chars.next();
                literal.push('$');
            }
            Some('{') => {
                chars.next();
                let mut name = String::new();
                let mut closed = false;
                for (_, c) in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    name.push(c);
                }
                if !closed {
                    return Err("\"${\" without a closing \"}\"".to_string());
                }
                if !is_env_name(&name) {
                    return Err(format!(
                        "\"${{{name}}}\" does not name a variable ([A-Za-z_][A-Za-z0-9_]*)"
                    ));
                }
                if !literal.is_empty() {
                    out.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                out.push(Piece::Var(name));
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                let mut name = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c == '_' || c.is_ascii_alphanumeric() {
                        name.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if !literal.is_empty() {
                    out.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                out.push(Piece::Var(name));
            }
            _ => literal.push('$'),
        }
    }
    if !literal.is_empty() {
        out.push(Piece::Literal(literal));
    }
    Ok(out)
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

/// How the framework checks an instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HealthKind {
    /// `GET path` on the instance's host and port must answer 2xx or 3xx within the timeout.
    Http { path: String },
    /// A TCP connect to the instance's host and port must succeed within the timeout.
    Tcp,
    /// The command, run by the framework (not on the agent) with `HOST`, `PORT` (the checked
    /// port) and `PORT0..` of the instance in its env, must exit 0 within the timeout.
    Cmd(Cmd),
}

/// A health check, with its defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: HealthKind,
    /// Which of the instance's ports (`PORTn`) http and tcp checks use; `< ports`.
    pub port_index: u32,
    pub interval: Duration,
    /// Invariant: `HEALTH_TIMEOUT_MIN <= timeout <= interval`.
    pub timeout: Duration,
    /// Failures within this long after the instance started running do not count.
    pub grace: Duration,
    /// Consecutive failures that make a healthy (or never-healthy, past grace) instance unhealthy.
    pub max_failures: u32,
}

/// Rolling-upgrade bounds. Invariant: not both 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Upgrade {
    /// Instances above `instances` that may run during an upgrade.
    pub max_surge: u32,
    /// Instances below `instances` that may be not healthy during an upgrade.
    pub max_unavailable: u32,
}

impl Default for Upgrade {
    fn default() -> Upgrade {
        Upgrade {
            max_surge: MAX_SURGE_DEFAULT,
            max_unavailable: MAX_UNAVAILABLE_DEFAULT,
        }
    }
}

/// A validated service spec. Build it with [`parse`] or [`ServiceSpec::from_json`]; every field
/// keeps the invariants documented at its limit constants.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    /// A DNS label: 1..=63 of `[a-z0-9-]`, no leading or trailing `-`.
    pub name: String,
    pub cmd: Cmd,
    /// 0..=INSTANCES_MAX.
    pub instances: u32,
    /// > 0 (at least 0.001), <= CPUS_MAX.
    pub cpus: f64,
    /// MEM_BYTES_MIN..=MEM_BYTES_MAX.
    pub mem_bytes: u64,
    /// 0..=PORTS_MAX.
    pub ports: u32,
    pub env: BTreeMap<String, String>,
    pub health: Option<HealthCheck>,
    pub placement: Placement,
    pub upgrade: Upgrade,
    /// SIGTERM → SIGKILL when an instance is killed; `None`: the agent's default.
    pub kill_grace: Option<Duration>,
}

impl ServiceSpec {
    /// The stored form: JSON that [`ServiceSpec::from_json`] and [`parse`] read back to an equal
    /// spec.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_raw()).expect("a spec always serializes")
    }

    /// Reads (and validates) the stored form.
    pub fn from_json(json: &str) -> Result<ServiceSpec, SpecError> {
        parse(json, Format::Json)
    }

    /// A 16-hex-digit hash of everything but `instances` (stable across builds: FNV-1a 64 of the
    /// canonical JSON). Instances of an older version are rolled to the new one.
    pub fn version(&self) -> String {
        let mut raw = self.to_raw();
        raw.instances = None;
        let canonical = serde_json::to_vec(&raw).expect("a spec always serializes");
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in canonical {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{hash:016x}")
    }

    /// What one instance asks of an offer.
    pub fn task_request(&self) -> TaskRequest {
        TaskRequest::new(self.cpus, self.mem_bytes, self.ports)
            .expect("validated cpus are at least one millicpu")
    }

    fn to_raw(&self) -> RawSpec {
        RawSpec {
            name: Some(self.name.clone()),
            cmd: Some(raw_cmd(&self.cmd)),
            instances: Some(i64::from(self.instances)),
            cpus: Some(self.cpus),
            mem: Some(RawMem::Text(format_mem(self.mem_bytes))),
            ports: Some(i64::from(self.ports)),
            env: self.env.clone(),
            health: self.health.as_ref().map(|h| RawHealth {
                http: match &h.kind {
                    HealthKind::Http { path } => Some(path.clone()),
                    _ => None,
                },
                tcp: matches!(h.kind, HealthKind::Tcp).then_some(true),
                cmd: match &h.kind {
                    HealthKind::Cmd(cmd) => Some(raw_cmd(cmd)),
                    _ => None,
                },
                port_index: Some(i64::from(h.port_index)),
                interval: Some(RawDuration::Text(format_duration(h.interval))),
                timeout: Some(RawDuration::Text(format_duration(h.timeout))),
                grace: Some(RawDuration::Text(format_duration(h.grace))),
                max_failures: Some(i64::from(h.max_failures)),
            }),
            placement: Some(RawPlacement {
                strategy: Some(self.placement.strategy),
                max_per_host: self.placement.max_per_host.map(i64::from),
                spread_by: self.placement.spread_by.clone(),
            }),
            upgrade: Some(RawUpgrade {
                max_surge: Some(i64::from(self.upgrade.max_surge)),
                max_unavailable: Some(i64::from(self.upgrade.max_unavailable)),
            }),
            kill_grace: self
                .kill_grace
                .map(|d| RawDuration::Text(format_duration(d))),
        }
    }
}

fn raw_cmd(cmd: &Cmd) -> RawCmd {
    match cmd {
        Cmd::Argv(argv) => RawCmd::Argv(argv.clone()),
        Cmd::Shell(script) => RawCmd::Shell(script.clone()),
    }
}

/// Parses and validates a spec.
pub fn parse(text: &str, format: Format) -> Result<ServiceSpec, SpecError> {
    let syntax = |message: String| SpecError::Syntax { format, message };
    let raw: RawSpec = match format {
        Format::Toml => {
            toml::from_str(text).map_err(|e| syntax(e.to_string().trim().to_string()))?
        }
        Format::Json => serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?,
        Format::Yaml => serde_yaml_ng::from_str(text).map_err(|e| syntax(e.to_string()))?,
    };
    validate(raw)
}

/// Reads, parses and validates a spec file, choosing the format by its extension.
pub fn parse_file(path: impl AsRef<std::path::Path>) -> Result<ServiceSpec, SpecError> {
    let path = path.as_ref();
    let format = Format::from_path(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| SpecError::Syntax {
        format,
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    parse(&text, format)
}

// ---- the raw shape: what the text may say ----

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cmd: Option<RawCmd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instances: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mem: Option<RawMem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ports: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health: Option<RawHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    placement: Option<RawPlacement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upgrade: Option<RawUpgrade>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kill_grace: Option<RawDuration>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "an argv array of strings or one shell command string"
)]
enum RawCmd {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a size such as \"64MiB\" or \"1GiB\", or a number of bytes"
)]
enum RawMem {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a duration such as \"5s\", \"500ms\" or \"2m\", or seconds"
)]
enum RawDuration {
    Seconds(i64),
    Text(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cmd: Option<RawCmd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port_index: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<RawDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout: Option<RawDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grace: Option<RawDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_failures: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy: Option<Strategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_per_host: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spread_by: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpgrade {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_surge: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_unavailable: Option<i64>,
}

// ---- validation ----

fn validate(raw: RawSpec) -> Result<ServiceSpec, SpecError> {
    let name = validate_name(raw.name)?;
    let cmd = validate_cmd("cmd", raw.cmd)?;
    let instances = match raw.instances {
        None => {
            return Err(SpecError::invalid(
                "instances",
                format!("required (0..={INSTANCES_MAX}; 0 keeps the service stopped)"),
            ));
        }
        Some(n) => in_range("instances", n, 0, i64::from(INSTANCES_MAX))?,
    };
    let cpus = validate_cpus(raw.cpus)?;
    let mem_bytes = validate_mem(raw.mem)?;
    let ports = match raw.ports {
        None => 0,
        Some(n) => in_range("ports", n, 0, i64::from(PORTS_MAX))?,
    };
    let env = validate_env(raw.env)?;
    let health = match raw.health {
        None => None,
        Some(health) => Some(validate_health(health, ports)?),
    };
    let placement = validate_placement(raw.placement.unwrap_or_default())?;
    let upgrade = validate_upgrade(raw.upgrade.unwrap_or_default())?;
    let kill_grace = match raw.kill_grace {
        None => None,
        Some(d) => Some(duration_in(
            "kill_grace",
            d,
            Duration::ZERO,
            KILL_GRACE_MAX,
        )?),
    };
    Ok(ServiceSpec {
        name,
        cmd,
        instances,
        cpus,
        mem_bytes,
        ports,
        env,
        health,
        placement,
        upgrade,
        kill_grace,
    })
}

fn in_range(field: &str, value: i64, min: i64, max: i64) -> Result<u32, SpecError> {
    if value < min || value > max {
        return Err(SpecError::invalid(
            field,
            format!("{value} is out of range ({min}..={max})"),
        ));
    }
    u32::try_from(value).map_err(|_| SpecError::invalid(field, format!("{value} is out of range")))
}

fn validate_name(name: Option<String>) -> Result<String, SpecError> {
    const RULE: &str =
        "a DNS label: 1..=63 characters of a-z, 0-9 and '-', not starting or ending with '-'";
    let Some(name) = name else {
        return Err(SpecError::invalid("name", format!("required ({RULE})")));
    };
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(name)
    } else {
        Err(SpecError::invalid(
            "name",
            format!("{name:?} is not {RULE}"),
        ))
    }
}

fn validate_cmd(field: &str, cmd: Option<RawCmd>) -> Result<Cmd, SpecError> {
    match cmd {
        None => Err(SpecError::invalid(
            field,
            "required (an argv array such as [\"python3\", \"-m\", \"http.server\", \"$PORT0\"], or one shell string)",
        )),
        Some(RawCmd::Shell(script)) => {
            if script.trim().is_empty() {
                return Err(SpecError::invalid(field, "the shell command is empty"));
            }
            if script.contains('\0') {
                return Err(SpecError::invalid(field, "contains a NUL byte"));
            }
            if script.len() > CMD_BYTES_MAX {
                return Err(SpecError::invalid(
                    field,
                    format!("{} bytes; at most {CMD_BYTES_MAX}", script.len()),
                ));
            }
            Ok(Cmd::Shell(script))
        }
        Some(RawCmd::Argv(argv)) => {
            match argv.first() {
                None => return Err(SpecError::invalid(field, "the argv is empty")),
                Some(program) if program.trim().is_empty() => {
                    return Err(SpecError::invalid(
                        format!("{field}[0]"),
                        "the program is empty",
                    ));
                }
                Some(program) if program.starts_with('-') => {
                    return Err(SpecError::invalid(
                        format!("{field}[0]"),
                        format!("{program:?}: a program name cannot start with '-'"),
                    ));
                }
                Some(_) => {}
            }
            if argv.len() > CMD_ARGS_MAX {
                return Err(SpecError::invalid(
                    field,
                    format!("{} elements; at most {CMD_ARGS_MAX}", argv.len()),
                ));
            }
            let bytes: usize = argv.iter().map(String::len).sum();
            if bytes > CMD_BYTES_MAX {
                return Err(SpecError::invalid(
                    field,
                    format!("{bytes} bytes; at most {CMD_BYTES_MAX}"),
                ));
            }
            for (i, arg) in argv.iter().enumerate() {
                if arg.contains('\0') {
                    return Err(SpecError::invalid(
                        format!("{field}[{i}]"),
                        "contains a NUL byte",
                    ));
                }
                pieces(arg)
                    .map_err(|reason| SpecError::invalid(format!("{field}[{i}]"), reason))?;
            }
            Ok(Cmd::Argv(argv))
        }
    }
}

fn validate_cpus(cpus: Option<f64>) -> Result<f64, SpecError> {
    let rule = format!("more than 0 (at least 0.001) and at most {CPUS_MAX}");
    let Some(cpus) = cpus else {
        return Err(SpecError::invalid("cpus", format!("required ({rule})")));
    };
    if !cpus.is_finite() || !(0.0005..=CPUS_MAX).contains(&cpus) {
        return Err(SpecError::invalid(
            "cpus",
            format!("{cpus} is out of range ({rule})"),
        ));
    }
    Ok(cpus)
}

fn validate_mem(mem: Option<RawMem>) -> Result<u64, SpecError> {
    let rule = format!(
        "{}..={}, e.g. \"64MiB\", \"1GiB\" or a number of bytes",
        format_mem(MEM_BYTES_MIN),
        format_mem(MEM_BYTES_MAX)
    );
    let bytes = match mem {
        None => return Err(SpecError::invalid("mem", format!("required ({rule})"))),
        Some(RawMem::Bytes(n)) => u64::try_from(n)
            .map_err(|_| SpecError::invalid("mem", format!("{n} is out of range ({rule})")))?,
        Some(RawMem::Text(text)) => drover_sdk::units::parse_mem(&text)
            .map_err(|e| SpecError::invalid("mem", format!("{e} ({rule})")))?,
    };
    if !(MEM_BYTES_MIN..=MEM_BYTES_MAX).contains(&bytes) {
        return Err(SpecError::invalid(
            "mem",
            format!("{bytes} bytes is out of range ({rule})"),
        ));
    }
    Ok(bytes)
}

fn validate_env(env: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, SpecError> {
    if env.len() > ENV_VARS_MAX {
        return Err(SpecError::invalid(
            "env",
            format!("{} variables; at most {ENV_VARS_MAX}", env.len()),
        ));
    }
    let mut bytes = 0;
    for (key, value) in &env {
        if !is_env_name(key) || key.len() > ENV_NAME_BYTES_MAX {
            return Err(SpecError::invalid(
                format!("env.{key}"),
                format!(
                    "{key:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most {ENV_NAME_BYTES_MAX} bytes)"
                ),
            ));
        }
        let port_var = key
            .strip_prefix("PORT")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if port_var || key == "DROVER_TASK_ID" || key == "DROVER_AGENT_ID" {
            return Err(SpecError::invalid(
                format!("env.{key}"),
                "reserved: the agent sets PORT0.., DROVER_TASK_ID and DROVER_AGENT_ID",
            ));
        }
        if value.contains('\0') {
            return Err(SpecError::invalid(
                format!("env.{key}"),
                "the value contains a NUL byte",
            ));
        }
        bytes += key.len() + value.len();
    }
    if bytes > ENV_BYTES_MAX {
        return Err(SpecError::invalid(
            "env",
            format!("{bytes} bytes; at most {ENV_BYTES_MAX}"),
        ));
    }
    Ok(env)
}

fn validate_health(raw: RawHealth, ports: u32) -> Result<HealthCheck, SpecError> {
    let one_of = "exactly one of http = \"/path\", tcp = true or cmd = [...]";
    let tcp = raw.tcp.unwrap_or(false);
    let given = usize::from(raw.http.is_some()) + usize::from(tcp) + usize::from(raw.cmd.is_some());
    if given != 1 {
        return Err(SpecError::invalid(
            "health",
            format!("{one_of} (got {given})"),
        ));
    }
    let kind = if let Some(path) = raw.http {
        if !path.starts_with('/') {
            return Err(SpecError::invalid(
                "health.http",
                format!("{path:?} is not a path starting with '/'"),
            ));
        }
        if path.len() > HEALTH_PATH_BYTES_MAX
            || path.bytes().any(|b| b.is_ascii_control() || b == b' ')
        {
            return Err(SpecError::invalid(
                "health.http",
                format!(
                    "{path:?} is not a URL path (no spaces or control characters, at most {HEALTH_PATH_BYTES_MAX} bytes)"
                ),
            ));
        }
        HealthKind::Http { path }
    } else if tcp {
        HealthKind::Tcp
    } else {
        HealthKind::Cmd(validate_cmd("health.cmd", raw.cmd)?)
    };
    let port_index = match raw.port_index {
        None => 0,
        Some(n) => in_range("health.port_index", n, 0, i64::from(PORTS_MAX) - 1)?,
    };
    if !matches!(kind, HealthKind::Cmd(_)) && port_index >= ports {
        return Err(SpecError::invalid(
            "health.port_index",
            format!(
                "{port_index} needs ports >= {} (http and tcp checks use PORT{port_index}; the spec has ports = {ports})",
                port_index + 1
            ),
        ));
    }
    let interval = match raw.interval {
        None => HEALTH_INTERVAL_DEFAULT,
        Some(d) => duration_in(
            "health.interval",
            d,
            HEALTH_INTERVAL_MIN,
            HEALTH_INTERVAL_MAX,
        )?,
    };
    let timeout = match raw.timeout {
        None => HEALTH_TIMEOUT_DEFAULT.min(interval),
        Some(d) => {
            duration_in("health.timeout", d, HEALTH_TIMEOUT_MIN, interval).map_err(|e| match e {
                SpecError::Invalid { field, reason } => SpecError::Invalid {
                    field,
                    reason: format!("{reason}; the timeout must not exceed health.interval"),
                },
                other => other,
            })?
        }
    };
    let grace = match raw.grace {
        None => HEALTH_GRACE_DEFAULT,
        Some(d) => duration_in("health.grace", d, Duration::ZERO, HEALTH_GRACE_MAX)?,
    };
    let max_failures = match raw.max_failures {
        None => HEALTH_MAX_FAILURES_DEFAULT,
        Some(n) => in_range(
            "health.max_failures",
            n,
            1,
            i64::from(HEALTH_MAX_FAILURES_MAX),
        )?,
    };
    Ok(HealthCheck {
        kind,
        port_index,
        interval,
        timeout,
        grace,
        max_failures,
    })
}

fn validate_placement(raw: RawPlacement) -> Result<Placement, SpecError> {
    let max_per_host = match raw.max_per_host {
        None => None,
        Some(n) => Some(in_range(
            "placement.max_per_host",
            n,
            1,
            i64::from(INSTANCES_MAX),
        )?),
    };
    if let Some(name) = &raw.spread_by {
        let ok = !name.is_empty()
            && name.len() <= ATTRIBUTE_NAME_BYTES_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
        if !ok {
            return Err(SpecError::invalid(
                "placement.spread_by",
                format!(
                    "{name:?} is not an attribute name (1..={ATTRIBUTE_NAME_BYTES_MAX} of A-Z a-z 0-9 _ - . /)"
                ),
            ));
        }
    }
    Ok(Placement {
        strategy: raw.strategy.unwrap_or_default(),
        max_per_host,
        spread_by: raw.spread_by,
    })
}

fn validate_upgrade(raw: RawUpgrade) -> Result<Upgrade, SpecError> {
    let max_surge = match raw.max_surge {
        None => MAX_SURGE_DEFAULT,
        Some(n) => in_range("upgrade.max_surge", n, 0, i64::from(INSTANCES_MAX))?,
    };
    let max_unavailable = match raw.max_unavailable {
        None => MAX_UNAVAILABLE_DEFAULT,
        Some(n) => in_range("upgrade.max_unavailable", n, 0, i64::from(INSTANCES_MAX))?,
    };
    if max_surge == 0 && max_unavailable == 0 {
        return Err(SpecError::invalid(
            "upgrade",
            "max_surge and max_unavailable are both 0: an upgrade could never make progress",
        ));
    }
    Ok(Upgrade {
        max_surge,
        max_unavailable,
    })
}

fn duration_in(
    field: &str,
    raw: RawDuration,
    min: Duration,
    max: Duration,
) -> Result<Duration, SpecError> {
    let rule = format!("{}..={}", format_duration(min), format_duration(max));
    let value = match raw {
        // The one duration grammar takes a bare number only for 0 (seconds or milliseconds?);
        // a TOML/JSON integer is a bare number too.
        RawDuration::Seconds(0) => Duration::ZERO,
        RawDuration::Seconds(n) => {
            return Err(SpecError::invalid(
                field,
                format!("{n} has no unit; write a duration like \"{n}s\" ({rule})"),
            ));
        }
        RawDuration::Text(text) => parse_duration(&text)
            .map_err(|reason| SpecError::invalid(field, format!("{reason} ({rule})")))?,
    };
    if value < min || value > max {
        return Err(SpecError::invalid(
            field,
            format!("{} is out of range ({rule})", format_duration(value)),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"
name = "web"
cmd = ["python3", "-m", "http.server", "$PORT0"]
instances = 4
cpus = 0.25
mem = "64MiB"
ports = 1
env = { GREETING = "hi" }
[health]
http = "/"
[placement]
max_per_host = 1
[upgrade]
max_surge = 1
max_unavailable = 0
"#;

    fn web() -> ServiceSpec {
        parse(WEB, Format::Toml).expect("the example spec is valid")
    }

    /// Replaces (or with `None` removes) one top-level TOML line of WEB starting with `key =`.
    fn with(key: &str, line: Option<&str>) -> String {
        let mut out = String::new();
        let mut replaced = false;
        for l in WEB.lines() {
            if l.starts_with(&format!("{key} =")) && !replaced {
                replaced = true;
                if let Some(line) = line {
                    out.push_str(line);
                    out.push('\n');
                }
            } else {
                out.push_str(l);
                out.push('\n');
            }
        }
        assert!(replaced, "WEB has a {key} line");
        out
    }

    /// Asserts that `text` is refused with an error naming `field` (in the field or message).
    #[track_caller]
    fn refused(text: &str, field: &str) -> SpecError {
        let err = parse(text, Format::Toml).expect_err("the spec must be refused");
        let named =
            err.field().is_some_and(|f| f.contains(field)) || err.to_string().contains(field);
        assert!(named, "error {err} does not name {field}");
        err
    }

    #[test]
    fn the_design_example_parses_with_defaults() {
        let spec = web();
        assert_eq!(spec.name, "web");
        assert_eq!(
            spec.cmd,
            Cmd::Argv(vec![
                "python3".into(),
                "-m".into(),
                "http.server".into(),
                "$PORT0".into()
            ])
        );
        assert_eq!(spec.instances, 4);
        assert_eq!(spec.cpus, 0.25);
        assert_eq!(spec.mem_bytes, 64 << 20);
        assert_eq!(spec.ports, 1);
        assert_eq!(spec.env["GREETING"], "hi");
        let health = spec.health.expect("health given");
        assert_eq!(health.kind, HealthKind::Http { path: "/".into() });
        assert_eq!(health.interval, HEALTH_INTERVAL_DEFAULT);
        assert_eq!(health.timeout, HEALTH_TIMEOUT_DEFAULT);
        assert_eq!(health.grace, HEALTH_GRACE_DEFAULT);
        assert_eq!(health.max_failures, HEALTH_MAX_FAILURES_DEFAULT);
        assert_eq!(spec.placement.max_per_host, Some(1));
        assert_eq!(
            spec.upgrade,
            Upgrade {
                max_surge: 1,
                max_unavailable: 0
            }
        );
        assert_eq!(spec.kill_grace, None);
    }

    #[test]
    fn the_shipped_web_toml_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/web.toml");
        let spec = parse_file(path).expect("web.toml is valid");
        assert_eq!(spec.name, "web");
        assert_eq!(spec.instances, 2);
        assert_eq!(spec.ports, 1);
        assert_eq!(spec.mem_bytes, 32 << 20);
    }

    #[test]
    fn json_round_trip_gives_an_equal_spec_and_version() {
        let spec = web();
        let json = spec.to_json();
        let back = ServiceSpec::from_json(&json).expect("stored form reads back");
        assert_eq!(back, spec);
        assert_eq!(back.version(), spec.version());
        // And the stored form is stable.
        assert_eq!(back.to_json(), json);
    }

    #[test]
    fn round_trips_keep_every_kind_of_field() {
        let text = r#"
name = "all-fields"
cmd = "echo hi && sleep 100"
instances = 0
cpus = 1
mem = 4194305
ports = 3
kill_grace = "1500ms"
[health]
cmd = ["curl", "-f", "http://$HOST:$PORT/"]
interval = "2s"
timeout = "1s"
grace = "0s"
max_failures = 5
[placement]
spread_by = "rack"
max_per_host = 2
strategy = "bin_pack"
[upgrade]
max_surge = 0
max_unavailable = 2
"#;
        let spec = parse(text, Format::Toml).expect("valid");
        assert_eq!(spec.cmd, Cmd::Shell("echo hi && sleep 100".into()));
        assert_eq!(spec.mem_bytes, 4194305);
        assert_eq!(spec.kill_grace, Some(Duration::from_millis(1500)));
        assert_eq!(spec.placement.strategy, Strategy::BinPack);
        let back = ServiceSpec::from_json(&spec.to_json()).expect("reads back");
        assert_eq!(back, spec);
    }

    #[test]
    fn json_and_yaml_parse_to_the_same_spec() {
        let json = r#"{"name": "web", "cmd": ["python3", "-m", "http.server", "$PORT0"],
            "instances": 4, "cpus": 0.25, "mem": "64MiB", "ports": 1, "env": {"GREETING": "hi"},
            "health": {"http": "/"}, "placement": {"max_per_host": 1},
            "upgrade": {"max_surge": 1, "max_unavailable": 0}}"#;
        let yaml = "
name: web
cmd: [python3, -m, http.server, $PORT0]
instances: 4
cpus: 0.25
mem: 64MiB
ports: 1
env:
  GREETING: hi
health:
  http: /
placement:
  max_per_host: 1
upgrade:
  max_surge: 1
  max_unavailable: 0
";
        assert_eq!(parse(json, Format::Json).expect("json"), web());
        assert_eq!(parse(yaml, Format::Yaml).expect("yaml"), web());
    }

    #[test]
    fn a_yaml_syntax_error_names_its_line_and_column() {
        // Proves a YAML spec that does not parse is a Syntax error saying where: its line and
        // column (an unclosed flow sequence on line 2 is noticed on line 3).
        let err =
            parse("name: web\ncmd: [x\ninstances: 1\n", Format::Yaml).expect_err("unclosed [");
        let SpecError::Syntax { format, message } = &err else {
            panic!("not a syntax error: {err:?}");
        };
        assert_eq!(*format, Format::Yaml);
        assert!(message.contains("line 3 column"), "{message}");
    }

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(Format::from_path("a/web.toml"), Ok(Format::Toml));
        assert_eq!(Format::from_path("web.JSON"), Ok(Format::Json));
        assert_eq!(Format::from_path("web.yml"), Ok(Format::Yaml));
        assert_eq!(Format::from_path("web.yaml"), Ok(Format::Yaml));
        assert!(Format::from_path("web.txt").is_err());
        assert!(Format::from_path("web").is_err());
    }

    #[test]
    fn version_ignores_instances_and_nothing_else() {
        let base = web();
        let v = base.version();
        assert_eq!(v.len(), 16);
        let mut scaled = base.clone();
        scaled.instances = 100;
        assert_eq!(scaled.version(), v);
        let mut changes: Vec<ServiceSpec> = Vec::new();
        let mut s = base.clone();
        s.env.insert("NEW".into(), "1".into());
        changes.push(s);
        let mut s = base.clone();
        s.cpus = 0.5;
        changes.push(s);
        let mut s = base.clone();
        s.mem_bytes += 1;
        changes.push(s);
        let mut s = base.clone();
        s.cmd = Cmd::Shell("true".into());
        changes.push(s);
        let mut s = base.clone();
        s.ports = 2;
        changes.push(s);
        let mut s = base.clone();
        s.health = None;
        changes.push(s);
        let mut s = base.clone();
        s.placement.max_per_host = None;
        changes.push(s);
        let mut s = base.clone();
        s.upgrade.max_unavailable = 1;
        changes.push(s);
        let mut s = base.clone();
        s.kill_grace = Some(Duration::from_secs(1));
        changes.push(s);
        for changed in changes {
            assert_ne!(changed.version(), v, "{changed:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_naming_them() {
        let err = refused(&format!("{WEB}\nreplicas = 3\n"), "replicas");
        assert!(matches!(err, SpecError::Syntax { .. }));
        refused(
            &WEB.replace("http = \"/\"", "http = \"/\"\npath = \"/x\""),
            "path",
        );
        refused(
            &WEB.replace("max_per_host = 1", "max_per_hosts = 1"),
            "max_per_hosts",
        );
        refused(&WEB.replace("max_surge = 1", "surge = 1"), "surge");
        let json =
            r#"{"name": "web", "cmd": ["x"], "instances": 1, "cpus": 1, "mem": 1, "foo": 1}"#;
        let err = parse(json, Format::Json).expect_err("unknown field");
        assert!(err.to_string().contains("foo"), "{err}");
        let yaml = "name: web\ncmd: [x]\ninstances: 1\ncpus: 1\nmem: 1\nbar: 1\n";
        let err = parse(yaml, Format::Yaml).expect_err("unknown field");
        assert!(err.to_string().contains("bar"), "{err}");
    }

    #[test]
    fn bad_names_are_refused_naming_name() {
        for bad in [
            "\"\"",
            "\"Web\"",
            "\"-web\"",
            "\"web-\"",
            "\"web_1\"",
            "\"web.1\"",
            "\"wéb\"",
            &format!("\"{}\"", "a".repeat(64)),
            "3",
        ] {
            refused(&with("name", Some(&format!("name = {bad}"))), "name");
        }
        refused(&with("name", None), "name");
        for good in ["a", "web-1", "0web", &"a".repeat(63)] {
            parse(
                &with("name", Some(&format!("name = \"{good}\""))),
                Format::Toml,
            )
            .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn bad_cmds_are_refused_naming_cmd() {
        for bad in [
            "cmd = []",
            "cmd = [\"\"]",
            "cmd = [\" \", \"x\"]",
            "cmd = [\"-x\"]",
            "cmd = \"\"",
            "cmd = \"   \"",
            "cmd = 3",
            "cmd = [1, 2]",
            "cmd = [\"echo\", \"${PORT0\"]",
            "cmd = [\"echo\", \"${0BAD}\"]",
            "cmd = [\"echo\", \"a\\u0000b\"]",
        ] {
            refused(&with("cmd", Some(bad)), "cmd");
        }
        refused(&with("cmd", None), "cmd");
        let long = format!("cmd = [\"{}\"]", "x".repeat(CMD_BYTES_MAX + 1));
        refused(&with("cmd", Some(&long)), "cmd");
    }

    #[test]
    fn bad_instances_are_refused_naming_instances() {
        for bad in ["-1", "10001", "1.5", "\"4\""] {
            refused(
                &with("instances", Some(&format!("instances = {bad}"))),
                "instances",
            );
        }
        let err = refused(&with("instances", None), "instances");
        assert!(err.to_string().contains("0..=10000"), "{err}");
        let err = refused(&with("instances", Some("instances = 20000")), "instances");
        assert_eq!(
            err.to_string(),
            "instances: 20000 is out of range (0..=10000)"
        );
        for good in ["0", "10000"] {
            parse(
                &with("instances", Some(&format!("instances = {good}"))),
                Format::Toml,
            )
            .expect("in range");
        }
    }

    #[test]
    fn bad_cpus_are_refused_naming_cpus() {
        for bad in ["0", "-1", "0.0001", "1024.5", "nan", "inf", "\"1\""] {
            refused(&with("cpus", Some(&format!("cpus = {bad}"))), "cpus");
        }
        refused(&with("cpus", None), "cpus");
        for good in ["0.001", "1", "1024"] {
            parse(&with("cpus", Some(&format!("cpus = {good}"))), Format::Toml).expect("in range");
        }
    }

    #[test]
    fn bad_mem_is_refused_naming_mem() {
        for bad in [
            "0",
            "-5",
            "\"0MiB\"",
            "\"lots\"",
            "\"64 furlongs\"",
            "\"17TiB\"",
            "1.5",
        ] {
            refused(&with("mem", Some(&format!("mem = {bad}"))), "mem");
        }
        refused(&with("mem", None), "mem");
        let spec = parse(&with("mem", Some("mem = \"1GiB\"")), Format::Toml).expect("1GiB");
        assert_eq!(spec.mem_bytes, 1 << 30);
        let spec = parse(&with("mem", Some("mem = 4194304")), Format::Toml).expect("bytes");
        assert_eq!(spec.mem_bytes, 4 << 20);
    }

    #[test]
    fn bad_ports_are_refused_naming_ports() {
        for bad in ["-1", "33", "\"1\""] {
            refused(&with("ports", Some(&format!("ports = {bad}"))), "ports");
        }
        // Removing ports leaves 0, which the http health check on PORT0 cannot use.
        refused(&with("ports", None), "health.port_index");
        let text = with("ports", Some("ports = 32"));
        assert_eq!(parse(&text, Format::Toml).expect("32 ports").ports, 32);
    }

    #[test]
    fn bad_env_is_refused_naming_the_variable() {
        for (bad, field) in [
            ("env = { \"1X\" = \"a\" }", "env.1X"),
            ("env = { \"A-B\" = \"a\" }", "env.A-B"),
            ("env = { \"\" = \"a\" }", "env."),
            ("env = { PORT0 = \"8080\" }", "env.PORT0"),
            ("env = { DROVER_TASK_ID = \"x\" }", "env.DROVER_TASK_ID"),
            ("env = { A = \"x\\u0000y\" }", "env.A"),
            ("env = { A = 1 }", "env"),
        ] {
            refused(&with("env", Some(bad)), field);
        }
        let ok = with(
            "env",
            Some("env = { PORT = \"x\", _A1 = \"\", DROVER_X = \"y\" }"),
        );
        assert_eq!(parse(&ok, Format::Toml).expect("valid names").env.len(), 3);
    }

    #[test]
    fn bad_health_checks_are_refused_naming_the_field() {
        let health =
            |body: &str| WEB.replace("[health]\nhttp = \"/\"", &format!("[health]\n{body}"));
        for (body, field) in [
            ("", "health"),
            ("tcp = false", "health"),
            ("http = \"/\"\ntcp = true", "health"),
            ("http = \"/\"\ncmd = [\"true\"]", "health"),
            ("http = \"health\"", "health.http"),
            ("http = \"\"", "health.http"),
            ("http = \"/a b\"", "health.http"),
            ("cmd = []", "health.cmd"),
            ("cmd = [\"\"]", "health.cmd"),
            ("tcp = true\nport_index = 1", "health.port_index"),
            ("tcp = true\nport_index = -1", "health.port_index"),
            ("http = \"/\"\ninterval = \"0s\"", "health.interval"),
            ("http = \"/\"\ninterval = \"2h\"", "health.interval"),
            ("http = \"/\"\ninterval = \"5 parsecs\"", "health.interval"),
            ("http = \"/\"\ninterval = -1", "health.interval"),
            ("http = \"/\"\ntimeout = \"50ms\"", "health.timeout"),
            (
                "http = \"/\"\ninterval = \"2s\"\ntimeout = \"3s\"",
                "health.timeout",
            ),
            ("http = \"/\"\ngrace = \"2h\"", "health.grace"),
            ("http = \"/\"\ngrace = \"0.5ns\"", "health.grace"),
            ("http = \"/\"\nmax_failures = 0", "health.max_failures"),
            ("http = \"/\"\nmax_failures = 101", "health.max_failures"),
            ("http = \"/\"\nretries = 3", "retries"),
        ] {
            refused(&health(body), field);
        }
        let spec = parse(&health("tcp = true\ninterval = \"2s\""), Format::Toml).expect("valid");
        let check = spec.health.expect("health");
        assert_eq!(check.kind, HealthKind::Tcp);
        // The default timeout shrinks to a short interval.
        assert_eq!(check.timeout, Duration::from_secs(2));
        // A bare integer is refused like a bare number in a string: seconds or milliseconds?
        let err = refused(&health("cmd = \"true\"\ninterval = 30"), "health.interval");
        assert!(
            err.to_string().contains("write a duration like \"30s\""),
            "{err}"
        );
        let spec = parse(
            &health("cmd = \"true\"\ninterval = \"1m30s\""),
            Format::Toml,
        )
        .expect("a compound duration is valid");
        assert_eq!(
            spec.health.expect("health").interval,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn bad_placement_is_refused_naming_the_field() {
        for (body, field) in [
            ("max_per_host = 0", "placement.max_per_host"),
            ("max_per_host = -1", "placement.max_per_host"),
            ("max_per_host = 10001", "placement.max_per_host"),
            ("spread_by = \"\"", "placement.spread_by"),
            ("spread_by = \"a b\"", "placement.spread_by"),
            ("strategy = \"random\"", "strategy"),
        ] {
            refused(&WEB.replace("max_per_host = 1", body), field);
        }
        let both = WEB.replace("max_per_host = 1", "max_per_host = 2\nspread_by = \"rack\"");
        let spec = parse(&both, Format::Toml).expect("max_per_host and spread_by combine");
        assert_eq!(spec.placement.spread_by.as_deref(), Some("rack"));
        assert_eq!(spec.placement.max_per_host, Some(2));
    }

    #[test]
    fn bad_upgrade_is_refused_naming_the_field() {
        let upgrade = |surge: &str, unavailable: &str| {
            WEB.replace("max_surge = 1", surge)
                .replace("max_unavailable = 0", unavailable)
        };
        refused(&upgrade("max_surge = -1", ""), "upgrade.max_surge");
        refused(
            &upgrade("", "max_unavailable = -1"),
            "upgrade.max_unavailable",
        );
        refused(&upgrade("max_surge = 0", "max_unavailable = 0"), "upgrade");
        let spec = parse(
            &upgrade("max_surge = 0", "max_unavailable = 1"),
            Format::Toml,
        )
        .expect("valid");
        assert_eq!(
            spec.upgrade,
            Upgrade {
                max_surge: 0,
                max_unavailable: 1
            }
        );
    }

    #[test]
    fn bad_kill_grace_is_refused() {
        refused(&format!("kill_grace = \"2h\"\n{WEB}"), "kill_grace");
        refused(&format!("kill_grace = \"soon\"\n{WEB}"), "kill_grace");
    }

    #[test]
    fn syntax_errors_say_the_format() {
        let err = parse("name = ", Format::Toml).expect_err("bad toml");
        assert!(err.to_string().starts_with("invalid TOML spec"), "{err}");
        let err = parse("{", Format::Json).expect_err("bad json");
        assert!(err.to_string().starts_with("invalid JSON spec"), "{err}");
    }

    #[test]
    fn argv_without_references_runs_directly() {
        let cmd = Cmd::Argv(vec!["sleep".into(), "60".into(), "a$".into()]);
        assert_eq!(cmd.to_command(), Command::argv(["sleep", "60", "a$"]));
        assert_eq!(
            Cmd::Shell("echo $X".into()).to_command(),
            Command::shell("echo $X")
        );
    }

    #[test]
    fn argv_with_references_becomes_an_exact_shell_exec() {
        let cmd = Cmd::Argv(vec![
            "python3".into(),
            "-m".into(),
            "http.server".into(),
            "$PORT0".into(),
        ]);
        assert_eq!(
            cmd.to_command(),
            Command::shell("exec 'python3' '-m' 'http.server' \"${PORT0}\"")
        );
    }

    /// Runs the generated script under the real `sh` and checks the words the program gets.
    #[test]
    fn expansion_under_sh_gives_exactly_the_argv_words() {
        let argv = vec![
            "printf".to_string(),
            "<%s>\\n".to_string(),
            "--port=$PORT0".to_string(),
            "${GREETING}x".to_string(),
            "it's $$5 * \"q\" `x` $(y) \\n".to_string(),
            String::new(),
            "$UNSET".to_string(),
            "$ alone and $1".to_string(),
        ];
        let Command::Shell(script) = Cmd::Argv(argv).to_command() else {
            panic!("references need the shell");
        };
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("PORT0", "31000")
            .env("GREETING", "hello world *")
            .env_remove("UNSET")
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{script}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "<--port=31000>\n<hello world *x>\n<it's $5 * \"q\" `x` $(y) \\n>\n<>\n<>\n<$ alone and $1>\n"
        );
    }
}
