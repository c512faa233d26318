//! `zeroscale-activator`: the data plane. Watches Functions and their pods'
//! EndpointSlices, serves callers inside the cluster and (optionally) outside it, holds
//! requests for Functions at zero and asks the operator to wake them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;
use tokio::sync::watch;
use zeroscale_activator::access::AccessLog;
use zeroscale_activator::auth::Gate;
use zeroscale_activator::cluster::{KubeWake, watch_endpoint_slices, watch_functions};
use zeroscale_activator::connections::ConnectionLimits;
use zeroscale_activator::forward::{Forwarder, ForwarderConfig};
use zeroscale_activator::functions::{Functions, Listener};
use zeroscale_activator::gateway::Gateway;
use zeroscale_activator::key_digests::watch_key_digests;
use zeroscale_activator::metrics::Metrics;
use zeroscale_activator::otlp::SpanExporter;
use zeroscale_activator::probe::ProbeConfig;
use zeroscale_activator::proxies::{Cidr, TrustedProxies};
use zeroscale_activator::server::{self, Activator, ServerLimits};
use zeroscale_admin::process::{self, ErrorChain, LogFormat};
use zeroscale_admin::{AdminState, Readiness};
use zeroscale_api::routing::Domains;

#[derive(Parser)]
#[command(
    name = "zeroscale-activator",
    version,
    about = "The zeroscale data plane"
)]
struct Cli {
    /// Address for callers inside the cluster (the Functions' Services point here).
    #[arg(long, env = "ZEROSCALE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address for callers outside the cluster (behind an Ingress or load balancer):
    /// only public Functions, by public-domain host and own hosts. Off when unset.
    #[arg(long, env = "ZEROSCALE_PUBLIC_LISTEN")]
    public_listen: Option<SocketAddr>,
    /// Address of the admin server (/metrics, /healthz, /readyz, /stats).
    #[arg(long, env = "ZEROSCALE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    admin_addr: SocketAddr,
    /// Domain under which public Functions are reachable as `<fn>.<ns>.<domain>`.
    #[arg(long, env = "ZEROSCALE_PUBLIC_DOMAIN")]
    public_domain: Option<String>,
    /// The cluster's DNS domain.
    #[arg(
        long,
        env = "ZEROSCALE_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    cluster_domain: String,
    /// Namespaces to watch, comma-separated; all namespaces when empty.
    #[arg(long, env = "ZEROSCALE_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Time between rounds of active probes of starting pods; 0 turns probing off.
    #[arg(long, env = "ZEROSCALE_PROBE_PERIOD", default_value = "25ms", value_parser = zeroscale_api::duration::parse)]
    probe_period: Duration,
    /// Longest one active probe may take.
    #[arg(long, env = "ZEROSCALE_PROBE_TIMEOUT", default_value = "500ms", value_parser = zeroscale_api::duration::parse)]
    probe_timeout: Duration,
    /// Longest connecting to a pod may take.
    #[arg(long, env = "ZEROSCALE_CONNECT_TIMEOUT", default_value = "2s", value_parser = zeroscale_api::duration::parse)]
    connect_timeout: Duration,
    /// Longest a client may take to send a request's headers.
    #[arg(long, env = "ZEROSCALE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = zeroscale_api::duration::parse)]
    header_read_timeout: Duration,
    /// Longest a new connection may stay silent before its first byte; closed then.
    #[arg(long, env = "ZEROSCALE_FIRST_BYTE_TIMEOUT", default_value = "10s", value_parser = zeroscale_api::duration::parse)]
    first_byte_timeout: Duration,
    /// Longest a connection may stay idle between requests; closed then. HTTP/1.1
    /// connections are also closed when the next request's headers take longer than
    /// --header-read-timeout from the end of the last response.
    #[arg(long, env = "ZEROSCALE_KEEP_ALIVE_TIMEOUT", default_value = "10s", value_parser = zeroscale_api::duration::parse)]
    keep_alive_timeout: Duration,
    /// Most client connections open at once over every listener (each is a file
    /// descriptor); beyond it a new connection gets 503 and is closed. 0: no limit.
    #[arg(long, env = "ZEROSCALE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Largest request head in bytes (431 beyond it).
    #[arg(long, env = "ZEROSCALE_MAX_HEADER_BYTES", default_value_t = 65536)]
    max_header_bytes: usize,
    /// After SIGTERM: how long to keep accepting while the activator leaves the
    /// Service's endpoints (readiness fails at once).
    #[arg(long, env = "ZEROSCALE_DRAIN_DELAY", default_value = "5s", value_parser = zeroscale_api::duration::parse)]
    drain_delay: Duration,
    /// After that: longest to wait for requests in flight and held to finish.
    #[arg(long, env = "ZEROSCALE_DRAIN_PERIOD", default_value = "30s", value_parser = zeroscale_api::duration::parse)]
    drain_period: Duration,
    /// How often each Function's concurrency is sampled for the autoscaler.
    #[arg(long, env = "ZEROSCALE_SAMPLE_PERIOD", default_value = "100ms", value_parser = zeroscale_api::duration::parse)]
    sample_period: Duration,
    /// Networks (CIDR, comma-separated) of proxies in front of the activator whose
    /// `X-Forwarded-*` and `Forwarded` headers are kept; from any other peer they are
    /// replaced. None by default.
    #[arg(long, env = "ZEROSCALE_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<Cidr>,
    /// Shortest time between two fetches of a JWKS URL for tokens naming an unknown key.
    #[arg(long, env = "ZEROSCALE_JWKS_MIN_REFRESH", default_value = "10s", value_parser = zeroscale_api::duration::parse)]
    jwks_min_refresh: Duration,
    /// Namespace of the Secrets with API key digests that the operator writes; the
    /// activator's own namespace when unset.
    #[arg(long, env = "ZEROSCALE_KEY_DIGESTS_NAMESPACE")]
    key_digests_namespace: Option<String>,
    /// Log format.
    #[arg(long, env = "ZEROSCALE_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Text)]
    log_format: LogFormatArg,
    #[command(flatten)]
    calls: zeroscale_activator::calls::args::CallArgs,
    /// Activator replicas sharing each Function's rate limit: each enforces its share.
    #[arg(long, env = "ZEROSCALE_ACTIVATOR_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    activator_replicas: u32,
    /// OTLP/HTTP endpoint to export spans to, such as `http://collector:4318`; no
    /// export when unset (`traceparent` is still propagated).
    #[arg(long, env = "ZEROSCALE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<http::Uri>,
    /// Write one JSON access log line per request to stdout.
    #[arg(long, env = "ZEROSCALE_ACCESS_LOG")]
    access_log: bool,
    /// Share of requests the access log covers, from 0 to 1.
    #[arg(long, env = "ZEROSCALE_ACCESS_LOG_SAMPLE_RATE", default_value_t = 1.0)]
    access_log_sample_rate: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    process::init_tracing(cli.log_format.into(), "info");
    let terminated = process::termination_signal().context("listening for SIGTERM and SIGINT")?;
    let started = tokio::time::Instant::now();
    let instance = format!(
        "{}-{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "activator".into()),
        std::process::id(),
        jiff::Timestamp::now().as_millisecond()
    );

