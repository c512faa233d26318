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
use zeroscale_api::stats::StatsReport;

use crate::capacity::{Permit, Queued};
use crate::errors::ActivatorError;
use crate::forward::{Affinity, Forwarder, Outbound, ResponseBody, SendError, Unsent};
use crate::functions::{FunctionState, Functions, Listener};
use crate::metrics::Metrics;
use crate::probe::{self, ProbeConfig};
use crate::wake::Wake;

/// Responses of the activator: the pod's, holding its slot, or the activator's own.
pub type ActivatorResponse = Response<ResponseBody<Permit>>;

/// Pods tried for one request when connecting fails before any byte was sent.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// The request path, shared by every connection of every listener.
pub struct Activator {
    functions: Arc<Functions>,
    forwarder: Forwarder,
    wake: Arc<dyn Wake>,
    probe: ProbeConfig,
    metrics: Metrics,
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
            functions,
            forwarder,
            wake,
            probe,
            metrics,
        }
    }

    /// Answers one request that came in on `listener` from `client` over `scheme`.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        listener: Listener,
        client: SocketAddr,
        scheme: &'static str,
    ) -> ActivatorResponse {
        self.handle_via(request, listener, client, scheme, None)
            .await
    }

    /// [`Activator::handle`] for a request on a client connection with `affinity`
    /// (see [`Affinity`]): its own connection to the pod its requests go to.
    pub async fn handle_via(
        &self,
        request: Request<Incoming>,
        listener: Listener,
        client: SocketAddr,
        scheme: &'static str,
        affinity: Option<&Affinity>,
    ) -> ActivatorResponse {
        let arrived = Instant::now();
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
        function.count_request();
        let response = match self
            .serve(&function, request, client, scheme, arrived, affinity)
            .await
        {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(function = %function.key, %error, "request failed");
                self.refuse(error)
            }
        };
        function.metrics.count_response(response.status());
        function
            .metrics
            .request_duration
            .observe(arrived.elapsed().as_secs_f64());
        response
    }

    async fn serve(
        &self,
        function: &Arc<FunctionState>,
        request: Request<Incoming>,
        client: SocketAddr,
        scheme: &'static str,
        arrived: Instant,
        affinity: Option<&Affinity>,
    ) -> Result<ActivatorResponse, ActivatorError> {
        let settings = function.settings();
        // One deadline from arrival bounds waiting for a pod and waiting for the pod's
        // response headers, across every attempt; a streaming body then runs on.
        let ends = arrived + settings.request_timeout;
        let mut outbound = Outbound::new(request, client, scheme)?.retry_unsent();
        if let Some(limit) = settings.max_body_bytes {
            outbound = outbound.with_body_limit(limit)?;
        }
        let deadline = (arrived + settings.max_queue_wait).min(ends);
        let mut permit = self.acquire(function, deadline).await?;
        let mut attempt = 1;
        loop {
            let pod = permit.addr();
            let protocol = permit.protocol();
            let remaining = ends.saturating_duration_since(Instant::now());
            outbound = outbound.with_response_start_timeout(remaining);
            // Boxed: the exchange's state is large, and a request held at zero should
            // not carry room for it while it waits.
            let sent = Box::pin(
                self.forwarder
                    .send_via(outbound, pod, protocol, permit, affinity),
            );
            match sent.await {
                Ok(response) => return Ok(response),
                Err(SendError {
                    error,
                    unsent: Some(Unsent { request, guard }),
                }) if attempt < MAX_CONNECT_ATTEMPTS => {
                    tracing::info!(function = %function.key, %pod, %error, "pod refused the connection; trying another");
                    // Set the pod aside before its slot frees, so no waiter is handed it.
                    function.mark_unreachable(pod);
                    drop(guard);
                    outbound = request;
                    permit = self.acquire(function, deadline).await?;
                    attempt += 1;
                }
                Err(failed) => return Err(failed.into()),
            }
        }
    }

    /// A slot on one of the Function's pods, waiting (and waking it) if none is free.
    async fn acquire(
        &self,
        function: &Arc<FunctionState>,
        deadline: Instant,
    ) -> Result<Permit, ActivatorError> {
        let started = Instant::now();
        let mut waited = None;
        let permit = function
            .capacity
            .acquire(deadline, |queued| {
                if queued == Queued::FirstWithNoPods {
                    function.metrics.wakes.inc();
                    self.wake.wake(&function.key);
                }
                probe::start(function, self.probe, &self.metrics.probes);
                waited = Some(queued);
            })
            .await?;
        if let Some(queued) = waited {
            let wait = started.elapsed().as_secs_f64();
            function.metrics.queue_wait.observe(wait);
            if queued == Queued::FirstWithNoPods {
                function.metrics.cold_start.observe(wait);
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
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_period: Duration::from_secs(30),
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
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let activator = Arc::clone(&activator);
        let affinity = Arc::new(Affinity::default());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let activator = Arc::clone(&activator);
            let affinity = Arc::clone(&affinity);
            async move {
                Ok::<_, std::convert::Infallible>(
                    activator
                        .handle_via(request, exposure, client, "http", Some(&affinity))
                        .await,
                )
            }
        });
        let connection = http.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
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
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

/// Adds each Function's load to its counters every `period` until `shutdown` resolves.
pub async fn sample_load(
    functions: Arc<Functions>,
    metrics: Metrics,
    period: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        let elapsed = now - last;
        last = now;
        for function in functions.all() {
            function.sample(elapsed);
            let labels = [function.key.namespace.as_str(), function.key.name.as_str()];
            let (in_flight, queued) = (function.capacity.in_flight(), function.capacity.queued());
            metrics
                .in_flight
                .with_label_values(&labels)
                .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
            metrics
                .queued
                .with_label_values(&labels)
                .set(i64::try_from(queued).unwrap_or(i64::MAX));
        }
    }
}
