//! The activator's gateway steps end to end, in process: rate limits, CORS preflights at
//! zero, spans sent to a small OTLP receiver, and access log lines.

#[allow(dead_code)]
mod common;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use common::{FunctionFixture, Harness, Options, bounded};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use zeroscale_activator::access::AccessLog;
use zeroscale_activator::gateway::Gateway;
use zeroscale_activator::otlp::SpanExporter;
use zeroscale_api::Function;
use zeroscale_api::gateway::{Cors, RateLimit};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn limited(name: &str, per_second: f64, burst: i32) -> Function {
    let mut function = Function::test(name);
    function.spec.requests.rate_limit = Some(RateLimit {
        requests_per_second: Some(per_second),
        burst: Some(burst),
        per_client: None,
    });
    function
}

fn with_cors(name: &str) -> Function {
    let mut function = Function::test(name);
    function.spec.routing.cors = Some(Cors {
        allow_origins: vec!["https://*.example.com".into()],
        allow_methods: vec!["GET".into(), "PUT".into()],
        allow_headers: vec!["x-token".into()],
        expose_headers: vec!["x-pod".into()],
        allow_credentials: true,
        max_age: Some("1h".into()),
    });
    function
}

async fn start_with(gateway: Gateway) -> Harness {
    Harness::start_with(Options {
        gateway,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_burst_over_the_rate_limit_gets_429_with_retry_after_and_ratelimit_headers() {
    bounded(async {
        let h = Harness::start().await;
        // One request a minute, three at once: the fourth of a quick burst is refused.
        let pod = h.warm(limited("echo", 1.0 / 60.0, 3)).await;
        for _ in 0..3 {
            assert_eq!(h.get("echo.team", "/").await.status, StatusCode::OK);
        }
        let refused = h.get("echo.team", "/").await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = refused.header("retry-after").parse().expect("seconds");
        assert!((55..=60).contains(&retry_after), "{retry_after}");
        assert_eq!(refused.header("ratelimit-policy"), "\"function\";q=3;w=180");
        assert_eq!(
            refused.header("ratelimit"),
            format!("\"function\";r=0;t={retry_after}")
        );
        assert_eq!(refused.header("x-zeroscale-error"), "rate_limited");
        assert_eq!(
            pod.requests(),
            3,
            "the refused request never reached the pod"
        );
        assert_eq!(h.stats("echo").requests_total, 3);
    })
    .await;
}

#[tokio::test]
async fn each_activator_replica_enforces_its_share_of_the_limit() {
    bounded(async {
        let h = start_with(Gateway {
            replicas: 2,
            ..Gateway::default()
        })
        .await;
        h.warm(limited("echo", 1.0 / 60.0, 4)).await;
        for _ in 0..2 {
            assert_eq!(h.get("echo.team", "/").await.status, StatusCode::OK);
        }
        let refused = h.get("echo.team", "/").await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.header("ratelimit-policy").contains(";q=2;"));
    })
    .await;
}

#[tokio::test]
async fn a_preflight_at_zero_is_answered_without_waking_the_function() {
    bounded(async {
        let mut h = Harness::start().await;
        h.apply(&with_cors("shop"));
        let preflight = h
            .request("shop.team", "/cart")
            .method(Method::OPTIONS)
            .header(header::ORIGIN, "https://app.example.com")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "PUT")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "X-Token")
            .body(Full::default())
            .expect("request");
        let answer = h.send(preflight).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        assert_eq!(
            answer.header("access-control-allow-origin"),
            "https://app.example.com"
        );
        assert_eq!(answer.header("access-control-allow-methods"), "GET, PUT");
        assert_eq!(answer.header("access-control-allow-headers"), "x-token");
        assert_eq!(answer.header("access-control-allow-credentials"), "true");
        assert_eq!(answer.header("access-control-max-age"), "3600");
        assert!(answer.header("vary").contains("Origin"));

        let other = h
            .request("shop.team", "/cart")
            .method(Method::OPTIONS)
            .header(header::ORIGIN, "https://evil.test")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "PUT")
            .body(Full::default())
            .expect("request");
        let refused = h.send(other).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(refused.header("access-control-allow-origin"), "");

        assert!(h.pending_wakes().is_empty(), "no wake for a preflight");
        assert_eq!(h.stats("shop").requests_total, 0);
    })
    .await;
}

#[tokio::test]
async fn answers_to_allowed_origins_carry_the_cors_headers() {
    bounded(async {
        let h = Harness::start().await;
        h.warm(with_cors("shop")).await;
        let request = h
            .request("shop.team", "/cart")
            .header(header::ORIGIN, "https://app.example.com")
            .body(Full::default())
            .expect("request");
        let answer = h.send(request).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.header("access-control-allow-origin"),
            "https://app.example.com"
        );
        assert_eq!(answer.header("access-control-expose-headers"), "x-pod");
        assert_eq!(answer.header("vary"), "Origin");

        let plain = h.get("shop.team", "/cart").await;
        assert_eq!(plain.header("access-control-allow-origin"), "");
        assert_eq!(plain.header("vary"), "Origin");
    })
    .await;
}

