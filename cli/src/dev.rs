//! `zeroscale dev`: Functions without a cluster. One process runs the real activator,
//! the real autoscaler loop and a process runtime ([`runtime::ProcessRuntime`]) that
//! starts each replica as a local process; manifests are watched and reloaded when they
//! change.

mod console;
mod keys;
mod live;
mod local;
mod nats;
mod replica;
mod runtime;
mod schedules;
mod supervisor;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use zeroscale_activator::access::AccessLog;
use zeroscale_activator::calls::args::CallArgs;
use zeroscale_activator::forward::{Forwarder, ForwarderConfig};
use zeroscale_activator::functions::{Functions, Listener};
use zeroscale_activator::gateway::Gateway;
use zeroscale_activator::metrics::Metrics;
use zeroscale_activator::otlp::SpanExporter;
use zeroscale_activator::probe::ProbeConfig;
use zeroscale_activator::server::{self, Activator, ServerLimits};
use zeroscale_admin::process;
use zeroscale_admin::{AdminState, Readiness};
use zeroscale_api::routing::{Domains, FunctionKey};
use zeroscale_api::stats::StatsReport;
use zeroscale_autoscaler::{StatsSource, drive};
use zeroscale_queue::backlog::QueueBacklog;
use zeroscale_queue::connect::NatsOptions;

use zeroscale_cli::cluster::dev::{DevState, FUNCTIONS_ROUTE, StateFile, USAGE_ROUTE};

use crate::error::{Error, Result};
use crate::manifest;
use local::LocalFunction;
use runtime::ProcessRuntime;

/// How `zeroscale dev` runs: its command-line arguments.
#[derive(clap::Args)]
pub struct DevConfig {
    /// Manifest files, or directories of .yaml files; reloaded when they change.
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,
    /// Where callers reach the Functions.
    #[arg(
        long,
        env = "ZEROSCALE_LISTEN",
        hide_env_values = true,
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// Serve /metrics, /healthz, /readyz, /stats, /functions, /usage and the live
    /// console (/console) here (a free loopback port when unset; the state file names it
    /// for `zeroscale list --dev`).
    #[arg(long, env = "ZEROSCALE_ADMIN_LISTEN", hide_env_values = true)]
    pub admin_listen: Option<SocketAddr>,
    /// Time between autoscaler decisions.
    #[arg(long, default_value = "1s", value_parser = zeroscale_api::duration::parse)]
    pub autoscaler_tick: Duration,
    /// Time between checks of the manifests for changes.
    #[arg(long, default_value = "1s", value_parser = zeroscale_api::duration::parse)]
    pub reload_period: Duration,
    /// After Ctrl-C or SIGTERM: longest to wait for requests in flight and held.
    #[arg(long, default_value = "10s", value_parser = zeroscale_api::duration::parse)]
    pub drain_period: Duration,
    /// Prices for the cost column of `zeroscale usage` (as the chart's usage.prices):
    /// per million requests, per vCPU-second, per GiB-second, comma-separated.
    #[arg(
        long,
        env = "ZEROSCALE_PRICES",
        hide_env_values = true,
        value_parser = prices,
        value_name = "REQ,VCPU,GIB"
    )]
    pub prices: Option<zeroscale_api::usage::Prices>,
    /// NATS server (JetStream enabled) for async calls and queue triggers [default: a
    /// local `nats-server -js` when installed, else none]
    #[arg(long, env = "ZEROSCALE_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// OTLP/HTTP endpoint to export spans to, such as `http://127.0.0.1:4318`.
    #[arg(long, env = "ZEROSCALE_OTLP_ENDPOINT", hide_env_values = true)]
    pub otlp_endpoint: Option<http::Uri>,
    /// Print one JSON access log line per request.
    #[arg(long)]
    pub access_log: bool,
    /// Share of requests the access log covers, from 0 to 1.
    #[arg(long, default_value_t = 1.0)]
    pub access_log_sample_rate: f64,
    /// Where the Secrets that Functions' `spec.auth.apiKeys` name are: one directory per
    /// Secret, one file per key (as Kubernetes mounts a Secret).
    #[arg(
        long,
        env = "ZEROSCALE_DEV_SECRETS",
        hide_env_values = true,
        default_value = "secrets"
    )]
    pub secrets_dir: PathBuf,
}

