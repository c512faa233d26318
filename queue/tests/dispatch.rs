//! The dispatcher against a real nats-server, with a scripted deliverer in place of the
//! activator: delivery, retries, dead letters, event age, cancel, idempotency, a broker
//! outage, a dispatcher killed mid-stream, and queue triggers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use zeroscale_api::AsyncSpec;
use zeroscale_api::calls::RetrySpec;
use zeroscale_api::routing::FunctionKey;
use zeroscale_queue::calls::{CallStore, Cancelled, NewCall, Phase};
use zeroscale_queue::connect::{NatsOptions, connect};
use zeroscale_queue::dispatch::{
    CallbackError, Deliver, Delivery, Dispatcher, QueueTarget, Response, Target,
};
use zeroscale_queue::harness::NatsServer;
use zeroscale_queue::names;

type Script = dyn Fn(&Delivery, u32) -> Response + Send + Sync;

/// Answers deliveries as its script says and reports each one on a channel.
struct Scripted {
    script: Box<Script>,
    seen: Mutex<BTreeMap<String, u32>>,
    deliveries: mpsc::UnboundedSender<(Delivery, Instant)>,
    callbacks: mpsc::UnboundedSender<(String, Bytes)>,
    delay: Duration,
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a str> {
    delivery
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Deliver for Scripted {
    async fn deliver(&self, delivery: Delivery) -> Response {
        tokio::time::sleep(self.delay).await;
        let id = header(&delivery, "x-call-id")
            .or(header(&delivery, "ce-id"))
            .unwrap_or_default()
            .to_owned();
        let count = {
            let mut seen = self.seen.lock().expect("lock");
            let count = seen.entry(id).or_default();
            *count += 1;
            *count
        };
        let response = (self.script)(&delivery, count);
        let _ = self.deliveries.send((delivery, Instant::now()));
        response
    }

    async fn callback(&self, url: String, outcome: Bytes) -> Result<(), CallbackError> {
        let _ = self.callbacks.send((url, outcome));
        Ok(())
    }
}

fn ok() -> Response {
    Response::Answered {
        status: 200,
        headers: vec![],
        body: Bytes::from_static(b"done"),
    }
}

fn status(code: u16) -> Response {
    Response::Answered {
        status: code,
        headers: vec![],
        body: Bytes::new(),
    }
}

struct Fixture {
    server: NatsServer,
    store: CallStore,
    deliveries: mpsc::UnboundedReceiver<(Delivery, Instant)>,
    callbacks: mpsc::UnboundedReceiver<(String, Bytes)>,
    deliver: Arc<Scripted>,
}

fn key() -> FunctionKey {
    FunctionKey::new("team", "hello")
}

fn fast_retries(spec: &mut AsyncSpec) {
    spec.retry = RetrySpec {
        initial_delay: "200ms".into(),
        max_delay: "400ms".into(),
        ..RetrySpec::default()
    };
}

async fn fixture(
    script: impl Fn(&Delivery, u32) -> Response + Send + Sync + 'static,
) -> Option<Fixture> {
    let server = NatsServer::for_test();
    let client = connect(&NatsOptions {
        url: server.url(),
        name: "test".into(),
        ..NatsOptions::default()
    })
    .await
    .expect("connects");
    let store = CallStore::new(client);
    wait_connected(&store).await;
    store.ensure_streams().await.expect("streams");
    let (tx, deliveries) = mpsc::unbounded_channel();
    let (ctx, callbacks) = mpsc::unbounded_channel();
    let deliver = Arc::new(Scripted {
        script: Box::new(script),
        seen: Mutex::default(),
        deliveries: tx,
        callbacks: ctx,
        delay: Duration::ZERO,
    });
    Some(Fixture {
        server,
        store,
        deliveries,
        callbacks,
        deliver,
    })
}

async fn wait_connected(store: &CallStore) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.connected() {
        assert!(Instant::now() < deadline, "not connected to nats-server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn target(spec: &AsyncSpec) -> Target {
    Target {
        function: key(),
        policy: spec.policy().expect("valid async spec"),
        queues: vec![],
    }
}

fn call(body: &str) -> NewCall {
    NewCall {
        method: "POST".into(),
        path: "/work?x=1".into(),
        headers: vec![("content-type".into(), "text/plain".into())],
        body: Bytes::from(body.to_owned()),
        idempotency_key: None,
        callback_url: None,
    }
}

const RETENTION: Duration = Duration::from_secs(3600);

async fn next(rx: &mut mpsc::UnboundedReceiver<(Delivery, Instant)>) -> (Delivery, Instant) {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a delivery within 20s")
        .expect("deliverer alive")
}

async fn wait_for_phase(
    store: &CallStore,
    id: &str,
    phase: Phase,
) -> zeroscale_queue::calls::CallState {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = store
            .state(&key(), RETENTION, id)
            .await
            .expect("reads state");
        if let Some(state) = state.filter(|s| s.state == phase) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "call {id} never reached {phase:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_accepted_call_is_delivered_with_its_id_and_attempt_and_succeeds() {
    let Some(mut f) = fixture(|_, _| ok()).await else {
        return;
    };
    let id = f
        .store
        .accept(&key(), RETENTION, call("hello"))
        .await
        .expect("accepted");
    let state = f
        .store
        .state(&key(), RETENTION, &id)
        .await
        .expect("state")
        .expect("known");
    assert!(matches!(
        state.state,
        Phase::Queued | Phase::Running | Phase::Succeeded
    ));

    let dispatcher = Dispatcher::new(f.store.clone(), Arc::clone(&f.deliver));
    dispatcher.sync(vec![target(&AsyncSpec::default())]);
    let (delivery, _) = next(&mut f.deliveries).await;
    assert_eq!(delivery.method, "POST");
    assert_eq!(delivery.path, "/work?x=1");
    assert_eq!(delivery.body, Bytes::from_static(b"hello"));
    assert_eq!(header(&delivery, "x-call-id"), Some(id.as_str()));
    assert_eq!(header(&delivery, "x-call-attempt"), Some("1"));
    assert_eq!(header(&delivery, "content-type"), Some("text/plain"));
    let done = wait_for_phase(&f.store, &id, Phase::Succeeded).await;
    assert_eq!((done.attempts, done.status), (1, Some(200)));
}

#[tokio::test]
async fn a_503_is_retried_with_growing_delays_until_it_succeeds() {
    let Some(mut f) = fixture(|_, count| if count < 3 { status(503) } else { ok() }).await else {
        return;
    };
    let mut spec = AsyncSpec::default();
    fast_retries(&mut spec);
    let id = f
        .store
        .accept(&key(), RETENTION, call("x"))
        .await
        .expect("accepted");
    let dispatcher = Dispatcher::new(f.store.clone(), Arc::clone(&f.deliver));
    dispatcher.sync(vec![target(&spec)]);
    let (_, first) = next(&mut f.deliveries).await;
    let (second_delivery, second) = next(&mut f.deliveries).await;
    let (third_delivery, third) = next(&mut f.deliveries).await;
    assert_eq!(header(&second_delivery, "x-call-attempt"), Some("2"));
    assert_eq!(header(&third_delivery, "x-call-attempt"), Some("3"));
    // Equal jitter: at least half of 200ms, then of 400ms.
    assert!(
        second - first >= Duration::from_millis(100),
        "{:?}",
        second - first
    );
    assert!(
        third - second >= Duration::from_millis(200),
        "{:?}",
        third - second
    );
    let done = wait_for_phase(&f.store, &id, Phase::Succeeded).await;
    assert_eq!(done.attempts, 3);
}

#[tokio::test]
async fn a_call_that_fails_every_attempt_goes_to_the_dead_letter_stream_with_its_error() {
    let Some(mut f) = fixture(|_, _| status(500)).await else {
        return;
    };
    let mut spec = AsyncSpec::default();
    fast_retries(&mut spec);
    let id = f
        .store
        .accept(&key(), RETENTION, call("doomed"))
        .await
        .expect("accepted");
    let dispatcher = Dispatcher::new(f.store.clone(), Arc::clone(&f.deliver));
    dispatcher.sync(vec![target(&spec)]);
    for _ in 0..3 {
        next(&mut f.deliveries).await;
    }
    let dead = wait_for_phase(&f.store, &id, Phase::Dead).await;
    assert_eq!(dead.attempts, 3);
    assert!(
        dead.last_error
            .as_deref()
            .is_some_and(|e| e.contains("500")),
        "{dead:?}"
    );

    let js = async_nats::jetstream::new(connect_again(&f).await);
    let stream = js
        .get_stream(names::DEAD_LETTER_STREAM)
        .await
        .expect("dead-letter stream");
    let message = stream
        .get_last_raw_message_by_subject(&names::dead_calls_subject(&key()))
        .await
        .expect("a dead letter");
    let headers = message.headers;
    assert_eq!(
        headers.get("Zs-Call-Id").map(|v| v.as_str()),
        Some(id.as_str())
    );
    assert!(
        headers
            .get("Zs-Error")
            .is_some_and(|v| v.as_str().contains("500"))
    );
    assert_eq!(message.payload, Bytes::from_static(b"doomed"));
    assert!(
        tokio::time::timeout(Duration::from_millis(700), f.deliveries.recv())
            .await
            .is_err(),
        "no fourth attempt"
    );
}

async fn connect_again(f: &Fixture) -> async_nats::Client {
    connect(&NatsOptions {
        url: f.server.url(),
        name: "inspect".into(),
        ..NatsOptions::default()
    })
    .await
    .expect("connects")
}

#[tokio::test]
async fn a_call_older_than_max_event_age_is_dead_lettered_without_more_attempts() {
    let Some(mut f) = fixture(|_, _| status(503)).await else {
        return;
    };
    let spec = AsyncSpec {
        max_event_age: "1s".into(),
        retry: RetrySpec {
            max_attempts: 50,
            initial_delay: "3s".into(),
            max_delay: "3s".into(),
            ..RetrySpec::default()
        },
        ..AsyncSpec::default()
    };
    let id = f
        .store
        .accept(&key(), RETENTION, call("late"))
        .await
        .expect("accepted");
    let dispatcher = Dispatcher::new(f.store.clone(), Arc::clone(&f.deliver));
    dispatcher.sync(vec![target(&spec)]);
    next(&mut f.deliveries).await;
    let dead = wait_for_phase(&f.store, &id, Phase::Dead).await;
    assert!(
        dead.last_error
            .as_deref()
            .is_some_and(|e| e.contains("maxEventAge") && e.contains("503")),
        "{dead:?}"
    );
    assert!(f.deliveries.try_recv().is_err(), "delivered once only");
}

#[tokio::test]
async fn a_cancelled_call_is_never_delivered_and_a_finished_one_cannot_be_cancelled() {
    let Some(mut f) = fixture(|_, _| ok()).await else {
        return;
    };
    let cancelled = f
        .store
        .accept(&key(), RETENTION, call("no"))
        .await
        .expect("accepted");
    let delivered = f
        .store
        .accept(&key(), RETENTION, call("yes"))
        .await
        .expect("accepted");
    assert_eq!(
        f.store
            .cancel(&key(), RETENTION, &cancelled)
            .await
            .expect("cancels"),
        Cancelled::Done
    );
    let dispatcher = Dispatcher::new(f.store.clone(), Arc::clone(&f.deliver));
    dispatcher.sync(vec![target(&AsyncSpec::default())]);
    let (delivery, _) = next(&mut f.deliveries).await;
    assert_eq!(header(&delivery, "x-call-id"), Some(delivered.as_str()));
    wait_for_phase(&f.store, &delivered, Phase::Succeeded).await;
    assert_eq!(
        f.store
            .cancel(&key(), RETENTION, &delivered)
            .await
            .expect("answers"),
        Cancelled::TooLate(Phase::Succeeded)
    );
    assert_eq!(
        f.store
            .cancel(&key(), RETENTION, &"0".repeat(32))
            .await
            .expect("answers"),
        Cancelled::Unknown
    );
    let state = wait_for_phase(&f.store, &cancelled, Phase::Cancelled).await;
    assert_eq!(state.attempts, 0);
    assert!(f.deliveries.try_recv().is_err());
}

#[tokio::test]
async fn a_repeated_idempotency_key_gets_the_first_id_and_is_delivered_once() {
    let Some(mut f) = fixture(|_, _| ok()).await else {
        return;
    };
    let keyed = |body: &str| NewCall {
        idempotency_key: Some("order-42".into()),
        ..call(body)
    };
    let first = f
        .store
        .accept(&key(), RETENTION, keyed("a"))
        .await
        .expect("accepted");
    let second = f
        .store
        .accept(&key(), RETENTION, keyed("b"))
        .await
        .expect("accepted");
    assert_eq!(first, second);
    let other = f
        .store
        .accept(&key(), RETENTION, call("c"))
        .await
        .expect("accepted");
    assert_ne!(first, other);
    let dispatcher = Dispatcher::new(f.store.clone(), Arc::clone(&f.deliver));
    dispatcher.sync(vec![target(&AsyncSpec::default())]);
    let mut bodies = BTreeSet::new();
    for _ in 0..2 {
        bodies.insert(next(&mut f.deliveries).await.0.body);
    }
    assert_eq!(
        bodies,
        BTreeSet::from([Bytes::from_static(b"a"), Bytes::from_static(b"c")])
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), f.deliveries.recv())
            .await
            .is_err(),
        "the second keyed call is not stored"
    );
}

#[tokio::test]
async fn the_outcome_goes_to_the_callback_url() {
    let Some(mut f) = fixture(|_, _| ok()).await else {
        return;
    };
    let with_callback = NewCall {
        callback_url: Some("http://example.com/done".into()),
        ..call("cb")
    };
    let id = f
        .store
        .accept(&key(), RETENTION, with_callback)
        .await
        .expect("accepted");
    let dispatcher = Dispatcher::new(f.store.clone(), Arc::clone(&f.deliver));
    dispatcher.sync(vec![target(&AsyncSpec::default())]);
    let (url, outcome) = tokio::time::timeout(Duration::from_secs(20), f.callbacks.recv())
        .await
        .expect("callback within 20s")
        .expect("sent");
    assert_eq!(url, "http://example.com/done");
    let outcome: serde_json::Value = serde_json::from_slice(&outcome).expect("json");
    assert_eq!(outcome["id"], id.as_str());
    assert_eq!(outcome["state"], "succeeded");
    assert_eq!(outcome["status"], 200);
    assert_eq!(outcome["body"], "done");
    assert_eq!(outcome["attempts"], 1);
}

#[tokio::test]
async fn the_first_call_after_a_start_is_stored_before_any_dispatcher_made_the_streams() {
    let server = NatsServer::for_test();
    let client = connect(&NatsOptions {
        url: server.url(),
        name: "first".into(),
        ..NatsOptions::default()
    })
    .await
    .expect("connects");
    let store = CallStore::new(client);
    wait_connected(&store).await;
    let id = store
        .accept(&key(), RETENTION, call("first"))
        .await
        .expect("stored without waiting for a dispatcher");
    let state = store
        .state(&key(), RETENTION, &id)
        .await
        .expect("readable")
        .expect("known");
    assert_eq!(state.state, Phase::Queued);
}

#[tokio::test]
async fn accepting_fails_while_the_broker_is_down_and_works_again_when_it_returns() {
    let mut server = NatsServer::for_test();
    let client = connect(&NatsOptions {
        url: server.url(),
        name: "outage".into(),
        ..NatsOptions::default()
    })
    .await
    .expect("connects");
    let store = CallStore::new(client);
    wait_connected(&store).await;
    store.ensure_streams().await.expect("streams");
    store
        .accept(&key(), RETENTION, call("before"))
        .await
        .expect("accepted");

    server.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let result = store.accept(&key(), RETENTION, call("during")).await;
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "fails within the request timeout"
        );
        if result.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "accept kept succeeding with the broker down"
        );
    }

    server.restart().expect("restarts");
    wait_connected(&store).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while store
        .accept(&key(), RETENTION, call("after"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "accept did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn every_accepted_call_is_delivered_when_the_dispatcher_is_killed_mid_stream() {
    let server = NatsServer::for_test();
    let url = server.url();
    const CALLS: usize = 200;
    let (tx, mut deliveries) = mpsc::unbounded_channel();
    let (ctx, _callbacks) = mpsc::unbounded_channel();
    let deliver = Arc::new(Scripted {
        script: Box::new(|_, _| ok()),
        seen: Mutex::default(),
        deliveries: tx,
        callbacks: ctx,
        delay: Duration::from_millis(20),
    });
    let ack_wait = Duration::from_secs(2);
    let connect_store = |url: String| async move {
        let store = CallStore::new(
            connect(&NatsOptions {
                url,
                name: "kill".into(),
                ..NatsOptions::default()
            })
            .await
            .expect("connects"),
        );
        wait_connected(&store).await;
        store.ensure_streams().await.expect("streams");
        store
    };
    let spec = AsyncSpec {
        max_concurrency: 10,
        ..AsyncSpec::default()
    };

    // The first dispatcher runs in a runtime of its own, dropped mid-stream: its tasks
    // stop at once, as in a process killed with SIGKILL.
    let first = tokio::runtime::Runtime::new().expect("runtime");
    let accepted: Vec<String> = first.block_on(async {
        let store = connect_store(url.clone()).await;
        let mut ids = Vec::new();
        for n in 0..CALLS {
            ids.push(
                store
                    .accept(&key(), RETENTION, call(&n.to_string()))
                    .await
                    .expect("accepted"),
            );
        }
        let dispatcher = Dispatcher::new(store, Arc::clone(&deliver)).with_ack_wait(ack_wait);
        dispatcher.sync(vec![target(&spec)]);
        for _ in 0..CALLS / 4 {
            next(&mut deliveries).await;
        }
        drop(dispatcher);
        ids
    });
    drop(first);

    let second = tokio::runtime::Runtime::new().expect("runtime");
    second.block_on(async {
        let store = connect_store(url.clone()).await;
        let dispatcher =
            Dispatcher::new(store.clone(), Arc::clone(&deliver)).with_ack_wait(ack_wait);
        dispatcher.sync(vec![target(&spec)]);
        for id in &accepted {
            wait_for_phase(&store, id, Phase::Succeeded).await;
        }
    });
    let seen = deliver.seen.lock().expect("lock");
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "lost {} calls", lost.len());
    drop(server);
}

