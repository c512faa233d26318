//! `zeroscale-operator`: prints the CRD (`crd`) or runs the Function controller
//! (`run`, the default) with leader election, metrics and health endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::events::Reporter;
use tokio::sync::watch;
use zeroscale_admin::process::{self, LogFormat};
use zeroscale_admin::{self as admin, AdminState, Readiness};
use zeroscale_operator::autoscaler::run::{self as autoscaler, ActivatorStats, AutoscalerConfig};
use zeroscale_operator::controller::{self, Context};
use zeroscale_operator::lease::LeaderElector;
use zeroscale_operator::metrics::Metrics;
use zeroscale_operator::resources::Config;

#[derive(Parser)]
#[command(
    name = "zeroscale-operator",
    version,
    about = "The zeroscale control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Function CustomResourceDefinition as YAML.
    Crd,
    /// Reconcile Functions (the default).
    Run,
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
    /// Address of the admin server (/metrics, /healthz, /readyz).
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
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "zeroscale-system")]
    lease_namespace: String,
    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Time between autoscaler decisions.
    #[arg(long, env = "ZEROSCALE_AUTOSCALER_TICK", default_value = "1s", value_parser = duration)]
    autoscaler_tick: Duration,
    /// Port of the activators' admin server, where they serve /stats.
    #[arg(long, env = "ZEROSCALE_ACTIVATOR_ADMIN_PORT", default_value_t = 9090)]
    activator_admin_port: u16,
    /// Longest one activator may take to report its stats; a missing report holds
    /// every Function's scale.
    #[arg(long, env = "ZEROSCALE_STATS_TIMEOUT", default_value = "500ms", value_parser = duration)]
    stats_timeout: Duration,
}

fn duration(text: &str) -> Result<Duration, String> {
    zeroscale_api::duration::parse(text).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", zeroscale_operator::crd::yaml()?);
            Ok(())
        }
        Some(Command::Run) | None => run(cli.run).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    process::init_tracing(args.log_format.into());
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("zeroscale-operator-{}", std::process::id()));

    let registry = prometheus::Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .context("registering process metrics")?;
    let metrics = Metrics::register(&registry).context("registering metrics")?;
    let readiness = Readiness::not_ready("connecting to the Kubernetes API");

    // One signal, observed by everything that must stop.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        process::termination_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
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
    let admin = tokio::spawn(admin::serve(
        listener,
        AdminState::new(registry, readiness.clone()),
        stopped(),
    ));

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    // Standby replicas are ready too: they serve metrics and take over on failover.
    readiness.set_ready();

    let leadership = if args.leader_election {
        let elector = LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
            &args.lease_name,
            &identity,
        );
        tracing::info!(lease = %args.lease_name, %identity, "waiting for leadership");
        tokio::select! {
            leadership = elector.acquire() => Some(leadership.context("acquiring the leader Lease")?),
            _ = stopped() => return Ok(()),
        }
    } else {
        None
    };

    let autoscaler_config = AutoscalerConfig {
        tick: args.autoscaler_tick,
        activator_service: args.activator_service.clone(),
        activator_admin_port: args.activator_admin_port,
        scrape_timeout: args.stats_timeout,
        namespaces: args.namespaces.clone(),
    };
    let stats = ActivatorStats::watch(client.clone(), &autoscaler_config);
    let config = Config {
        activator_service: args.activator_service,
        public_domain: args.public_domain,
        cluster_domain: args.cluster_domain,
    };
    let reporter = Reporter {
        controller: "zeroscale-operator".into(),
        instance: Some(identity),
    };
    let ctx = Arc::new(Context::new(client, config, metrics, reporter));
    let namespaces: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.into_iter().map(Some).collect()
    };
    let controllers = futures::future::join_all(
        namespaces
            .iter()
            .map(|namespace| controller::run(ctx.clone(), namespace.as_deref(), stopped())),
    );
    let autoscaling = autoscaler::run(ctx.clone(), autoscaler_config, stats, stopped());

    let lost = async {
        match &leadership {
            Some(leadership) => leadership.lost().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = futures::future::join(controllers, autoscaling) => Ok(()),
        _ = lost => Err(anyhow::anyhow!("lost the leader Lease; exiting so that a fresh process competes again")),
    };
    if let Some(leadership) = leadership
        && outcome.is_ok()
        && let Err(error) = leadership.release().await
    {
        tracing::warn!(%error, "releasing the leader Lease failed; it will expire");
    }
    if let Ok(Err(error)) = admin.await {
        tracing::warn!(%error, "admin server failed");
    }
    outcome
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
