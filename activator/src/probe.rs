//! Active probing: while requests wait for a Function, the activator probes its starting
//! pods itself every few tens of milliseconds and sends traffic to a pod the moment it
//! answers, instead of waiting for the kubelet's next readiness probe and the
//! EndpointSlice update after it. That gap is most of a cold start's overhead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::endpoints::PodProtocol;
use crate::functions::FunctionState;

/// How often and how patiently starting pods are probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Time between probe rounds; 0 turns active probing off.
    pub period: Duration,
    /// Longest one probe may take.
    pub timeout: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            period: Duration::from_millis(25),
            timeout: Duration::from_millis(500),
        }
    }
}

/// Probes `function`'s starting pods until no request waits for it. Call it when a
/// request starts waiting; it returns at once when probing is off or already running.
pub(crate) fn start(function: &Arc<FunctionState>, config: ProbeConfig, results: &IntCounterVec) {
    if config.period.is_zero() || !function.begin_probing() {
        return;
    }
    let function = Arc::clone(function);
    let results = results.clone();
    tokio::spawn(async move {
        let mut rounds = tokio::time::interval(config.period);
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while function.capacity.queued() > 0 {
                rounds.tick().await;
                probe_round(&function, config, &results).await;
            }
            function.end_probing();
            // A request that queued after the last check but before the claim was
            // released found a prober running: carry on for it.
            if function.capacity.queued() == 0 || !function.begin_probing() {
                break;
            }
        }
    });
}

/// Probes every starting pod once, concurrently, and admits those that answer.
async fn probe_round(function: &Arc<FunctionState>, config: ProbeConfig, results: &IntCounterVec) {
    let path = function.settings().readiness_path.clone();
    let probes = function
        .starting_pods()
        .into_iter()
        .map(|(addr, protocol)| {
            let path = path.clone();
            async move {
                let answered = probe(addr, protocol, path.as_deref(), config.timeout).await;
                (addr, answered)
            }
        });
    for (addr, answered) in futures::future::join_all(probes).await {
        let result = if answered { "ready" } else { "not_ready" };
        results.with_label_values(&[result]).inc();
        if answered {
            tracing::debug!(function = %function.key, %addr, "starting pod answered its probe");
            function.mark_probed_ready(addr);
        }
    }
}

/// Largest response head a probe reads; a longer one fails the probe.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most body bytes a probe reads before it closes anyway.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Whether the pod answers: its readiness path with a 2xx or 3xx over HTTP/1.1, or a TCP
/// connect when it has none or speaks only h2c (as the kubelet's probe does).
///
/// Like the kubelet, the probe reads the whole response head and then the body (up to
/// [`MAX_BODY_BYTES`]) before it closes. Closing a socket with unread bytes in its
/// receive buffer sends a reset, and a function still writing its answer then fails
/// with `ConnectionResetError` or a broken pipe and prints a traceback.
pub async fn probe(
    addr: SocketAddr,
    protocol: PodProtocol,
    path: Option<&str>,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let Ok(Ok(mut stream)) = tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await
    else {
        return false;
    };
    let path = match (path, protocol) {
        (Some(path), PodProtocol::Http1) => path,
        _ => return true,
    };
    let Ok(Some((head, rest))) =
        tokio::time::timeout_at(deadline, read_head(&mut stream, addr, path)).await
    else {
        return false;
    };
    // The answer is known; reading the rest only lets the pod finish writing it.
    let _ = tokio::time::timeout_at(deadline, drain(&mut stream, head.body, rest)).await;
    matches!(head.status, 200..=399)
}

/// What a probe needs of a response head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    body: Body,
}

/// How the response's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Sends the probe request and reads the response head; returns it with the body bytes
/// read along with it. None when the pod closed, failed, or sent no valid head.
async fn read_head(
    stream: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
) -> Option<(Head, Vec<u8>)> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: zeroscale-activator-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_head(buffer.get(..end)?)?;
            let rest = buffer.split_off(end + 4);
            return Some((head, rest));
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return None;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(chunk.get(..read)?);
    }
}

/// The status and body framing of a response head (without its final empty line).
fn parse_head(head: &[u8]) -> Option<Head> {
    // Header values may hold obs-text; only names and numbers matter here.
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let mut status_line = lines.next()?.splitn(3, ' ');
    if !status_line.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = status_line.next()?.parse().ok()?;
    let mut body = Body::UntilClose;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().ends_with("chunked")
        {
            body = Body::Chunked;
        } else if name.eq_ignore_ascii_case("content-length") && body != Body::Chunked {
            body = Body::Length(value.parse().ok()?);
        }
    }
    if matches!(status, 100..=199 | 204 | 304) {
        body = Body::Length(0);
    }
    Some(Head { status, body })
}

