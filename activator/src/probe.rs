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
pub fn start(function: &Arc<FunctionState>, config: ProbeConfig, results: &IntCounterVec) {
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

/// Whether the pod answers: its readiness path with a 2xx or 3xx over HTTP/1.1, or a TCP
/// connect when it has none or speaks only h2c (as the kubelet's probe does).
pub async fn probe(
    addr: SocketAddr,
    protocol: PodProtocol,
    path: Option<&str>,
    timeout: Duration,
) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let path = match (path, protocol) {
            (Some(path), PodProtocol::Http1) => path,
            _ => return Some(true),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: zeroscale-activator-probe\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        // "HTTP/1.1 200" is all that is needed.
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        let status = std::str::from_utf8(head.get(9..12)?).ok()?;
        Some(head.starts_with(b"HTTP/1.") && matches!(status.as_bytes()[0], b'2' | b'3'))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
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
