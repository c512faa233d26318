//! The forwarder end to end: real hyper servers on loopback stand in for the client,
//! the activator and the pod.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::*;
use crate::errors::{BoxError, ERROR_HEADER};
use headers::{KEEP_ALIVE, PROXY_CONNECTION};

const HOST: &str = "echo.default";
/// Every test ends within this, pass or fail.
const BOUND: Duration = Duration::from_secs(30);
const MIB: usize = 1024 * 1024;

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(BOUND, test)
        .await
        .expect("the test did not finish in time")
}

/// How long the pods of these tests may take to start their answers.
const RESPONSE_START: Duration = Duration::from_secs(10);

fn config() -> ForwarderConfig {
    ForwarderConfig {
        connect_timeout: Duration::from_secs(1),
        ..ForwarderConfig::default()
    }
}

fn lock<T>(slot: &Mutex<T>) -> MutexGuard<'_, T> {
    slot.lock().expect("not poisoned")
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

/// Serves `handle` on a fresh port over HTTP/1.1, or HTTP/2 with prior knowledge;
/// HTTP/1.1 connections may upgrade.
async fn serve<H, F, B>(h2c: bool, handle: H) -> SocketAddr
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let handle = handle.clone();
            let service = service_fn(move |req| {
                let response = handle(req, peer);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let io = TokioIo::new(stream);
            tokio::spawn(async move {
                let _ = if h2c {
                    http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    http1::Builder::new()
                        .serve_connection(io, service)
                        .with_upgrades()
                        .await
                };
            });
        }
    });
    addr
}

/// Sends `req`, from `client` over `scheme`, to `pod` in one attempt with nothing held,
/// and answers with the pod's response or the error's.
async fn forward(
    forwarder: &Forwarder,
    req: Request<Incoming>,
    pod: SocketAddr,
    protocol: PodProtocol,
    client: SocketAddr,
    scheme: &str,
    response_start_timeout: Duration,
) -> Response<ResponseBody> {
    let outbound = match Outbound::new(req, client, scheme) {
        Ok(outbound) => outbound,
        Err(error) => return error.into_response(),
    };
    forwarder
        .send(outbound, pod, protocol, response_start_timeout, (), None)
        .await
        .unwrap_or_else(|failed| failed.error.into_response())
}

/// The activator under test: forwards every request to `pod`, waiting at most
/// `response_start_timeout` for its answer.
async fn activator(
    response_start_timeout: Duration,
    pod: SocketAddr,
    protocol: PodProtocol,
) -> SocketAddr {
    let forwarder = Forwarder::new(&config());
    serve(false, move |req, client| {
        let forwarder = forwarder.clone();
        async move {
            let timeout = response_start_timeout;
            forward(&forwarder, req, pod, protocol, client, "http", timeout).await
        }
    })
    .await
}

/// One request over a fresh HTTP/1.1 connection.
async fn send<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender.send_request(req).await.expect("response")
}

fn request(method: Method, target: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(target)
        .header(header::HOST, HOST)
}

async fn text(body: Incoming) -> String {
    let bytes = body.collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

/// A pod that reports each request's head and body, then answers 200 "ok".
async fn recording_pod() -> (SocketAddr, mpsc::UnboundedReceiver<(Parts, Bytes)>) {
    let (seen, heads) = mpsc::unbounded_channel();
    let addr = serve(false, move |req: Request<Incoming>, _| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("request body").to_bytes();
            let _ = seen.send((parts, body));
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    (addr, heads)
}

/// Every value of header `name`, in order.
pub(super) fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|value| value.to_str().expect("ascii"))
        .collect()
}

