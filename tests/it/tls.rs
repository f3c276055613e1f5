//! TLS on real processes: certificates from `drover tls init`, a master and an agent serving
//! TLS, and every kind of refusal (plaintext, another CA, no certificate, the wrong role), each
//! named in one line and none of them costing the master anything. Then a three-master ensemble
//! whose peer links run over TLS, and an agent's certificate knocking on the peer port.

use crate::util;
use util::tls::{tls_config, tls_init};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::v1;
use drover_security::{Role, TlsConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use util::cluster::TestCluster;
use util::free_port;

const WAIT: Duration = Duration::from_secs(30);

/// `drover --masters ADDR ARGS` with the `--tls-*` flags of certificate `name` in `certs` (the
/// CA only when `name` is empty), and no TLS variables from the environment.
fn drover_as(certs: &Path, name: &str, addr: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(util::drover_bin());
    cmd.env_remove("DROVER_TLS_CA")
        .env_remove("DROVER_TLS_CERT")
        .env_remove("DROVER_TLS_KEY")
        .args(["--masters", addr])
        .arg("--tls-ca")
        .arg(certs.join("ca.pem"));
    if !name.is_empty() {
        cmd.arg("--tls-cert")
            .arg(certs.join(format!("{name}.pem")))
            .arg("--tls-key")
            .arg(certs.join(format!("{name}-key.pem")));
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run drover")
}

/// What the master's coord holds under `/` and `/drover`, read as the operator.
fn coord_listing(certs: &Path, addr: &str) -> String {
    let root = drover_as(certs, "operator", addr, &["coord", "ls", "/"]);
    let drover = drover_as(certs, "operator", addr, &["coord", "ls", "/drover"]);
    assert!(root.status.success(), "{}", util::stderr(&root));
    format!("{}|{}", util::stdout(&root), util::stdout(&drover))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_master_refuses_plaintext_other_cas_missing_and_wrong_certificates() {
    // Proves, on a real master and agent: the agent joins over mutual TLS; the operator's
    // certificate reads gRPC and HTTP; plaintext (gRPC and HTTP/1), another CA's certificate,
    // no certificate and an agent's certificate on the operator, coord and HTTP sides are each
    // refused with a line naming what was wrong; and the master neither exits nor changes its
    // stored data for any of it.
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = tmp.path().join("certs");
    tls_init(&certs, 1);
    let other = tmp.path().join("other");
    tls_init(&other, 1);
    let flags = |name: &str| drover_devcluster::tls::tls_args(&certs, name);
    let http = format!("127.0.0.1:{}", free_port());
    let mut master_flags = flags("master-1");
    master_flags.extend(["--http".to_string(), http.clone()]);
    let master_flags: Vec<&str> = master_flags.iter().map(String::as_str).collect();
    let mut tc =
        TestCluster::start_with_client(&master_flags, Some(tls_config(&certs, "operator")));
    let agent_flags = flags("agent-1");
    let agent_flags: Vec<&str> = agent_flags.iter().map(String::as_str).collect();
    tc.add_agent(
        "agent0",
        util::cluster::AgentSpec {
            cpus: "1",
            mem: "256MiB",
            ports: "31000-31009",
        },
        &agent_flags,
    );
    let addr = tc.addr.clone();
    tc.wait_agents(1).await;
    let operator = tls_config(&certs, "operator");

    // The operator reads both sides.
    let ls = drover_as(
        &certs,
        "operator",
        &addr,
        &["agent", "ls", "--output", "json"],
    );
    assert!(ls.status.success(), "{}", util::stderr(&ls));
    assert!(
        util::stdout(&ls).contains("\"reachable\": true"),
        "{}",
        util::stdout(&ls)
    );
    let (code, body) = util::tls::https_get(&http, "/api/v1/masters", &operator, None).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"role\":\"leading\""), "{body}");
    let before = coord_listing(&certs, &addr);

    // Plaintext gRPC: the client's error says the port requires TLS.
    let plain = util::drover(&addr, &["cluster", "status"]);
    assert!(!plain.status.success());
    assert!(
        util::stderr(&plain).contains("this port requires TLS"),
        "{}",
        util::stderr(&plain)
    );
    // Plaintext HTTP/1: a 400 that says so.
    let mut raw = tokio::net::TcpStream::connect(&http)
        .await
        .expect("connect");
    raw.write_all(b"GET /api/v1/state HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("this port requires TLS"), "{answer}");

    // Another CA: the client does not trust the master, and the master does not trust the
    // client's certificate.
    let theirs = drover_as(&other, "operator", &addr, &["agent", "ls"]);
    assert!(!theirs.status.success());
    assert!(
        util::stderr(&theirs).contains("is --tls-ca (DROVER_TLS_CA) this cluster's CA?"),
        "{}",
        util::stderr(&theirs)
    );
    let mut cmd = Command::new(util::drover_bin());
    let mixed = cmd
        .env_remove("DROVER_TLS_CA")
        .args(["--masters", &addr, "--tls-ca"])
        .arg(certs.join("ca.pem"))
        .arg("--tls-cert")
        .arg(other.join("operator.pem"))
        .arg("--tls-key")
        .arg(other.join("operator-key.pem"))
        .args(["agent", "ls", "--leader-wait-ms", "2000"])
        .output()
        .expect("run");
    assert!(!mixed.status.success());
    assert!(
        util::stderr(&mixed)
            .contains("is --tls-cert (DROVER_TLS_CERT) signed by this cluster's CA?"),
        "{}",
        util::stderr(&mixed)
    );

    // No certificate: unauthenticated, naming what the API needs.
    let anonymous = drover_as(
        &certs,
        "",
        &addr,
        &["agent", "ls", "--leader-wait-ms", "2000"],
    );
    assert!(
        util::stderr(&anonymous).contains(
            "drover.v1.Operator: no client certificate; this API needs a certificate with one of the roles operator, master"
        ),
        "{}",
        util::stderr(&anonymous)
    );
    // An agent's certificate: not an operator, not a coord client.
    let agent_op = drover_as(
        &certs,
        "agent-1",
        &addr,
        &["agent", "ls", "--leader-wait-ms", "2000"],
    );
    assert!(
        util::stderr(&agent_op).contains("certificate agent-1 (role agent) may not call this API"),
        "{}",
        util::stderr(&agent_op)
    );
    let agent_coord = drover_as(&certs, "agent-1", &addr, &["coord", "create", "/evil", "x"]);
    assert!(!agent_coord.status.success());
    assert!(
        util::stderr(&agent_coord).contains("drover.v1.Coord"),
        "{}",
        util::stderr(&agent_coord)
    );
    let (code, body) =
        util::tls::https_get(&http, "/api/v1/state", &tls_config(&certs, "agent-1"), None).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("certificate agent-1 (role agent) may not read this HTTP API"),
        "{body}"
    );
    let ca_only = TlsConfig::load(&certs.join("ca.pem"), None, None).expect("ca");
    let (code, body) = util::tls::https_get(&http, "/metrics", &ca_only, None).await;
    assert_eq!(code, 401, "{body}");

    // coord's x509 ACL scheme names the client certificate: the operator's node is the
    // operator's alone (ACLs are checked before this test's final comparison, so clean up).
    let made = drover_as(
        &certs,
        "operator",
        &addr,
        &[
            "coord",
            "create",
            "/x509-only",
            "mine",
            "--acl",
            "x509:operator:cdrwa",
        ],
    );
    assert!(made.status.success(), "{}", util::stderr(&made));
    let theirs = drover_as(&certs, "framework", &addr, &["coord", "get", "/x509-only"]);
    assert!(!theirs.status.success(), "{}", util::stdout(&theirs));
    assert!(
        util::stderr(&theirs).contains("/x509-only"),
        "{}",
        util::stderr(&theirs)
    );
    let mine = drover_as(&certs, "operator", &addr, &["coord", "get", "/x509-only"]);
    assert_eq!(
        util::stdout(&mine).trim(),
        "mine",
        "{}",
        util::stderr(&mine)
    );
    let removed = drover_as(&certs, "operator", &addr, &["coord", "rm", "/x509-only"]);
    assert!(removed.status.success(), "{}", util::stderr(&removed));

    // Nothing of it cost the master anything.
    assert!(!tc.master_exited(), "the master exited");
    assert_eq!(coord_listing(&certs, &addr), before);
    let log = tc.master_log();
    assert!(
        log.contains("plaintext connection refused: this port requires TLS"),
        "{log}"
    );
    assert!(log.contains("TLS handshake refused"), "{log}");
    util::stop_processes_under(tmp.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_masters_replicate_over_tls_and_an_agent_certificate_cannot_join_the_peer_port() {
    // Proves the peer links run over TLS (a write on one master is read on the others), that
    // `Peer.Endpoint` and the raw peer port refuse an agent's certificate, and that the ensemble
    // goes on serving after the refusal.
    let ensemble = util::Ensemble::start_with(3, &[], true);
    ensemble.wait_stable(WAIT);
    let client_tls = ensemble.client_tls().cloned().expect("tls");
    let certs = ensemble.tls().expect("tls").dir.clone();
    let addrs: Vec<String> = ensemble.ids().map(|id| ensemble.addr(id)).collect();
    let options = |_addr: &str| drover_coord::client::ClientOptions {
        tls: Some(client_tls.clone()),
        ..Default::default()
    };
    let writer = drover_coord::client::Client::connect(vec![addrs[0].clone()], options(&addrs[0]))
        .await
        .expect("connect");
    writer
        .create(
            "/over-tls",
            b"hello".to_vec(),
            drover_coord::op::CreateMode::Persistent,
        )
        .await
        .expect("create");
    for addr in &addrs[1..] {
        let reader = drover_coord::client::Client::connect(vec![addr.clone()], options(addr))
            .await
            .expect("connect");
        reader.sync("/over-tls").await.expect("sync");
        let (data, _) = reader.get("/over-tls").await.expect("replicated");
        assert_eq!(&data[..], b"hello");
        let _ = reader.close().await;
    }

    // Peer.Endpoint over gRPC: an agent is no master.
    let agent = tls_config(&certs, "agent-1");
    let transport = drover_client::Transport {
        tls: Some(agent.clone()),
        ..drover_client::Transport::plaintext(Duration::from_secs(5), Duration::from_secs(5))
    };
    let channel = transport.connect(&addrs[0]).await.expect("TLS connects");
    let denied = v1::peer_client::PeerClient::new(channel)
        .endpoint(v1::PeerEndpointRequest { from: 2 })
        .await
        .expect_err("an agent is no master");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    assert!(
        denied
            .message()
            .contains("certificate agent-1 (role agent)"),
        "{denied}"
    );

    // The raw peer port (asked as a master would): the agent's TLS session is closed before a
    // frame is read.
    let master2 = tls_config(&certs, "master-2");
    let transport = drover_client::Transport {
        tls: Some(master2),
        ..drover_client::Transport::plaintext(Duration::from_secs(5), Duration::from_secs(5))
    };
    let channel = transport.connect(&addrs[0]).await.expect("connect");
    let raw = v1::peer_client::PeerClient::new(channel)
        .endpoint(v1::PeerEndpointRequest { from: 2 })
        .await
        .expect("master-2 may ask")
        .into_inner()
        .addr;
    let config = agent
        .client_config(&[drover_security::ALPN_PEER])
        .expect("config");
    let tcp = tokio::net::TcpStream::connect(&raw).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(Role::Master.server_name()).expect("name");
    let mut link = tokio_rustls::TlsConnector::from(Arc::clone(&config))
        .connect(name, tcp)
        .await
        .expect("handshake (the CA signed it)");
    let mut hello = drover_coord::driver::PEER_HELLO_MAGIC.to_vec();
    hello.extend_from_slice(&2u32.to_le_bytes());
    let _ = link.write_all(&hello).await;
    let _ = link.flush().await;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(WAIT, link.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the link stays open: {closed:?}"
    );
    util::wait_for("the refusal in master 1's log", WAIT, || {
        let log = ensemble.log(1);
        log.contains(
            "peer link refused: certificate agent-1 (role agent) is not a master certificate",
        )
        .then_some(())
    });

    // Still one ensemble, still serving.
    writer
        .set("/over-tls", b"still".to_vec(), None)
        .await
        .expect("writes go on");
    let _ = writer.close().await;
    drop(ensemble);
}

#[test]
fn plaintext_off_loopback_is_refused_before_anything_listens() {
    // Proves secure by default on the real binaries: a master (gRPC and --http) and an agent
    // without TLS refuse a non-loopback address in one line naming the flag and the way out,
    // exit non-zero, and (checked before binding) never listen there. A master also refuses to
    // run on an agent's certificate.
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        Command::new(util::drover_bin())
            .env_remove("DROVER_TLS_CA")
            .env_remove("DROVER_TLS_CERT")
            .env_remove("DROVER_TLS_KEY")
            .env_remove("DROVER_INSECURE")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run drover")
    };
    let data = tmp.path().join("m");
    let data = data.to_str().expect("utf-8");
    let work = tmp.path().join("a");
    let work = work.to_str().expect("utf-8");
    for (args, flag) in [
        (
            vec!["master", "--listen", "0.0.0.0:1", "--data-dir", data],
            "--listen 0.0.0.0:1",
        ),
        (
            vec![
                "master",
                "--listen",
                "127.0.0.1:1",
                "--http",
                "0.0.0.0:1",
                "--data-dir",
                data,
            ],
            "--http 0.0.0.0:1",
        ),
        (
            vec!["agent", "--listen", "0.0.0.0:1", "--work-dir", work],
            "--listen 0.0.0.0:1",
        ),
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} started");
        let err = util::stderr(&out);
        assert!(
            err.contains(&format!("{flag} is not a loopback address and TLS is off"))
                && err.contains("--insecure"),
            "{args:?}: {err}"
        );
    }
    let certs = tmp.path().join("certs");
    tls_init(&certs, 1);
    let ca = certs.join("ca.pem");
    let cert = certs.join("agent-1.pem");
    let key = certs.join("agent-1-key.pem");
    let out = run(&[
        "master",
        "--listen",
        "127.0.0.1:1",
        "--data-dir",
        data,
        "--tls-ca",
        ca.to_str().expect("utf-8"),
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(
        util::stderr(&out)
            .contains("is a certificate agent-1 (role agent), not a master certificate"),
        "{}",
        util::stderr(&out)
    );
}
