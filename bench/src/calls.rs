//! Asynchronous calls (issue 15), in process against a real `nats-server`: the accept
//! rate and latency of `Prefer: respond-async` against the synchronous warm path
//! through the same activator, delivery throughput of one dispatcher, and a run of
//! calls during which the dispatcher is killed (its runtime dropped, every task with it,
//! as with SIGKILL) and restarted: accepted, delivered, delivered more than once, lost
//! (must be 0) and dead-lettered.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use zeroscale_activator::calls::AsyncCalls;
use zeroscale_activator::calls::address::AddressPolicy;
use zeroscale_activator::calls::dispatch::{self, Loopback};
use zeroscale_activator::endpoints::{EndpointSet, EndpointState, PodEndpoint, PodProtocol};
use zeroscale_activator::forward::{Forwarder, ForwarderConfig};
use zeroscale_activator::functions::{Functions, Listener};
use zeroscale_activator::metrics::Metrics;
use zeroscale_activator::probe::ProbeConfig;
use zeroscale_activator::server::{self, Activator, ServerLimits};
use zeroscale_activator::wake::Wake;
use zeroscale_api::routing::{Domains, FunctionKey};
use zeroscale_api::{Function, FunctionSpec};
use zeroscale_queue::calls::CallStore;
use zeroscale_queue::connect::{NatsOptions, connect};
use zeroscale_queue::dispatch::Dispatcher;
use zeroscale_queue::harness::NatsServer;
use zeroscale_queue::names;

use crate::report::{Goal, Row, Section, micros, percentile};

const SECTION: &str = "calls";
const NAMESPACE: &str = "bench";
const FUNCTION: &str = "jobs";

/// What the scenario runs.
#[derive(Debug, Clone)]
pub struct CallsConfig {
    /// Requests of each latency run (synchronous, then asynchronous).
    pub requests: usize,
    /// Clients sending at once.
    pub concurrency: usize,
    /// Calls of the kill-and-restart run.
    pub kill_calls: usize,
}

/// Nothing to wake: the Function always has its pod.
struct NoWake;

impl Wake for NoWake {
    fn wake(&self, _: &FunctionKey) {}
}

/// A pod that answers 200 and counts the deliveries of each call id.
#[derive(Default)]
struct Counts {
    by_call: Mutex<HashMap<String, u32>>,
}

impl Counts {
    fn delivered(&self) -> usize {
        self.by_call
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

async fn counting_pod(counts: Arc<Counts>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    if let Some(id) = request
                        .headers()
                        .get("x-call-id")
                        .and_then(|v| v.to_str().ok())
                    {
                        *counts
                            .by_call
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(id.to_owned())
                            .or_default() += 1;
                    }
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn store_for(url: &str) -> anyhow::Result<CallStore> {
    let client = connect(&NatsOptions {
        url: url.to_owned(),
        name: "bench".into(),
        ..NatsOptions::default()
    })
    .await?;
    let store = CallStore::new(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.connected() {
        if Instant::now() > deadline {
            bail!("not connected to nats-server at {url}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.ensure_streams().await?;
    Ok(store)
}

/// Latencies in microseconds, the run's duration, and the call ids of 202 answers.
struct Run {
    latencies: Vec<f64>,
    elapsed: Duration,
    ids: Vec<String>,
}

async fn send_all(
    addr: SocketAddr,
    requests: usize,
    concurrency: usize,
    prefer_async: bool,
) -> anyhow::Result<Run> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let mut workers = JoinSet::new();
    let per_worker = requests.div_ceil(concurrency);
    for worker in 0..concurrency {
        let client = client.clone();
        let count = per_worker.min(requests.saturating_sub(worker * per_worker));
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            let mut ids = Vec::new();
            for _ in 0..count {
                let mut request = Request::post(format!("http://{addr}/job"))
                    .header(http::header::HOST, format!("{FUNCTION}.{NAMESPACE}"));
                if prefer_async {
                    request = request.header("prefer", "respond-async");
                }
                let request = request.body(Full::new(Bytes::from_static(b"{\"work\":1}")))?;
                let sent = Instant::now();
                let response = client.request(request).await?;
                let status = response.status();
                let id = response
                    .headers()
                    .get("x-call-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                response.into_body().collect().await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                match (prefer_async, status.as_u16(), id) {
                    (true, 202, Some(id)) => ids.push(id),
                    (false, 200, _) => {}
                    (_, status, _) => bail!("unexpected answer {status}"),
                }
            }
            Ok::<_, anyhow::Error>((latencies, ids))
        });
    }
    let mut run = Run {
        latencies: Vec::with_capacity(requests),
        elapsed: Duration::ZERO,
        ids: Vec::new(),
    };
    while let Some(done) = workers.join_next().await {
        let (latencies, ids) = done??;
        run.latencies.extend(latencies);
        run.ids.extend(ids);
    }
    run.elapsed = started.elapsed();
    Ok(run)
}

/// Runs a dispatcher in a runtime of its own on a thread until `stop` fires, then drops
/// the runtime: every delivery in flight ends where it is.
fn dispatcher_thread(
    url: String,
    listener: SocketAddr,
    functions: Arc<Functions>,
    ack_wait: Duration,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let store = store_for(&url).await?;
            let loopback =
                Loopback::new(listener, Arc::clone(&functions), AddressPolicy::default());
            let dispatcher = Dispatcher::new(store, Arc::new(loopback)).with_ack_wait(ack_wait);
            dispatch::run(functions, dispatcher, async {
                let _ = stop.await;
            })
            .await;
            Ok::<_, anyhow::Error>(())
        })?;
        drop(runtime);
        Ok(())
    })
}