/// `--prices`: three non-negative numbers, comma-separated.
fn prices(text: &str) -> std::result::Result<zeroscale_api::usage::Prices, String> {
    let numbers: Vec<f64> = text
        .split(',')
        .map(|n| n.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{text:?}: {e}"))?;
    match numbers[..] {
        [requests, vcpu, gib] if numbers.iter().all(|n| n.is_finite() && *n >= 0.0) => {
            Ok(zeroscale_api::usage::Prices {
                per_million_requests: requests,
                per_vcpu_second: vcpu,
                per_gib_second: gib,
            })
        }
        _ => Err(format!(
            "{text:?} is not three non-negative prices: per million requests, per vCPU-second, per GiB-second"
        )),
    }
}

/// The domain under which every Function is reachable: `<fn>.<ns>.localhost`, which
/// resolves to the loopback address without any DNS setup.
const LOCAL_DOMAIN: &str = "localhost";

/// Where callbacks of async calls may go in `zeroscale dev`: this machine.
const LOCAL_CALLBACKS: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// Runs until SIGTERM or Ctrl-C, then drains requests and stops every replica.
pub async fn run(config: DevConfig) -> Result<()> {
    let terminated = process::termination_signal().map_err(Error::Signal)?;
    // Usage since dev started; made before `started` so that the in-process activator
    // is never older than the meter, and all it counts is counted.
    let usage = zeroscale_autoscaler::Usage::new(jiff::Timestamp::now(), config.prices);
    let started = Instant::now();
    // The live console on the admin listener shows every line printed from here on.
    let live = Arc::new(zeroscale_admin::console::Console::new(
        "zeroscale dev",
        true,
    ));
    console::tee_to(Arc::clone(&live));
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new()?;
    metrics.register(&registry)?;
    let autoscaler_metrics = zeroscale_autoscaler::Metrics::register(&registry)?;
    let schedule_metrics = zeroscale_triggers::ScheduleMetrics::register(&registry)?;
    let functions = Arc::new(Functions::new(
        Domains {
            cluster_domain: "cluster.local".into(),
            public_domain: Some(LOCAL_DOMAIN.into()),
        },
        metrics.clone(),
    ));
    let runtime = Arc::new(ProcessRuntime::new(Arc::clone(&functions)));
    let listener = server::bind(config.listen).map_err(|source| Error::Bind {
        address: config.listen,
        source,
    })?;
    let address = listener.local_addr().map_err(|source| Error::Bind {
        address: config.listen,
        source,
    })?;
    let nats = nats::Nats::start(config.nats_url.clone(), setpriv().as_deref()).await;
    // After the local NATS server is up: until then its process is a fork of this one.
    console::event(format_args!("zeroscale dev listening on http://{address}"));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    };
    // The dispatcher delivers stored calls and queue messages through `address`, as a
    // cluster's activators do through their own listener.
    let calls = CallArgs {
        nats_url: nats.url().map(str::to_owned),
        nats_creds: None,
        nats_user: None,
        nats_password: None,
        nats_token: None,
        // Everything runs on this machine: callbacks to local servers are expected.
        callback_deny_cidr: Vec::new(),
        callback_allow_cidr: LOCAL_CALLBACKS
            .iter()
            .filter_map(|cidr| cidr.parse().ok())
            .collect(),
    }
    .start(address, Arc::clone(&functions), stopped())
    .await?;
    let activator = Arc::new(
        Activator::new(
            Arc::clone(&functions),
            Forwarder::new(&ForwarderConfig::default()),
            Arc::clone(&runtime) as Arc<dyn zeroscale_activator::wake::Wake>,
            ProbeConfig::default(),
            metrics.clone(),
        )
        .with_calls(calls)
        .with_gateway(Gateway {
            replicas: 1,
            spans: config
                .otlp_endpoint
                .as_ref()
                .map(|endpoint| SpanExporter::start(endpoint, metrics.dropped_spans.clone()))
                .transpose()
                .map_err(Error::OtlpEndpoint)?,
            access_log: config
                .access_log
                .then(|| {
                    AccessLog::to_stdout(
                        config.access_log_sample_rate,
                        metrics.dropped_access_log_lines.clone(),
                    )
                })
                .transpose()
                .map_err(Error::AccessLog)?,
        }),
    );
    let mut manifests = Manifests::new(config.paths.clone(), setpriv(), address);
    if manifests.scan(&runtime, true).await? == 0 {
        console::event("no Functions to run yet: add or fix a manifest and save it");
    }
    keys::sync(&runtime.functions(), functions.auth(), &config.secrets_dir);

    let server = tokio::spawn(server::serve(
        listener,
        Listener::Cluster,
        Arc::clone(&activator),
        ServerLimits {
            drain_period: config.drain_period,
            ..ServerLimits::default()
        },
        stopped(),
    ));
    tokio::spawn(server::sample_load(
        Arc::clone(&functions),
        Duration::from_millis(100),
        stopped(),
    ));
    // Queue triggers' waiting messages scale their Functions, as the operator does.
    let jetstream = match nats.url() {
        Some(url) => Some(async_nats::jetstream::new(
            zeroscale_queue::connect::connect(&NatsOptions {
                url: url.to_owned(),
                name: "zeroscale-dev-autoscaler".into(),
                ..NatsOptions::default()
            })
            .await?,
        )),
        None => None,
    };
    let backlog_runtime = Arc::clone(&runtime);
    let backlog = QueueBacklog::new(
        jetstream,
        move |key: &FunctionKey| backlog_runtime.with_queue_triggers(key),
        Duration::from_secs(1),
    );
    let autoscaler = tokio::spawn(drive(
        config.autoscaler_tick,
        LocalStats {
            activator: Arc::clone(&activator),
            started,
        },
        backlog,
        Arc::clone(&runtime),
        autoscaler_metrics,
        usage.clone(),
        stopped(),
    ));
    let schedules = tokio::spawn(schedules::run(
        Arc::clone(&runtime),
        address,
        config.reload_period,
        schedule_metrics,
        stopped(),
    ));
    // Always served (on a free loopback port unless --admin-listen says where), so the
    // state file can point `zeroscale list/describe --dev` at it.
    let mut _state_file = None;
    let admin_address = config
        .admin_listen
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    {
        let admin_listener =
            tokio::net::TcpListener::bind(admin_address)
                .await
                .map_err(|source| Error::Bind {
                    address: admin_address,
                    source,
                })?;
        let sampled = Arc::clone(&activator);
        let activator = Arc::clone(&activator);
        let stats = Arc::new(move || {
            serde_json::to_string(&activator.stats("zeroscale-dev", started.elapsed()))
                .unwrap_or_else(|_| "{}".into())
        });
        let admin_address = admin_listener.local_addr().map_err(|source| Error::Bind {
            address: admin_address,
            source,
        })?;
        let view = {
            let runtime = Arc::clone(&runtime);
            Arc::new(move || {
                let functions = runtime.view(|function| local_url(function, address));
                serde_json::to_string(&functions).unwrap_or_else(|_| "[]".into())
            })
        };
        _state_file = Some(StateFile::write(&DevState {
            pid: std::process::id(),
            url: format!("http://{address}"),
            admin: format!("http://{admin_address}"),
        })?);
        let readiness = Readiness::not_ready("starting");
        readiness.set_ready();
        tokio::spawn(live::sample(
            Arc::clone(&live),
            live::Sources {
                runtime: Arc::clone(&runtime),
                activator: sampled,
                started,
                address,
            },
            stopped(),
        ));
        let admin = AdminState::new(registry, readiness)
            .with_json_route("/stats", stats)
            .with_json_route(FUNCTIONS_ROUTE, view)
            .with_query_json_route(
                USAGE_ROUTE,
                Arc::new(move |query| usage.answer(jiff::Timestamp::now(), query)),
            );
        tokio::spawn(zeroscale_admin::serve(
            admin_listener,
            zeroscale_admin::console::routes(admin, live, address.to_string()),
            stopped(),
        ));
        console::event(format_args!("console on http://{admin_address}/console"));
    }

    let mut reloads = tokio::time::interval(config.reload_period);
    reloads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminated = std::pin::pin!(terminated);
    loop {
        tokio::select! {
            () = &mut terminated => break,
            _ = reloads.tick() => {
                if let Err(error) = manifests.scan(&runtime, false).await {
                    console::event(error);
                }
                keys::sync(&runtime.functions(), functions.auth(), &config.secrets_dir);
            }
        }
    }
    console::event("stopping: draining requests, then stopping every replica");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = autoscaler.await;
    let _ = schedules.await;
    runtime.shutdown().await;
    nats.stop().await;
    console::event("stopped");
    Ok(())
}

