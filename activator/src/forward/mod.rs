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
//! What the forwarder adds per request on the hot path: the pod's URI authority and the
//! `X-Forwarded-For` value (one small allocation each). A retryable send adds a copy of
//! the request head and one shared slot for the body.

use std::error::Error as _;
use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use crate::body::{ParkedBody, RequestBody, RequestBodyError, ResponseBody, unpark};
use crate::endpoints::PodProtocol;
use crate::errors::{ActivatorError, BoxError};
use headers::{Message, add_forwarded, is_upgrade_request, join_cookies, strip_hop_by_hop};

mod headers;

/// Idle time before TCP keepalive probes start on a connection to a pod, so a pod that
/// vanished without closing it is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// How often an HTTP/2 connection with requests in flight pings the pod, and how long
/// it waits for the answer: a long response from a pod whose node died fails instead of
/// hanging.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the connection to pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// Longest a TCP connect to a pod may take. A pod that does not answer a SYN is gone
    /// or unreachable; failing fast lets the caller try another.
    pub connect_timeout: Duration,
    /// Longest from handing the request to the client until the pod's response headers
    /// arrive: connecting, sending the request (body included, when the pod reads it
    /// before answering) and the Function's work. A Function's own timeout overrides it
    /// per request ([`Outbound::with_response_start_timeout`]).
    pub response_start_timeout: Duration,
    /// How long an unused pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Most unused connections kept per pod.
    pub max_idle_per_host: usize,
}