#[tokio::test]
async fn request_and_response_pass_through_intact() {
    bounded(async {
        let pod = serve(false, |req: Request<Incoming>, _| async move {
            let (parts, body) = req.into_parts();
            assert_eq!(parts.method, Method::PUT);
            assert_eq!(parts.uri, "/items/7?colour=blue");
            assert_eq!(parts.headers[header::HOST], HOST);
            assert_eq!(parts.headers["x-request-id"], "abc");
            let body = body.collect().await.expect("request body").to_bytes();
            assert_eq!(&body[..], b"request body");
            Response::builder()
                .status(StatusCode::CREATED)
                .header("x-reply", "yes")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Full::new(Bytes::from_static(b"response body")))
                .expect("response")
        })
        .await;
        let activator = activator(RESPONSE_START, pod, PodProtocol::Http1).await;

        let req = request(Method::PUT, "/items/7?colour=blue")
            .header("x-request-id", "abc")
            .body(Full::new(Bytes::from_static(b"request body")))
            .expect("request");
        let response = send(activator, req).await;

        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["x-reply"], "yes");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain");
        assert!(!response.headers().contains_key(ERROR_HEADER));
        assert_eq!(text(response.into_body()).await, "response body");
    })
    .await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    bounded(async {
        let (seen, mut heads) = mpsc::unbounded_channel();
        let pod = serve(false, move |req: Request<Incoming>, _| {
            let _ = seen.send(req.into_parts().0);
            async {
                Response::builder()
                    .header(header::CONNECTION, "x-internal")
                    .header("x-internal", "pod secret")
                    .header(KEEP_ALIVE, "timeout=5")
                    .header(header::UPGRADE, "websocket")
                    .header(header::TRAILER, "x-checksum")
                    .header("x-kept", "end to end")
                    .body(Empty::<Bytes>::new())
                    .expect("response")
            }
        })
        .await;
        let activator = activator(RESPONSE_START, pod, PodProtocol::Http1).await;

        let req = request(Method::GET, "/")
            .header(header::CONNECTION, "x-secret, keep-alive")
            .header(header::CONNECTION, "x-other")
            .header("x-secret", "client secret")
            .header("x-other", "also secret")
            .header(KEEP_ALIVE, "timeout=5")
            .header(PROXY_CONNECTION, "keep-alive")
            .header(header::PROXY_AUTHORIZATION, "Basic cHJveHk6c2VjcmV0")
            .header(header::TE, "gzip, trailers;q=1")
            .header(header::TRAILER, "x-checksum")
            .header(header::UPGRADE, "websocket")
            .header("x-kept", "end to end")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = send(activator, req).await;

        let head = heads.recv().await.expect("the pod saw the request");
        for name in [
            "connection",
            "x-secret",
            "x-other",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "trailer",
            "upgrade",
            "transfer-encoding",
        ] {
            assert!(!head.headers.contains_key(name), "{name} reached the pod");
        }
        assert_eq!(values(&head.headers, "te"), ["trailers"]);
        assert_eq!(values(&head.headers, "x-kept"), ["end to end"]);

        for name in [
            "connection",
            "x-internal",
            "keep-alive",
            "upgrade",
            "trailer",
        ] {
            assert!(
                !response.headers().contains_key(name),
                "{name} reached the client"
            );
        }
        assert_eq!(values(response.headers(), "x-kept"), ["end to end"]);
    })
    .await;
}

