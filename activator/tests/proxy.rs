//! The activator end to end, in process: its listeners on 127.0.0.1:0, Functions and
//! endpoints driven as the watches would, and real HTTP servers as pods.

mod common;

use std::time::Duration;

use common::{
    FunctionFixture, Gate, Harness, Options, Pod, bounded, closed_port, endpoint, read_head,
    request_to, until,
};
use futures::future::join_all;
use http::{Method, StatusCode, Version, header};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use zeroscale_activator::endpoints::EndpointState::{NotReady, Ready, Terminating};
use zeroscale_activator::functions::Listener;
use zeroscale_activator::server::{self, ServerLimits};
use zeroscale_api::Function;
use zeroscale_api::routing::FunctionKey;

fn key(name: &str) -> FunctionKey {
    FunctionKey::new(common::NAMESPACE, name)
}

#[tokio::test]
async fn warm_request_is_proxied_with_status_headers_and_body_intact() {
    bounded(async {
        let mut h = Harness::start().await;
        let mut pod = h.warm(Function::test("echo")).await;

        let request = h
            .request("echo.team", "/items/7?colour=blue")
            .method(Method::PUT)
            .header("x-request-id", "abc-123")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-reply-status", "201")
            .body(Full::new(Bytes::from_static(br#"{"name":"seven"}"#)))
            .expect("request");
        let reply = h.send(request).await;

        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.pod(), "echo");
        assert_eq!(reply.header("x-echo-method"), "PUT");
        assert_eq!(reply.header("x-echo-target"), "/items/7?colour=blue");
        assert_eq!(reply.header("x-request-id"), "abc-123");
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(reply.header("x-zeroscale-error"), "");
        assert_eq!(reply.body, r#"{"name":"seven"}"#);

        let seen = pod.arrival().await;
        assert_eq!(seen.headers[header::HOST], "echo.team");
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen.headers["x-forwarded-host"], "echo.team");
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        assert!(h.pending_wakes().is_empty(), "a warm Function is not woken");
    })
    .await;
}

#[tokio::test]
async fn every_in_cluster_host_form_reaches_the_function() {
    bounded(async {
        let h = Harness::start().await;
        let pod = h.warm(Function::test("echo")).await;

        for host in [
            "echo.team",
            "echo.team.svc",
            "echo.team.svc.cluster.local",
            "echo.team.svc.cluster.local.",
            "Echo.Team:8080",
            "echo",
        ] {
            let reply = h.get(host, "/").await;
            assert_eq!(reply.status, StatusCode::OK, "{host}: {reply:?}");
            assert_eq!(reply.pod(), "echo", "{host}");
        }
        assert_eq!(pod.requests(), 6);
    })
    .await;
}

#[tokio::test]
async fn public_listener_serves_public_hosts_only() {
    bounded(async {
        let h = Harness::start().await;
        let public = h.warm(Function::test("web").host("www.example.com")).await;
        let private = h
            .warm(
                Function::test("internal")
                    .host("intranet.example.com")
                    .cluster_local(),
            )
            .await;
        let get = |listener, host: &str| {
            h.send(
                request_to(listener, host, "/")
                    .body(Full::default())
                    .expect("request"),
            )
        };

        for host in ["web.team.fn.example.com", "www.example.com"] {
            let reply = get(h.public, host).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{host} on the public listener"
            );
            assert_eq!(reply.pod(), "web", "{host}");
        }
        for host in [
            "web.team",
            "web.team.svc.cluster.local",
            "web",
            "internal.team",
            "internal.team.fn.example.com",
            "intranet.example.com",
        ] {
            let reply = get(h.public, host).await;
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{host} on the public listener"
            );
            assert_eq!(reply.header("x-zeroscale-error"), "unknown_host", "{host}");
        }

        for host in ["internal.team", "intranet.example.com"] {
            let reply = get(h.cluster, host).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{host} on the cluster listener"
            );
            assert_eq!(reply.pod(), "internal", "{host}");
        }
        assert_eq!((public.requests(), private.requests()), (2, 2));
    })
    .await;
}