impl Default for ForwarderConfig {
    /// Connect 2 s (room for one lost SYN, retransmitted after 1 s); response start
    /// 300 s, the default `spec.requests.timeout` of a Function; idle connections kept
    /// 30 s, at most 128 per pod.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            response_start_timeout: Duration::from_secs(300),
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
    response_start_timeout: Duration,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("response_start_timeout", &self.response_start_timeout)
            .finish_non_exhaustive()
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
            response_start_timeout: config.response_start_timeout,
        }
    }

    /// Sends `req` from `client_addr`, which reached the activator over `scheme`
    /// (`http` or `https`), to `pod`, and returns the pod's response with its body
    /// streaming. One attempt, nothing held: [`Forwarder::send`] is the same with a
    /// guard held for the exchange and the request handed back when it can be retried.
    ///
    /// Upgrades reach the client only when its connection is served with upgrades
    /// (`serve_connection(..).with_upgrades()`, or `serve_connection_with_upgrades`).
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        pod: SocketAddr,
        protocol: PodProtocol,
        client_addr: SocketAddr,
        scheme: &str,
    ) -> Result<Response<ResponseBody>, ActivatorError> {
        let outbound = Outbound::new(req, client_addr, scheme)?;
        self.send(outbound, pod, protocol, ())
            .await
            .map_err(|failed| failed.error)
    }

    /// Sends `outbound` to `pod`, speaking `protocol` (upgrades always go over
    /// HTTP/1.1: HTTP/2 has no `Upgrade`).
    ///
    /// `guard` is held as long as the exchange lasts: until the response body ends or is
    /// dropped, or, for an upgrade, until the tunnel closes. It is the place for the
    /// pod's concurrency permit and in-flight counts, so that a streaming response or a
    /// WebSocket counts against the pod for as long as it runs. On failure it is dropped,
    /// unless the request comes back in [`SendError::unsent`].
    pub async fn send<G: Send + 'static>(
        &self,
        outbound: Outbound,
        pod: SocketAddr,
        protocol: PodProtocol,
        guard: G,
    ) -> Result<Response<ResponseBody<G>>, SendError<G>> {
        self.send_via(outbound, pod, protocol, guard, None).await
    }

    /// [`Forwarder::send`] for a request that came in on a client connection with
    /// `affinity`: an HTTP/1.1 request to an HTTP/1.1 pod goes over the connection's own
    /// connection to that pod when it has one (opened from the connection's second
    /// request on, so one-request clients keep using the shared pool), without the
    /// shared pool's bookkeeping or a copy of the request head for retries.
    pub async fn send_via<G: Send + 'static>(
        &self,
        outbound: Outbound,
        pod: SocketAddr,
        protocol: PodProtocol,
        guard: G,
        affinity: Option<&Affinity>,
    ) -> Result<Response<ResponseBody<G>>, SendError<G>> {
        let mut outbound = outbound;
        if let Some(affinity) = affinity
            && protocol == PodProtocol::Http1
            && outbound.upgrade.is_none()
            && outbound.parts.version <= Version::HTTP_11
        {
            match self.send_dedicated(outbound, pod, affinity).await {
                Dedicated::Answered(answer) => {
                    return answer
                        .and_then(|response| finish(response, None, guard))
                        .map_err(|error| SendError {
                            error,
                            unsent: None,
                        });
                }
                Dedicated::ConnectFailed(error, request) => {
                    let unsent = request.retry_unsent.then_some(Unsent { request, guard });
                    return Err(SendError { error, unsent });
                }
                Dedicated::Pooled(request) => outbound = request,
            }
        }
        let Outbound {
            parts,
            path_and_query,
            body,
            upgrade,
            body_limit,
            response_start_timeout,
            retry_unsent,
        } = outbound;
        let fail = |error| SendError {
            error,
            unsent: None,
        };
        let uri = pod_uri(pod, path_and_query.clone()).map_err(fail)?;
        let (client, version) = match protocol {
            PodProtocol::H2c if upgrade.is_none() => (&self.h2c, Version::HTTP_2),
            _ => (&self.http1, Version::HTTP_11),
        };
        let timeout = response_start_timeout.unwrap_or(self.response_start_timeout);
        let limit = body_limit.unwrap_or(u64::MAX);

        // A retryable send keeps the head and parks the body where it can be taken back
        // if the client never started on it.
        let (mut head, request_body, kept) = if retry_unsent {
            let parked: ParkedBody = Arc::new(Mutex::new(Some(body)));
            let request_body = RequestBody::parked(Arc::clone(&parked), limit);
            (parts.clone(), request_body, Some((parts, parked)))
        } else {
            (parts, RequestBody::live(body, limit), None)
        };
        head.uri = uri;
        head.version = version;
        let request = Request::from_parts(head, request_body);

        let response = match tokio::time::timeout(timeout, client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                let error = classify(error);
                let unsent = match kept {
                    Some((parts, parked)) if error.is_connect_failure() => {
                        unpark(&parked).map(|body| Unsent {
                            request: Outbound {
                                parts,
                                path_and_query,
                                body,
                                upgrade,
                                body_limit,
                                response_start_timeout,
                                retry_unsent,
                            },
                            guard,
                        })
                    }
                    _ => None,
                };
                return Err(SendError { error, unsent });
            }
            Err(_elapsed) => return Err(fail(ActivatorError::UpstreamTimeout(timeout))),
        };

        finish(response, upgrade, guard).map_err(fail)
    }

    /// Sends `outbound` over `affinity`'s own connection to `pod`, opening it if this is
    /// not the client connection's first request; hands it back for the pool when the
    /// connection is to another pod or turned out closed before the request went out.
    async fn send_dedicated(
        &self,
        outbound: Outbound,
        pod: SocketAddr,
        affinity: &Affinity,
    ) -> Dedicated {
        let (reusable, open_one) = affinity.take(pod);
        let mut sender = match reusable {
            Some(sender) => sender,
            None if open_one => match self.open_dedicated(pod).await {
                Ok(sender) => sender,
                Err(error) => return Dedicated::ConnectFailed(error, outbound),
            },
            None => return Dedicated::Pooled(outbound),
        };
        let timeout = outbound
            .response_start_timeout
            .unwrap_or(self.response_start_timeout);
        let limit = outbound.body_limit.unwrap_or(u64::MAX);
        let Outbound {
            mut parts,
            path_and_query,
            body,
            ..
        } = outbound;
        let rebuild = |parts: Parts, body: Incoming, path_and_query: PathAndQuery| Outbound {
            parts,
            path_and_query,
            body,
            upgrade: None,
            body_limit: outbound.body_limit,
            response_start_timeout: outbound.response_start_timeout,
            retry_unsent: outbound.retry_unsent,
        };
        // The pod's connection may have been closed since its last answer; that shows
        // here, before the request is handed over.
        if sender.ready().await.is_err() {
            return Dedicated::Pooled(rebuild(parts, body, path_and_query));
        }
        // HTTP/1.1 to a pod on a connection of its own: origin-form target.
        let original_uri = std::mem::replace(&mut parts.uri, Uri::from(path_and_query.clone()));
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(parts, RequestBody::live(body, limit));
        let sent = tokio::time::timeout(timeout, sender.try_send_request(request)).await;
        match sent {
            Ok(Ok(response)) => {
                affinity.put(pod, sender);
                Dedicated::Answered(Ok(response))
            }
            Ok(Err(mut failed)) => match failed.take_message() {
                // Not written: the connection closed under it. The pool takes it.
                Some(request) => {
                    let (mut parts, body) = request.into_parts();
                    parts.uri = original_uri;
                    match body.into_live() {
                        Some(body) => Dedicated::Pooled(rebuild(parts, body, path_and_query)),
                        None => Dedicated::Answered(Err(ActivatorError::Upstream(
                            failed.into_error().into(),
                        ))),
                    }
                }
                None => Dedicated::Answered(Err(classify_chain(failed.into_error().into()))),
            },
            Err(_elapsed) => Dedicated::Answered(Err(ActivatorError::UpstreamTimeout(timeout))),
        }
    }

    /// Opens an HTTP/1.1 connection to `pod` with the pools' connector (its timeout and
    /// socket options), its driver running in a task of its own.
    async fn open_dedicated(
        &self,
        pod: SocketAddr,
    ) -> Result<http1::SendRequest<RequestBody>, ActivatorError> {
        let uri = pod_uri(pod, PathAndQuery::from_static("/"))?;
        let stream = tower_service::Service::call(&mut self.connector.clone(), uri)
            .await
            .map_err(|error| ActivatorError::UpstreamConnect(error.into()))?;
        let (sender, connection) = http1::handshake(stream)
            .await
            .map_err(|error| ActivatorError::UpstreamConnect(error.into()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "connection to a pod ended with an error");
            }
        });
        Ok(sender)
    }
}

