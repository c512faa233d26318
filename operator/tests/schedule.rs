//! Schedule triggers end to end in one process: against a mocked API server (the tick
//! is recorded as started before its call, and a conflict on that write means no
//! call), and on loopback (a failing call is retried within its deadline; two
//! schedulers sharing one store send each tick once; a tick whose sender died between
//! sending and recording is sent again with the same `ce-id`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::ObjectMeta;
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower_test::mock::Handle;
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::{Function, FunctionSpec, FunctionStatus, Schedule, ScheduleStatus};
use zeroscale_operator::schedule::{KubeStore, SCHEDULER_FIELD_MANAGER};
use zeroscale_operator::watched::WatchedFunctions;
use zeroscale_triggers::{
    Attempt, Call, Clock, HttpInvoker, Invoker, MemoryStore, Notice, Result, ScaledClock,
    ScheduleMetrics, ScheduleStore, Scheduler, Versioned,
};

const STATUS: &str = "/apis/zeroscale.dev/v1alpha1/namespaces/default/functions/hello/status";
/// Longest any awaited step may take before the test fails.
const STEP: Duration = Duration::from_secs(5);

fn at(text: &str) -> Timestamp {
    text.parse().expect("valid timestamp")
}

/// Function `hello` in `default` with one schedule `tick` every minute, whose record says
/// the tick of 12:00 was handled: the tick of 12:01 is next.
fn function() -> Function {
    let mut spec = FunctionSpec::with_image("example.com/hello:1");
    spec.triggers.schedules = vec![Schedule::new("tick", "* * * * *")];
    let mut function = Function::new("hello", spec);
    function.metadata = ObjectMeta {
        name: Some("hello".into()),
        namespace: Some("default".into()),
        uid: Some("uid-hello".into()),
        resource_version: Some("1".into()),
        ..Default::default()
    };
    function.status = Some(FunctionStatus {
        schedules: vec![handled_at("2026-01-10T12:00:00Z")],
        ..Default::default()
    });
    function
}

fn handled_at(last: &str) -> ScheduleStatus {
    ScheduleStatus {
        name: "tick".into(),
        last_schedule_time: Some(Time(at(last))),
        ..Default::default()
    }
}

fn metrics() -> ScheduleMetrics {
    ScheduleMetrics::register(&prometheus::Registry::new()).expect("metrics register")
}

/// An invoker that records each call and answers 200, telling the test on `calls`.
struct Recorder {
    calls: mpsc::UnboundedSender<Call>,
}

impl Invoker for Recorder {
    async fn call(&self, call: &Call) -> Attempt {
        let _ = self.calls.send(call.clone());
        Attempt::Status(200)
    }
}

// ---------------------------------------------------------------------------------------
// Against a mocked API server

type ApiServer = Handle<Request<Body>, Response<Body>>;

/// A scheduler over a [`KubeStore`] whose client talks to the returned mock, with
/// `function` in the watch cache, on a clock just past the tick of 12:01.
fn kube_scheduler(
    function: &Function,
) -> (
    Scheduler<KubeStore, Recorder, ScaledClock>,
    ApiServer,
    mpsc::UnboundedReceiver<Call>,
    reflector::store::Writer<Function>,
) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let reporter = Reporter {
        controller: "zeroscale-operator".into(),
        instance: Some("zeroscale-operator-0".into()),
    };
    let (functions, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(function.clone()));
    let watched = Arc::new(WatchedFunctions::default());
    watched.add(functions);
    let (calls, received) = mpsc::unbounded_channel();
    let scheduler = Scheduler::new(
        KubeStore::new(client, reporter, watched),
        Recorder { calls },
        ScaledClock::new(at("2026-01-10T12:01:00.500Z"), 1),
        "zeroscale-operator-0".into(),
        metrics(),
    );
    (scheduler, handle, received, writer)
}

/// The next request, which must be a merge patch of the Function's status by the
/// scheduler's field manager; returns its body and the means to answer.
async fn next_status_patch(
    api: &mut ApiServer,
) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
    let (request, reply) = tokio::time::timeout(STEP, api.next_request())
        .await
        .expect("a request within the step timeout")
        .expect("the scheduler sends a request");
    let (parts, body) = request.into_parts();
    assert_eq!((&parts.method, parts.uri.path()), (&Method::PATCH, STATUS));
    assert!(
        parts
            .uri
            .query()
            .unwrap_or_default()
            .contains(&format!("fieldManager={SCHEDULER_FIELD_MANAGER}")),
        "{}",
        parts.uri
    );
    assert_eq!(
        parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/merge-patch+json")
    );
    let bytes = body.collect().await.expect("readable body").to_bytes();
    (serde_json::from_slice(&bytes).expect("JSON body"), reply)
}

