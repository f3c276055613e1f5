//! ACL tokens on real processes, with TLS: a master with `--acl`, bootstrapped once by the CLI;
//! calls without a token, with a malformed, unknown, expired or revoked one refused as
//! UNAUTHENTICATED (HTTP 401) naming what was wrong; a valid token lacking a capability, a
//! framework role or a coord grant refused as PERMISSION_DENIED (HTTP 403) naming the token and
//! what it lacks; an open framework stream closed within a second of its token's revocation;
//! and the master running, its stored tokens, policies and coord data unchanged by any refusal.

use crate::util;
use util::tls::{https_get, tls_config};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use drover_proto::v1;
use drover_proto::v1::scheduler_client::SchedulerClient;
use drover_security::Secret;

const WAIT: Duration = Duration::from_secs(30);

/// `drover --masters ADDR ARGS` as the operator certificate, with `token` (or none) and no TLS
/// or token variables from the environment.
fn drover_with(certs: &Path, addr: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(util::drover_bin());
    cmd.env_remove("DROVER_TLS_CA")
        .env_remove("DROVER_TLS_CERT")
        .env_remove("DROVER_TLS_KEY")
        .env_remove("DROVER_TOKEN")
        .args(["--masters", addr, "--tls-ca"])
        .arg(certs.join("ca.pem"))
        .arg("--tls-cert")
        .arg(certs.join("operator.pem"))
        .arg("--tls-key")
        .arg(certs.join("operator-key.pem"));
    if let Some(t) = token {
        cmd.env("DROVER_TOKEN", t);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run drover")
}

/// A scheduler client as the framework certificate, sending `token` (or none).
async fn scheduler(
    certs: &Path,
    addr: &str,
    token: Option<&str>,
) -> SchedulerClient<drover_client::MasterChannel> {
    let transport = drover_client::Transport {
        tls: Some(tls_config(certs, "framework")),
        token: token.map(|t| Secret::parse(t).expect("a secret")),
        ..drover_client::Transport::plaintext(Duration::from_secs(5), Duration::from_secs(5))
    };
    SchedulerClient::new(transport.connect(addr).await.expect("connect"))
}

fn subscribe_request(role: &str) -> v1::SubscribeRequest {
    v1::SubscribeRequest {
        framework: Some(v1::FrameworkInfo {
            name: "acl-test".into(),
            role: role.into(),
            failover_timeout_seconds: 60.0,
            ..Default::default()
        }),
        suppressed: true,
    }
}

/// `drover acl token create` as `manager`; the secret and the accessor.
fn create_token(
    certs: &Path,
    addr: &str,
    manager: &str,
    name: &str,
    extra: &[&str],
) -> (String, String) {
    let mut args = vec!["--output", "json", "acl", "token", "create", "--name", name];
    args.extend(extra);
    let out = drover_with(certs, addr, Some(manager), &args);
    assert!(out.status.success(), "{}", util::stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&util::stdout(&out)).expect("token JSON");
    (
        v["secret"].as_str().expect("secret").to_string(),
        v["accessor"].as_str().expect("accessor").to_string(),
    )
}

/// What refusals must not change: tokens, policies and the coord tree a token can see.
fn stored(certs: &Path, addr: &str, manager: &str) -> String {
    let mut out = String::new();
    for args in [
        &["--output", "json", "acl", "token", "ls"][..],
        &["--output", "json", "acl", "policy", "ls"][..],
        &["coord", "ls", "/"][..],
        &["coord", "ls", "/app"][..],
    ] {
        let o = drover_with(certs, addr, Some(manager), args);
        assert!(o.status.success(), "{args:?}: {}", util::stderr(&o));
        out.push_str(&util::stdout(&o));
    }
    out
}

fn refused(out: &Output, needle: &str) {
    assert!(!out.status.success(), "accepted: {}", util::stdout(out));
    assert!(
        util::stderr(out).contains(needle),
        "expected {needle:?} in: {}",
        util::stderr(out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_checked_and_revoked_on_every_api() {
    // Proves the default-deny rules end to end (see the module doc), on one TLS master.
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = tmp.path().join("certs");
    util::tls::tls_init(&certs, 1);
    let port = util::free_port();
    let addr = format!("127.0.0.1:{port}");
    let http = format!("127.0.0.1:{}", util::free_port());
    let ca = certs.join("ca.pem").display().to_string();
    let cert = certs.join("master-1.pem").display().to_string();
    let key = certs.join("master-1-key.pem").display().to_string();
    let mut master = util::start_master(
        tmp.path(),
        port,
        "master",
        &[
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--http",
            &http,
            "--acl",
        ],
    );

    // Bootstrap once (retrying while the master has not read the store yet); twice fails.
    let boot = util::wait_for("bootstrap", WAIT, || {
        let o = drover_with(
            &certs,
            &addr,
            None,
            &["--output", "json", "acl", "bootstrap"],
        );
        o.status.success().then(|| util::stdout(&o))
    });
    let boot: serde_json::Value = serde_json::from_str(&boot).expect("bootstrap JSON");
    assert_eq!(boot["type"], "management", "{boot}");
    let root = boot["secret"].as_str().expect("secret").to_string();
    refused(
        &drover_with(&certs, &addr, None, &["acl", "bootstrap"]),
        "ACLs are already bootstrapped",
    );
    refused(
        &drover_with(&certs, &addr, Some(&root), &["acl", "bootstrap"]),
        "ACLs are already bootstrapped",
    );

    // A policy for a framework of role "web" that may read /app; a bad one is refused by field.
    let dir = tmp.path();
    std::fs::write(
        dir.join("web.toml"),
        "[framework]\nroles = [\"web\"]\ntask_users = [\"nobody\"]\n\n[[coord]]\nprefix = \"/app\"\naccess = \"read\"\n",
    )
    .expect("write policy");
    std::fs::write(dir.join("bad.toml"), "[framework]\nrole = [\"web\"]\n").expect("write");
    let web = dir.join("web.toml").display().to_string();
    let bad = dir.join("bad.toml").display().to_string();
    let applied = drover_with(
        &certs,
        &addr,
        Some(&root),
        &["acl", "policy", "apply", "web", &web],
    );
    assert!(applied.status.success(), "{}", util::stderr(&applied));
    refused(
        &drover_with(
            &certs,
            &addr,
            Some(&root),
            &["acl", "policy", "apply", "bad", &bad],
        ),
        "policy bad: line 2, column 1: unknown field `role`",
    );
    let created = drover_with(&certs, &addr, Some(&root), &["coord", "create", "/app"]);
    assert!(created.status.success(), "{}", util::stderr(&created));
    let (fw, fw_accessor) = create_token(&certs, &addr, &root, "fw", &["--policy", "web"]);
    let before = stored(&certs, &addr, &root);

    // No token: UNAUTHENTICATED on the operator, coord, scheduler and HTTP sides.
    refused(
        &drover_with(&certs, &addr, None, &["agent", "ls"]),
        "no token: ACLs are on",
    );
    refused(
        &drover_with(&certs, &addr, None, &["coord", "ls", "/"]),
        "no token: ACLs are on",
    );
    let status = scheduler(&certs, &addr, None)
        .await
        .subscribe(subscribe_request("web"))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    assert!(status.message().contains("no token"), "{status}");
    let operator = tls_config(&certs, "operator");
    let (code, body) = https_get(&http, "/api/v1/state", &operator, None).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("no token"), "{body}");
    // Malformed and unknown secrets: UNAUTHENTICATED, each saying which.
    let (code, body) = https_get(&http, "/metrics", &operator, Some("hunter2")).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("malformed token"), "{body}");
    let stranger = Secret::generate();
    refused(
        &drover_with(&certs, &addr, Some(stranger.expose()), &["agent", "ls"]),
        "unknown token",
    );

    // A valid token lacking what the call needs: PERMISSION_DENIED naming token and capability.
    let lacks_state =
        format!("token \"fw\" (accessor {fw_accessor}) lacks operator capability state-read");
    refused(
        &drover_with(&certs, &addr, Some(&fw), &["agent", "ls"]),
        &lacks_state,
    );
    let (code, body) = https_get(&http, "/api/v1/state", &operator, Some(&fw)).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(&lacks_state), "{body}");
    refused(
        &drover_with(&certs, &addr, Some(&fw), &["acl", "token", "ls"]),
        "lacks operator capability acl-manage",
    );
    let status = scheduler(&certs, &addr, Some(&fw))
        .await
        .subscribe(subscribe_request("db"))
        .await
        .expect_err("role not granted");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(
        status.message().contains(&format!(
            "token \"fw\" (accessor {fw_accessor}) lacks framework role \"db\""
        )),
        "{status}"
    );
    // Coord: reads under /app are granted, writes and everything else are not.
    let read = drover_with(&certs, &addr, Some(&fw), &["coord", "ls", "/app"]);
    assert!(read.status.success(), "{}", util::stderr(&read));
    refused(
        &drover_with(&certs, &addr, Some(&fw), &["coord", "create", "/app/x"]),
        "has no coord write grant covering /app/x",
    );
    refused(
        &drover_with(&certs, &addr, Some(&fw), &["coord", "ls", "/"]),
        "has no coord read grant covering /",
    );
    // Not even a management token reaches the masters' own subtree through coord.
    refused(
        &drover_with(
            &certs,
            &addr,
            Some(&root),
            &["coord", "ls", "/drover/acl/tokens"],
        ),
        "has no coord read grant covering /drover/acl/tokens",
    );
    assert!(
        !master.exited(),
        "the master exited:\n{}",
        master.log_text()
    );
    assert_eq!(
        stored(&certs, &addr, &root),
        before,
        "a refusal changed stored data"
    );

    // An expired token: UNAUTHENTICATED, naming the token.
    let (short, _) = create_token(
        &certs,
        &addr,
        &root,
        "short",
        &["--policy", "web", "--ttl", "1s"],
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    refused(
        &drover_with(&certs, &addr, Some(&short), &["coord", "ls", "/app"]),
        "token \"short\"",
    );
    refused(
        &drover_with(&certs, &addr, Some(&short), &["coord", "ls", "/app"]),
        "expired at unix ms",
    );

    // The granted role subscribes; revoking the token closes the open stream within a second
    // with UNAUTHENTICATED, and a new call with it fails.
    let mut client = scheduler(&certs, &addr, Some(&fw)).await;
    let mut stream = util::wait_until("subscribe as web", WAIT, || {
        let mut c = client.clone();
        async move { c.subscribe(subscribe_request("web")).await.ok() }
    })
    .await
    .into_inner();
    let first = stream.message().await.expect("stream").expect("an event");
    assert!(
        matches!(first.event, Some(v1::event::Event::Subscribed(_))),
        "{first:?}"
    );
    let revoked = drover_with(
        &certs,
        &addr,
        Some(&root),
        &["acl", "token", "revoke", &fw_accessor],
    );
    assert!(revoked.status.success(), "{}", util::stderr(&revoked));
    let at = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream was not closed within 1 s of the revocation")
    .expect("the stream ended without a status");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended}");
    assert!(ended.message().contains("was revoked"), "{ended}");
    assert!(at.elapsed() < Duration::from_secs(1));
    let status = client
        .subscribe(subscribe_request("web"))
        .await
        .expect_err("revoked");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    assert!(status.message().contains("unknown token"), "{status}");

    // The audit log has a JSON line for the denial and for the revocation, and no secret.
    let log = master.log_text();
    assert!(
        log.contains("\"action\":\"token-revoke\"") && log.contains("\"outcome\":\"denied\""),
        "{log}"
    );
    for secret in [&root, &fw] {
        assert!(!log.contains(secret.as_str()), "a secret reached the log");
    }
    assert!(
        !master.exited(),
        "the master exited:\n{}",
        master.log_text()
    );
}