#[tokio::test]
async fn forwarded_headers_are_set_when_absent() {
    bounded(async {
        let (pod, mut heads) = recording_pod().await;
        let activator = activator(RESPONSE_START, pod, PodProtocol::Http1).await;

        let req = request(Method::GET, "/")
            .body(Empty::<Bytes>::new())
            .expect("request");
        assert_eq!(send(activator, req).await.status(), StatusCode::OK);

        let (head, _) = heads.recv().await.expect("the pod saw the request");
        assert_eq!(values(&head.headers, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(values(&head.headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&head.headers, "x-forwarded-host"), [HOST]);
        assert_eq!(values(&head.headers, "host"), [HOST]);
    })
    .await;
}

#[tokio::test]
async fn forwarded_for_is_appended_and_a_front_proxys_proto_and_host_are_kept() {
    bounded(async {
        let (pod, mut heads) = recording_pod().await;
        let activator = activator(RESPONSE_START, pod, PodProtocol::Http1).await;

        let req = request(Method::GET, "/")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-for", "198.51.100.1, 10.0.0.3")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "api.example.com")
            .body(Empty::<Bytes>::new())
            .expect("request");
        assert_eq!(send(activator, req).await.status(), StatusCode::OK);

        let (head, _) = heads.recv().await.expect("the pod saw the request");
        assert_eq!(
            values(&head.headers, "x-forwarded-for"),
            ["203.0.113.7, 198.51.100.1, 10.0.0.3, 127.0.0.1"]
        );
        assert_eq!(values(&head.headers, "x-forwarded-proto"), ["https"]);
        assert_eq!(
            values(&head.headers, "x-forwarded-host"),
            ["api.example.com"]
        );
    })
    .await;
}

/// Sends `total` bytes in `chunk`-sized frames, the first one alone until `go`.
fn stream_body(mut sender: Sender<Bytes>, total: usize, chunk: usize, go: Arc<Notify>) {
    tokio::spawn(async move {
        let piece = Bytes::from(vec![7u8; chunk]);
        if sender.send_data(piece.clone()).await.is_err() {
            return;
        }
        go.notified().await;
        for _ in 1..total / chunk {
            if sender.send_data(piece.clone()).await.is_err() {
                return;
            }
        }
    });
}

#[tokio::test]
async fn large_upload_streams_through_without_being_collected() {
    bounded(async {
        const TOTAL: usize = 200 * MIB;
        // The client holds back all but the first chunk until the pod has it: a
        // forwarder that collected the body before sending would wait forever.
        let first_chunk_arrived = Arc::new(Notify::new());
        let pod = serve(false, {
            let first_chunk_arrived = Arc::clone(&first_chunk_arrived);
            move |req: Request<Incoming>, _| {
                let first_chunk_arrived = Arc::clone(&first_chunk_arrived);
                async move {
                    let mut body = req.into_body();
                    let (mut chunks, mut bytes) = (0usize, 0usize);
                    while let Some(frame) = body.frame().await {
                        let frame = frame.expect("request body");
                        if let Some(data) = frame.data_ref() {
                            chunks += 1;
                            bytes += data.len();
                            if chunks == 1 {
                                first_chunk_arrived.notify_one();
                            }
                        }
                    }
                    Response::new(Full::new(Bytes::from(format!("{chunks} {bytes}"))))
                }
            }
        })
        .await;
        let activator = activator(RESPONSE_START, pod, PodProtocol::Http1).await;

        let (sender, body) = Channel::<Bytes>::new(4);
        stream_body(sender, TOTAL, 64 * 1024, first_chunk_arrived);
        let req = request(Method::POST, "/upload")
            .body(body)
            .expect("request");
        let response = send(activator, req).await;

        assert_eq!(response.status(), StatusCode::OK);
        let counts = text(response.into_body()).await;
        let (chunks, bytes) = counts.split_once(' ').expect("two counts");
        assert_eq!(bytes.parse::<usize>().expect("bytes"), TOTAL);
        assert!(
            chunks.parse::<usize>().expect("chunks") > 1,
            "arrived in {chunks} chunk"
        );
    })
    .await;
}

#[tokio::test]
async fn large_download_streams_through_without_being_collected() {
    bounded(async {
        const TOTAL: usize = 200 * MIB;
        // The pod holds back all but the first chunk until the client has it.
        let first_chunk_arrived = Arc::new(Notify::new());
        let pod = serve(false, {
            let first_chunk_arrived = Arc::clone(&first_chunk_arrived);
            move |_req, _| {
                let (sender, body) = Channel::<Bytes>::new(4);
                stream_body(sender, TOTAL, 64 * 1024, Arc::clone(&first_chunk_arrived));
                async move { Response::new(body) }
            }
        })
        .await;
        let activator = activator(RESPONSE_START, pod, PodProtocol::Http1).await;

        let req = request(Method::GET, "/download")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let mut body = send(activator, req).await.into_body();
        let (mut chunks, mut bytes) = (0usize, 0usize);
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.expect("response body").data_ref() {
                chunks += 1;
                bytes += data.len();
                if chunks == 1 {
                    first_chunk_arrived.notify_one();
                }
            }
        }
        assert_eq!(bytes, TOTAL);
        assert!(chunks > 1, "arrived in {chunks} chunk");
    })
    .await;
}

/// Signals when dropped: stands in for a pod's concurrency permit.
struct Guard(Option<oneshot::Sender<()>>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(released) = self.0.take() {
            let _ = released.send(());
        }
    }
}

fn guard() -> (Guard, oneshot::Receiver<()>) {
    let (released, on_release) = oneshot::channel();
    (Guard(Some(released)), on_release)
}