/// The in-process activator's stats, for the autoscaler loop.
struct LocalStats {
    activator: Arc<Activator>,
    started: Instant,
}

impl StatsSource for LocalStats {
    async fn scrape(&self) -> zeroscale_autoscaler::Result<Vec<StatsReport>> {
        Ok(vec![
            self.activator
                .stats("zeroscale-dev", self.started.elapsed()),
        ])
    }
}

/// `setpriv` from util-linux when this machine has it (see [`replica::ReplicaConfig`]).
fn setpriv() -> Option<PathBuf> {
    local::resolve("setpriv", Path::new("."))
}

/// A Function's local-domain URL under its path prefix.
fn local_url(function: &LocalFunction, address: SocketAddr) -> String {
    let key = &function.key;
    let path = function
        .routed
        .spec
        .routing
        .path_prefix
        .as_deref()
        .unwrap_or("/");
    let port = address.port();
    format!(
        "http://{}.{}.{LOCAL_DOMAIN}:{port}{path}",
        key.name, key.namespace
    )
}

/// The manifests being watched: which files the paths name now, and what each held
/// when last read.
struct Manifests {
    paths: Vec<PathBuf>,
    files: BTreeMap<PathBuf, Stamp>,
    setpriv: Option<PathBuf>,
    /// Where callers reach the Functions.
    address: SocketAddr,
}