/// What became of a request offered to a client connection's own pod connection.
enum Dedicated {
    /// The pod answered, or the exchange failed after the request went out.
    Answered(Result<Response<Incoming>, ActivatorError>),
    /// Connecting to the pod failed: no byte of the request reached it.
    ConnectFailed(ActivatorError, Outbound),
    /// The shared pool is to send it.
    Pooled(Outbound),
}

/// The pod's response made ready for the client: hop-by-hop headers gone, an upgrade
/// tunnelled, `guard` held until the body ends (or the tunnel closes).
fn finish<G: Send + 'static>(
    mut response: Response<Incoming>,
    upgrade: Option<OnUpgrade>,
    guard: G,
) -> Result<Response<ResponseBody<G>>, ActivatorError> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let tunnel = match upgrade {
        Some(client) if switching => Some((client, hyper::upgrade::on(&mut response))),
        _ if switching => {
            return Err(ActivatorError::Upstream(
                "the pod switched protocols without being asked to".into(),
            ));
        }
        _ => None,
    };
    strip_hop_by_hop(response.headers_mut(), Message::Response, tunnel.is_some());
    // The pod's version says nothing about the client's connection.
    *response.version_mut() = Version::HTTP_11;
    let guard = match tunnel {
        Some((client, pod)) => {
            tokio::spawn(run_tunnel(client, pod, guard));
            None
        }
        None => Some(guard),
    };
    Ok(response.map(|body| ResponseBody::upstream(body, guard)))
}

/// One client connection's own connection to the pod its requests last went to.
///
/// A keep-alive client sends its requests one after another, and with one pod (or a
/// pod it keeps being given) each goes over the same pod connection: the exchange stays
/// between two connections, without the shared pool's lookups and locking. Dropped with
/// the client connection, closing the pod connection.
#[derive(Debug, Default)]
pub struct Affinity {
    state: Mutex<AffinityState>,
}