#[tokio::test]
async fn a_queue_message_is_posted_with_cloudevents_headers_and_acknowledged() {
    let Some(mut f) = fixture(|_, _| ok()).await else {
        return;
    };
    let client = connect_again(&f).await;
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .expect("user stream");
    js.publish("orders.ignored", Bytes::from_static(b"skip"))
        .await
        .expect("published")
        .await
        .expect("stored");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    js.publish_with_headers("orders.created", headers, Bytes::from_static(b"{\"id\":7}"))
        .await
        .expect("published")
        .await
        .expect("stored");

    let spec = AsyncSpec::default();
    let mut target = target(&spec);
    target.queues.push(QueueTarget {
        name: "orders".into(),
        stream: "ORDERS".into(),
        subject: Some("orders.created".into()),
        path: "/orders".into(),
        retry: spec.retry.policy("retry").expect("valid"),
    });
    let dispatcher = Dispatcher::new(f.store.clone(), Arc::clone(&f.deliver));
    dispatcher.sync(vec![target]);
    let (delivery, _) = next(&mut f.deliveries).await;
    assert_eq!(
        (delivery.method.as_str(), delivery.path.as_str()),
        ("POST", "/orders")
    );
    assert_eq!(delivery.body, Bytes::from_static(b"{\"id\":7}"));
    assert_eq!(header(&delivery, "ce-id"), Some("2"));
    assert_eq!(header(&delivery, "ce-specversion"), Some("1.0"));
    assert_eq!(
        header(&delivery, "ce-source"),
        Some("nats://jetstream/ORDERS")
    );
    assert_eq!(header(&delivery, "ce-subject"), Some("orders.created"));
    assert_eq!(header(&delivery, "content-type"), Some("application/json"));
    assert!(header(&delivery, "ce-time").is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()));
    assert!(header(&delivery, "ce-type").is_some());

    let stream = js.get_stream("ORDERS").await.expect("stream");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(&names::queue_consumer(&key(), "orders"))
        .await
        .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = consumer.info().await.expect("info");
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "message never acknowledged: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