#[tokio::test]
async fn longest_path_prefix_picks_the_function() {
    bounded(async {
        let h = Harness::start().await;
        let cart = h
            .warm(
                Function::test("cart")
                    .host("shop.example.com")
                    .path_prefix("/cart"),
            )
            .await;
        let catalog = h
            .warm(Function::test("catalog").host("shop.example.com"))
            .await;
        let api = h.warm(Function::test("api").path_prefix("/v1")).await;

        for (host, path, pod) in [
            ("shop.example.com", "/cart", "cart"),
            ("shop.example.com", "/cart/items?id=7", "cart"),
            ("shop.example.com", "/cartography", "catalog"),
            ("shop.example.com", "/", "catalog"),
            ("api.team", "/v1/users", "api"),
        ] {
            let reply = h.get(host, path).await;
            assert_eq!(reply.status, StatusCode::OK, "{host}{path}");
            assert_eq!(reply.pod(), pod, "{host}{path}");
            assert_eq!(
                reply.header("x-echo-target"),
                path,
                "the path reaches the pod unchanged"
            );
        }

        let reply = h.get("api.team", "/v2/users").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.header("x-zeroscale-error"), "no_route_for_path");
        assert_eq!(
            (cart.requests(), catalog.requests(), api.requests()),
            (2, 2, 1)
        );
    })
    .await;
}

#[tokio::test]
async fn unknown_host_gets_404_with_a_plain_text_reason() {
    bounded(async {
        let mut h = Harness::start().await;
        let pod = h.warm(Function::test("echo")).await;

        let reply = h.get("nobody.team", "/").await;

        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.header("x-zeroscale-error"), "unknown_host");
        assert_eq!(reply.header("content-type"), "text/plain; charset=utf-8");
        assert!(
            reply.body.starts_with("no Function answers on this host")
                && reply.body.ends_with('\n'),
            "{:?}",
            reply.body
        );
        assert_eq!(pod.requests(), 0);
        assert!(h.pending_wakes().is_empty());
    })
    .await;
}

#[tokio::test]
async fn request_at_zero_is_held_wakes_the_function_and_answers_once_a_pod_is_ready() {
    bounded(async {
        let mut h = Harness::start().await;
        h.apply(&Function::test("echo"));

        let held = tokio::spawn(h.get("echo.team", "/hello"));
        assert_eq!(h.next_wake().await, key("echo"));
        assert_eq!(h.stats("echo").queued, 1);
        assert!(
            !held.is_finished(),
            "the request is held while no pod is ready"
        );

        let pod = Pod::named("echo").start().await;
        h.set_pods("echo", vec![endpoint(pod.addr, Ready)]);

        let reply = held.await.expect("request task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.pod(), "echo");
        assert_eq!(reply.header("x-echo-target"), "/hello");
        assert_eq!(h.stats("echo").queued, 0);
        assert!(h.pending_wakes().is_empty(), "one request wakes once");
    })
    .await;
}

#[tokio::test]
async fn five_hundred_requests_at_zero_all_answer_once_a_pod_is_ready() {
    bounded(async {
        let mut h = Harness::start().await;
        h.apply(&Function::test("echo"));

        let held: Vec<_> = (0..500)
            .map(|n| tokio::spawn(h.get("echo.team", &format!("/{n}"))))
            .collect();
        assert_eq!(h.next_wake().await, key("echo"));
        until("500 requests are held", || h.stats("echo").queued == 500).await;

        let pod = Pod::named("echo").start().await;
        h.set_pods("echo", vec![endpoint(pod.addr, Ready)]);

        for (n, reply) in join_all(held).await.into_iter().enumerate() {
            let reply = reply.expect("request task");
            assert_eq!(reply.status, StatusCode::OK, "request {n}: {reply:?}");
            assert_eq!(reply.header("x-echo-target"), format!("/{n}"));
        }
        assert_eq!(pod.requests(), 500);
        assert!(
            h.pending_wakes().is_empty(),
            "the burst wakes the Function once"
        );
        let stats = h.stats("echo");
        assert_eq!((stats.queued, stats.in_flight), (0, 0));
        // The consoles' cold-start distribution: cumulative counts, all within 60 s.
        assert!(stats.cold_starts_total > 0);
        assert_eq!(stats.cold_start_buckets.len(), 16);
        assert_eq!(
            stats.cold_start_buckets.last(),
            Some(&stats.cold_starts_total)
        );
        assert!(stats.cold_start_buckets.is_sorted());
        assert_eq!(stats.server_errors_total, 0);
    })
    .await;
}

#[tokio::test]
async fn full_queue_answers_503_with_retry_after() {
    bounded(async {
        let mut h = Harness::start().await;
        h.apply(&Function::test("echo").max_queued_requests(2));

        let _held = [
            tokio::spawn(h.get("echo.team", "/")),
            tokio::spawn(h.get("echo.team", "/")),
        ];
        h.next_wake().await;
        until("two requests are held", || h.stats("echo").queued == 2).await;

        let reply = h.get("echo.team", "/").await;

        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.header("retry-after"), "1");
        assert_eq!(reply.header("x-zeroscale-error"), "queue_full");
        assert_eq!(
            h.stats("echo").queued,
            2,
            "the refused request did not queue"
        );
        assert_eq!(h.stats("echo").server_errors_total, 1, "the 503 counts");
        assert_eq!(
            h.stats("echo").responses_total,
            1,
            "the only response so far"
        );
        assert!(
            h.stats("echo").cold_start_buckets.is_empty(),
            "no cold start ended yet"
        );
    })
    .await;
}

