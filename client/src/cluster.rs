//! Who leads, asked of one master (`drover.v1.Cluster.Status`, answered by every master about
//! itself, leading or not, so no redirect is followed), and of many at once.

use std::time::Duration;

use drover_proto::v1;
use drover_proto::v1::cluster_client::ClusterClient;

use crate::transport::Transport;

/// What one address answered: its status, or why there was none.
pub type StatusAnswer = (String, Result<v1::MasterStatus, String>);

/// A transport for status questions: `timeout` for the connection and for the call, no
/// keepalive (short-lived), TLS when `tls` is given.
pub fn status_transport(timeout: Duration, tls: Option<drover_security::TlsConfig>) -> Transport {
    Transport {
        tls,
        ..Transport::plaintext(timeout, timeout)
    }
}

/// Asks the master at `addr` (`HOST:PORT`) for its status, within `transport.call_timeout`
/// (the connection included); the error says what failed.
pub async fn ask_status(transport: &Transport, addr: &str) -> Result<v1::MasterStatus, String> {
    let timeout = transport.call_timeout;
    let call = async {
        let channel = transport.connect(addr).await.map_err(|e| e.reason())?;
        ClusterClient::new(channel)
            .status(v1::MasterStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| s.message().to_string())
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
}

/// Asks every address in `addrs` at once; the answers come in `addrs` order.
pub async fn ask_all(transport: &Transport, addrs: &[String]) -> Vec<StatusAnswer> {
    futures::future::join_all(
        addrs
            .iter()
            .map(|a| async move { (a.clone(), ask_status(transport, a).await) }),
    )
    .await
}

/// The role's name as people and JSON see it: `looking`, `following`, `leading`.
pub fn role_name(role: i32) -> &'static str {
    match v1::MasterRole::try_from(role) {
        Ok(v1::MasterRole::Leading) => "leading",
        Ok(v1::MasterRole::Following) => "following",
        Ok(v1::MasterRole::Looking) => "looking",
        _ => "unknown",
    }
}