#[derive(Debug, Default)]
struct AffinityState {
    /// The client connection has sent a request before.
    seen_one: bool,
    connection: Option<(SocketAddr, http1::SendRequest<RequestBody>)>,
}

impl Affinity {
    /// The pod this connection's requests last went to over its own connection.
    pub fn pod(&self) -> Option<SocketAddr> {
        lock(&self.state).connection.as_ref().map(|(pod, _)| *pod)
    }

    /// Takes the connection to `pod` if there is one; otherwise says whether to open
    /// one: not for a client connection's first request, nor while a connection to
    /// another pod is still open (that request goes through the pool).
    fn take(&self, pod: SocketAddr) -> (Option<http1::SendRequest<RequestBody>>, bool) {
        let mut state = lock(&self.state);
        let repeat = std::mem::replace(&mut state.seen_one, true);
        match state.connection.take() {
            Some((to, sender)) if to == pod && !sender.is_closed() => (Some(sender), false),
            Some((to, sender)) if !sender.is_closed() => {
                state.connection = Some((to, sender));
                (None, false)
            }
            _ => (None, repeat),
        }
    }

    fn put(&self, pod: SocketAddr, sender: http1::SendRequest<RequestBody>) {
        lock(&self.state).connection = Some((pod, sender));
    }
}

/// A request made ready for a pod: hop-by-hop headers gone, `X-Forwarded-*` set, the
/// pod's address still to come. Built once per request however many pods it is sent to.
#[derive(Debug)]
pub struct Outbound {
    parts: Parts,
    path_and_query: PathAndQuery,
    body: Incoming,
    upgrade: Option<OnUpgrade>,
    body_limit: Option<u64>,
    response_start_timeout: Option<Duration>,
    retry_unsent: bool,
}

impl Outbound {
    /// Prepares `req`, from `client_addr`, which reached the activator over `scheme`.
    ///
    /// - The Host header is kept (taken from the URI's authority for an HTTP/2 client,
    ///   which sends no Host); the URI becomes the pod's when sent.
    /// - Hop-by-hop headers go: `Connection` and every header it lists, `Keep-Alive`,
    ///   `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `Trailer`,
    ///   `Transfer-Encoding`, `TE` except `TE: trailers`, and `Upgrade` unless this is
    ///   an upgrade (HTTP/1.1, `Connection: upgrade` and an `Upgrade` other than h2c).
    /// - Split `Cookie` lines (HTTP/2 clients) are joined into one.
    /// - `X-Forwarded-For` gets the client's IP appended (or set). `X-Forwarded-Proto`
    ///   and `X-Forwarded-Host` are set, to `scheme` and the Host, only when absent: a
    ///   proxy in front of the activator, such as an ingress ending TLS, knows the
    ///   client's scheme and host better. A client reaching the activator directly can
    ///   claim any value, as it can with the addresses it puts in `X-Forwarded-For`.
    ///   `Forwarded` passes untouched.
    ///
    /// Fails for CONNECT (the activator is no tunnel to arbitrary places) and for a
    /// target that is not a path (`OPTIONS *`).
    pub fn new(
        req: Request<Incoming>,
        client_addr: SocketAddr,
        scheme: &str,
    ) -> Result<Self, ActivatorError> {
        if req.method() == Method::CONNECT {
            return Err(ActivatorError::Unsupported("CONNECT requests"));
        }
        let (mut parts, body) = req.into_parts();
        let path_and_query = match parts.uri.path_and_query() {
            Some(target) if target.as_str().starts_with('/') => target.clone(),
            Some(_) => {
                return Err(ActivatorError::Unsupported(
                    "requests whose target is not a path",
                ));
            }
            None => PathAndQuery::from_static("/"),
        };

        let headers = &mut parts.headers;
        if !headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, host);
        }
        let upgrade = if is_upgrade_request(parts.version, headers) {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        // Nothing hyper's server put there means anything to its client.
        parts.extensions.clear();
        strip_hop_by_hop(headers, Message::Request, upgrade.is_some());
        join_cookies(headers);

        add_forwarded(headers, client_addr.ip(), scheme);

        Ok(Self {
            parts,
            path_and_query,
            body,
            upgrade,
            body_limit: None,
            response_start_timeout: None,
            retry_unsent: false,
        })
    }

    /// Refuses bodies longer than `limit` bytes: at once when the declared length is
    /// larger, else the send fails with [`ActivatorError::BodyTooLarge`] when the
    /// streamed body passes the limit.
    pub fn with_body_limit(mut self, limit: u64) -> Result<Self, ActivatorError> {
        if self.body.size_hint().lower() > limit {
            return Err(ActivatorError::BodyTooLarge { limit });
        }
        self.body_limit = Some(limit);
        Ok(self)
    }

    /// Waits at most `timeout` for the pod's response headers, instead of the
    /// forwarder's default.
    pub fn with_response_start_timeout(mut self, timeout: Duration) -> Self {
        self.response_start_timeout = Some(timeout);
        self
    }

    /// Asks [`Forwarder::send`] to hand the request back when no byte of it reached the
    /// pod, at the cost of a copy of the request head. Set it when another pod could
    /// take the request.
    pub fn retry_unsent(mut self) -> Self {
        self.retry_unsent = true;
        self
    }

    /// Whether the request asks to switch protocols (a WebSocket).
    pub fn is_upgrade(&self) -> bool {
        self.upgrade.is_some()
    }
}

