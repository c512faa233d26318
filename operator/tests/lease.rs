//! Leader election against a fake API server that keeps Leases in memory and can be
//! made unreachable: a replica that loses the Lease while the API server is down stops
//! its work, and leads again once the API server is back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use zeroscale_admin::Readiness;
use zeroscale_operator::leader::{self, LeaderMetrics};
use zeroscale_operator::lease::LeaderElector;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
const LEASE: &str = "zeroscale-operator";
const ME: &str = "replica-a";

/// Longest any one step of a test may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// An API server holding Leases of the `default` namespace in memory.
struct FakeApi {
    /// Leases by name, as last written.
    leases: Mutex<HashMap<String, Value>>,
    /// Cleared to make the server unreachable: every request's connection is dropped
    /// without an answer.
    reachable: AtomicBool,
    address: SocketAddr,
}

impl FakeApi {
    async fn start() -> Arc<FakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let api = Arc::new(FakeApi {
            leases: Mutex::new(HashMap::new()),
            reachable: AtomicBool::new(true),
            address: listener.local_addr().expect("local address"),
        });
        let server = Arc::clone(&api);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = Arc::clone(&server);
                let service = hyper::service::service_fn(move |request| {
                    let api = Arc::clone(&api);
                    async move { api.answer(request).await }
                });
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // A connection ends when either side drops it; nothing to report.
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        api
    }

    fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.address).parse().expect("url");
        kube::Client::try_from(kube::Config::new(url)).expect("client for the fake API server")
    }

    fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::SeqCst);
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<String, Value>> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn holder(&self) -> Option<String> {
        self.leases()
            .get(LEASE)
            .and_then(|lease| lease["spec"]["holderIdentity"].as_str())
            .map(str::to_owned)
    }

    /// Answers GET, POST and PUT of Leases as the API server does, with optimistic
    /// concurrency on `resourceVersion`; an error drops the connection unanswered.
    async fn answer(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        if !self.reachable.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("the API server is unreachable"));
        }
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let bytes = request
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(std::io::Error::other)?
        };
        let name = path
            .strip_prefix(LEASES)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(str::to_owned);
        let mut leases = self.leases();
        let response = match (method, name) {
            (Method::GET, Some(name)) => match leases.get(&name) {
                Some(lease) => (StatusCode::OK, lease.clone()),
                None => status(404, "NotFound"),
            },
            (Method::POST, None) => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                if leases.contains_key(name) {
                    status(409, "AlreadyExists")
                } else {
                    let stored = stored(body.clone(), 1);
                    leases.insert(name.to_owned(), stored.clone());
                    (StatusCode::CREATED, stored)
                }
            }
            (Method::PUT, Some(name)) => match leases.get(&name) {
                None => status(404, "NotFound"),
                Some(current)
                    if current["metadata"]["resourceVersion"]
                        != body["metadata"]["resourceVersion"] =>
                {
                    status(409, "Conflict")
                }
                Some(current) => {
                    let version = current["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|version| version.parse::<u64>().ok())
                        .unwrap_or(0);
                    let stored = stored(body.clone(), version + 1);
                    leases.insert(name, stored.clone());
                    (StatusCode::OK, stored)
                }
            },
            _ => status(405, "MethodNotAllowed"),
        };
        let (code, body) = response;
        Ok(Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid response"))
    }
}

/// `lease` as stored at `version`.
fn stored(mut lease: Value, version: u64) -> Value {
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    lease["metadata"]["namespace"] = json!("default");
    lease["metadata"]["resourceVersion"] = json!(version.to_string());
    lease
}

fn status(code: u16, reason: &str) -> (StatusCode, Value) {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": format!("{reason} (fake API server)"),
        "reason": reason,
        "code": code,
    });
    (StatusCode::from_u16(code).expect("a status code"), body)
}

/// What the leader's work reports.
#[derive(Debug, PartialEq, Eq)]
enum Term {
    Started,
    Stopped,
}

