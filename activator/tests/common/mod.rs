//! Harness for in-process tests of the activator: its cluster and public listeners on
//! 127.0.0.1:0, a [`Wake`] that reports on a channel (tests await the wake instead of
//! sleeping), upstream pods as real hyper servers on 127.0.0.1:0 that count what they
//! see, and a pooled HTTP/1.1 client that names Functions by the Host header.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zeroscale_activator::calls::AsyncCalls;
use zeroscale_activator::endpoints::{EndpointSet, EndpointState, PodEndpoint, PodProtocol};
use zeroscale_activator::forward::{Forwarder, ForwarderConfig};
use zeroscale_activator::functions::{Functions, Listener};
use zeroscale_activator::gateway::Gateway;
use zeroscale_activator::metrics::Metrics;
use zeroscale_activator::probe::ProbeConfig;
use zeroscale_activator::server::{self, Activator, ServerLimits};
use zeroscale_activator::wake::Wake;
use zeroscale_api::conditions::Reason;
use zeroscale_api::routing::{Domains, FunctionKey};
use zeroscale_api::stats::FunctionStats;
use zeroscale_api::{Function, FunctionSpec, FunctionStatus, Visibility};

/// The namespace every test Function lives in.
pub const NAMESPACE: &str = "team";
/// The public domain of the harness: public Functions answer on `<fn>.team.<this>`.
pub const PUBLIC_DOMAIN: &str = "fn.example.com";
/// The path test pods answer probes on (see [`FunctionFixture::readiness_path`]).
pub const READINESS_PATH: &str = "/ready";

/// Every test ends within this, pass or fail.
const BOUND: Duration = Duration::from_secs(20);
/// Longest [`until`] waits for its condition.
const CONDITION_BOUND: Duration = Duration::from_secs(10);

/// Runs a test body, failing it if it does not finish within [`BOUND`].
pub async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(BOUND, test)
        .await
        .expect("the test did not finish in time")
}

/// Waits until `condition` holds, checking every millisecond; for state the activator
/// exposes no signal for (queue lengths, load counters).
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let check = async {
        let mut ticks = tokio::time::interval(Duration::from_millis(1));
        while !condition() {
            ticks.tick().await;
        }
    };
    if tokio::time::timeout(CONDITION_BOUND, check).await.is_err() {
        panic!("timed out waiting until {what}");
    }
}

/// A Wake that reports every call on a channel.
struct RecordingWake(mpsc::UnboundedSender<FunctionKey>);

impl Wake for RecordingWake {
    fn wake(&self, function: &FunctionKey) {
        let _ = self.0.send(function.clone());
    }
}

/// What the harness's activator runs with.
#[derive(Clone, Debug)]
pub struct Options {
    pub limits: ServerLimits,
    pub probe: ProbeConfig,
    pub gateway: Gateway,
    /// Shortest time between JWKS fetches for unknown keys.
    pub jwks_min_refresh: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            limits: ServerLimits {
                drain_period: Duration::from_secs(10),
                ..ServerLimits::default()
            },
            probe: ProbeConfig {
                period: Duration::from_millis(10),
                timeout: Duration::from_millis(500),
            },
            gateway: Gateway::default(),
            jwks_min_refresh: zeroscale_activator::auth::DEFAULT_JWKS_MIN_REFRESH,
        }
    }
}