/// Reads the body (up to [`MAX_BODY_BYTES`]) so that the probe closes with nothing
/// unread. `read` is what came with the head.
async fn drain(stream: &mut TcpStream, body: Body, mut read: Vec<u8>) {
    let mut chunk = [0u8; 4096];
    while read.len() <= MAX_BODY_BYTES {
        let complete = match body {
            Body::Length(length) => read.len() >= length,
            // The last chunk, empty and without trailers.
            Body::Chunked => read.ends_with(b"0\r\n\r\n"),
            Body::UntilClose => false,
        };
        if complete {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server answering every connection with `response` after reading the request head.
    async fn server(response: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer).await;
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn pod_answering_2xx_on_its_readiness_path_is_ready() {
        let addr = server("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        assert!(probe(addr, PodProtocol::Http1, Some("/ready"), TIMEOUT).await);
    }

    #[tokio::test]
    async fn pod_answering_503_is_not_ready() {
        let addr = server("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        assert!(!probe(addr, PodProtocol::Http1, Some("/ready"), TIMEOUT).await);
    }

    #[tokio::test]
    async fn without_a_path_a_tcp_connect_is_enough() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert!(probe(addr, PodProtocol::Http1, None, TIMEOUT).await);
        assert!(probe(addr, PodProtocol::H2c, Some("/ready"), TIMEOUT).await);
    }

    #[tokio::test]
    async fn closed_port_is_not_ready() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        assert!(!probe(addr, PodProtocol::Http1, None, TIMEOUT).await);
    }

    /// What a server saw of one probe connection: its response written in two parts
    /// with a pause between them, as a Python handler flushing headers and body
    /// separately does, then its side of the close.
    #[derive(Debug)]
    struct ServerSaw {
        second_write: std::io::Result<()>,
        shutdown: std::io::Result<()>,
        /// What reading after the response gave: `Ok(0)` is the probe's clean close.
        read_after: std::io::Result<usize>,
    }

    /// A server answering one probe with `head` and `body` in two writes `pause` apart,
    /// reporting what it saw of the probe's close.
    async fn server_in_two_parts(
        head: &'static str,
        body: &'static str,
        pause: Duration,
    ) -> (SocketAddr, tokio::task::JoinHandle<ServerSaw>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let saw = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await.expect("request");
                request.push(byte[0]);
            }
            stream
                .write_all(head.as_bytes())
                .await
                .expect("first write");
            tokio::time::sleep(pause).await;
            let second_write = stream.write_all(body.as_bytes()).await;
            let shutdown = stream.shutdown().await;
            let mut rest = [0u8; 64];
            let read_after = stream.read(&mut rest).await;
            ServerSaw {
                second_write,
                shutdown,
                read_after,
            }
        });
        (addr, saw)
    }

    /// Probes a [`server_in_two_parts`] (writes 100 ms apart), checks that the probe
    /// closed the connection cleanly, and returns the probe's verdict.
    async fn probe_two_parts(head: &'static str, body: &'static str) -> bool {
        let (addr, saw) = server_in_two_parts(head, body, Duration::from_millis(100)).await;
        let healthy = probe(addr, PodProtocol::Http1, Some("/healthz"), TIMEOUT).await;
        let saw = saw.await.expect("server");
        assert!(saw.second_write.is_ok(), "{saw:?}");
        assert!(saw.shutdown.is_ok(), "{saw:?}");
        assert!(matches!(saw.read_after, Ok(0)), "{saw:?}");
        healthy
    }

    #[tokio::test]
    async fn server_writing_its_response_in_parts_sees_a_clean_close_not_a_reset() {
        assert!(
            probe_two_parts(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\n",
                "ok",
            )
            .await
        );
    }

    #[tokio::test]
    async fn body_without_a_length_is_read_until_the_server_closes() {
        // Python's http.server answers HTTP/1.0 and ends the body by closing.
        assert!(
            probe_two_parts(
                "HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.6 Python/3.12\r\n\r\n",
                "{\"status\": \"ok\"}",
            )
            .await
        );
    }

    #[tokio::test]
    async fn chunked_body_is_read_to_its_last_chunk() {
        assert!(
            !probe_two_parts(
                "HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwait",
                "\r\n0\r\n\r\n",
            )
            .await
        );
    }

    #[tokio::test]
    async fn server_keeping_the_connection_open_after_its_body_is_answered_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            // Ignores `Connection: close` and holds the connection until the test ends.
            let _ = finished.await;
        });
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            probe(addr, PodProtocol::Http1, Some("/"), Duration::from_secs(60)),
        )
        .await;
        assert_eq!(answered, Ok(true));
        drop(done);
    }

    #[tokio::test]
    async fn endless_response_head_is_not_ready() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer).await;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let header = format!("x-filler: {}\r\n", "a".repeat(1000));
            while stream.write_all(header.as_bytes()).await.is_ok() {}
        });
        assert!(!probe(addr, PodProtocol::Http1, Some("/"), TIMEOUT).await);
    }

    #[test]
    fn response_heads_give_their_status_and_body_framing() {
        let head = |text: &str| parse_head(text.as_bytes());
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 12"),
            Some(Head {
                status: 200,
                body: Body::Length(12)
            })
        );
        assert_eq!(
            head("HTTP/1.1 500 Oops\r\nTransfer-Encoding: gzip, chunked\r\ncontent-length: 3"),
            Some(Head {
                status: 500,
                body: Body::Chunked
            })
        );
        assert_eq!(
            head("HTTP/1.0 302 Found\r\nLocation: /caf\u{e9}"),
            Some(Head {
                status: 302,
                body: Body::UntilClose
            })
        );
        assert_eq!(
            head("HTTP/1.1 204 No Content\r\nContent-Length: 5"),
            Some(Head {
                status: 204,
                body: Body::Length(0)
            })
        );
        assert_eq!(head("SSH-2.0-OpenSSH_9.6"), None);
        assert_eq!(head("HTTP/1.1 200 OK\r\ncontent-length: many"), None);
    }

    #[tokio::test]
    async fn pod_that_never_answers_times_out_as_not_ready() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts (via the backlog) but never writes.
        assert!(
            !probe(
                addr,
                PodProtocol::Http1,
                Some("/"),
                Duration::from_millis(100)
            )
            .await
        );
        drop(listener);
    }
}