/// Reports [`Term::Stopped`] when dropped, that is when the work is cancelled.
struct ReportStop(mpsc::UnboundedSender<Term>);

impl Drop for ReportStop {
    fn drop(&mut self) {
        let _ = self.0.send(Term::Stopped);
    }
}

async fn next(terms: &mut mpsc::UnboundedReceiver<Term>, what: &str) -> Term {
    tokio::time::timeout(STEP_TIMEOUT, terms.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("the leader loop is running")
}

fn gathered(registry: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("metrics encode")
}

/// Waits for the work's next term (`what`) to start, then checks that this replica holds
/// the Lease, is ready and reports itself as the leader.
async fn assert_leads(
    what: &str,
    terms: &mut mpsc::UnboundedReceiver<Term>,
    api: &FakeApi,
    readiness: &Readiness,
    registry: &prometheus::Registry,
) {
    assert_eq!(next(terms, what).await, Term::Started);
    assert_eq!(api.holder().as_deref(), Some(ME));
    assert!(readiness.is_ready(), "{:?}", readiness.reason());
    let metrics_text = gathered(registry);
    assert!(
        metrics_text.contains("zeroscale_operator_leader 1"),
        "{metrics_text}"
    );
}

#[tokio::test]
async fn a_replica_that_lost_the_lease_while_the_api_server_was_down_leads_again_once_it_is_back() {
    let api = FakeApi::start().await;
    let readiness = Readiness::not_ready("starting");
    let elector = LeaderElector::new(Api::<Lease>::default_namespaced(api.client()), LEASE, ME)
        .with_lease_duration(Duration::from_secs(1))
        .with_renew_period(Duration::from_millis(200))
        .with_readiness(readiness.clone());
    let registry = prometheus::Registry::new();
    let metrics = LeaderMetrics::register(&registry).expect("metrics register");
    let (report, mut terms) = mpsc::unbounded_channel();
    let work = move || {
        let report = report.clone();
        async move {
            let _stop = ReportStop(report.clone());
            let _ = report.send(Term::Started);
            std::future::pending::<()>().await;
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let leading = tokio::spawn(async move {
        leader::lead(&elector, work, &metrics, async {
            let _ = stopped.await;
        })
        .await
    });

    assert_leads("the first term", &mut terms, &api, &readiness, &registry).await;

    // Down for longer than the renew deadline (lease duration minus renew period).
    api.set_reachable(false);
    assert_eq!(next(&mut terms, "the work to stop").await, Term::Stopped);
    let metrics_text = gathered(&registry);
    assert!(
        metrics_text.contains("zeroscale_operator_leader 0"),
        "{metrics_text}"
    );
    assert!(
        metrics_text.contains("zeroscale_operator_leadership_losses_total 1"),
        "{metrics_text}"
    );
    assert!(
        !readiness.is_ready(),
        "a replica that cannot reach the Lease is not ready"
    );

    api.set_reachable(true);
    assert_leads("the second term", &mut terms, &api, &readiness, &registry).await;

    drop(stop);
    leading.abort();
}

#[tokio::test]
async fn a_replica_that_is_not_leading_stops_competing_on_shutdown() {
    let api = FakeApi::start().await;
    api.set_reachable(false);
    let elector = LeaderElector::new(Api::<Lease>::default_namespaced(api.client()), LEASE, ME)
        .with_renew_period(Duration::from_millis(50));
    let registry = prometheus::Registry::new();
    let metrics = LeaderMetrics::register(&registry).expect("metrics register");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let leading = tokio::spawn(async move {
        leader::lead(&elector, std::future::pending, &metrics, async {
            let _ = stopped.await;
        })
        .await
    });
    let _ = stop.send(());
    let outcome = tokio::time::timeout(STEP_TIMEOUT, leading)
        .await
        .expect("the loop ends on shutdown")
        .expect("the loop ran");
    assert!(outcome.is_ok(), "{outcome:?}");
}