#[tokio::test]
async fn without_a_queue_a_request_at_zero_wakes_the_function_and_is_told_to_retry() {
    bounded(async {
        let mut h = Harness::start().await;
        h.apply(&Function::test("echo").max_queued_requests(0));

        let refused = h.get("echo.team", "/").await;

        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.header("retry-after"), "1");
        assert_eq!(
            refused.header("x-zeroscale-error"),
            "not_held_while_starting"
        );
        assert_eq!(h.next_wake().await, key("echo"), "the refusal woke it");
        assert_eq!(h.stats("echo").queued, 0);

        let pod = Pod::named("echo").start().await;
        h.set_pods("echo", vec![endpoint(pod.addr, Ready)]);
        let retried = h.get("echo.team", "/").await;
        assert_eq!(retried.status, StatusCode::OK);
        assert_eq!(retried.pod(), "echo");
    })
    .await;
}

#[tokio::test]
async fn held_request_times_out_with_504_after_max_queue_wait() {
    bounded(async {
        let mut h = Harness::start().await;
        h.apply(&Function::test("echo").max_queue_wait("500ms"));

        let started = Instant::now();
        let held = tokio::spawn(h.get("echo.team", "/"));
        h.next_wake().await;
        let reply = held.await.expect("request task");
        let waited = started.elapsed();

        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(reply.header("x-zeroscale-error"), "activation_timeout");
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
            "answered after {waited:?}"
        );
        assert_eq!(h.stats("echo").queued, 0, "the request left the queue");
    })
    .await;
}

#[tokio::test]
async fn client_that_disconnects_while_held_frees_its_queue_slot() {
    bounded(async {
        let mut h = Harness::start().await;
        h.apply(&Function::test("echo").max_queued_requests(1));

        let mut first = TcpStream::connect(h.cluster).await.expect("connect");
        first
            .write_all(b"GET / HTTP/1.1\r\nHost: echo.team\r\n\r\n")
            .await
            .expect("request");
        h.next_wake().await;
        let refused = h.get("echo.team", "/").await;
        assert_eq!(
            refused.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "the queue is full"
        );

        drop(first);
        until("the gone client leaves the queue", || {
            h.stats("echo").queued == 0
        })
        .await;
        let second = tokio::spawn(h.get("echo.team", "/"));
        until("the second request is held", || h.stats("echo").queued == 1).await;

        let pod = Pod::named("echo").start().await;
        h.set_pods("echo", vec![endpoint(pod.addr, Ready)]);
        let reply = second.await.expect("request task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            pod.requests(),
            1,
            "the gone client's request was never sent"
        );
    })
    .await;
}

#[tokio::test]
async fn function_that_cannot_start_fails_held_requests_fast_with_the_reason() {
    bounded(async {
        let mut h = Harness::start().await;
        h.apply(&Function::test("broken").max_queue_wait("60s"));
        let held = tokio::spawn(h.get("broken.team", "/"));
        h.next_wake().await;

        let failed_at = Instant::now();
        h.apply(
            &Function::test("broken")
                .max_queue_wait("60s")
                .cannot_start("image example.com/f:1 cannot be pulled"),
        );
        let reply = held.await.expect("request task");

        assert!(
            failed_at.elapsed() < Duration::from_secs(2),
            "failed after {:?}",
            failed_at.elapsed()
        );
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.header("x-zeroscale-error"), "cannot_start");
        assert_eq!(reply.header("retry-after"), "5");
        assert!(
            reply
                .body
                .contains("DeploymentFailed: image example.com/f:1 cannot be pulled"),
            "{:?}",
            reply.body
        );

        let newcomer = h.get("broken.team", "/").await;
        assert_eq!(newcomer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(newcomer.header("x-zeroscale-error"), "cannot_start");
        assert!(
            h.pending_wakes().is_empty(),
            "a newcomer does not wait or wake"
        );
    })
    .await;
}