fn respond(reply: tower_test::mock::SendResponse<Response<Body>>, code: u16, body: &Value) {
    let response = Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("serializes")))
        .expect("valid response");
    reply.send_response(response);
}

/// The Function as the API server returns it after `patch`, at `version`.
fn patched(patch: &Value, version: &str) -> Value {
    let mut stored = serde_json::to_value(function()).expect("serializes");
    stored["metadata"]["resourceVersion"] = json!(version);
    stored["status"]["schedules"] = patch["status"]["schedules"].clone();
    stored
}

/// The `ce-id` header of a tick's request, as a test server received it.
fn ce_id<B>(request: &Request<B>) -> String {
    request
        .headers()
        .get("ce-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A scheduler running in a task of its own until [`Running::stop`].
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start<S, I, C>(scheduler: Scheduler<S, I, C>) -> Self
    where
        S: ScheduleStore + Send + Sync + 'static,
        I: Invoker + Send + Sync + 'static,
        C: Clock + Send + Sync + 'static,
    {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            scheduler
                .run(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
        });
        Self { stop, task }
    }

    /// Stops the scheduler and waits for its task to end.
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("the scheduler stops")
            .expect("the scheduler does not panic");
    }
}

#[tokio::test]
async fn a_tick_is_recorded_as_started_before_its_call_and_as_done_after_it() {
    let (scheduler, mut api, mut calls, _writer) = kube_scheduler(&function());
    let running = Running::start(scheduler);

    let (claim, reply) = next_status_patch(&mut api).await;
    assert_eq!(
        claim["metadata"]["resourceVersion"], "1",
        "the write carries the version read"
    );
    let record = &claim["status"]["schedules"][0];
    assert_eq!(record["lastScheduleTime"], "2026-01-10T12:01:00Z");
    assert_eq!(record["active"][0]["scheduleTime"], "2026-01-10T12:01:00Z");
    assert_eq!(record["active"][0]["startedBy"], "zeroscale-operator-0");
    assert!(
        calls.try_recv().is_err(),
        "no call may be made before the start is recorded"
    );
    respond(reply, 200, &patched(&claim, "2"));

    let call = tokio::time::timeout(STEP, calls.recv())
        .await
        .expect("the call follows the recorded start")
        .expect("a call");
    let header = |name: &str| {
        call.headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .and_then(|(_, v)| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(call.host, "hello.default");
    assert_eq!(call.method, Method::POST);
    assert_eq!(call.path, "/");
    assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(header("ce-type").as_deref(), Some("dev.zeroscale.schedule"));
    assert_eq!(
        header("ce-source").as_deref(),
        Some("/namespaces/default/functions/hello/schedules/tick")
    );
    assert_eq!(header("ce-time").as_deref(), Some("2026-01-10T12:01:00Z"));
    assert_eq!(
        header("ce-id").as_deref(),
        Some("uid-hello:tick:1768046460")
    );

    let (done, reply) = next_status_patch(&mut api).await;
    assert_eq!(
        done["metadata"]["resourceVersion"], "2",
        "the done write builds on the start write's result"
    );
    let record = &done["status"]["schedules"][0];
    assert_eq!(record.get("active"), None);
    assert_eq!(record["lastResult"]["statusCode"], 200);
    assert_eq!(record["lastResult"]["succeeded"], true);
    assert_eq!(
        record["lastFiredTime"]
            .as_str()
            .map(|t| t.starts_with("2026-01-10T12:01:00")),
        Some(true)
    );
    respond(reply, 200, &patched(&done, "3"));

    running.stop().await;
}

#[tokio::test]
async fn a_conflict_on_the_start_write_means_no_call() {
    let (scheduler, mut api, mut calls, mut writer) = kube_scheduler(&function());
    let running = Running::start(scheduler);

    let (claim, reply) = next_status_patch(&mut api).await;
    // Another replica recorded the tick first: this write is refused, and the watch
    // cache then shows the other replica's claim.
    respond(
        reply,
        409,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "Conflict", "code": 409,
            "message": "the object has been modified; please apply your changes to the latest version and try again",
        }),
    );
    let mut other = claim.clone();
    other["status"]["schedules"][0]["active"][0]["startedBy"] = json!("zeroscale-operator-1");
    let claimed_elsewhere: Function =
        serde_json::from_value(patched(&other, "2")).expect("a Function");
    writer.apply_watcher_event(&watcher::Event::Apply(claimed_elsewhere));

    // No call and no further write: the tick belongs to the other replica now.
    let quiet = tokio::time::timeout(Duration::from_millis(500), api.next_request()).await;
    assert!(
        quiet.is_err(),
        "no further request once the other claim is seen"
    );
    assert!(
        calls.try_recv().is_err(),
        "a refused start write must not be followed by a call"
    );

    running.stop().await;
}

