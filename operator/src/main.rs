//! `zeroscale-operator`: prints the CRD (`crd`) or runs the Function controller
//! (`run`, the default) with leader election, metrics and health endpoints. The run
//! flags are accepted both after `run` and without it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::events::Reporter;
use tokio::sync::watch;
use zeroscale_admin::console::Console;
use zeroscale_admin::process::{self, ErrorChain, LogFormat};
use zeroscale_admin::{self as admin, AdminState, Liveness, Readiness};
use zeroscale_api::ScalingDefaults;
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::usage::Prices;
use zeroscale_autoscaler::Usage;
use zeroscale_operator::autoscaler::{self, ActivatorStats, AutoscalerConfig};
use zeroscale_operator::console::{self, LastScrape, Tee};
use zeroscale_operator::controller::{self, Context};
use zeroscale_operator::gateway::GatewayConfig;
use zeroscale_operator::leader::{self, LeaderMetrics};
use zeroscale_operator::lease::LeaderElector;
use zeroscale_operator::metrics::Metrics;
use zeroscale_operator::resources::Config;
use zeroscale_operator::schedule;
use zeroscale_queue::backlog::QueueBacklog;
use zeroscale_queue::connect::NatsOptions;
use zeroscale_triggers::ScheduleMetrics;

#[derive(Parser)]
#[command(
    name = "zeroscale-operator",
    version,
    about = "The zeroscale control plane",
    // `zeroscale-operator --flag run` would leave it unclear which flags apply.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The flags of `run`, for running without the subcommand.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Function CustomResourceDefinition as YAML.
    Crd,
    /// Reconcile Functions (the default).
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Activator Service, as `<name>.<namespace>`, that each Function's Service aliases.
    #[arg(
        long,
        env = "ZEROSCALE_ACTIVATOR_SERVICE",
        default_value = "zeroscale-activator.zeroscale-system"
    )]
    activator_service: String,
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
    /// Gateway API: give each public Function an HTTPRoute under this Gateway, as
    /// `namespace/name` or `namespace/name/listener`. Off when unset.
    #[arg(long, env = "ZEROSCALE_GATEWAY_PARENT")]
    gateway_parent: Option<String>,
    /// The activator's public Service the HTTPRoutes send requests to, as
    /// `name.namespace:port`.
    #[arg(
        long,
        env = "ZEROSCALE_GATEWAY_BACKEND",
        default_value = "zeroscale-activator-public.zeroscale-system:80"
    )]
    gateway_backend: String,
    /// Address of the admin server (/metrics, /healthz, /readyz, /usage).
    #[arg(long, env = "ZEROSCALE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    admin_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "ZEROSCALE_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Text)]
    log_format: LogFormatArg,
    /// Elect a leader among replicas through a Lease; only the leader reconciles.
    #[arg(long, env = "ZEROSCALE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "ZEROSCALE_LEASE_NAME",
        default_value = "zeroscale-operator"
    )]
    lease_name: String,
    /// Namespace of the leader Lease, which must exist [default: in a pod, its own;
    /// else the kubeconfig context's]
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Time between autoscaler decisions.
    #[arg(long, env = "ZEROSCALE_AUTOSCALER_TICK", default_value = "1s", value_parser = zeroscale_api::duration::parse)]
    autoscaler_tick: Duration,
    /// Port of the activators' admin server, where they serve /stats.
    #[arg(long, env = "ZEROSCALE_ACTIVATOR_ADMIN_PORT", default_value_t = 9090)]
    activator_admin_port: u16,
    /// Longest one activator may take to report its stats; a missing report holds
    /// every Function's scale.
    #[arg(long, env = "ZEROSCALE_STATS_TIMEOUT", default_value = "500ms", value_parser = zeroscale_api::duration::parse)]
    stats_timeout: Duration,
    /// Let the live console (/console on the admin address) send requests to the
    /// Functions it lists with its invoke form, through the activator Service. Off by
    /// default: the console is read-only.
    #[arg(long, env = "ZEROSCALE_CONSOLE_INVOKE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    console_invoke: bool,
    #[command(flatten)]
    scaling: ScalingDefaultsArgs,
    #[command(flatten)]
    prices: PricesArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

/// Prices that turn usage into a cost estimate on `/usage` (none unless one is set).
#[derive(clap::Args)]
struct PricesArgs {
    /// Price of one million requests a Function handled.
    #[arg(long, env = "ZEROSCALE_PRICE_PER_MILLION_REQUESTS")]
    price_per_million_requests: Option<f64>,
    /// Price of one vCPU-second a Function's pods requested.
    #[arg(long, env = "ZEROSCALE_PRICE_PER_VCPU_SECOND")]
    price_per_vcpu_second: Option<f64>,
    /// Price of one GiB-second of memory a Function's pods requested.
    #[arg(long, env = "ZEROSCALE_PRICE_PER_GIB_SECOND")]
    price_per_gib_second: Option<f64>,
}