/// An activator serving its two listeners, with its Functions driven by the test.
pub struct Harness {
    pub functions: Arc<Functions>,
    pub activator: Arc<Activator>,
    pub metrics: Metrics,
    /// The listener for callers inside the cluster.
    pub cluster: SocketAddr,
    /// The listener for callers outside the cluster.
    pub public: SocketAddr,
    wakes: mpsc::UnboundedReceiver<FunctionKey>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        Self::start_with_calls(options, AsyncCalls::default()).await
    }

    /// An activator that stores asynchronous calls through `calls`.
    pub async fn start_with_calls(options: Options, calls: AsyncCalls) -> Self {
        let metrics = Metrics::new().expect("metrics");
        let functions = Arc::new(
            Functions::new(
                Domains {
                    cluster_domain: "cluster.local".into(),
                    public_domain: Some(PUBLIC_DOMAIN.into()),
                },
                metrics.clone(),
            )
            .with_auth(zeroscale_activator::auth::Gate::new(
                options.jwks_min_refresh,
            )),
        );
        let (wake, wakes) = mpsc::unbounded_channel();
        let activator = Arc::new(
            Activator::new(
                Arc::clone(&functions),
                Forwarder::new(&ForwarderConfig {
                    connect_timeout: Duration::from_secs(1),
                    ..ForwarderConfig::default()
                }),
                Arc::new(RecordingWake(wake)),
                options.probe,
                metrics.clone(),
            )
            .with_calls(calls)
            .with_gateway(options.gateway),
        );
        let (stop, _) = watch::channel(false);
        let mut harness = Self {
            functions,
            activator,
            metrics,
            cluster: SocketAddr::from(([127, 0, 0, 1], 0)),
            public: SocketAddr::from(([127, 0, 0, 1], 0)),
            wakes,
            stop,
            servers: Vec::new(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        harness.cluster = harness.listen(Listener::Cluster, options.limits).await;
        harness.public = harness.listen(Listener::Public, options.limits).await;
        harness
    }

    async fn listen(&mut self, exposure: Listener, limits: ServerLimits) -> SocketAddr {
        let listener = listener();
        let addr = listener.local_addr().expect("local address");
        self.servers.push(tokio::spawn(server::serve(
            listener,
            exposure,
            Arc::clone(&self.activator),
            limits,
            self.stopping(),
        )));
        addr
    }

    /// Adds or updates a Function, as the Function watch does.
    pub fn apply(&self, function: &Function) {
        self.functions.apply(function);
    }

    /// Replaces the pods of Function `name`, as the EndpointSlice watch does.
    pub fn set_pods(&self, name: &str, pods: Vec<PodEndpoint>) {
        self.functions
            .set_endpoints(&FunctionKey::new(NAMESPACE, name), EndpointSet::new(pods));
    }

    /// Applies `function` and gives it one ready pod, named after it.
    pub async fn warm(&self, function: Function) -> Pod {
        let name = function.metadata.name.clone().expect("a named Function");
        let pod = Pod::named(&name).start().await;
        self.apply(&function);
        self.set_pods(&name, vec![endpoint(pod.addr, EndpointState::Ready)]);
        pod
    }

    /// The next Function the activator asked to wake.
    pub async fn next_wake(&mut self) -> FunctionKey {
        self.wakes.recv().await.expect("the activator is alive")
    }

    /// Wakes asked for and not yet taken by [`Harness::next_wake`].
    pub fn pending_wakes(&mut self) -> Vec<FunctionKey> {
        std::iter::from_fn(|| self.wakes.try_recv().ok()).collect()
    }

    /// The stats report's entry for Function `name`.
    pub fn stats(&self, name: &str) -> FunctionStats {
        self.activator
            .stats("test", Duration::ZERO)
            .functions
            .into_iter()
            .find(|stats| stats.namespace == NAMESPACE && stats.name == name)
            .expect("the Function is in the stats report")
    }

    /// A request to the cluster listener for `host`.
    pub fn request(&self, host: &str, path: &str) -> http::request::Builder {
        request_to(self.cluster, host, path)
    }

    /// GET `path` from `host` through the cluster listener.
    pub fn get(&self, host: &str, path: &str) -> impl Future<Output = Reply> + Send + 'static {
        let request = self
            .request(host, path)
            .body(Full::default())
            .expect("request");
        self.send(request)
    }

    /// Sends `request` (its URI names the listener) with the harness's pooled client.
    pub fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> impl Future<Output = Reply> + Send + 'static {
        let client = self.client.clone();
        async move {
            let response = client
                .request(request)
                .await
                .expect("the activator answered");
            Reply::read(response).await
        }
    }

    /// Signals shutdown to both listeners.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once [`Harness::stop`] is called.
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }

    /// Waits for both listeners to finish draining.
    pub async fn stopped(self) {
        for server in self.servers {
            server.await.expect("the server task did not panic");
        }
    }
}

/// A listener on 127.0.0.1:0 whose accept queue holds a burst of 1024 connections.
/// `TcpListener::bind` asks for 128, as std does: a burst of hundreds of clients then
/// overflows it and the dropped SYNs are retried a second later, which would time the
/// kernel rather than the activator.
fn listener() -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    socket.listen(1024).expect("listen")
}

/// A request to the listener at `addr` for `host`.
pub fn request_to(addr: SocketAddr, host: &str, path: &str) -> http::request::Builder {
    Request::get(format!("http://{addr}{path}")).header(header::HOST, host)
}