// ---------------------------------------------------------------------------------------
// On loopback

/// A [`MemoryStore`] that tells `changes` after every write.
struct Observed {
    store: MemoryStore,
    changes: watch::Sender<u64>,
}

impl ScheduleStore for Observed {
    fn functions(&self) -> Vec<Arc<Function>> {
        self.store.functions()
    }

    async fn read(&self, key: &FunctionKey) -> Result<Versioned> {
        self.store.read(key).await
    }

    async fn write(
        &self,
        key: &FunctionKey,
        version: &str,
        schedules: &[ScheduleStatus],
    ) -> Result<Versioned> {
        let written = self.store.write(key, version, schedules).await?;
        self.changes.send_modify(|n| *n += 1);
        Ok(written)
    }

    async fn notify(&self, function: &Function, notice: Notice) {
        self.store.notify(function, notice).await;
    }
}

fn observed_store(function: Function) -> (Arc<Observed>, watch::Receiver<u64>) {
    let store = MemoryStore::default();
    store.apply(function);
    let (changes, watcher) = watch::channel(0);
    (Arc::new(Observed { store, changes }), watcher)
}

/// A server on 127.0.0.1 that answers each request with the next of `statuses` (the
/// last one repeated) and records the `ce-id` of each.
async fn function_server(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    let (seen_by_server, statuses) = (Arc::clone(&seen), Arc::new(statuses));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, answered, statuses) = (
                Arc::clone(&seen_by_server),
                Arc::clone(&answered),
                Arc::clone(&statuses),
            );
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let id = ce_id(&request);
                    seen.lock().expect("lock").push(id);
                    let n = answered.fetch_add(1, Ordering::SeqCst);
                    let status = statuses.get(n).or(statuses.last()).copied().unwrap_or(200);
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .expect("valid response"),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, seen)
}

/// Runs `schedulers` until `done` holds for the store's record of `tick`.
async fn run_until<S: ScheduleStore>(
    schedulers: Vec<Scheduler<S, HttpInvoker, ScaledClock>>,
    mut changes: watch::Receiver<u64>,
    done: impl Fn() -> bool,
) {
    let running: Vec<_> = schedulers.into_iter().map(Running::start).collect();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !done() {
            changes.changed().await.expect("the store lives");
        }
    })
    .await
    .expect("the ticks are recorded in time");
    for running in running {
        running.stop().await;
    }
}

#[tokio::test]
async fn a_call_answered_503_twice_then_200_is_retried_and_succeeds_once() {
    let (address, seen) = function_server(vec![503, 503, 200]).await;
    let (store, changes) = observed_store(function());
    let metrics = metrics();
    // 60 times as fast: the tick of 12:01 is due 10 ms after the start.
    let scheduler = Scheduler::new(
        Arc::clone(&store),
        HttpInvoker::new(address),
        ScaledClock::new(at("2026-01-10T12:00:59.400Z"), 60),
        "operator-0".into(),
        metrics.clone(),
    );
    let key = FunctionKey::new("default", "hello");
    let record = || {
        store
            .store
            .schedules(&key)
            .into_iter()
            .next()
            .unwrap_or_default()
    };
    run_until(vec![scheduler], changes, || record().last_result.is_some()).await;

    let result = record().last_result.expect("a result");
    assert!(result.succeeded);
    assert_eq!(result.status_code, Some(200));
    assert_eq!(result.attempts, 3);
    assert_eq!(result.schedule_time, Time(at("2026-01-10T12:01:00Z")));
    assert_eq!(record().consecutive_failures, 0);
    assert!(record().active.is_empty());
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        vec!["uid-hello:tick:1768046460".to_owned(); 3],
        "three attempts of one tick"
    );
    assert_eq!(metrics.ticks.with_label_values(&["succeeded"]).get(), 1);
    assert_eq!(metrics.ticks.with_label_values(&["failed"]).get(), 0);
}

