//! Running one health check ([`Probe`]) from the framework's host: an HTTP GET, a TCP connect or a
//! command, each bounded by the check's timeout.
//!
//! The HTTP check is a minimal HTTP/1.1 client (one request, `Connection: close`, only the status
//! line is read): a 2xx or 3xx status passes. Commands run with `HOST`, `PORT` (the checked port,
//! when there is one), `PORT0..` and `DROVER_TASK_ID` of the instance in their environment and
//! are killed when the timeout passes.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::core::{Probe, ProbeOutcome};
use crate::spec::{Cmd, HealthKind};

/// Most bytes read while looking for the HTTP status line.
const STATUS_LINE_BYTES_MAX: usize = 8 * 1024;

/// Runs the probe: passed, failed (why), or could not be run (why).
pub async fn run_probe(probe: &Probe) -> ProbeOutcome {
    match timeout(probe.timeout, check(probe)).await {
        Ok(Ok(())) => ProbeOutcome::Passed,
        Ok(Err(outcome)) => outcome,
        Err(_) => ProbeOutcome::Failed(format!("no answer within {:?}", probe.timeout)),
    }
}

fn failed(why: String) -> ProbeOutcome {
    ProbeOutcome::Failed(why)
}

async fn check(probe: &Probe) -> Result<(), ProbeOutcome> {
    match &probe.kind {
        HealthKind::Tcp => {
            let port = port_of(probe)?;
            connect(&probe.host, port)
                .await
                .map(drop)
                .map_err(|e| e.within(&format!("tcp {}:{port}", probe.host)))
        }
        HealthKind::Http { path } => http_get(&probe.host, port_of(probe)?, path).await,
        HealthKind::Cmd(cmd) => run_command(cmd, probe).await,
    }
}

fn port_of(probe: &Probe) -> Result<u16, ProbeOutcome> {
    probe
        .port
        .ok_or_else(|| ProbeOutcome::Unchecked("the instance has no port to check".to_string()))
}

impl ProbeOutcome {
    /// The same outcome with `what` in front of the reason.
    fn within(self, what: &str) -> ProbeOutcome {
        match self {
            ProbeOutcome::Failed(why) => ProbeOutcome::Failed(format!("{what}: {why}")),
            ProbeOutcome::Unchecked(why) => ProbeOutcome::Unchecked(format!("{what}: {why}")),
            ProbeOutcome::Passed => ProbeOutcome::Passed,
        }
    }
}

/// Resolves `host` (a host that does not resolve is the framework's problem, not the
/// instance's) and connects.
async fn connect(host: &str, port: u16) -> Result<TcpStream, ProbeOutcome> {
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| {
            ProbeOutcome::Unchecked(format!(
                "cannot resolve the agent host {host:?} ({e}); set --check-host"
            ))
        })?
        .collect();
    TcpStream::connect(&addrs[..])
        .await
        .map_err(|e| failed(e.to_string()))
}

async fn http_get(host: &str, port: u16, path: &str) -> Result<(), ProbeOutcome> {
    let what = format!("GET http://{host}:{port}{path}");
    let fail = |why: String| failed(format!("{what}: {why}"));
    let mut stream = connect(host, port).await.map_err(|e| e.within(&what))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: drover-services\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    let line = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            break String::from_utf8_lossy(&buf[..end]).trim_end().to_string();
        }
        if buf.len() >= STATUS_LINE_BYTES_MAX {
            return Err(fail(format!(
                "no status line in the first {STATUS_LINE_BYTES_MAX} bytes"
            )));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            if buf.is_empty() {
                return Err(fail("the connection closed without an answer".into()));
            }
            break String::from_utf8_lossy(&buf).trim_end().to_string();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let code = parse_status_line(&line).ok_or_else(|| fail(format!("not HTTP: {line:?}")))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(fail(format!("status {code}")))
    }
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