#[tokio::test]
async fn container_concurrency_one_never_sends_a_pod_two_requests_at_once() {
    bounded(async {
        let h = Harness::start().await;
        h.apply(&Function::test("echo").container_concurrency(1));
        let pod = Pod::named("echo")
            .work(Duration::from_millis(5))
            .start()
            .await;
        h.set_pods("echo", vec![endpoint(pod.addr, Ready)]);

        let replies = join_all((0..20).map(|_| h.get("echo.team", "/"))).await;

        assert!(replies.iter().all(|reply| reply.status == StatusCode::OK));
        assert_eq!(pod.requests(), 20);
        assert_eq!(pod.max_in_flight(), 1);
    })
    .await;
}

#[tokio::test]
async fn load_spreads_across_three_pods() {
    bounded(async {
        let h = Harness::start().await;
        h.apply(&Function::test("echo"));
        let mut pods = Vec::new();
        for name in ["a", "b", "c"] {
            pods.push(
                Pod::named(name)
                    .work(Duration::from_millis(1))
                    .start()
                    .await,
            );
        }
        h.set_pods(
            "echo",
            pods.iter().map(|pod| endpoint(pod.addr, Ready)).collect(),
        );

        let replies = join_all((0..300).map(|_| h.get("echo.team", "/"))).await;

        assert!(replies.iter().all(|reply| reply.status == StatusCode::OK));
        let shares: Vec<usize> = pods.iter().map(Pod::requests).collect();
        assert_eq!(shares.iter().sum::<usize>(), 300);
        assert!(
            shares.iter().all(|&share| share >= 45),
            "each pod gets at least 15%: {shares:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn active_probing_releases_held_requests_before_the_endpoint_is_ready() {
    bounded(async {
        let h = Harness::start().await;
        h.apply(&Function::test("echo").readiness_path());
        let pod = Pod::named("starting").start().await;
        h.set_pods("echo", vec![endpoint(pod.addr, NotReady)]);

        let reply = h.get("echo.team", "/").await;

        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.pod(), "starting");
        assert!(
            pod.probes() >= 1,
            "the pod was probed on its readiness path"
        );
    })
    .await;
}

#[tokio::test]
async fn starting_pod_gets_no_request_until_it_answers_its_readiness_probe() {
    bounded(async {
        let h = Harness::start().await;
        h.apply(&Function::test("echo").readiness_path());
        let ready = Gate::new();
        let pod = Pod::named("starting").unready_until(&ready).start().await;
        h.set_pods("echo", vec![endpoint(pod.addr, NotReady)]);

        let held = tokio::spawn(h.get("echo.team", "/"));
        until("the pod fails a few probes", || pod.probes() >= 3).await;
        assert!(
            !held.is_finished(),
            "the request waits while the probe fails"
        );
        assert_eq!(pod.requests(), 0);

        ready.open();
        let reply = held.await.expect("request task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.pod(), "starting");
        assert_eq!(pod.requests(), 1);
    })
    .await;
}

#[tokio::test]
async fn terminating_pod_gets_no_new_requests() {
    bounded(async {
        let h = Harness::start().await;
        h.apply(&Function::test("echo"));
        let live = Pod::named("live").start().await;
        let leaving = Pod::named("leaving").start().await;
        h.set_pods(
            "echo",
            vec![
                endpoint(live.addr, Ready),
                endpoint(leaving.addr, Terminating),
            ],
        );

        let replies = join_all((0..50).map(|_| h.get("echo.team", "/"))).await;

        assert!(replies.iter().all(|reply| reply.pod() == "live"));
        assert_eq!((live.requests(), leaving.requests()), (50, 0));
    })
    .await;
}

#[tokio::test]
async fn pod_that_refuses_connections_is_skipped_for_a_live_one() {
    bounded(async {
        let h = Harness::start().await;
        h.apply(&Function::test("echo"));
        let live = Pod::named("live").start().await;
        let dead = closed_port().await;
        h.set_pods(
            "echo",
            vec![endpoint(dead, Ready), endpoint(live.addr, Ready)],
        );

        for _ in 0..20 {
            let reply = h.get("echo.team", "/").await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            assert_eq!(reply.pod(), "live");
        }

        assert_eq!(live.requests(), 20);
        let function = h
            .functions
            .route(Listener::Cluster, "echo.team", "/")
            .expect("routed");
        let ready: Vec<_> = function
            .capacity
            .ready_pods()
            .iter()
            .map(|pod| pod.addr)
            .collect();
        assert_eq!(ready, [live.addr], "the dead pod was tried and set aside");
    })
    .await;
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight_and_held_and_refuses_new_connections() {
    bounded(async {
        let mut h = Harness::start().await;
        let gate = Gate::new();
        let mut slow = Pod::named("slow").gate(&gate).start().await;
        h.apply(&Function::test("slow"));
        h.set_pods("slow", vec![endpoint(slow.addr, Ready)]);
        h.apply(&Function::test("cold"));

        let in_flight = tokio::spawn(h.get("slow.team", "/"));
        slow.arrival().await;
        let held = tokio::spawn(h.get("cold.team", "/"));
        assert_eq!(h.next_wake().await, key("cold"));

        h.stop();
        let cluster = h.cluster;
        let refused = async {
            let mut ticks = tokio::time::interval(Duration::from_millis(1));
            while TcpStream::connect(cluster).await.is_ok() {
                ticks.tick().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), refused)
            .await
            .expect("new connections are refused after the shutdown signal");
        assert!(!in_flight.is_finished() && !held.is_finished());

        let cold = Pod::named("cold").start().await;
        h.set_pods("cold", vec![endpoint(cold.addr, Ready)]);
        let reply = held.await.expect("request task");
        assert_eq!(reply.status, StatusCode::OK, "the held request completes");
        assert_eq!(reply.pod(), "cold");

        gate.open();
        let reply = in_flight.await.expect("request task");
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "the request in flight completes"
        );
        assert_eq!(reply.pod(), "slow");

        h.stopped().await;
    })
    .await;
}

#[tokio::test]
async fn request_head_over_the_header_limit_gets_431() {
    bounded(async {
        let h = Harness::start_with(Options {
            limits: ServerLimits {
                max_header_bytes: 16 * 1024,
                ..Options::default().limits
            },
            ..Options::default()
        })
        .await;
        let pod = h.warm(Function::test("echo")).await;
        let with_header = |bytes: usize| {
            h.request("echo.team", "/")
                .header("x-padding", "a".repeat(bytes))
                .body(Full::default())
                .expect("request")
        };

        let within = h.send(with_header(8 * 1024)).await;
        assert_eq!(within.status, StatusCode::OK);

        // Over the configured 16 KiB, under the default 64 KiB: the limit is the one set.
        let over = h.send(with_header(32 * 1024)).await;
        assert_eq!(over.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(pod.requests(), 1);
    })
    .await;
}

#[tokio::test]
async fn declared_body_over_max_body_bytes_gets_413() {
    bounded(async {
        let h = Harness::start().await;
        let pod = h.warm(Function::test("echo").max_body_bytes(1024)).await;
        let post = |bytes: usize| {
            h.request("echo.team", "/upload")
                .method(Method::POST)
                .body(Full::new(Bytes::from(vec![b'x'; bytes])))
                .expect("request")
        };

        let over = h.send(post(2048)).await;
        assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(over.header("x-zeroscale-error"), "body_too_large");
        assert_eq!(pod.requests(), 0, "the pod never saw it");

        let within = h.send(post(1024)).await;
        assert_eq!(within.status, StatusCode::OK);
        assert_eq!(within.body.len(), 1024);
    })
    .await;
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_through_the_server_and_holds_the_pods_slot() {
    bounded(async {
        let h = Harness::start().await;
        let mut pod = h.warm(Function::test("echo")).await;

        let mut client = TcpStream::connect(h.cluster).await.expect("connect");
        client
            .write_all(
                b"GET /chat HTTP/1.1\r\nHost: echo.team\r\nConnection: Upgrade\r\n\
                  Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .await
            .expect("request");
        let head = read_head(&mut client).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
        let seen = pod.arrival().await;
        assert_eq!(seen.path, "/chat");
        assert_eq!(seen.headers[header::UPGRADE], "websocket");

        for message in [&b"ping"[..], b"a longer message through the tunnel"] {
            client.write_all(message).await.expect("write");
            let mut echoed = vec![0u8; message.len()];
            client.read_exact(&mut echoed).await.expect("echo");
            assert_eq!(echoed, message);
        }
        assert_eq!(
            h.stats("echo").in_flight,
            1,
            "the open tunnel holds its slot"
        );

        client.shutdown().await.expect("close");
        until("the closed tunnel frees its slot", || {
            h.stats("echo").in_flight == 0
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn h2c_client_is_served_on_the_same_port() {
    bounded(async {
        let h = Harness::start().await;
        let mut pod = h.warm(Function::test("echo")).await;
        let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();

        let replies =
            join_all(
                (0..10).map(|n| {
                    let request = h
                        .request("echo.team", &format!("/{n}"))
                        .method(Method::POST)
                        .body(Full::new(Bytes::from(format!("body {n}"))))
                        .expect("request");
                    let h2 = h2.clone();
                    async move {
                        common::Reply::read(h2.request(request).await.expect("response")).await
                    }
                }),
            )
            .await;

        for (n, reply) in replies.iter().enumerate() {
            assert_eq!(reply.version, Version::HTTP_2);
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body, format!("body {n}"));
        }
        let seen = pod.arrival().await;
        assert_eq!(seen.version, Version::HTTP_11, "the pod speaks HTTP/1.1");
        assert_eq!(seen.headers[header::HOST], "echo.team");
        let http1 = h.get("echo.team", "/").await;
        assert_eq!(http1.version, Version::HTTP_11);
        assert_eq!(http1.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn h2c_request_naming_the_function_only_in_its_authority_is_routed() {
    bounded(async {
        let h = Harness::start().await;
        let mut pod = h.warm(Function::test("echo")).await;
        let stream = TcpStream::connect(h.cluster).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2c handshake");
        tokio::spawn(connection);

        let request = http::Request::get("http://echo.team/by-authority")
            .body(Full::<Bytes>::default())
            .expect("request");
        assert!(!request.headers().contains_key(header::HOST));
        let reply =
            common::Reply::read(sender.send_request(request).await.expect("response")).await;

        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.header("x-echo-target"), "/by-authority");
        let seen = pod.arrival().await;
        assert_eq!(
            seen.headers[header::HOST],
            "echo.team",
            "the authority becomes the Host"
        );
    })
    .await;
}

#[tokio::test]
async fn time_held_counts_against_requests_timeout() {
    bounded(async {
        let h = Harness::start().await;
        h.apply(
            &Function::test("echo")
                .container_concurrency(1)
                .request_timeout("500ms"),
        );
        let pod = Pod::named("echo")
            .work(Duration::from_millis(400))
            .start()
            .await;
        h.set_pods("echo", vec![endpoint(pod.addr, Ready)]);

        // The second request waits ~400 ms for the pod, then takes ~400 ms: ~800 ms in
        // all, past the 500 ms the Function allows a request from arrival to response.
        let started = Instant::now();
        let (first, second) = tokio::join!(h.get("echo.team", "/"), async {
            until("the first request is in flight", || {
                h.stats("echo").in_flight == 1
            })
            .await;
            h.get("echo.team", "/").await
        });

        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(
            second.status,
            StatusCode::GATEWAY_TIMEOUT,
            "answered after {:?}: {second:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn stats_count_requests_and_sampled_concurrency() {
    bounded(async {
        let h = Harness::start().await;
        let gate = Gate::new();
        let mut pod = Pod::named("echo").gate(&gate).start().await;
        h.apply(&Function::test("echo"));
        h.set_pods("echo", vec![endpoint(pod.addr, Ready)]);
        tokio::spawn(server::sample_load(
            std::sync::Arc::clone(&h.functions),
            Duration::from_millis(5),
            h.stopping(),
        ));

        let registry = prometheus::Registry::new();
        h.metrics.register(&registry).expect("registers");
        let in_flight_gauge = || {
            registry
                .gather()
                .iter()
                .find(|family| family.name() == "zeroscale_activator_in_flight_requests")
                .and_then(|family| {
                    family
                        .get_metric()
                        .first()
                        .map(|m| m.get_gauge().get_value())
                })
        };

        let held = tokio::spawn(h.get("echo.team", "/"));
        pod.arrival().await;
        assert_eq!(h.stats("echo").in_flight, 1);
        until("sampled concurrency is counted", || {
            h.stats("echo").concurrency_seconds_total > 0.0
        })
        .await;
        until("the sampled in-flight gauge shows the request", || {
            in_flight_gauge() == Some(1.0)
        })
        .await;
        gate.open();
        assert_eq!(held.await.expect("request task").status, StatusCode::OK);

        for _ in 0..9 {
            assert_eq!(h.get("echo.team", "/").await.status, StatusCode::OK);
        }
        let unrouted = h.get("nobody.team", "/").await;
        assert_eq!(unrouted.status, StatusCode::NOT_FOUND);

        let stats = h.stats("echo");
        assert_eq!(stats.requests_total, 10);
        assert_eq!((stats.in_flight, stats.queued), (0, 0));
    })
    .await;
}