/// A failed [`Forwarder::send`].
pub struct SendError<G> {
    pub error: ActivatorError,
    /// The request and guard, when the request was [`Outbound::retry_unsent`] and no byte
    /// of it reached the pod: it may go to another pod.
    pub unsent: Option<Unsent<G>>,
}

/// A request that never reached its pod, handed back for another.
pub struct Unsent<G> {
    pub request: Outbound,
    pub guard: G,
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

fn lock<T>(slot: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `http://<pod>/<path?query>`.
fn pod_uri(pod: SocketAddr, path_and_query: PathAndQuery) -> Result<Uri, ActivatorError> {
    // "[v6]:port" without scope id fits in 47 bytes; the copy into the authority is the
    // one allocation.
    let mut buffer = [0u8; 64];
    let capacity = buffer.len();
    let mut cursor = &mut buffer[..];
    let written = match pod {
        SocketAddr::V4(pod) => write!(cursor, "{pod}"),
        SocketAddr::V6(pod) => write!(cursor, "[{}]:{}", pod.ip(), pod.port()),
    };
    let len = capacity - cursor.len();
    let invalid = |_| ActivatorError::Upstream(format!("invalid pod address {pod}").into());
    written.map_err(|_| ActivatorError::Upstream("pod address too long".into()))?;
    let authority = Authority::try_from(&buffer[..len]).map_err(invalid)?;
    let mut parts = uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts)
        .map_err(|_| ActivatorError::Upstream(format!("invalid pod URI for {pod}").into()))
}

/// Which failures left the request unsent: a failed connect, or hyper giving the
/// request back because the connection closed before it was written.
fn classify(error: hyper_util::client::legacy::Error) -> ActivatorError {
    let never_started = error.is_connect()
        || error
            .source()
            .and_then(|source| source.downcast_ref::<hyper::Error>())
            .is_some_and(hyper::Error::is_canceled);
    if never_started {
        return ActivatorError::UpstreamConnect(error.into());
    }
    classify_chain(error.into())
}

/// A failure after the request went out: the request body's own error when that is
/// what broke the exchange, else the pod's.
fn classify_chain(error: BoxError) -> ActivatorError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    let mut body_error = None;
    while let Some(cause) = source {
        if let Some(cause) = cause.downcast_ref::<RequestBodyError>() {
            body_error = Some(match cause {
                RequestBodyError::TooLarge { limit } => Some(*limit),
                RequestBodyError::Client(_) => None,
            });
            break;
        }
        source = cause.source();
    }
    match body_error {
        Some(Some(limit)) => ActivatorError::BodyTooLarge { limit },
        Some(None) => ActivatorError::RequestBody(error),
        None => ActivatorError::Upstream(error),
    }
}

