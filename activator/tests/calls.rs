//! Asynchronous calls through the activator, with a real nats-server: 202 and delivery
//! through the normal path, waking at zero, body limit, the call URL on its own host
//! only, cancel, dead letters, a broker outage, running without NATS, and callbacks
//! refused for forbidden addresses.

// Shared with proxy.rs, which uses the parts this file does not.
#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{FunctionFixture, Harness, Options, Pod, Reply, bounded, endpoint};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use tokio::sync::watch;
use zeroscale_activator::calls::AsyncCalls;
use zeroscale_activator::calls::address::AddressPolicy;
use zeroscale_activator::calls::dispatch::{self, Loopback};
use zeroscale_activator::endpoints::EndpointState::Ready;
use zeroscale_api::Function;
use zeroscale_api::calls::RetrySpec;
use zeroscale_queue::calls::CallStore;
use zeroscale_queue::connect::{NatsOptions, connect};
use zeroscale_queue::dispatch::{CallbackError, Deliver, Dispatcher};
use zeroscale_queue::harness::NatsServer;

/// A harness whose activator stores calls in `server`, and (when `dispatching`) runs
/// a dispatcher delivering through its own cluster listener.
struct AsyncHarness {
    h: Harness,
    store: CallStore,
    _dispatcher_stop: watch::Sender<bool>,
}