/// A pod endpoint at `addr` speaking HTTP/1.1.
pub fn endpoint(addr: SocketAddr, state: EndpointState) -> PodEndpoint {
    PodEndpoint {
        addr,
        pod: None,
        state,
        protocol: PodProtocol::Http1,
    }
}

/// An address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local address")
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn read(response: Response<Incoming>) -> Self {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Self {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).expect("utf-8 body"),
        }
    }

    /// The value of header `name`; empty when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |value| value.to_str().expect("ascii header"))
    }

    /// The name of the pod that answered; empty when the activator answered itself.
    pub fn pod(&self) -> &str {
        self.header("x-pod")
    }
}

/// Reads an HTTP/1.1 response head from a raw connection, lowercased.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("utf-8").to_ascii_lowercase()
}

/// Test Functions in namespace [`NAMESPACE`], built up from every default.
pub trait FunctionFixture {
    fn test(name: &str) -> Self;
    fn container_concurrency(self, limit: i32) -> Self;
    fn max_queued_requests(self, limit: i32) -> Self;
    fn max_queue_wait(self, wait: &str) -> Self;
    fn max_body_bytes(self, limit: i64) -> Self;
    fn request_timeout(self, timeout: &str) -> Self;
    /// Probes starting pods on [`READINESS_PATH`].
    fn readiness_path(self) -> Self;
    fn host(self, host: &str) -> Self;
    fn path_prefix(self, prefix: &str) -> Self;
    fn cluster_local(self) -> Self;
    /// The status the operator writes when the Function cannot start.
    fn cannot_start(self, message: &str) -> Self;
}

impl FunctionFixture for Function {
    fn test(name: &str) -> Self {
        let mut function = Function::new(name, FunctionSpec::with_image("example.com/f:1"));
        function.metadata.namespace = Some(NAMESPACE.into());
        function
    }

    fn container_concurrency(mut self, limit: i32) -> Self {
        self.spec.scaling.container_concurrency = limit;
        self
    }

    fn max_queued_requests(mut self, limit: i32) -> Self {
        self.spec.requests.max_queued_requests = limit;
        self
    }

    fn max_queue_wait(mut self, wait: &str) -> Self {
        self.spec.requests.max_queue_wait = wait.into();
        self
    }

    fn max_body_bytes(mut self, limit: i64) -> Self {
        self.spec.requests.max_body_bytes = Some(limit);
        self
    }

    fn request_timeout(mut self, timeout: &str) -> Self {
        self.spec.requests.timeout = timeout.into();
        self
    }

    fn readiness_path(mut self) -> Self {
        self.spec.readiness_path = Some(READINESS_PATH.into());
        self
    }

    fn host(mut self, host: &str) -> Self {
        self.spec.routing.hosts.push(host.into());
        self
    }

    fn path_prefix(mut self, prefix: &str) -> Self {
        self.spec.routing.path_prefix = Some(prefix.into());
        self
    }

    fn cluster_local(mut self) -> Self {
        self.spec.routing.visibility = Visibility::ClusterLocal;
        self
    }

    fn cannot_start(mut self, message: &str) -> Self {
        let mut status = FunctionStatus::default();
        status.set_ready(
            Reason::DeploymentFailed,
            message.into(),
            None,
            Time(jiff::Timestamp::now()),
        );
        self.status = Some(status);
        self
    }
}

/// Holds a pod's requests until opened; stays open once opened.
pub struct Gate(watch::Sender<bool>);

impl Gate {
    pub fn new() -> Self {
        Self(watch::channel(false).0)
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }
}

/// What a pod saw of one request.
#[derive(Debug)]
pub struct Arrival {
    pub version: Version,
    pub path: String,
    pub headers: HeaderMap,
}

/// A pod as a real HTTP server (HTTP/1.1 with upgrades, and h2c) on 127.0.0.1:0. It
/// answers [`READINESS_PATH`] with 200 (503 while [`PodBuilder::unready_until`] holds), accepts any upgrade and echoes the tunnel, and
/// answers every other request with its body echoed and `x-pod` naming it.
pub struct Pod {
    pub addr: SocketAddr,
    /// Each request (probes aside) as it arrives, before the pod works on it.
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    probes: AtomicUsize,
}