/// Reads an HTTP/1.1 response head from a raw connection.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("utf-8").to_ascii_lowercase()
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_and_holds_the_guard_until_closed() {
    bounded(async {
        let (seen, mut heads) = mpsc::unbounded_channel();
        // A pod that accepts the upgrade and echoes every byte back.
        let pod = serve(false, move |mut req: Request<Incoming>, _| {
            let upgraded = hyper::upgrade::on(&mut req);
            let _ = seen.send(req.into_parts().0);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgraded.await.expect("pod side upgraded"));
                let mut buffer = [0u8; 1024];
                loop {
                    match io.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => io.write_all(&buffer[..n]).await.expect("echo"),
                    }
                }
            });
            async {
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(header::CONNECTION, "Upgrade")
                    .header(header::UPGRADE, "websocket")
                    .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                    .body(Empty::<Bytes>::new())
                    .expect("response")
            }
        })
        .await;
        let (guard, released) = guard();
        let guard = Arc::new(Mutex::new(Some(guard)));
        let forwarder = Forwarder::new(&config());
        let activator = serve(false, move |req, client| {
            let forwarder = forwarder.clone();
            let guard = lock(&guard).take().expect("one request");
            async move {
                let outbound = Outbound::new(req, client, "http").expect("outbound");
                assert!(outbound.is_upgrade());
                match forwarder
                    .send(outbound, pod, PodProtocol::H2c, RESPONSE_START, guard, None)
                    .await
                {
                    Ok(response) => response,
                    Err(failed) => failed.error.into_response(),
                }
            }
        })
        .await;

        let mut client = TcpStream::connect(activator).await.expect("connect");
        client
            .write_all(
                b"GET /chat HTTP/1.1\r\nHost: echo.default\r\nConnection: keep-alive, Upgrade\r\n\
                  Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .await
            .expect("request");
        let head = read_head(&mut client).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
        assert!(head.contains("\r\nsec-websocket-accept: "), "{head}");

        let seen = heads.recv().await.expect("the pod saw the request");
        assert_eq!(seen.version, Version::HTTP_11, "upgrades go over HTTP/1.1");
        assert_eq!(values(&seen.headers, "connection"), ["upgrade"]);
        assert_eq!(values(&seen.headers, "upgrade"), ["websocket"]);
        assert_eq!(
            values(&seen.headers, "sec-websocket-key"),
            ["dGhlIHNhbXBsZSBub25jZQ=="]
        );

        for message in [&b"ping"[..], b"a longer message through the tunnel"] {
            client.write_all(message).await.expect("write");
            let mut echoed = vec![0u8; message.len()];
            client.read_exact(&mut echoed).await.expect("echo");
            assert_eq!(echoed, message);
        }
        let mut released = released;
        assert_eq!(
            released.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "the guard was released while the tunnel is open"
        );

        client.shutdown().await.expect("close");
        released
            .await
            .expect("the guard is released when the tunnel closes");
    })
    .await;
}

#[tokio::test]
async fn h2c_pod_is_spoken_to_over_http2() {
    bounded(async {
        let (seen, mut heads) = mpsc::unbounded_channel();
        let pod = serve(true, move |req: Request<Incoming>, _| {
            let seen = seen.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.expect("request body").to_bytes();
                let _ = seen.send((parts, body));
                Response::builder()
                    .header("x-reply", "h2")
                    .body(Full::new(Bytes::from_static(b"over h2c")))
                    .expect("response")
            }
        })
        .await;
        let activator = activator(RESPONSE_START, pod, PodProtocol::H2c).await;

        let req = request(Method::POST, "/rpc?x=1")
            .header(header::TE, "trailers")
            .body(Full::new(Bytes::from_static(b"hello")))
            .expect("request");
        let response = send(activator, req).await;

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-reply"], "h2");
        assert_eq!(text(response.into_body()).await, "over h2c");
        let (head, body) = heads.recv().await.expect("the pod saw the request");
        assert_eq!(head.version, Version::HTTP_2);
        assert_eq!(
            head.uri.path_and_query().map(PathAndQuery::as_str),
            Some("/rpc?x=1")
        );
        assert_eq!(values(&head.headers, "host"), [HOST]);
        assert_eq!(values(&head.headers, "te"), ["trailers"]);
        assert_eq!(&body[..], b"hello");
    })
    .await;
}

