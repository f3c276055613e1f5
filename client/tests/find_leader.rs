//! `find_leader` against real gRPC servers on loopback: fake masters that play the master's side
//! of the contract (lead, or answer `UNAVAILABLE` naming the leader in `drover-leader`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use drover_client::{
    Endpoints, LEADER_METADATA_KEY, LeaderSearch, Outcome, SearchError, SearchLimits, Transport,
    find_leader,
};
use drover_proto::v1;
use drover_proto::v1::operator_client::OperatorClient;
use drover_proto::v1::operator_server::{Operator, OperatorServer};
use tonic::{Request, Response, Status};

/// What a fake master answers `GetState` with.
#[derive(Clone)]
enum Role {
    Leading,
    /// `UNAVAILABLE` naming this address as the leader.
    Following(String),
    /// A refusal no other master would change.
    Refusing,
}

struct Fake {
    role: Role,
    asked: Arc<AtomicU32>,
}

#[tonic::async_trait]
impl Operator for Fake {
    async fn get_state(
        &self,
        _: Request<v1::GetStateRequest>,
    ) -> Result<Response<v1::ClusterState>, Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        match &self.role {
            Role::Leading => Ok(Response::new(v1::ClusterState::default())),
            Role::Following(leader) => {
                let mut status = Status::unavailable("not leading");
                status.metadata_mut().insert(
                    LEADER_METADATA_KEY,
                    leader.parse().expect("an ASCII address"),
                );
                Err(status)
            }
            Role::Refusing => Err(Status::permission_denied("not allowed")),
        }
    }

    async fn get_metrics(
        &self,
        _: Request<v1::GetMetricsRequest>,
    ) -> Result<Response<v1::MasterMetrics>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

/// Starts a fake master; returns its address and how often it was asked.
async fn start(role: Role) -> (String, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    (addr, serve(listener, role))
}

/// Serves a fake master on `listener`; returns how often it was asked.
fn serve(listener: tokio::net::TcpListener, role: Role) -> Arc<AtomicU32> {
    let asked = Arc::new(AtomicU32::new(0));
    let fake = Fake {
        role,
        asked: asked.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(OperatorServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    asked
}

fn transport() -> Transport {
    Transport {
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(2),
        keepalive: None,
        tls: None,
        token: None,
    }
}

fn search(masters: &[&str]) -> LeaderSearch {
    let limits = SearchLimits {
        redirects_max: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
        total_wait: Some(Duration::from_secs(5)),
    };
    LeaderSearch::new(&Endpoints::from_list(masters).expect("valid"), &limits, 1)
}

/// One GetState attempt, as the CLI makes it, mapped to the search's outcome.
async fn get_state(
    channel: drover_client::MasterChannel,
    addr: String,
) -> Outcome<v1::ClusterState, String> {
    match OperatorClient::new(channel)
        .get_state(v1::GetStateRequest {})
        .await
    {
        Ok(response) => Outcome::Done(response.into_inner()),
        Err(status) => match drover_client::redirect(&status, &addr) {
            drover_client::Redirect::To(leader) => Outcome::Redirect(leader),
            _ if status.code() == tonic::Code::Unavailable => {
                Outcome::NotLeading(status.message().to_string())
            }
            _ => Outcome::Stop(status.message().to_string()),
        },
    }
}

#[tokio::test]
async fn a_redirect_to_a_master_not_in_the_list_is_followed() {
    // Proves a follower's UNAVAILABLE + drover-leader is followed at once to the named leader,
    // even one not in the list, and the next search starts there (the follower is not asked).
    let (leader, leader_asked) = start(Role::Leading).await;
    let (follower, follower_asked) = start(Role::Following(leader.clone())).await;
    let mut s = search(&[&follower]);
    find_leader(&mut s, &transport(), get_state)
        .await
        .expect("found");
    assert_eq!(s.leader(), Some(leader.as_str()));
    assert_eq!(follower_asked.load(Ordering::SeqCst), 1);
    assert_eq!(leader_asked.load(Ordering::SeqCst), 1);
    find_leader(&mut s, &transport(), get_state)
        .await
        .expect("found again");
    assert_eq!(
        follower_asked.load(Ordering::SeqCst),
        1,
        "went to the leader first"
    );
    assert_eq!(leader_asked.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_redirect_loop_is_cut_after_redirects_max_and_the_round_goes_on() {
    // Proves two masters naming each other bounce the search at most redirects_max (3) times in
    // a row; then the attempt counts as failed and the next address in the list is tried.
    let (a_listener, b_listener) = (
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
    );
    let (a_addr, b_addr) = (
        a_listener.local_addr().expect("addr").to_string(),
        b_listener.local_addr().expect("addr").to_string(),
    );
    // Free the reserved ports and serve on them, each master naming the other.
    drop((a_listener, b_listener));
    let start_at = |addr: String, role: Role| async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("rebind");
        serve(listener, role)
    };
    let a_asked = start_at(a_addr.clone(), Role::Following(b_addr.clone())).await;
    let b_asked = start_at(b_addr.clone(), Role::Following(a_addr.clone())).await;
    let (leader, leader_asked) = start(Role::Leading).await;
    let mut s = search(&[&a_addr, &leader]);
    find_leader(&mut s, &transport(), get_state)
        .await
        .expect("found");
    // a, then the redirects b, a, b; b's fourth redirect is over the limit, so `leader` is next.
    assert_eq!(a_asked.load(Ordering::SeqCst), 2);
    assert_eq!(b_asked.load(Ordering::SeqCst), 2);
    assert_eq!(leader_asked.load(Ordering::SeqCst), 1);
    assert_eq!(s.leader(), Some(leader.as_str()));
}

#[tokio::test]
async fn nobody_leading_gives_up_within_the_total_wait_with_each_answer() {
    // Proves a search where every master answers "not leading" gives up by its total wait and
    // reports what each master answered.
    let (a, _) = start(Role::Following(String::new())).await;
    let limits = SearchLimits {
        redirects_max: 3,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(40),
        total_wait: Some(Duration::from_millis(300)),
    };
    let mut s = LeaderSearch::new(&Endpoints::from_list([&a]).expect("valid"), &limits, 1);
    let started = std::time::Instant::now();
    let err = find_leader(&mut s, &transport(), get_state)
        .await
        .expect_err("nobody leads");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the total wait"
    );
    let SearchError::GaveUp { answers, .. } = err else {
        panic!("expected GaveUp, got {err:?}");
    };
    assert_eq!(
        answers.get(&a),
        Some(&drover_client::Answer::NotLeading("not leading".into()))
    );
}

#[tokio::test]
async fn a_refusal_stops_the_search_at_once() {
    // Proves an attempt that returns Stop ends the search without asking anyone else.
    let (refusing, refusing_asked) = start(Role::Refusing).await;
    let (leader, leader_asked) = start(Role::Leading).await;
    let mut s = search(&[&refusing, &leader]);
    match find_leader(&mut s, &transport(), get_state).await {
        Err(SearchError::Stopped { addr, error }) => {
            assert_eq!(addr, refusing);
            assert_eq!(error, "not allowed");
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
    assert_eq!(refusing_asked.load(Ordering::SeqCst), 1);
    assert_eq!(leader_asked.load(Ordering::SeqCst), 0);
}