/// When a file was last modified and its size: a change of either means a re-read.
type Stamp = Option<(SystemTime, u64)>;

impl Manifests {
    fn new(paths: Vec<PathBuf>, setpriv: Option<PathBuf>, address: SocketAddr) -> Self {
        Self {
            paths,
            files: BTreeMap::new(),
            setpriv,
            address,
        }
    }

    /// Reads files that appeared or changed and applies what they hold; forgets the
    /// Functions of files that went away. On the first scan a path that does not exist
    /// is an error; later it is reported. A file that does not parse is reported (file,
    /// line, column) at any scan: the Functions of other files keep running, and its own
    /// keep their last good version if they had one. Returns how many Functions were
    /// added.
    async fn scan(&mut self, runtime: &ProcessRuntime, first: bool) -> Result<usize> {
        let mut present = Vec::new();
        for path in &self.paths {
            match manifest::files(path) {
                Ok(files) => present.extend(files),
                Err(error) if first => return Err(error),
                Err(error) => console::event(error),
            }
        }
        let mut added = 0;
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|file| !present.contains(file))
            .cloned()
            .collect();
        for file in gone {
            self.files.remove(&file);
            for key in runtime.keys_from(&file) {
                console::event(format_args!(
                    "{}: manifest removed; stopping {key}",
                    file.display()
                ));
                runtime.remove(&key).await;
            }
        }
        for file in present {
            let stamp = std::fs::metadata(&file)
                .and_then(|m| Ok((m.modified()?, m.len())))
                .ok();
            if self.files.get(&file) == Some(&stamp) {
                continue;
            }
            self.files.insert(file.clone(), stamp);
            let manifest = match manifest::load(&file) {
                Ok(manifest) => manifest,
                Err(error) => {
                    let running = runtime.keys_from(&file);
                    if running.is_empty() {
                        console::event(format_args!("{error}; not served until it is fixed"));
                    } else {
                        let running: Vec<String> =
                            running.iter().map(ToString::to_string).collect();
                        console::event(format_args!(
                            "{error}; keeping the last good version of {}",
                            running.join(", ")
                        ));
                    }
                    continue;
                }
            };
            for skipped in manifest.skipped.iter().filter(|_| first) {
                console::event(format_args!(
                    "{}: skipping {skipped} (not a Function)",
                    file.display()
                ));
            }
            let mut kept = Vec::new();
            for function in manifest.functions {
                let local =
                    LocalFunction::new(function, &file, self.setpriv.as_deref(), self.address);
                let source = runtime.source_of(&local.key);
                if let Some(other) = &source
                    && *other != file
                {
                    console::event(format_args!(
                        "{}: {} is already defined in {}; ignored",
                        file.display(),
                        local.key,
                        other.display()
                    ));
                    continue;
                }
                let key = local.key.clone();
                kept.push(key.clone());
                match source {
                    None => {
                        added += 1;
                        runtime.upsert(local);
                    }
                    Some(_) if runtime.upsert(local) => {
                        console::event(format_args!("{key}: reloaded from {}", file.display()));
                    }
                    Some(_) => {}
                }
            }
            for key in runtime.keys_from(&file) {
                if !kept.contains(&key) {
                    console::event(format_args!(
                        "{}: {key} removed from the manifest; stopping it",
                        file.display()
                    ));
                    runtime.remove(&key).await;
                }
            }
        }
        Ok(added)
    }
}