/// How a [`Pod`] behaves.
pub struct PodBuilder {
    name: String,
    work: Duration,
    gate: Option<watch::Receiver<bool>>,
    ready: Option<watch::Receiver<bool>>,
}

struct PodState {
    name: HeaderValue,
    work: Duration,
    gate: Option<watch::Receiver<bool>>,
    ready: Option<watch::Receiver<bool>>,
    counts: Arc<Counts>,
    arrivals: mpsc::UnboundedSender<Arrival>,
}

impl Pod {
    pub fn named(name: &str) -> PodBuilder {
        PodBuilder {
            name: name.into(),
            work: Duration::ZERO,
            gate: None,
            ready: None,
        }
    }

    /// Requests the pod received, probes aside.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    /// The most requests the pod worked on at once.
    pub fn max_in_flight(&self) -> usize {
        self.counts.max_in_flight.load(Ordering::SeqCst)
    }

    /// Probes of [`READINESS_PATH`] the pod answered.
    pub fn probes(&self) -> usize {
        self.counts.probes.load(Ordering::SeqCst)
    }

    /// Waits for the next request to reach the pod.
    pub async fn arrival(&mut self) -> Arrival {
        self.arrivals.recv().await.expect("the pod is serving")
    }
}

impl PodBuilder {
    /// Each request takes this long to work on (simulated work, not synchronisation).
    pub fn work(mut self, work: Duration) -> Self {
        self.work = work;
        self
    }

    /// Each request waits for `gate` to open before the pod answers.
    pub fn gate(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.0.subscribe());
        self
    }

    /// The pod answers its readiness path with 503 until `gate` opens.
    pub fn unready_until(mut self, gate: &Gate) -> Self {
        self.ready = Some(gate.0.subscribe());
        self
    }

    pub async fn start(self) -> Pod {
        let listener = listener();
        let addr = listener.local_addr().expect("local address");
        let counts = Arc::new(Counts::default());
        let (arrived, arrivals) = mpsc::unbounded_channel();
        let state = Arc::new(PodState {
            name: HeaderValue::from_str(&self.name).expect("a header-safe pod name"),
            work: self.work,
            gate: self.gate,
            ready: self.ready,
            counts: Arc::clone(&counts),
            arrivals: arrived,
        });
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&state);
                let service = service_fn(move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(state.answer(request).await) }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Pod {
            addr,
            arrivals,
            counts,
        }
    }
}

impl PodState {
    async fn answer(&self, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() == READINESS_PATH {
            self.counts.probes.fetch_add(1, Ordering::SeqCst);
            let mut response = Response::new(Full::new(Bytes::from_static(b"ready")));
            if self.ready.as_ref().is_some_and(|ready| !*ready.borrow()) {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            return response;
        }
        self.counts.requests.fetch_add(1, Ordering::SeqCst);
        let _ = self.arrivals.send(Arrival {
            version: request.version(),
            path: request.uri().path().to_owned(),
            headers: request.headers().clone(),
        });
        if request.headers().contains_key(header::UPGRADE) {
            tokio::spawn(echo(hyper::upgrade::on(&mut request)));
            return Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header("x-pod", self.name.clone())
                .body(Full::default())
                .expect("response");
        }

        let now = self.counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.counts.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            let _ = gate.clone().wait_for(|open| *open).await;
        }
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        self.counts.in_flight.fetch_sub(1, Ordering::SeqCst);

        let status = parts
            .headers
            .get("x-reply-status")
            .and_then(|status| StatusCode::from_bytes(status.as_bytes()).ok())
            .unwrap_or(StatusCode::OK);
        let mut response = Response::builder()
            .status(status)
            .header("x-pod", self.name.clone())
            .header("x-echo-method", parts.method.as_str())
            .header(
                "x-echo-target",
                parts
                    .uri
                    .path_and_query()
                    .map_or("/", |target| target.as_str()),
            );
        for name in [
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-request-id"),
        ] {
            if let Some(value) = parts.headers.get(&name) {
                response = response.header(name, value);
            }
        }
        response.body(Full::new(body)).expect("response")
    }
}

/// Echoes every byte of an upgraded connection back until the other side closes.
async fn echo(upgrade: hyper::upgrade::OnUpgrade) {
    let Ok(upgraded) = upgrade.await else {
        return;
    };
    let mut io = TokioIo::new(upgraded);
    let mut buffer = [0u8; 1024];
    loop {
        match io.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if io.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
