//! The activator's request path and its listeners. Each request is routed to a
//! Function, counted, given a pod by the Function's capacity (waiting, waking and
//! probing when none is free), and forwarded with the pod's slot held until the response
//! ends. The listeners speak HTTP/1.1 and h2c on one port and drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;
use zeroscale_admin::process::{self, ErrorChain};
use zeroscale_api::stats::StatsReport;

use crate::auth::Verified;
use crate::body::ResponseBody;
use crate::calls::{self, AsyncCalls};
use crate::capacity::{CapacityError, Permit, Queued};
use crate::connections::{ConnectionLimits, Connections, Counted};
use crate::cors::CorsPolicy;
use crate::errors::ActivatorError;
use crate::forward::{Affinity, Forwarder, Outbound, SendError, Unsent, strip_forwarded};
use crate::functions::{FunctionState, Functions, Listener};
use crate::gateway::{Gateway, Observed};
use crate::metrics::Metrics;
use crate::probe::{self, ProbeConfig};
use crate::proxies::TrustedProxies;
use crate::ratelimit::ClientIdentity;
use crate::usage::Outcome;
use crate::wake::Wake;

/// Responses of the activator: the pod's, holding its slot, or the activator's own.
pub(crate) type ActivatorResponse = Response<ResponseBody<Permit>>;

/// Pods tried for one request when connecting fails before any byte was sent.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// The request path, shared by every connection of every listener.
pub struct Activator {
    functions: Arc<Functions>,
    forwarder: Forwarder,
    wake: Arc<dyn Wake>,
    probe: ProbeConfig,
    metrics: Metrics,
    connections: Arc<Connections>,
    calls: AsyncCalls,
    gateway: Gateway,
    trusted_proxies: TrustedProxies,
}