async fn wait_delivered(counts: &Counts, expected: usize, within: Duration) -> Duration {
    let started = Instant::now();
    while counts.delivered() < expected && started.elapsed() < within {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

pub async fn run(config: &CallsConfig) -> anyhow::Result<Section> {
    let mut section = Section {
        name: SECTION,
        data: serde_json::Value::Null,
        rows: Vec::new(),
        hard_errors: Vec::new(),
    };
    if !zeroscale_queue::harness::available() {
        section
            .rows
            .push(Row::info(SECTION, "skipped", "nats-server is not on PATH"));
        return Ok(section);
    }
    let server = NatsServer::start().context("starting nats-server")?;
    let url = server.url();
    let store = store_for(&url).await?;

    let counts = Arc::new(Counts::default());
    let pod = counting_pod(Arc::clone(&counts)).await?;
    let metrics = Metrics::new()?;
    let functions = Arc::new(Functions::new(Domains::default(), metrics.clone()));
    let mut function = Function::new(FUNCTION, FunctionSpec::with_image("bench"));
    function.metadata.namespace = Some(NAMESPACE.into());
    function.spec.async_calls.max_concurrency = 64;
    functions.apply(&function);
    functions.set_endpoints(
        &FunctionKey::new(NAMESPACE, FUNCTION),
        EndpointSet::new(vec![PodEndpoint {
            addr: pod,
            pod: None,
            state: EndpointState::Ready,
            protocol: PodProtocol::Http1,
        }]),
    );
    let activator = Arc::new(
        Activator::new(
            Arc::clone(&functions),
            Forwarder::new(&ForwarderConfig::default()),
            Arc::new(NoWake),
            ProbeConfig::default(),
            metrics,
        )
        .with_calls(AsyncCalls::new(store.clone())),
    );
    let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr()?;
    tokio::spawn(server::serve(
        listener,
        Listener::Cluster,
        activator,
        ServerLimits::default(),
        std::future::pending(),
    ));

    // 1. The synchronous warm path, then the same requests accepted asynchronously.
    let sync = send_all(addr, config.requests, config.concurrency, false).await?;
    let accept = send_all(addr, config.requests, config.concurrency, true).await?;
    let rate = |run: &Run| run.latencies.len() as f64 / run.elapsed.as_secs_f64();
    let mut rows = vec![
        Row::info(
            SECTION,
            "sync warm path: requests/s",
            format!("{:.0}", rate(&sync)),
        ),
        Row::info(
            SECTION,
            "sync warm path: p50",
            micros(percentile(&sync.latencies, 50.0)),
        ),
        Row::info(
            SECTION,
            "sync warm path: p99",
            micros(percentile(&sync.latencies, 99.0)),
        ),
        Row::info(
            SECTION,
            "async accept: calls/s",
            format!("{:.0}", rate(&accept)),
        ),
        Row::info(
            SECTION,
            "async accept: p50",
            micros(percentile(&accept.latencies, 50.0)),
        ),
        Row::info(
            SECTION,
            "async accept: p99",
            micros(percentile(&accept.latencies, 99.0)),
        ),
    ];

    // 2. Delivery throughput of one dispatcher draining what was accepted.
    let ack_wait = Duration::from_secs(2);
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let first = dispatcher_thread(url.clone(), addr, Arc::clone(&functions), ack_wait, stopped);
    let drained = wait_delivered(&counts, accept.ids.len(), Duration::from_secs(300)).await;
    rows.push(Row::info(
        SECTION,
        "delivery: calls/s (one dispatcher)",
        format!("{:.0}", counts.delivered() as f64 / drained.as_secs_f64()),
    ));
    let _ = stop.send(());
    let _ = first.join();

    // 3. Calls with the dispatcher killed mid-stream and restarted.
    let before = counts.delivered();
    let kill = send_all(addr, config.kill_calls, config.concurrency, true).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let first = dispatcher_thread(url.clone(), addr, Arc::clone(&functions), ack_wait, stopped);
    wait_delivered(
        &counts,
        before + kill.ids.len() / 2,
        Duration::from_secs(300),
    )
    .await;
    let _ = stop.send(());
    let _ = first.join();
    let at_kill = counts.delivered() - before;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let second = dispatcher_thread(url.clone(), addr, Arc::clone(&functions), ack_wait, stopped);
    wait_delivered(&counts, before + kill.ids.len(), Duration::from_secs(300)).await;
    // Redeliveries of calls in flight at the kill arrive after the ack wait.
    tokio::time::sleep(ack_wait * 2).await;
    let _ = stop.send(());
    let _ = second.join();

    let by_call = counts
        .by_call
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let delivered = kill
        .ids
        .iter()
        .filter(|id| by_call.contains_key(*id))
        .count();
    let twice = kill
        .ids
        .iter()
        .filter(|id| by_call.get(*id).is_some_and(|n| *n > 1))
        .count();
    let lost = kill.ids.len() - delivered;
    let js = async_nats::jetstream::new(
        connect(&NatsOptions {
            url: url.clone(),
            name: "bench-inspect".into(),
            ..NatsOptions::default()
        })
        .await?,
    );
    let dead = js
        .get_stream(names::DEAD_LETTER_STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .state
        .messages;
    rows.extend([
        Row::info(SECTION, "kill run: accepted", kill.ids.len().to_string()),
        Row::info(
            SECTION,
            "kill run: delivered before the kill",
            at_kill.to_string(),
        ),
        Row::info(SECTION, "kill run: delivered", delivered.to_string()),
        Row::info(
            SECTION,
            "kill run: delivered more than once",
            twice.to_string(),
        ),
        Row::check(
            SECTION,
            "kill run: lost",
            lost as f64,
            lost.to_string(),
            Goal::AtMost(0.0),
            "0",
        ),
        Row::info(SECTION, "kill run: dead-lettered", dead.to_string()),
    ]);
    if lost > 0 {
        section
            .hard_errors
            .push(format!("{lost} accepted calls were never delivered"));
    }
    section.data = serde_json::json!({
        "requests": config.requests,
        "concurrency": config.concurrency,
        "sync": {"rps": rate(&sync), "p50_us": percentile(&sync.latencies, 50.0), "p99_us": percentile(&sync.latencies, 99.0)},
        "accept": {"rps": rate(&accept), "p50_us": percentile(&accept.latencies, 50.0), "p99_us": percentile(&accept.latencies, 99.0)},
        "delivery_rps": accept.ids.len() as f64 / drained.as_secs_f64(),
        "kill": {"accepted": kill.ids.len(), "delivered_before_kill": at_kill, "delivered": delivered, "delivered_twice": twice, "lost": lost, "dead_lettered": dead},
    });
    section.rows = rows;
    drop(server);
    Ok(section)
}
