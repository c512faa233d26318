//! Client connection limits end to end: idle connections are closed after their
//! timeouts, requests in flight are not, and connections over the cap are refused.

#[allow(dead_code)] // helpers shared with proxy.rs that this file does not use
mod common;

use std::time::Duration;

use common::{FunctionFixture, Harness, Options, Pod, bounded, endpoint, read_head, until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use zeroscale_activator::connections::ConnectionLimits;
use zeroscale_activator::endpoints::EndpointState::Ready;
use zeroscale_activator::server::ServerLimits;
use zeroscale_api::Function;

/// A harness whose listeners close idle connections after `idle` and take at most
/// `max_connections` (0: no cap); hyper's own header timeout is far beyond the test.
async fn harness(idle: Duration, max_connections: usize) -> (Harness, prometheus::Registry) {
    let options = Options {
        limits: ServerLimits {
            header_read_timeout: Duration::from_secs(60),
            connections: ConnectionLimits {
                first_byte_timeout: idle,
                keep_alive_timeout: idle,
                max_connections,
            },
            ..Options::default().limits
        },
        ..Options::default()
    };
    let h = Harness::start_with(options).await;
    let registry = prometheus::Registry::new();
    h.metrics.register(&registry).expect("registers");
    (h, registry)
}

/// The value of the sample `series` (name and labels, as printed) in `registry`.
fn sample(registry: &prometheus::Registry, series: &str) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encodes");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().expect("a number"))
}

/// Reads until the peer closes; fails on data. An error counts as closed (a reset).
async fn closed_by_peer(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => panic!("the activator sent data on an idle connection"),
    }
}

const GET_HELLO: &[u8] = b"GET / HTTP/1.1\r\nhost: hello.team\r\n\r\n";

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed_after_the_first_byte_timeout() {
    bounded(async {
        let (h, registry) = harness(Duration::from_millis(200), 0).await;
        let opened = Instant::now();
        let mut silent = TcpStream::connect(h.cluster).await.expect("connects");
        closed_by_peer(&mut silent).await;
        assert!(opened.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            sample(
                &registry,
                r#"zeroscale_activator_connections_closed_idle_total{reason="first_byte"}"#
            ),
            1.0
        );
        until("the closed connection is no longer counted", || {
            sample(&registry, "zeroscale_activator_connections") == 0.0
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_keep_alive_connection_idle_between_requests_is_closed() {
    bounded(async {
        let (h, registry) = harness(Duration::from_millis(200), 0).await;
        let _pod = h.warm(Function::test("hello")).await;
        let mut client = TcpStream::connect(h.cluster).await.expect("connects");
        client.write_all(GET_HELLO).await.expect("sends");
        let head = read_head(&mut client).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .expect("a content-length")
            .trim()
            .parse()
            .expect("a number");
        let mut body = vec![0u8; length];
        client.read_exact(&mut body).await.expect("the body");

        let answered = Instant::now();
        closed_by_peer(&mut client).await;
        assert!(answered.elapsed() >= Duration::from_millis(150));
        assert_eq!(
            sample(
                &registry,
                r#"zeroscale_activator_connections_closed_idle_total{reason="keep_alive"}"#
            ),
            1.0
        );
    })
    .await;
}

#[tokio::test]
async fn a_request_in_flight_longer_than_the_idle_timeout_is_answered() {
    bounded(async {
        let (h, registry) = harness(Duration::from_millis(100), 0).await;
        let pod = Pod::named("slow")
            .work(Duration::from_millis(500))
            .start()
            .await;
        h.apply(&Function::test("slow"));
        h.set_pods("slow", vec![endpoint(pod.addr, Ready)]);

        let reply = h.get("slow.team", "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.pod(), "slow");
        assert_eq!(
            sample(
                &registry,
                r#"zeroscale_activator_connections_closed_idle_total{reason="keep_alive"}"#
            ),
            0.0
        );
    })
    .await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_with_503_and_counted() {
    bounded(async {
        let (h, registry) = harness(Duration::from_secs(30), 2).await;
        let _pod = h.warm(Function::test("hello")).await;
        let _first = TcpStream::connect(h.cluster).await.expect("connects");
        until("the first connection is counted", || {
            sample(&registry, "zeroscale_activator_connections") == 1.0
        })
        .await;

        // At the cap minus one, a request still goes through.
        let mut second = TcpStream::connect(h.cluster).await.expect("connects");
        second.write_all(GET_HELLO).await.expect("sends");
        let head = read_head(&mut second).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");

        let mut third = TcpStream::connect(h.cluster).await.expect("connects");
        let head = read_head(&mut third).await;
        assert!(head.starts_with("http/1.1 503"), "{head}");
        assert!(
            head.contains("x-zeroscale-error: too_many_connections"),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        let mut body = String::new();
        third.read_to_string(&mut body).await.expect("the body");
        assert_eq!(
            body,
            "the activator has too many open connections; retry in a moment\n"
        );
        assert_eq!(
            sample(&registry, "zeroscale_activator_connections_refused_total"),
            1.0
        );
        assert_eq!(sample(&registry, "zeroscale_activator_connections"), 2.0);
    })
    .await;
}