impl Activator {
    pub fn new(
        functions: Arc<Functions>,
        forwarder: Forwarder,
        wake: Arc<dyn Wake>,
        probe: ProbeConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            connections: Arc::new(Connections::new(&metrics)),
            functions,
            forwarder,
            wake,
            probe,
            metrics,
            calls: AsyncCalls::default(),
            gateway: Gateway::default(),
            trusted_proxies: TrustedProxies::default(),
        }
    }

    /// Stores requests sent with `Prefer: respond-async` through `calls` (without it
    /// they are answered 501).
    pub fn with_calls(mut self, calls: AsyncCalls) -> Self {
        self.calls = calls;
        self
    }

    /// Sets the gateway steps' replicas, span export and access log.
    pub fn with_gateway(mut self, gateway: Gateway) -> Self {
        self.gateway = gateway;
        self
    }

    /// Keeps the forwarding headers of connections from `proxies`; those of every other
    /// connection are replaced (by default, of every connection).
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// Answers one request that came in on `listener` from `client` over `scheme`, on a
    /// client connection with `affinity` (see [`Affinity`]): its own connection to the
    /// pod its requests go to.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        listener: Listener,
        client: SocketAddr,
        scheme: &'static str,
        affinity: &Affinity,
    ) -> ActivatorResponse {
        let arrived = Instant::now();
        let mut request = request;
        if let Err(error) = crate::target::take_authority(&mut request) {
            return self.refuse(error);
        }
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .or_else(|| request.uri().host())
            .unwrap_or_default();
        let function = match self.functions.route(listener, host, request.uri().path()) {
            Ok(function) => function,
            Err(error) => return self.refuse(ActivatorError::from(error)),
        };
        if !self.trusted_proxies.trusts(client.ip()) {
            strip_forwarded(request.headers_mut());
        }
        // Authentication first (a CORS preflight carries no credentials and is answered
        // by the gateway step below), before counting, holding or waking: a refused
        // request costs the Function nothing. Then CORS and rate limits, per caller by
        // the verified subject when the limit asks for it.
        let (auth, preflight) = {
            let settings = function.settings();
            let preflight = settings.cors.is_some()
                && CorsPolicy::is_preflight(request.method(), request.headers());
            (settings.auth.clone(), preflight)
        };
        // The two steps only some Functions use (authentication, which may fetch a JWKS,
        // and storing an async call) are boxed: their states are large, and hyper moves
        // this future several times per request, so unboxed every request would copy
        // room for them.
        let verified = match auth {
            Some(policy) if !preflight => {
                match Box::pin(policy.check(request.headers_mut())).await {
                    Ok(verified) => verified,
                    Err(error) => return self.refuse(error.into()),
                }
            }
            _ => Verified::default(),
        };
        let identity = ClientIdentity {
            address: self
                .trusted_proxies
                .client_ip(client.ip(), request.headers()),
            api_key: None,
            subject: verified.subject.as_deref(),
        };
        let admitted = match self.gateway.admit(&function, &mut request, &identity) {
            Ok(admitted) => admitted,
            Err(answered) => {
                if let Some(label) = answered.error_label {
                    self.metrics.errors.with_label_values(&[label]).inc();
                }
                function.metrics.count_response(answered.response.status());
                return answered.response;
            }
        };
        // Stored for later: the dispatcher sends it through this path again.
        if calls::is_async(&request) {
            return Box::pin(self.calls.handle(&function, request)).await;
        }
        function.count_request();
        let mut observed = Observed::new(arrived);
        let mut response = match self
            .dispatch(&function, request, client, scheme, affinity, &mut observed)
            .await
        {
            Ok(response) => {
                function
                    .metrics
                    .count_outcome(Outcome::of_status(response.status()));
                response
            }
            Err(error) => {
                tracing::debug!(function = %function.key, error = %ErrorChain(&error), "request failed");
                function.metrics.count_outcome(Outcome::of_error(&error));
                self.refuse(error)
            }
        };
        function.metrics.count_response(response.status());
        function
            .metrics
            .request_duration
            .observe(arrived.elapsed().as_secs_f64());
        self.gateway
            .finish(admitted, &function, &mut response, &observed);
        response
    }

    /// Sends the request to one of the Function's pods, waiting for one if none is free
    /// and trying another when a pod refuses the connection.
    async fn dispatch(
        &self,
        function: &Arc<FunctionState>,
        request: Request<Incoming>,
        client: SocketAddr,
        scheme: &'static str,
        affinity: &Affinity,
        observed: &mut Observed,
    ) -> Result<ActivatorResponse, ActivatorError> {
        let arrived = observed.arrived;
        let settings = function.settings();
        // One deadline from arrival bounds waiting for a pod and waiting for the pod's
        // response headers, across every attempt; a streaming body then runs on.
        let ends = arrived + settings.request_timeout;
        let mut outbound = Outbound::new(request, client, scheme)?.retry_unsent();
        if let Some(limit) = settings.max_body_bytes {
            outbound = outbound.with_body_limit(limit)?;
        }
        let deadline = (arrived + settings.max_queue_wait).min(ends);
        let near = affinity.pod();
        let mut permit = self.acquire(function, deadline, near, observed).await?;
        let mut attempt = 1;
        loop {
            let pod = permit.addr();
            observed.pod = Some(pod);
            let protocol = permit.protocol();
            let remaining = ends.saturating_duration_since(Instant::now());
            // Boxed: the exchange's state is large, and a request held at zero should
            // not carry room for it while it waits.
            let sent = Box::pin(self.forwarder.send(
                outbound,
                pod,
                protocol,
                remaining,
                permit,
                Some(affinity),
            ));
            match sent.await {
                Ok(response) => return Ok(response),
                Err(SendError {
                    error,
                    unsent: Some(Unsent { request, guard }),
                }) if attempt < MAX_CONNECT_ATTEMPTS => {
                    tracing::info!(function = %function.key, %pod, error = %ErrorChain(&error), "pod refused the connection; trying another");
                    // Set the pod aside before its slot frees, so no waiter is handed it.
                    function.mark_unreachable(pod);
                    drop(guard);
                    outbound = request;
                    permit = self.acquire(function, deadline, near, observed).await?;
                    attempt += 1;
                }
                Err(failed) => return Err(failed.into()),
            }
        }
    }

    /// Asks for the Function to be woken, and counts it.
    fn request_wake(&self, function: &FunctionState) {
        function.metrics.wakes.inc();
        self.wake.wake(&function.key);
    }

    /// A slot on one of the Function's pods, waiting (and waking it) if none is free;
    /// `near` is the pod the client connection already has a connection to.
    async fn acquire(
        &self,
        function: &Arc<FunctionState>,
        deadline: Instant,
        near: Option<SocketAddr>,
        observed: &mut Observed,
    ) -> Result<Permit, ActivatorError> {
        let started = Instant::now();
        let mut waited = None;
        let permit = function
            .capacity
            .acquire_near(deadline, near, |queued| {
                if queued == Queued::FirstWithNoPods {
                    self.request_wake(function);
                }
                probe::start(function, self.probe, &self.metrics.probes);
                waited = Some(queued);
            })
            .await
            .inspect_err(|error| {
                if *error == CapacityError::NotHeldWhileStarting {
                    self.request_wake(function);
                }
            })?;
        if let Some(queued) = waited {
            let wait = started.elapsed();
            function.metrics.queue_wait.observe(wait.as_secs_f64());
            observed.queue_wait = Some(wait);
            if queued == Queued::FirstWithNoPods {
                function.metrics.cold_start.observe(wait.as_secs_f64());
                observed.cold_start = true;
            }
        }
        Ok(permit)
    }

    fn refuse(&self, error: ActivatorError) -> ActivatorResponse {
        self.metrics
            .errors
            .with_label_values(&[error.metric_label()])
            .inc();
        error.into_response()
    }

    /// The stats report served on the admin port's `/stats`.
    pub fn stats(&self, instance: &str, uptime: Duration) -> StatsReport {
        StatsReport {
            instance: instance.to_owned(),
            uptime_seconds: uptime.as_secs_f64(),
            functions: self.functions.all().iter().map(|f| f.stats()).collect(),
        }
    }
}