impl PricesArgs {
    fn prices(&self) -> Option<Prices> {
        let prices = [
            self.price_per_million_requests,
            self.price_per_vcpu_second,
            self.price_per_gib_second,
        ];
        prices.iter().any(Option::is_some).then(|| Prices {
            per_million_requests: self.price_per_million_requests.unwrap_or(0.0),
            per_vcpu_second: self.price_per_vcpu_second.unwrap_or(0.0),
            per_gib_second: self.price_per_gib_second.unwrap_or(0.0),
        })
    }
}

/// The NATS JetStream server of async calls and queue triggers (the activator takes the
/// same flags): the operator reads the queue triggers' backlog from it.
#[derive(clap::Args)]
struct NatsArgs {
    /// NATS server URL, e.g. nats://nats.zeroscale-system:4222. Without it, Functions
    /// with queue triggers are Ready=False (NatsNotConfigured).
    #[arg(long, env = "ZEROSCALE_NATS_URL")]
    nats_url: Option<String>,
    /// NATS credentials file (.creds: JWT and NKey seed), e.g. mounted from a Secret.
    #[arg(long, env = "ZEROSCALE_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// NATS user name; the password comes from ZEROSCALE_NATS_PASSWORD.
    #[arg(long, env = "ZEROSCALE_NATS_USER")]
    nats_user: Option<String>,
    /// From the environment only, so it never shows in the process list.
    #[arg(skip = std::env::var("ZEROSCALE_NATS_PASSWORD").ok())]
    nats_password: Option<String>,
    /// NATS token, from the environment only.
    #[arg(skip = std::env::var("ZEROSCALE_NATS_TOKEN").ok())]
    nats_token: Option<String>,
}

impl NatsArgs {
    /// A JetStream context on the configured server, or None without `--nats-url`. The
    /// client connects (and reconnects) in the background, so a broker that is not up
    /// yet only makes the queue backlog unknown until it is.
    async fn jetstream(&self) -> anyhow::Result<Option<async_nats::jetstream::Context>> {
        let Some(url) = &self.nats_url else {
            return Ok(None);
        };
        let client = zeroscale_queue::connect::connect(&NatsOptions {
            url: url.clone(),
            credentials_file: self.nats_creds.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            name: "zeroscale-operator".into(),
        })
        .await
        .context("connecting to NATS")?;
        Ok(Some(async_nats::jetstream::new(client)))
    }
}

/// Scaling settings for Functions that leave them unset (each Function may override them).
#[derive(clap::Args)]
struct ScalingDefaultsArgs {
    /// Target in-flight requests per pod (metric concurrency).
    #[arg(long, env = "ZEROSCALE_DEFAULT_TARGET_CONCURRENCY", default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=100000))]
    default_target_concurrency: i32,
    /// Target requests per second per pod (metric rps).
    #[arg(long, env = "ZEROSCALE_DEFAULT_TARGET_RPS", default_value_t = 200, value_parser = clap::value_parser!(i32).range(1..=100000))]
    default_target_rps: i32,
    /// Target CPU utilisation in percent (metric cpu).
    #[arg(long, env = "ZEROSCALE_DEFAULT_TARGET_CPU", default_value_t = 80, value_parser = clap::value_parser!(i32).range(1..=100000))]
    default_target_cpu: i32,
    /// Idle time before a Function scales to zero.
    #[arg(long, env = "ZEROSCALE_DEFAULT_SCALE_TO_ZERO_GRACE_PERIOD", default_value = "30s", value_parser = zeroscale_api::duration::parse)]
    default_scale_to_zero_grace_period: Duration,
    /// How long lower load must last before scaling down.
    #[arg(long, env = "ZEROSCALE_DEFAULT_SCALE_DOWN_DELAY", default_value = "0s", value_parser = zeroscale_api::duration::parse)]
    default_scale_down_delay: Duration,
    /// Averaging window of normal decisions (6s to 1h).
    #[arg(long, env = "ZEROSCALE_DEFAULT_STABLE_WINDOW", default_value = "60s", value_parser = stable_window)]
    default_stable_window: Duration,
    /// Burst window, in percent of the stable window.
    #[arg(long, env = "ZEROSCALE_DEFAULT_PANIC_WINDOW_PERCENTAGE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=100))]
    default_panic_window_percentage: i32,
    /// Burst load, in percent of capacity at target, that starts panic mode.
    #[arg(long, env = "ZEROSCALE_DEFAULT_PANIC_THRESHOLD_PERCENTAGE", default_value_t = 200, value_parser = clap::value_parser!(i32).range(110..=1000))]
    default_panic_threshold_percentage: i32,
    /// Largest growth factor of the pod count per decision (at least 1).
    #[arg(long, env = "ZEROSCALE_DEFAULT_MAX_SCALE_UP_RATE", default_value_t = 1000.0, value_parser = rate)]
    default_max_scale_up_rate: f64,
    /// Largest shrink factor of the pod count per decision (at least 1).
    #[arg(long, env = "ZEROSCALE_DEFAULT_MAX_SCALE_DOWN_RATE", default_value_t = 2.0, value_parser = rate)]
    default_max_scale_down_rate: f64,
}