    let registry = prometheus::Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .context("registering process metrics")?;
    let metrics = Metrics::new().context("creating metrics")?;
    metrics.register(&registry).context("registering metrics")?;
    let readiness = Readiness::not_ready("syncing Functions and EndpointSlices");

    // Two stages: `draining` fails readiness at once; `stop` ends accepting later.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    };

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let functions = Arc::new(
        Functions::new(
            Domains {
                cluster_domain: cli.cluster_domain.clone(),
                public_domain: cli.public_domain.clone(),
            },
            metrics.clone(),
        )
        .with_auth(Gate::new(cli.jwks_min_refresh)),
    );
    {
        let namespace = cli
            .key_digests_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let (client, functions) = (client.clone(), Arc::clone(&functions));
        tokio::spawn(async move {
            watch_key_digests(client, &namespace, functions.auth()).await;
        });
    }

    let namespaces: Vec<Option<String>> = if cli.namespaces.is_empty() {
        vec![None]
    } else {
        cli.namespaces.iter().cloned().map(Some).collect()
    };
    // Ready once every watch has listed everything once.
    let pending = Arc::new(AtomicUsize::new(namespaces.len() * 2));
    let synced = {
        let readiness = readiness.clone();
        move || {
            let pending = Arc::clone(&pending);
            let readiness = readiness.clone();
            move || {
                if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                    tracing::info!("Functions and EndpointSlices synced; ready");
                    readiness.set_ready();
                }
            }
        }
    };
    for namespace in namespaces {
        let (client_a, functions_a, synced_a) = (client.clone(), Arc::clone(&functions), synced());
        let namespace_a = namespace.clone();
        tokio::spawn(async move {
            watch_functions(client_a, namespace_a.as_deref(), functions_a, synced_a).await;
        });
        let (client_b, functions_b, synced_b) = (client.clone(), Arc::clone(&functions), synced());
        tokio::spawn(async move {
            watch_endpoint_slices(client_b, namespace.as_deref(), functions_b, synced_b).await;
        });
    }

    let calls = cli
        .calls
        .start(cli.listen, Arc::clone(&functions), stopped())
        .await
        .context("starting asynchronous calls")?;
    let activator = Arc::new(
        Activator::new(
            Arc::clone(&functions),
            Forwarder::new(&ForwarderConfig {
                connect_timeout: cli.connect_timeout,
                ..ForwarderConfig::default()
            }),
            Arc::new(KubeWake::new(client)),
            ProbeConfig {
                period: cli.probe_period,
                timeout: cli.probe_timeout,
            },
            metrics.clone(),
        )
        .with_calls(calls)
        .with_gateway(Gateway {
            replicas: cli.activator_replicas,
            spans: cli
                .otlp_endpoint
                .as_ref()
                .map(|endpoint| SpanExporter::start(endpoint, metrics.dropped_spans.clone()))
                .transpose()
                .context("parsing --otlp-endpoint")?,
            access_log: cli
                .access_log
                .then(|| {
                    AccessLog::to_stdout(
                        cli.access_log_sample_rate,
                        metrics.dropped_access_log_lines.clone(),
                    )
                })
                .transpose()
                .context("starting the access log writer")?,
        })
        .with_trusted_proxies(TrustedProxies::new(cli.trusted_proxies.clone())),
    );
    tokio::spawn(server::sample_load(
        Arc::clone(&functions),
        cli.sample_period,
        stopped(),
    ));

    let stats = {
        let activator = Arc::clone(&activator);
        Arc::new(move || {
            let report = activator.stats(&instance, started.elapsed());
            serde_json::to_string(&report).unwrap_or_else(|_| "{}".into())
        })
    };
    let admin_listener = TcpListener::bind(cli.admin_addr)
        .await
        .with_context(|| format!("binding the admin server to {}", cli.admin_addr))?;
    let admin = tokio::spawn(zeroscale_admin::serve(
        admin_listener,
        AdminState::new(registry, readiness.clone()).with_json_route("/stats", stats),
        stopped(),
    ));

    let limits = ServerLimits {
        header_read_timeout: cli.header_read_timeout,
        max_header_bytes: cli.max_header_bytes,
        drain_period: cli.drain_period,
        connections: ConnectionLimits {
            first_byte_timeout: cli.first_byte_timeout,
            keep_alive_timeout: cli.keep_alive_timeout,
            max_connections: cli.max_connections,
        },
    };
    // One single-threaded runtime per core for each listener (server::serve_per_core):
    // a connection and its pod connection stay on one thread, which the benchmark
    // measured at 12-20% more requests per second than one work-stealing runtime.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut servers = Vec::new();
    let listeners = [
        (Some(cli.listen), Listener::Cluster),
        (cli.public_listen, Listener::Public),
    ];
    for (address, exposure) in listeners {
        let Some(address) = address else { continue };
        let stopped = stopped.clone();
        let server = server::serve_per_core(
            address,
            threads,
            exposure,
            Arc::clone(&activator),
            limits,
            stopped,
        )
        .with_context(|| format!("binding {address}"))?;
        tracing::info!(%address, ?exposure, threads, "serving");
        servers.push(server);
    }

    terminated.await;
    tracing::info!(delay = ?cli.drain_delay, "terminating: failing readiness, then draining");
    readiness.set_not_ready("shutting down");
    tokio::time::sleep(cli.drain_delay).await;
    let _ = stop_tx.send(true);
    for server in servers {
        server.finished().await;
    }
    if let Ok(Err(error)) = admin.await {
        tracing::warn!(error = %ErrorChain(&error), "admin server failed");
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// `--log-format` values.
#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(format: LogFormatArg) -> Self {
        match format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}
