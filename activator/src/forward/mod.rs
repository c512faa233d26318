//! Forward: send a request to the pod the earlier steps picked and stream its answer
//! back.
//!
//! [`Forwarder`] holds two pooled clients, HTTP/1.1 and HTTP/2 with prior knowledge
//! (h2c), so connections to a pod are reused across requests. A keep-alive HTTP/1.1
//! client connection also gets its own connection to its pod ([`Affinity`]) from its
//! second request on: its requests then pass between two connections with no pool
//! lookups or copied heads on the way, and only the client connection's own lock, which
//! its one-at-a-time requests never contend. Bodies stream both ways
//! frame by frame and are never collected. On the way through, both messages lose their
//! hop-by-hop headers and the request gains `X-Forwarded-For`, `-Proto` and `-Host`.
//! An upgrade (WebSocket) is sent to the pod over HTTP/1.1; when the pod switches
//! protocols, a spawned task copies bytes between the client's and the pod's
//! connections until either side closes.
//!
//! Routing, waiting and retries belong to the caller. What it needs for a retry is
//! here: [`Outbound::retry_unsent`] asks [`Forwarder::send`] to hand a request back when
//! no byte of it reached the pod ([`ActivatorError::is_connect_failure`]), so it can go
//! to another pod; any later failure is final, since the pod may have acted on it.
//!
//! What the forwarder adds per request on the hot path: the pod's URI authority (shared
//! pool only) and the `X-Forwarded-For` value (one small allocation each). A retryable
//! send through the shared pool adds a copy of the request head and one shared slot for
//! the body.
//!
//! The parts, one module each: `outbound` prepares the request and takes it apart for
//! an attempt, `headers` holds the pure header rules, `affinity` the per-connection
//! path, `tunnel` upgrades, and `classify` tells which failures left the request unsent.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Response, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{RequestBody, ResponseBody};
use crate::endpoints::PodProtocol;
use crate::errors::ActivatorError;
pub use affinity::Affinity;
use affinity::Dedicated;
use classify::classify;
pub(crate) use headers::strip_forwarded;
use headers::{Message, strip_hop_by_hop};
pub(crate) use outbound::Outbound;
use tunnel::Tunnel;

mod affinity;
mod classify;
mod headers;
mod outbound;
#[cfg(test)]
mod tests;
mod tunnel;

/// Idle time before TCP keepalive probes start on a connection to a pod, so a pod that
/// vanished without closing it is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// How often an HTTP/2 connection with requests in flight pings the pod, and how long
/// it waits for the answer: a long response from a pod whose node died fails instead of
/// hanging.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the connection to pods. How long a pod may take to answer is the
/// Function's (`spec.requests.timeout`), given with each send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// Longest a TCP connect to a pod may take. A pod that does not answer a SYN is gone
    /// or unreachable; failing fast lets the caller try another.
    pub connect_timeout: Duration,
    /// How long an unused pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Most unused connections kept per pod.
    pub max_idle_per_host: usize,
}

impl Default for ForwarderConfig {
    /// Connect 2 s (room for one lost SYN, retransmitted after 1 s); idle connections
    /// kept 30 s, at most 128 per pod.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(30),
            max_idle_per_host: 128,
        }
    }
}