#[tokio::test]
async fn two_schedulers_sharing_one_store_send_each_tick_once() {
    let (address, seen) = function_server(vec![200]).await;
    let (store, changes) = observed_store(function());
    // 120 times as fast: a tick every 500 ms.
    let origin = at("2026-01-10T12:00:59.000Z");
    let schedulers = ["operator-0", "operator-1"]
        .into_iter()
        .map(|identity| {
            let mut scheduler = Scheduler::new(
                Arc::clone(&store),
                HttpInvoker::new(address.clone()),
                ScaledClock::new(origin, 120),
                identity.into(),
                metrics(),
            );
            scheduler.max_sleep = Duration::from_secs(1);
            scheduler
        })
        .collect();
    let key = FunctionKey::new("default", "hello");
    let record = || {
        store
            .store
            .schedules(&key)
            .into_iter()
            .next()
            .unwrap_or_default()
    };
    let last_tick = at("2026-01-10T12:05:00Z");
    run_until(schedulers, changes, || {
        record()
            .last_result
            .is_some_and(|result| result.schedule_time.0 >= last_tick)
    })
    .await;

    let seen = seen.lock().expect("lock").clone();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in &seen {
        *counts.entry(id.clone()).or_default() += 1;
    }
    assert!(
        counts.values().all(|n| *n == 1),
        "each tick is sent exactly once: {counts:?}"
    );
    // Ticks 12:01 to 12:05 were each sent, or (on a machine too busy to send within a
    // tick's deadline) recorded as missed: none is lost.
    let missed = usize::try_from(record().missed_ticks).expect("a count");
    assert!(counts.len() + missed >= 5, "{counts:?}, {missed} missed");
}

/// A server on 127.0.0.1 that never answers its first request (announced on the
/// returned receiver) and answers 200 to the others; records each `ce-id`.
async fn stalling_server() -> (String, Arc<Mutex<Vec<String>>>, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (received, first) = mpsc::unbounded_channel();
    let seen_by_server = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, received) = (Arc::clone(&seen_by_server), received.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let id = ce_id(&request);
                    let first = {
                        let mut seen = seen.lock().expect("lock");
                        seen.push(id);
                        seen.len() == 1
                    };
                    let received = received.clone();
                    async move {
                        if first {
                            let _ = received.send(());
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, seen, first)
}

#[tokio::test]
async fn a_tick_whose_sender_died_before_recording_it_is_sent_again_with_the_same_id() {
    let (address, seen, mut first) = stalling_server().await;
    let mut stalled = function();
    // The dead sender's claim expires at the tick's deadline (5 s) plus the request
    // timeout (1 s) plus 10 s: at 12:01:16, well before the next tick.
    stalled.spec.requests.timeout = "1s".into();
    stalled.spec.triggers.schedules[0].starting_deadline = Some("5s".into());
    let (store, changes) = observed_store(stalled);
    // 120 times as fast: the tick of 12:01 is due 4 ms after the start, the claim
    // expires 130 ms after it.
    let origin = at("2026-01-10T12:00:59.500Z");
    let clock = ScaledClock::new(origin, 120);
    let replica = |identity: &str| {
        Scheduler::new(
            Arc::clone(&store),
            HttpInvoker::new(address.clone()),
            clock,
            identity.into(),
            metrics(),
        )
    };
    let key = FunctionKey::new("default", "hello");
    let record = || {
        store
            .store
            .schedules(&key)
            .into_iter()
            .next()
            .unwrap_or_default()
    };

    // The first replica records the tick as started, sends it, and dies before the
    // answer (and so before recording it as done).
    let dying = replica("operator-0");
    let running = tokio::spawn(async move { dying.run(std::future::pending()).await });
    tokio::time::timeout(STEP, first.recv())
        .await
        .expect("the tick is sent")
        .expect("the server lives");
    running.abort();
    let _ = running.await;
    assert_eq!(record().active.len(), 1, "started, not done");

    run_until(vec![replica("operator-1")], changes, || {
        record().last_result.is_some()
    })
    .await;
    let seen = seen.lock().expect("lock").clone();
    let sends = seen
        .iter()
        .filter(|id| *id == "uid-hello:tick:1768046460")
        .count();
    assert_eq!(
        sends, 2,
        "sent twice, both times with the tick's ce-id: {seen:?}"
    );
    let record = record();
    assert!(record.active.is_empty());
    assert_eq!(
        record.last_result.map(|r| r.schedule_time.0),
        Some(at("2026-01-10T12:01:00Z"))
    );
}