impl From<&ScalingDefaultsArgs> for ScalingDefaults {
    fn from(args: &ScalingDefaultsArgs) -> Self {
        Self {
            target_concurrency: args.default_target_concurrency,
            target_rps: args.default_target_rps,
            target_cpu: args.default_target_cpu,
            scale_to_zero_grace_period: args.default_scale_to_zero_grace_period,
            scale_down_delay: args.default_scale_down_delay,
            stable_window: args.default_stable_window,
            panic_window_percentage: args.default_panic_window_percentage,
            panic_threshold_percentage: args.default_panic_threshold_percentage,
            max_scale_up_rate: args.default_max_scale_up_rate,
            max_scale_down_rate: args.default_max_scale_down_rate,
        }
    }
}

fn stable_window(text: &str) -> Result<Duration, String> {
    let window = zeroscale_api::duration::parse(text).map_err(|e| e.to_string())?;
    let (shortest, longest) = zeroscale_api::validate::STABLE_WINDOW_RANGE;
    if (shortest..=longest).contains(&window) {
        Ok(window)
    } else {
        Err(format!("{text:?} must lie between 6s and 1h"))
    }
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (1.0..=10000.0).contains(&rate) => Ok(rate),
        _ => Err(format!("{text:?} is not a factor between 1 and 10000")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", zeroscale_operator::crd::yaml()?);
            Ok(())
        }
        Some(Command::Run(args)) => run(*args).await,
        None => run(cli.run).await,
    }
}

/// Where a pod's service account names the pod's namespace; absent outside a pod.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

async fn run(args: RunArgs) -> anyhow::Result<()> {
    process::init_tracing(args.log_format.into(), "info");
    let terminated = process::termination_signal().context("listening for SIGTERM and SIGINT")?;

    let registry = prometheus::Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .context("registering process metrics")?;
    let readiness = Readiness::not_ready("connecting to the Kubernetes API");
    let liveness = Liveness::new();

    // One signal, observed by everything that must stop: sent on SIGTERM, and when the
    // operator cannot go on, so that the process exits instead of lingering.
    let (stop_tx, stop_rx) = watch::channel(false);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        terminated.await;
        tracing::info!("shutting down");
        on_signal.send_replace(true);
    });
    let stopped = move || {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    };

    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin server to {}", args.admin_addr))?;
    // Totals since this process started; only the leader's autoscaler feeds them.
    let usage = Usage::new(jiff::Timestamp::now(), args.prices.prices());
    let usage_route = {
        let usage = usage.clone();
        Arc::new(move |query: Option<&str>| usage.answer(jiff::Timestamp::now(), query))
    };
    let live = Arc::new(Console::new("operator", args.console_invoke));
    // Port 80 of the activator Service (the host of `Config::activator_host`), where
    // Function Services send their callers too.
    let activator = format!("{}.svc.{}:80", args.activator_service, args.cluster_domain);
    let admin = tokio::spawn(admin::serve(
        listener,
        admin::console::routes(
            AdminState::new(registry.clone(), readiness.clone())
                .with_liveness(liveness.clone())
                .with_query_json_route("/usage", usage_route),
            Arc::clone(&live),
            activator,
        ),
        stopped(),
    ));

    let outcome = operate(args, &registry, &readiness, usage, &live, &stopped).await;
    if let Err(error) = &outcome {
        liveness.fail(format!("{error:#}"));
    }
    stop_tx.send_replace(true);
    match admin.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(error = %ErrorChain(&error), "admin server failed"),
        Err(error) => tracing::warn!(error = %ErrorChain(&error), "admin server failed"),
    }
    outcome
}