/// Limits every listener applies to clients.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Longest a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Largest request head (431 beyond it).
    pub max_header_bytes: usize,
    /// Longest shutdown waits for requests in flight and held.
    pub drain_period: Duration,
    /// Idle timeouts and the cap on open connections.
    pub connections: ConnectionLimits,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_period: Duration::from_secs(30),
            connections: ConnectionLimits::default(),
        }
    }
}

/// Serves `listener` for `activator` until `shutdown` resolves, then stops accepting and
/// lets requests in flight and held finish, for up to the drain period.
pub async fn serve(
    listener: TcpListener,
    exposure: Listener,
    activator: Arc<Activator>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Some((stream, state)) = activator.connections.admit(stream, &limits.connections) else {
            continue;
        };
        let activator = Arc::clone(&activator);
        let affinity = Arc::new(Affinity::default());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let activator = Arc::clone(&activator);
            let affinity = Arc::clone(&affinity);
            let in_flight = state.start_request();
            let state = Arc::clone(&state);
            async move {
                let response = activator
                    .handle(request, exposure, client, "http", &affinity)
                    .await;
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    state.mark_upgraded();
                }
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| Counted::new(body, in_flight)),
                )
            }
        });
        let connection = http.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %ErrorChain(&*error), "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_period, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain period ended with requests still open");
    }
}

/// Binds a listener with a backlog deep enough for a burst of new connections at a cold
/// start (the default of 128 drops the rest, and their clients retry only after 1 s).
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    listen(address, false)
}

/// [`bind`], with `SO_REUSEPORT` when `shared`, so that more listeners can join the port.
fn listen(address: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(shared)?;
    socket.bind(address)?;
    socket.listen(4096)
}

/// A listener served by one single-threaded runtime per thread ([`serve_per_core`]).
#[derive(Debug)]
pub struct PerCoreServer {
    /// The address all its threads accept on.
    pub local_addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl PerCoreServer {
    /// Resolves once every thread has stopped accepting and drained.
    pub async fn finished(self) {
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::warn!("a listener thread panicked");
                }
            }
        })
        .await;
    }
}