/// Sends requests to pods over pooled connections. Cheap to clone: clones share the
/// pools.
#[derive(Clone)]
pub struct Forwarder {
    http1: Client<HttpConnector, RequestBody>,
    h2c: Client<HttpConnector, RequestBody>,
    /// The pools' connector, for client connections' own pod connections too.
    connector: HttpConnector,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Builds the two clients; connections open on first use.
    pub fn new(config: &ForwarderConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(TCP_KEEPALIVE));

        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_host);
        let http1 = builder.build(connector.clone());
        builder
            .http2_only(true)
            .http2_keep_alive_interval(H2_PING_INTERVAL)
            .http2_keep_alive_timeout(H2_PING_TIMEOUT);
        let h2c = builder.build(connector.clone());

        Self {
            http1,
            h2c,
            connector,
        }
    }

    /// Sends `outbound` to `pod`, speaking `protocol` (upgrades always go over
    /// HTTP/1.1: HTTP/2 has no `Upgrade`), and returns the pod's response with its body
    /// streaming, or [`ActivatorError::UpstreamTimeout`] when its headers take longer
    /// than `response_start_timeout`: connecting, sending the request (body included,
    /// when the pod reads it before answering) and the Function's work.
    ///
    /// `guard` is held as long as the exchange lasts: until the response body ends or is
    /// dropped, or, for an upgrade, until the tunnel closes. It is the place for the
    /// pod's concurrency permit and in-flight counts, so that a streaming response or a
    /// WebSocket counts against the pod for as long as it runs. On failure it is dropped,
    /// unless the request comes back in [`SendError::unsent`].
    ///
    /// With the client connection's `affinity`, an HTTP/1.1 request to an HTTP/1.1 pod
    /// goes over the connection's own connection to that pod when it has one (opened
    /// from the connection's second request on, so one-request clients keep using the
    /// shared pool), without the shared pool's bookkeeping or a copy of the request head
    /// for retries.
    ///
    /// Upgrades reach the client only when its connection is served with upgrades
    /// (`serve_connection(..).with_upgrades()`, or `serve_connection_with_upgrades`).
    pub(crate) async fn send<G: Send + 'static>(
        &self,
        outbound: Outbound,
        pod: SocketAddr,
        protocol: PodProtocol,
        response_start_timeout: Duration,
        guard: G,
        affinity: Option<&Affinity>,
    ) -> Result<Response<ResponseBody<G>>, SendError<G>> {
        let mut outbound = outbound;
        if let Some(affinity) = affinity
            && protocol == PodProtocol::Http1
            && !outbound.is_upgrade()
            && outbound.is_http1()
        {
            let sent = affinity
                .send(&self.connector, outbound, pod, response_start_timeout)
                .await;
            match sent {
                Dedicated::Answered(answer) => {
                    return answer
                        .and_then(|response| finish(response, None, guard))
                        .map_err(SendError::new);
                }
                Dedicated::ConnectFailed(error, request) => {
                    let unsent = request.is_retryable().then_some(Unsent { request, guard });
                    return Err(SendError { error, unsent });
                }
                Dedicated::Pooled(request) => outbound = request,
            }
        }
        self.send_pooled(outbound, pod, protocol, response_start_timeout, guard)
            .await
    }

    /// [`Forwarder::send`] through the shared pool.
    async fn send_pooled<G: Send + 'static>(
        &self,
        outbound: Outbound,
        pod: SocketAddr,
        protocol: PodProtocol,
        timeout: Duration,
        guard: G,
    ) -> Result<Response<ResponseBody<G>>, SendError<G>> {
        let uri = outbound.pod_uri(pod).map_err(SendError::new)?;
        let (client, version) = match protocol {
            PodProtocol::H2c if !outbound.is_upgrade() => (&self.h2c, Version::HTTP_2),
            _ => (&self.http1, Version::HTTP_11),
        };
        let (mut request, attempt) = outbound.into_attempt(version, false);
        *request.uri_mut() = uri;

        match tokio::time::timeout(timeout, client.request(request)).await {
            Ok(Ok(response)) => finish(response, attempt.upgrade, guard).map_err(SendError::new),
            Ok(Err(error)) => {
                let error = classify(error);
                let unsent = if error.is_connect_failure() {
                    attempt.unpark().map(|request| Unsent { request, guard })
                } else {
                    None
                };
                Err(SendError { error, unsent })
            }
            Err(_elapsed) => Err(SendError::new(ActivatorError::UpstreamTimeout(timeout))),
        }
    }
}

/// The pod's response made ready for the client: hop-by-hop headers gone, an upgrade
/// tunnelled, `guard` held until the body ends (or the tunnel closes).
fn finish<G: Send + 'static>(
    mut response: Response<Incoming>,
    upgrade: Option<OnUpgrade>,
    guard: G,
) -> Result<Response<ResponseBody<G>>, ActivatorError> {
    let tunnel = Tunnel::accepted(&mut response, upgrade)?;
    strip_hop_by_hop(response.headers_mut(), Message::Response, tunnel.is_some());
    // The pod's version says nothing about the client's connection.
    *response.version_mut() = Version::HTTP_11;
    let guard = match tunnel {
        Some(tunnel) => {
            tunnel.spawn(guard);
            None
        }
        None => Some(guard),
    };
    Ok(response.map(|body| ResponseBody::upstream(body, guard)))
}

/// A failed [`Forwarder::send`].
pub(crate) struct SendError<G> {
    pub(crate) error: ActivatorError,
    /// The request and guard, when the request was [`Outbound::retry_unsent`] and no byte
    /// of it reached the pod: it may go to another pod.
    pub(crate) unsent: Option<Unsent<G>>,
}

impl<G> SendError<G> {
    /// A failure that hands nothing back.
    fn new(error: ActivatorError) -> Self {
        Self {
            error,
            unsent: None,
        }
    }
}

/// A request that never reached its pod, handed back for another.
pub(crate) struct Unsent<G> {
    pub(crate) request: Outbound,
    pub(crate) guard: G,
}

impl<G> fmt::Debug for SendError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("error", &self.error)
            .field("unsent", &self.unsent.is_some())
            .finish()
    }
}

impl<G> From<SendError<G>> for ActivatorError {
    fn from(failed: SendError<G>) -> Self {
        failed.error
    }
}