#[tokio::test]
async fn http2_clients_authority_becomes_the_host_of_an_http1_request() {
    bounded(async {
        let (pod, mut heads) = recording_pod().await;
        let forwarder = Forwarder::new(&config());
        // The activator serves HTTP/2 here; the pod speaks HTTP/1.1.
        let activator = serve(true, move |req, client| {
            let forwarder = forwarder.clone();
            async move {
                let protocol = PodProtocol::Http1;
                forward(
                    &forwarder,
                    req,
                    pod,
                    protocol,
                    client,
                    "https",
                    RESPONSE_START,
                )
                .await
            }
        })
        .await;

        let stream = TcpStream::connect(activator).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        let req = Request::builder()
            .uri("http://echo.default/h2?q=1")
            .header(header::COOKIE, "a=1")
            .header(header::COOKIE, "b=2")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(req).await.expect("response");

        assert_eq!(response.status(), StatusCode::OK);
        let (head, _) = heads.recv().await.expect("the pod saw the request");
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.uri, "/h2?q=1");
        assert_eq!(values(&head.headers, "host"), [HOST]);
        assert_eq!(values(&head.headers, "x-forwarded-host"), [HOST]);
        assert_eq!(values(&head.headers, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&head.headers, "cookie"), ["a=1; b=2"]);
    })
    .await;
}

async fn closed_port() -> SocketAddr {
    let (listener, addr) = listen().await;
    drop(listener);
    addr
}

#[tokio::test]
async fn refused_connection_is_a_retryable_connect_failure() {
    bounded(async {
        let activator = activator(RESPONSE_START, closed_port().await, PodProtocol::Http1).await;

        let req = request(Method::GET, "/")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = send(activator, req).await;

        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[ERROR_HEADER], "upstream_connect");
    })
    .await;
}

#[tokio::test]
async fn unsent_request_is_handed_back_and_reaches_another_pod() {
    bounded(async {
        let refusing = closed_port().await;
        let (pod, mut heads) = recording_pod().await;
        let forwarder = Forwarder::new(&config());
        let activator = serve(false, move |req, client| {
            let forwarder = forwarder.clone();
            async move {
                let outbound = Outbound::new(req, client, "http")
                    .expect("outbound")
                    .retry_unsent();
                let (guard, _released) = guard();
                let failed = forwarder
                    .send(
                        outbound,
                        refusing,
                        PodProtocol::Http1,
                        RESPONSE_START,
                        guard,
                        None,
                    )
                    .await
                    .expect_err("the port is closed");
                assert!(failed.error.is_connect_failure(), "{:?}", failed.error);
                assert_eq!(failed.error.status(), StatusCode::BAD_GATEWAY);
                let unsent = failed.unsent.expect("the request comes back");
                forwarder
                    .send(
                        unsent.request,
                        pod,
                        PodProtocol::Http1,
                        RESPONSE_START,
                        unsent.guard,
                        None,
                    )
                    .await
                    .unwrap_or_else(|failed| failed.error.into_response())
            }
        })
        .await;

        let req = request(Method::POST, "/retry")
            .body(Full::new(Bytes::from_static(b"sent once")))
            .expect("request");
        let response = send(activator, req).await;

        assert_eq!(response.status(), StatusCode::OK);
        let (head, body) = heads.recv().await.expect("the second pod saw the request");
        assert_eq!(&body[..], b"sent once");
        assert_eq!(head.uri, "/retry");
        assert_eq!(values(&head.headers, "x-forwarded-for"), ["127.0.0.1"]);
    })
    .await;
}

#[tokio::test]
async fn silent_pod_times_out_with_504() {
    bounded(async {
        // Accepts connections and never answers.
        let (listener, pod) = listen().await;
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let timeout = Duration::from_millis(200);
        let activator = activator(timeout, pod, PodProtocol::Http1).await;

        let started = Instant::now();
        let req = request(Method::GET, "/")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = send(activator, req).await;

        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[ERROR_HEADER], "upstream_timeout");
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    })
    .await;
}

/// An activator that limits request bodies to `limit` bytes, and a count of the
/// requests its pod saw.
async fn limited_activator(limit: u64) -> (SocketAddr, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let pod = serve(false, {
        let requests = Arc::clone(&requests);
        move |req: Request<Incoming>, _| {
            requests.fetch_add(1, Ordering::SeqCst);
            async move {
                let _ = req.into_body().collect().await;
                Response::new(Empty::<Bytes>::new())
            }
        }
    })
    .await;
    let forwarder = Forwarder::new(&config());
    let activator = serve(false, move |req, client| {
        let forwarder = forwarder.clone();
        async move {
            let outbound = match Outbound::new(req, client, "http")
                .and_then(|outbound| outbound.with_body_limit(limit))
            {
                Ok(outbound) => outbound,
                Err(error) => return error.into_response(),
            };
            forwarder
                .send(outbound, pod, PodProtocol::Http1, RESPONSE_START, (), None)
                .await
                .unwrap_or_else(|failed| failed.error.into_response())
        }
    })
    .await;
    (activator, requests)
}