/// Serves `address` like [`serve`], on `threads` threads, each with a single-threaded
/// tokio runtime and its own `SO_REUSEPORT` listener on the same address; the kernel
/// spreads new connections over them.
///
/// Why: a client connection, the tasks serving its requests and (with [`Affinity`]) its
/// connection to the pod then stay on one thread, as in nginx's workers, instead of
/// hopping between the worker threads of one work-stealing runtime. On the warm path
/// that cost about 15-30% of the throughput (docs/performance.md). Watches and the admin
/// server stay on the main runtime; what a request starts (probing of a Function's
/// starting pods, a wake) runs on the thread of the request that started it.
///
/// `shutdown` is called once per thread; each thread stops accepting when its future
/// resolves, then drains as [`serve`] does. Must be called within a tokio runtime.
pub fn serve_per_core<S, F>(
    address: SocketAddr,
    threads: usize,
    exposure: Listener,
    activator: Arc<Activator>,
    limits: ServerLimits,
    shutdown: S,
) -> std::io::Result<PerCoreServer>
where
    S: Fn() -> F + Send + Sync + 'static,
    F: Future<Output = ()> + 'static,
{
    let mut listeners = Vec::new();
    let mut local_addr = address;
    for _ in 0..threads.max(1) {
        // Port 0 is chosen by the first bind; the others join it.
        let listener = listen(local_addr, true)?;
        local_addr = listener.local_addr()?;
        // Registered with this thread's runtime by `listen`; moved to its own below.
        listeners.push(listener.into_std()?);
    }
    let shutdown = Arc::new(shutdown);
    let mut handles = Vec::new();
    for (n, listener) in listeners.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let activator = Arc::clone(&activator);
        let shutdown = Arc::clone(&shutdown);
        let handle = std::thread::Builder::new()
            .name(format!("listener-{n}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            serve(listener, exposure, activator, limits, shutdown()).await;
                        }
                        Err(error) => tracing::error!(error = %ErrorChain(&error), "listener thread cannot serve"),
                    }
                });
            })?;
        handles.push(handle);
    }
    Ok(PerCoreServer {
        local_addr,
        threads: handles,
    })
}

/// Adds each Function's load to its counters and gauges every `period` until `shutdown`
/// resolves.
pub async fn sample_load(
    functions: Arc<Functions>,
    period: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut last = Instant::now();
    process::every(period, shutdown, async move || {
        let now = Instant::now();
        let elapsed = now - last;
        last = now;
        functions.for_each(|function| {
            function.sample(elapsed);
            function
                .metrics
                .set_load(function.capacity.in_flight(), function.capacity.queued());
        });
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::body::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::watch;
    use zeroscale_api::{Function, FunctionSpec};

    use super::*;
    use crate::endpoints::{EndpointSet, EndpointState, PodEndpoint, PodProtocol};
    use crate::forward::ForwarderConfig;
    use zeroscale_api::routing::{Domains, FunctionKey};

    struct NoWake;

    impl Wake for NoWake {
        fn wake(&self, _: &FunctionKey) {}
    }

    /// A pod answering "ok" to everything.
    async fn pod() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    /// An activator with Function `hello.team` served by `pod`.
    fn activator(pod: SocketAddr) -> Arc<Activator> {
        let metrics = Metrics::new().expect("metrics");
        let functions = Arc::new(Functions::new(Domains::default(), metrics.clone()));
        let mut function = Function::new("hello", FunctionSpec::with_image("example.com/f:1"));
        function.metadata.namespace = Some("team".into());
        functions.apply(&function);
        functions.set_endpoints(
            &FunctionKey::new("team", "hello"),
            EndpointSet::new(vec![PodEndpoint {
                addr: pod,
                pod: None,
                state: EndpointState::Ready,
                protocol: PodProtocol::Http1,
            }]),
        );
        Arc::new(Activator::new(
            functions,
            Forwarder::new(&ForwarderConfig::default()),
            Arc::new(NoWake),
            ProbeConfig::default(),
            metrics,
        ))
    }

    #[tokio::test]
    async fn per_core_listeners_share_one_address_and_stop_on_shutdown() {
        let activator = activator(pod().await);
        let (stop, _) = watch::channel(false);
        let stopping = {
            let stop = stop.clone();
            move || {
                let mut stopped = stop.subscribe();
                async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                }
            }
        };
        let limits = ServerLimits {
            drain_period: Duration::from_secs(5),
            ..ServerLimits::default()
        };
        let server = serve_per_core(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            2,
            Listener::Cluster,
            activator,
            limits,
            stopping,
        )
        .expect("listening");
        assert_ne!(server.local_addr.port(), 0);

        for _ in 0..20 {
            let mut stream = TcpStream::connect(server.local_addr)
                .await
                .expect("connect");
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: hello.team\r\nConnection: close\r\n\r\n")
                .await
                .expect("request");
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.expect("answer");
            assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
            assert!(answer.ends_with(b"ok"));
        }

        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), server.finished())
            .await
            .expect("every listener thread stops");
    }
}