/// Copies bytes both ways between the client and the pod once both switched protocols.
async fn run_tunnel<G>(client: OnUpgrade, pod: OnUpgrade, guard: G) {
    let _guard = guard;
    let (client, pod) = match tokio::try_join!(client, pod) {
        Ok(upgraded) => upgraded,
        Err(error) => {
            debug!(%error, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut pod = TokioIo::new(pod);
    match tokio::io::copy_bidirectional(&mut client, &mut pod).await {
        Ok((to_pod, to_client)) => debug!(to_pod, to_client, "tunnel closed"),
        Err(error) => debug!(%error, "tunnel failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::header::HeaderMap;
    use http_body_util::channel::{Channel, Sender};
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::body::Bytes;
    use hyper::server::conn::{http1, http2};
    use hyper::service::service_fn;
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

    fn config() -> ForwarderConfig {
        ForwarderConfig {
            connect_timeout: Duration::from_secs(1),
            response_start_timeout: Duration::from_secs(10),
            ..ForwarderConfig::default()
        }
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

    /// The activator under test: forwards every request to `pod`.
    async fn activator(
        config: ForwarderConfig,
        pod: SocketAddr,
        protocol: PodProtocol,
    ) -> SocketAddr {
        let forwarder = Forwarder::new(&config);
        serve(false, move |req, client| {
            let forwarder = forwarder.clone();
            async move {
                forwarder
                    .forward(req, pod, protocol, client, "http")
                    .await
                    .unwrap_or_else(ActivatorError::into_response)
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

    fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
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
            let activator = activator(config(), pod, PodProtocol::Http1).await;

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
            let activator = activator(config(), pod, PodProtocol::Http1).await;

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
            let activator = activator(config(), pod, PodProtocol::Http1).await;

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
            let activator = activator(config(), pod, PodProtocol::Http1).await;

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
            let activator = activator(config(), pod, PodProtocol::Http1).await;

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
            let activator = activator(config(), pod, PodProtocol::Http1).await;

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
                    match forwarder.send(outbound, pod, PodProtocol::H2c, guard).await {
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
            assert_eq!(values(&seen.headers, "sec-websocket-key"), ["dGhlIHNhbXBsZSBub25jZQ=="]);

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
            released.await.expect("the guard is released when the tunnel closes");
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
            let activator = activator(config(), pod, PodProtocol::H2c).await;

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
                    forwarder
                        .forward(req, pod, PodProtocol::Http1, client, "https")
                        .await
                        .unwrap_or_else(ActivatorError::into_response)
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
            let activator = activator(config(), closed_port().await, PodProtocol::Http1).await;

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
                        .send(outbound, refusing, PodProtocol::Http1, guard)
                        .await
                        .expect_err("the port is closed");
                    assert!(failed.error.is_connect_failure(), "{:?}", failed.error);
                    assert_eq!(failed.error.status(), StatusCode::BAD_GATEWAY);
                    let unsent = failed.unsent.expect("the request comes back");
                    forwarder
                        .send(unsent.request, pod, PodProtocol::Http1, unsent.guard)
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
            let config = ForwarderConfig {
                response_start_timeout: timeout,
                ..config()
            };
            let activator = activator(config, pod, PodProtocol::Http1).await;

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
                    .send(outbound, pod, PodProtocol::Http1, ())
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
            let activator = activator(config(), pod, PodProtocol::Http1).await;

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
                            .send_via(outbound, pod, PodProtocol::Http1, (), Some(&affinity))
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

    #[test]
    fn pod_uri_brackets_ipv6() {
        let path = PathAndQuery::from_static("/a?b=c");
        let v4 = pod_uri("10.1.2.3:8080".parse().expect("address"), path.clone());
        assert_eq!(v4.expect("uri"), "http://10.1.2.3:8080/a?b=c");
        let v6 = pod_uri("[fd00::1]:8080".parse().expect("address"), path);
        assert_eq!(v6.expect("uri"), "http://[fd00::1]:8080/a?b=c");
    }
}