#[tokio::test]
async fn declared_body_over_the_limit_is_refused_before_the_pod() {
    bounded(async {
        let (activator, requests) = limited_activator(8).await;

        let req = request(Method::POST, "/")
            .body(Full::new(Bytes::from_static(b"more than eight bytes")))
            .expect("request");
        let response = send(activator, req).await;

        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[ERROR_HEADER], "body_too_large");
        assert_eq!(requests.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn streamed_body_over_the_limit_fails_with_413() {
    bounded(async {
        let (activator, _requests) = limited_activator(1024).await;

        let (mut sender, body) = Channel::<Bytes>::new(1);
        tokio::spawn(async move {
            for _ in 0..4 {
                if sender.send_data(Bytes::from(vec![1u8; 512])).await.is_err() {
                    return;
                }
            }
        });
        let req = request(Method::POST, "/").body(body).expect("request");
        let response = send(activator, req).await;

        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[ERROR_HEADER], "body_too_large");
    })
    .await;
}

#[tokio::test]
async fn connect_requests_are_not_forwarded() {
    bounded(async {
        let (pod, _heads) = recording_pod().await;
        let activator = activator(RESPONSE_START, pod, PodProtocol::Http1).await;

        let mut client = TcpStream::connect(activator).await.expect("connect");
        client
            .write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            .await
            .expect("request");
        let head = read_head(&mut client).await;
        assert!(head.starts_with("http/1.1 501"), "{head}");
        assert!(
            head.contains("\r\nx-zeroscale-error: unsupported_request\r\n"),
            "{head}"
        );
    })
    .await;
}

/// A pod that counts the connections it accepts and, when `close` says so, closes
/// each one after its answer.
async fn counting_pod(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let (listener, addr) = listen().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let service = service_fn(move |_: Request<Incoming>| async move {
                let mut response = Response::builder();
                if close {
                    response = response.header(header::CONNECTION, "close");
                }
                Ok::<_, Infallible>(
                    response
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .expect("response"),
                )
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (addr, accepted)
}

/// An activator whose client connections each have an [`Affinity`].
async fn affine_activator(pod: SocketAddr) -> SocketAddr {
    let forwarder = Forwarder::new(&config());
    let affinities: Arc<Mutex<std::collections::HashMap<SocketAddr, Arc<Affinity>>>> =
        Arc::default();
    serve(false, move |req, client| {
        let forwarder = forwarder.clone();
        let affinity = Arc::clone(lock(&affinities).entry(client).or_default());
        async move {
            let sent = match Outbound::new(req, client, "http") {
                Ok(outbound) => {
                    forwarder
                        .send(
                            outbound,
                            pod,
                            PodProtocol::Http1,
                            RESPONSE_START,
                            (),
                            Some(&affinity),
                        )
                        .await
                }
                Err(error) => return error.into_response(),
            };
            sent.unwrap_or_else(|failed| failed.error.into_response())
        }
    })
    .await
}

/// Sends `count` GETs one after another over one keep-alive connection.
async fn keep_alive_gets(activator: SocketAddr, count: usize) -> Vec<StatusCode> {
    let stream = TcpStream::connect(activator).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut statuses = Vec::new();
    for _ in 0..count {
        sender.ready().await.expect("ready");
        let req = request(Method::GET, "/")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(req).await.expect("response");
        statuses.push(response.status());
        let _ = response.into_body().collect().await;
    }
    statuses
}

#[tokio::test]
async fn keep_alive_client_gets_its_own_pod_connection_from_its_second_request() {
    bounded(async {
        let (pod, accepted) = counting_pod(false).await;
        let activator = affine_activator(pod).await;
        let statuses = keep_alive_gets(activator, 5).await;
        assert_eq!(statuses, [StatusCode::OK; 5]);
        // The first request through the shared pool, the rest over one connection.
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    })
    .await;
}

#[tokio::test]
async fn pod_closing_the_connection_after_each_answer_loses_no_request() {
    bounded(async {
        let (pod, accepted) = counting_pod(true).await;
        let activator = affine_activator(pod).await;
        let statuses = keep_alive_gets(activator, 5).await;
        assert_eq!(statuses, [StatusCode::OK; 5]);
        assert!(accepted.load(Ordering::SeqCst) >= 5);
    })
    .await;
}