async fn run_command(cmd: &Cmd, probe: &Probe) -> Result<(), ProbeOutcome> {
    let mut command = match cmd.to_command() {
        drover_sdk::Command::Argv(argv) => {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
        drover_sdk::Command::Shell(script) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(script);
            c
        }
    };
    command
        .env("HOST", &probe.host)
        .env("DROVER_TASK_ID", probe.task_id.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(port) = probe.port {
        command.env("PORT", port.to_string());
    }
    for (i, port) in probe.ports.iter().enumerate() {
        command.env(format!("PORT{i}"), port.to_string());
    }
    let child = command
        .spawn()
        .map_err(|e| ProbeOutcome::Unchecked(format!("cannot start {}: {e}", cmd.display())))?;
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| failed(format!("{}: {e}", cmd.display())))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or("").trim();
    Err(failed(match (output.status.code(), last.is_empty()) {
        (Some(code), true) => format!("exit {code}"),
        (Some(code), false) => format!("exit {code}: {last}"),
        (None, _) => format!("{}", output.status),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_sdk::TaskId;
    use std::time::Duration;
    use tokio::net::TcpListener;

    fn probe(kind: HealthKind, port: Option<u16>) -> Probe {
        Probe {
            task_id: TaskId::from("web.0.abcdef"),
            kind,
            host: "127.0.0.1".into(),
            port,
            ports: port.into_iter().collect(),
            timeout: Duration::from_secs(5),
        }
    }

    /// Serves one connection with `answer` and returns the request it read.
    async fn serve_once(answer: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handle = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = socket.read(&mut buf).await.expect("read");
            socket.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        (port, handle)
    }

    #[tokio::test]
    async fn http_passes_on_2xx_and_3xx_and_fails_otherwise() {
        for (answer, ok) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            ("HTTP/1.0 301 Moved\r\n\r\n", true),
            ("HTTP/1.1 500 Oops\r\n\r\n", false),
            ("HTTP/1.1 404 Not Found\r\n\r\n", false),
            ("SSH-2.0-OpenSSH\r\n", false),
        ] {
            let (port, server) = serve_once(answer).await;
            let result = run_probe(&probe(
                HealthKind::Http {
                    path: "/ready".into(),
                },
                Some(port),
            ))
            .await;
            assert_eq!(result == ProbeOutcome::Passed, ok, "{answer:?}: {result:?}");
            if !ok {
                assert!(matches!(result, ProbeOutcome::Failed(_)), "{result:?}");
            }
            let request = server.await.expect("server");
            assert!(request.starts_with("GET /ready HTTP/1.1\r\n"), "{request}");
        }
    }

    #[tokio::test]
    async fn tcp_passes_when_something_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(
            run_probe(&probe(HealthKind::Tcp, Some(port))).await,
            ProbeOutcome::Passed
        );
        drop(listener);
        let err = run_probe(&probe(HealthKind::Tcp, Some(port))).await;
        assert!(
            matches!(err, ProbeOutcome::Failed(_)),
            "nothing listens any more: {err:?}"
        );
        let mut nowhere = probe(HealthKind::Tcp, Some(port));
        nowhere.host = "no-such-host.invalid".into();
        let err = run_probe(&nowhere).await;
        assert!(
            matches!(&err, ProbeOutcome::Unchecked(why) if why.contains("--check-host")),
            "{err:?}"
        );
        let err = run_probe(&probe(HealthKind::Tcp, None)).await;
        assert!(
            matches!(&err, ProbeOutcome::Unchecked(why) if why.contains("no port")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn commands_see_the_instance_env_and_must_exit_zero() {
        let ok = Cmd::Shell(
            "test \"$HOST:$PORT:$PORT0:$DROVER_TASK_ID\" = 127.0.0.1:8080:8080:web.0.abcdef".into(),
        );
        assert_eq!(
            run_probe(&probe(HealthKind::Cmd(ok), Some(8080))).await,
            ProbeOutcome::Passed
        );
        let bad = Cmd::Argv(vec![
            "sh".into(),
            "-c".into(),
            "echo broken >&2; exit 3".into(),
        ]);
        assert_eq!(
            run_probe(&probe(HealthKind::Cmd(bad), Some(8080))).await,
            ProbeOutcome::Failed("exit 3: broken".into())
        );
        let mut slow = probe(
            HealthKind::Cmd(Cmd::Argv(vec!["sleep".into(), "30".into()])),
            None,
        );
        slow.timeout = Duration::from_millis(200);
        let err = run_probe(&slow).await;
        assert!(
            matches!(&err, ProbeOutcome::Failed(why) if why.contains("no answer within")),
            "{err:?}"
        );
        let missing = Cmd::Argv(vec!["/nonexistent/check".into()]);
        let err = run_probe(&probe(HealthKind::Cmd(missing), None)).await;
        assert!(matches!(err, ProbeOutcome::Unchecked(_)), "{err:?}");
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line("HTTP/1.1 204 No Content"), Some(204));
        assert_eq!(parse_status_line("HTTP/1.0 200"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.1 20 x"), None);
        assert_eq!(parse_status_line("FTP 200"), None);
    }
}