/// Runs the controllers and the autoscaler (while leading, with leader election) until
/// `stopped()` resolves or they cannot go on.
async fn operate<S: Future<Output = ()> + Send + Sync + 'static>(
    args: RunArgs,
    registry: &prometheus::Registry,
    readiness: &Readiness,
    usage: Usage,
    live: &Arc<Console>,
    stopped: &impl Fn() -> S,
) -> anyhow::Result<()> {
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("zeroscale-operator-{}", std::process::id()));
    let metrics = Metrics::register(registry).context("registering metrics")?;
    let autoscaler_metrics = zeroscale_autoscaler::Metrics::register(registry)
        .context("registering the autoscaler's metrics")?;
    let schedule_metrics =
        ScheduleMetrics::register(registry).context("registering schedule metrics")?;
    let leader_metrics = LeaderMetrics::register(registry).context("registering metrics")?;

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;

    let autoscaler_config = AutoscalerConfig {
        tick: args.autoscaler_tick,
        activator_service: args.activator_service.clone(),
        activator_admin_port: args.activator_admin_port,
        scrape_timeout: args.stats_timeout,
        namespaces: args.namespaces.clone(),
    };
    let config = Config {
        activator_service: args.activator_service,
        public_domain: args.public_domain,
        cluster_domain: args.cluster_domain,
        scaling: ScalingDefaults::from(&args.scaling),
        gateway: args
            .gateway_parent
            .as_deref()
            .map(|parent| GatewayConfig::parse(parent, &args.gateway_backend))
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("--gateway-parent / --gateway-backend")?,
    };
    let jetstream = args.nats.jetstream().await?;
    let reporter = Reporter {
        controller: "zeroscale-operator".into(),
        instance: Some(identity.clone()),
    };
    let namespaces: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.into_iter().map(Some).collect()
    };
    // A fresh start each time this replica leads: nothing carries over from a term
    // that was cancelled.
    let work = || {
        let ctx = Arc::new(
            Context::new(
                client.clone(),
                config.clone(),
                metrics.clone(),
                reporter.clone(),
            )
            .with_nats(jetstream.is_some()),
        );
        let autoscaler_ctx = autoscaler::Context::new(
            client.clone(),
            config.scaling.clone(),
            autoscaler_metrics.clone(),
            reporter.clone(),
            Arc::clone(ctx.watched()),
        );
        // The console shows the load of the autoscaler's own scrapes, while this
        // replica leads.
        let last = LastScrape::default();
        let stats = Tee {
            inner: ActivatorStats::watch(client.clone(), &autoscaler_config),
            last: last.clone(),
        };
        let sampling =
            console::sample(Arc::clone(live), Arc::clone(ctx.watched()), last, stopped());
        let watched = Arc::clone(ctx.watched());
        let backlog = QueueBacklog::new(
            jetstream.clone(),
            move |key: &FunctionKey| watched.function(key),
            autoscaler_config.scrape_timeout,
        );
        let controllers = futures::future::join_all(
            namespaces
                .iter()
                .map(|namespace| controller::run(ctx.clone(), namespace.as_deref(), stopped())),
        );
        let autoscaling = autoscaler::run(
            autoscaler_ctx,
            autoscaler_config.clone(),
            stats,
            backlog,
            usage.clone(),
            stopped(),
        );
        let scheduler = schedule::in_cluster(
            client.clone(),
            reporter.clone(),
            Arc::clone(ctx.watched()),
            &config.activator_host(),
            identity.clone(),
            schedule_metrics.clone(),
        );
        async move {
            futures::future::join4(controllers, autoscaling, scheduler.run(stopped()), sampling)
                .await;
        }
    };

    if !args.leader_election {
        readiness.set_ready();
        work().await;
        return Ok(());
    }
    let in_pod = std::fs::read_to_string(POD_NAMESPACE_FILE).ok();
    let namespace = leader::lease_namespace(
        args.lease_namespace.as_deref(),
        in_pod.as_deref(),
        client.default_namespace(),
    );
    tracing::info!(
        lease = %args.lease_name,
        namespace = %namespace.name,
        from = namespace.source,
        "the leader Lease lives in this namespace, which must exist"
    );
    // Standby replicas are ready too, once they reach the Lease: they serve metrics
    // and take over on failover.
    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &namespace.name),
        &args.lease_name,
        &identity,
    )
    .with_readiness(readiness.clone());
    tracing::info!(lease = %args.lease_name, %identity, "waiting for leadership");
    leader::lead(&elector, work, &leader_metrics, stopped())
        .await
        .context("electing a leader through the Lease")
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