/// An OTLP/HTTP receiver on 127.0.0.1:0 that hands each posted body to the test.
async fn otlp_receiver() -> (SocketAddr, mpsc::UnboundedReceiver<(String, String, Bytes)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (posted, posts) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let posted = posted.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let posted = posted.clone();
                async move {
                    let path = request.uri().path().to_owned();
                    let content_type = request
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let _ = posted.send((path, content_type, body));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, posts)
}

/// A counter for what a span exporter or an access log drops.
fn dropped() -> prometheus::IntCounter {
    prometheus::IntCounter::new("dropped", "dropped").expect("counter")
}

#[tokio::test]
async fn spans_reach_an_otlp_receiver_and_the_pod_gets_a_child_traceparent() {
    bounded(async {
        let (receiver, mut posts) = otlp_receiver().await;
        let endpoint = format!("http://{receiver}").parse().expect("uri");
        let h = start_with(Gateway {
            spans: Some(SpanExporter::start(&endpoint, dropped()).expect("exporter")),
            ..Gateway::default()
        })
        .await;
        let mut pod = h.warm(Function::test("echo")).await;
        let request = h
            .request("echo.team", "/")
            .header("traceparent", TRACEPARENT)
            .header("tracestate", "vendor=1")
            .body(Full::default())
            .expect("request");
        assert_eq!(h.send(request).await.status, StatusCode::OK);

        let arrival = pod.arrival().await;
        let sent = arrival.headers["traceparent"].to_str().expect("ascii");
        assert_eq!(&sent[..36], &TRACEPARENT[..36], "same trace");
        assert_ne!(&sent[36..52], &TRACEPARENT[36..52], "a new parent span");
        assert_eq!(arrival.headers["tracestate"], "vendor=1");

        let (path, content_type, body) = posts.recv().await.expect("spans posted");
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/json");
        let export: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let spans = export["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .expect("spans")
            .clone();
        let named = |name: &str| {
            spans
                .iter()
                .find(|span| span["name"] == name)
                .unwrap_or_else(|| panic!("a {name} span in {spans:?}"))
                .clone()
        };
        let (request, forward) = (named("request"), named("forward"));
        assert_eq!(request["traceId"], &TRACEPARENT[3..35]);
        assert_eq!(request["parentSpanId"], &TRACEPARENT[36..52]);
        assert_eq!(forward["parentSpanId"], request["spanId"]);
        assert_eq!(forward["spanId"], &sent[36..52], "the pod's parent");
        let attribute = |span: &serde_json::Value, key: &str| {
            span["attributes"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["key"] == key))
                .map(|a| a["value"].clone())
        };
        assert_eq!(
            attribute(&forward, "zeroscale.function"),
            Some(serde_json::json!({ "stringValue": "team/echo" }))
        );
        assert_eq!(
            attribute(&forward, "zeroscale.cold_start"),
            Some(serde_json::json!({ "boolValue": false }))
        );
        assert!(attribute(&forward, "zeroscale.pod").is_some());
    })
    .await;
}

/// A writer that hands what it is given to the test.
struct Lines(mpsc::UnboundedSender<Vec<u8>>);

impl Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(bytes.to_vec());
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_access_log_line_names_the_request_without_its_query_or_secrets() {
    bounded(async {
        let (sent, mut written) = mpsc::unbounded_channel();
        let h = start_with(Gateway {
            access_log: Some(AccessLog::to_writer(1.0, Lines(sent), dropped()).expect("log")),
            ..Gateway::default()
        })
        .await;
        h.warm(Function::test("echo")).await;
        let request = h
            .request("echo.team", "/items?token=secret")
            .header("traceparent", TRACEPARENT)
            .header(header::AUTHORIZATION, "Bearer secret")
            .body(Full::default())
            .expect("request");
        assert_eq!(h.send(request).await.status, StatusCode::OK);

        let mut text = Vec::new();
        while !text.ends_with(b"\n") {
            text.extend(written.recv().await.expect("a line"));
        }
        let line = String::from_utf8(text).expect("utf-8");
        assert!(!line.contains("secret"), "{line}");
        let entry: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(entry["function"], "team/echo");
        assert_eq!(entry["method"], "GET");
        assert_eq!(entry["path"], "/items");
        assert_eq!(entry["status"], 200);
        assert_eq!(entry["cold_start"], false);
        assert_eq!(entry["trace_id"], &TRACEPARENT[3..35]);
        assert!(
            entry["pod"]
                .as_str()
                .is_some_and(|pod| pod.starts_with("127.0.0.1:"))
        );
        assert!(entry["duration"].as_f64().is_some());
        assert!(
            entry["time"]
                .as_str()
                .is_some_and(|time| time.ends_with('Z'))
        );
    })
    .await;
}