async fn start(server: &NatsServer, dispatching: bool) -> AsyncHarness {
    let client = connect(&NatsOptions {
        url: server.url(),
        name: "activator-test".into(),
        ..NatsOptions::default()
    })
    .await
    .expect("connects");
    let store = CallStore::new(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !store.connected() {
        assert!(tokio::time::Instant::now() < deadline, "not connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.ensure_streams().await.expect("streams");
    let h = Harness::start_with_calls(Options::default(), AsyncCalls::new(store.clone())).await;
    let (stop, stopped) = watch::channel(false);
    if dispatching {
        let loopback = Loopback::new(
            h.cluster,
            Arc::clone(&h.functions),
            AddressPolicy::default(),
        );
        let dispatcher = Dispatcher::new(store.clone(), Arc::new(loopback));
        let mut stopped = stopped;
        tokio::spawn(dispatch::run(
            Arc::clone(&h.functions),
            dispatcher,
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ));
    }
    AsyncHarness {
        h,
        store,
        _dispatcher_stop: stop,
    }
}

fn post_async(
    h: &Harness,
    host: &str,
    path: &str,
    body: &'static [u8],
) -> http::Request<Full<Bytes>> {
    h.request(host, path)
        .method(Method::POST)
        .header("prefer", "respond-async")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(body)))
        .expect("request")
}

/// Reads the call at `location` on `host` until its state is `state`.
async fn until_state(h: &Harness, host: &str, location: &str, state: &str) -> serde_json::Value {
    loop {
        let reply = h.get(host, location).await;
        if reply.status == StatusCode::OK {
            let value: serde_json::Value = serde_json::from_str(&reply.body).expect("json state");
            if value["state"] == state {
                return value;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn accepted(reply: &Reply) -> (String, String) {
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let id = reply.header("x-call-id").to_owned();
    let location = reply.header("location").to_owned();
    assert_eq!(id.len(), 32, "128 random bits in hex");
    assert_eq!(location, format!("/.zeroscale/calls/{id}"));
    (id, location)
}

#[tokio::test]
async fn an_async_request_is_answered_202_then_delivered_to_the_pod_with_its_call_id() {
    let server = NatsServer::for_test();
    bounded(async {
        let a = start(&server, true).await;
        let mut pod = a.h.warm(Function::test("echo")).await;
        let reply =
            a.h.send(post_async(&a.h, "echo.team", "/jobs?n=1", b"payload"))
                .await;
        let (id, location) = accepted(&reply);
        assert_eq!(reply.header("preference-applied"), "respond-async");

        let seen = pod.arrival().await;
        assert_eq!(seen.path, "/jobs");
        assert_eq!(seen.headers["x-call-id"], id.as_str());
        assert_eq!(seen.headers["x-call-attempt"], "1");
        assert_eq!(seen.headers["content-type"], "text/plain");
        assert!(!seen.headers.contains_key("prefer"));

        let state = until_state(&a.h, "echo.team", &location, "succeeded").await;
        assert_eq!(state["attempts"], 1);
        assert_eq!(state["status"], 200);
        assert_eq!(pod.requests(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_stored_call_wakes_a_function_at_zero_and_is_delivered_once_a_pod_is_ready() {
    let server = NatsServer::for_test();
    bounded(async {
        let mut a = start(&server, true).await;
        a.h.apply(&Function::test("sleepy"));
        let reply =
            a.h.send(post_async(&a.h, "sleepy.team", "/", b"wake up"))
                .await;
        let (_, location) = accepted(&reply);
        assert_eq!(a.h.next_wake().await.name, "sleepy");

        let mut pod = Pod::named("sleepy").start().await;
        a.h.set_pods("sleepy", vec![endpoint(pod.addr, Ready)]);
        let seen = pod.arrival().await;
        assert_eq!(seen.path, "/");
        until_state(&a.h, "sleepy.team", &location, "succeeded").await;
    })
    .await;
}

#[tokio::test]
async fn an_async_body_over_the_functions_limit_is_refused_with_413() {
    let server = NatsServer::for_test();
    bounded(async {
        let a = start(&server, false).await;
        let mut function = Function::test("small");
        function.spec.async_calls.max_body_bytes = 4;
        a.h.apply(&function);
        let reply =
            a.h.send(post_async(&a.h, "small.team", "/", b"too long"))
                .await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(reply.body.contains("maxBodyBytes"), "{}", reply.body);
        let reply = a.h.send(post_async(&a.h, "small.team", "/", b"tiny")).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
    })
    .await;
}

#[tokio::test]
async fn a_call_is_read_and_cancelled_on_its_functions_host_only() {
    let server = NatsServer::for_test();
    bounded(async {
        let a = start(&server, false).await;
        a.h.apply(&Function::test("mine"));
        a.h.apply(&Function::test("other"));
        let reply = a.h.send(post_async(&a.h, "mine.team", "/", b"x")).await;
        let (_, location) = accepted(&reply);

        assert_eq!(
            a.h.get("other.team", &location).await.status,
            StatusCode::NOT_FOUND
        );
        let state = until_state(&a.h, "mine.team", &location, "queued").await;
        assert_eq!(state["attempts"], 0);

        let delete = |host: &str| {
            a.h.request(host, &location)
                .method(Method::DELETE)
                .body(Full::default())
                .expect("request")
        };
        assert_eq!(
            a.h.send(delete("other.team")).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            a.h.send(delete("mine.team")).await.status,
            StatusCode::NO_CONTENT
        );
        until_state(&a.h, "mine.team", &location, "cancelled").await;
        assert_eq!(
            a.h.send(delete("mine.team")).await.status,
            StatusCode::CONFLICT
        );
        let unknown = format!("/.zeroscale/calls/{}", "0".repeat(32));
        assert_eq!(
            a.h.get("mine.team", &unknown).await.status,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}

#[tokio::test]
async fn a_call_the_function_keeps_failing_ends_dead_with_its_last_error() {
    let server = NatsServer::for_test();
    bounded(async {
        let a = start(&server, true).await;
        let mut function = Function::test("flaky");
        function.spec.async_calls.retry = RetrySpec {
            max_attempts: 2,
            initial_delay: "100ms".into(),
            max_delay: "100ms".into(),
            ..RetrySpec::default()
        };
        let pod = a.h.warm(function).await;
        let request =
            a.h.request("flaky.team", "/")
                .method(Method::POST)
                .header("prefer", "respond-async")
                .header("x-reply-status", "503")
                .body(Full::default())
                .expect("request");
        let (_, location) = accepted(&a.h.send(request).await);
        let state = until_state(&a.h, "flaky.team", &location, "dead").await;
        assert_eq!(state["attempts"], 2);
        assert!(
            state["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("503")),
            "{state}"
        );
        assert_eq!(pod.requests(), 2);
    })
    .await;
}

#[tokio::test]
async fn with_the_broker_down_async_requests_get_503_and_work_again_when_it_returns() {
    let mut server = NatsServer::for_test();
    let a = start(&server, false).await;
    a.h.apply(&Function::test("outage"));
    accepted(&a.h.send(post_async(&a.h, "outage.team", "/", b"1")).await);

    server.stop();
    let reply = a.h.send(post_async(&a.h, "outage.team", "/", b"2")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("x-zeroscale-error"), "broker_unavailable");
    assert!(reply.body.contains("not stored"), "{}", reply.body);

    server.restart().expect("restarts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = a.h.send(post_async(&a.h, "outage.team", "/", b"3")).await;
        if reply.status == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(a.store);
}

#[tokio::test]
async fn without_nats_an_async_request_gets_501_saying_how_to_enable_it() {
    bounded(async {
        let h = Harness::start().await;
        let pod = h.warm(Function::test("plain")).await;
        let reply = h.send(post_async(&h, "plain.team", "/", b"x")).await;
        assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED);
        assert!(reply.body.contains("--nats-url"), "{}", reply.body);
        assert_eq!(pod.requests(), 0);
        // Requests without the preference are untouched.
        assert_eq!(h.get("plain.team", "/").await.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn callbacks_to_loopback_are_refused_unless_allowed_and_allowed_ones_arrive() {
    bounded(async {
        let h = Harness::start().await;
        let mut receiver = Pod::named("receiver").start().await;
        let url = format!("http://{}/done", receiver.addr);
        let refusing = Loopback::new(
            h.cluster,
            Arc::clone(&h.functions),
            AddressPolicy::default(),
        );
        let refused = refusing
            .callback(url.clone(), Bytes::from_static(b"{}"))
            .await;
        assert!(
            matches!(refused, Err(CallbackError::Refused(ref why)) if why.contains("loopback")),
            "{refused:?}"
        );
        let localhost = format!("http://localhost:{}/done", receiver.addr.port());
        assert!(matches!(
            refusing
                .callback(localhost, Bytes::from_static(b"{}"))
                .await,
            Err(CallbackError::Refused(_))
        ));
        assert_eq!(receiver.requests(), 0);

        let allowing = Loopback::new(
            h.cluster,
            Arc::clone(&h.functions),
            AddressPolicy {
                allow: vec!["127.0.0.0/8".parse().expect("range")],
                deny: vec![],
            },
        );
        allowing
            .callback(url, Bytes::from_static(br#"{"state":"succeeded"}"#))
            .await
            .expect("delivered");
        let seen = receiver.arrival().await;
        assert_eq!(seen.path, "/done");
        assert_eq!(seen.headers["content-type"], "application/json");
    })
    .await;
}
