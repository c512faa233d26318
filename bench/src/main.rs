//! `zeroscale-bench`: measures the activator against its peers in one run and prints
//! one table (targets beside the numbers), also written as JSON.
//!
//! - `all`: the full run (minutes); `smoke`: the same in seconds with tiny counts, for
//!   CI. Both fail only on hard errors (a burst with errors, a warm run with failed
//!   requests, a scenario that could not run), never on a missed performance target.
//! - `serve-activator` and `serve-upstream` (hidden): what the bench re-executes itself
//!   as, so the activator and the upstream are processes of their own.

mod activator;
mod apiserver;
mod auth;
mod burst;
mod calls;
mod client;
mod cold;
mod connections;
mod gateway;
mod instructions;
mod local;
mod memory;
mod procs;
mod report;
mod scale;
mod schedule;
mod tools;
mod upstream;
mod warm;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};

use crate::report::{Machine, Report, Section};

#[derive(Parser)]
#[command(
    name = "zeroscale-bench",
    about = "Benchmarks of the zeroscale activator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The full run: warm path, cold start, bursts, memory, local mode.
    All(RunArgs),
    /// A seconds-long run with tiny counts (for CI).
    Smoke(RunArgs),
    /// Schedule delivery with the leader killed every few ticks (virtual time).
    Schedule {
        /// Ticks to run (a tick of every minute, at 600 times real speed).
        #[arg(long, default_value_t = 60)]
        ticks: usize,
        /// Seed of the kill times.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The activator under test (used by the bench itself).
    #[command(hide = true)]
    ServeActivator {
        /// Pods of the warm Function (comma-separated); none: no warm Function.
        #[arg(long, value_delimiter = ',')]
        upstream: Vec<SocketAddr>,
        #[arg(long, default_value_t = 25)]
        probe_period_ms: u64,
        #[arg(long, value_enum, default_value_t = activator::Runtime::PerCore)]
        runtime: activator::Runtime,
        /// Export spans to this OTLP/HTTP endpoint.
        #[arg(long)]
        otlp_endpoint: Option<http::Uri>,
    },
    /// The upstream HTTP server (used by the bench itself).
    #[command(hide = true)]
    ServeUpstream,
}

/// Scenarios that can be picked with `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Warm,
    Cold,
    Burst,
    Memory,
    /// The warm path with a rate limit and with span export, beside the plain activator.
    Gateway,
    /// `zeroscale dev`: hello's cold start with its process, and the autoscaler's
    /// answer to a load step.
    Local,
    /// Silent client connections: memory each, and closed by the first-byte timeout.
    Connections,
    /// Asynchronous calls on a local nats-server (not in `smoke`).
    Calls,
    /// Growth with the number of Functions: the operator binary (built beside the
    /// bench) against a mocked API server. Not part of `smoke`.
    ScaleOperator,
    /// The activator binary's start-up with many Functions, likewise.
    ScaleActivator,
    /// Instructions per request of the activator and nginx under callgrind, and of the
    /// activator with many Functions routed.
    Instructions,
}

/// Every knob; unset ones take the `all` or `smoke` default.
#[derive(clap::Args)]
struct RunArgs {
    /// Where to write the JSON report [all: bench/results/latest.json; smoke: a
    /// temporary file].
    #[arg(long, env = "ZEROSCALE_BENCH_OUTPUT")]
    output: Option<PathBuf>,
    /// Run only these scenarios (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Do not install wrk and nginx when missing; fail instead.
    #[arg(long)]
    no_install: bool,
    /// Warm path: client concurrencies [all: 16,64,256; smoke: 16].
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Warm path: seconds per wrk run [all: 8; smoke: 1].
    #[arg(long)]
    seconds: Option<u64>,
    /// Warm path: rounds over the four targets [all: 3; smoke: 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// Cold start: runs per mode [all: 50; smoke: 3].
    #[arg(long)]
    cold_runs: Option<usize>,
    /// Local mode: cold starts of hello from zero [all: 20; smoke: 2].
    #[arg(long)]
    local_cold_runs: Option<usize>,
    /// Local mode: clients (and replicas wanted) of the load step [all: 4; smoke: 2].
    #[arg(long)]
    step_clients: Option<usize>,
    /// Cold start and bursts: ms from the wake until the pod listens.
    #[arg(long, default_value_t = 200)]
    pod_start_ms: u64,
    /// Bursts: requests per burst [all: 100,1000,5000; smoke: 100].
    #[arg(long, value_delimiter = ',')]
    bursts: Vec<usize>,
    /// Memory: Functions routed [all: 1000; smoke: 100].
    #[arg(long)]
    functions: Option<usize>,
    /// Memory: held requests [all: 10000; smoke: 200].
    #[arg(long)]
    held: Option<usize>,
    /// Connections: silent client connections held open [all: 8000; smoke: 500].
    #[arg(long)]
    silent_connections: Option<usize>,
    /// Scale: Function counts for the operator [all and --only scale: 0,1000,10000].
    #[arg(long, value_delimiter = ',')]
    operator_functions: Vec<usize>,
    /// Scale: Function counts for the activator [all and --only scale: 1000,10000].
    #[arg(long, value_delimiter = ',')]
    activator_functions: Vec<usize>,
    /// Scale: seconds of the operator's idle window [10].
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// Instructions: requests of the two runs whose difference is counted [all:
    /// 2000,8000; smoke: 200,400].
    #[arg(long, value_delimiter = ',')]
    instruction_requests: Vec<usize>,
    /// Instructions: Functions routed in the run that checks growth [all: 10000;
    /// smoke: 100].
    #[arg(long)]
    routed: Option<usize>,
}

/// The kubelet's readiness probe period in the Deployments the operator makes
/// (operator/src/resources.rs).
const KUBELET_PERIOD_MS: u64 = 1000;
/// The activator's default active probing period (`--probe-period`).
const PROBE_PERIOD_MS: u64 = 25;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::ServeActivator {
            upstream,
            probe_period_ms,
            runtime,
            otlp_endpoint,
        } => {
            let probe_period = Duration::from_millis(probe_period_ms);
            activator::run_process(upstream, probe_period, runtime, otlp_endpoint).await
        }
        Command::ServeUpstream => upstream::run_process().await,
        Command::Schedule { ticks, seed } => {
            schedule::print(&schedule::run(ticks, seed).await?);
            Ok(())
        }
        Command::All(args) => run("all", args, false).await,
        Command::Smoke(args) => run("smoke", args, true).await,
    }
}

async fn run(mode: &str, args: RunArgs, smoke: bool) -> anyhow::Result<()> {
    let pick = |full: usize, quick: usize| if smoke { quick } else { full };
    let or = |given: Vec<usize>, full: &[usize], quick: &[usize]| {
        if !given.is_empty() {
            given
        } else if smoke {
            quick.to_vec()
        } else {
            full.to_vec()
        }
    };
    let scenarios = if args.only.is_empty() {
        vec![
            Scenario::Warm,
            Scenario::Gateway,
            Scenario::Cold,
            Scenario::Burst,
            Scenario::Memory,
            Scenario::Connections,
            Scenario::Local,
            Scenario::Instructions,
        ]
        .into_iter()
        .chain((!smoke).then_some(Scenario::Calls))
        // The scale scenarios need the operator and activator binaries built; smoke
        // runs without them.
        .chain(if smoke {
            Vec::new()
        } else {
            vec![Scenario::ScaleOperator, Scenario::ScaleActivator]
        })
        .collect()
    } else {
        args.only.clone()
    };
    let output = args.output.clone().unwrap_or_else(|| {
        if smoke {
            std::env::temp_dir().join("zeroscale-bench-smoke.json")
        } else {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results/latest.json")
        }
    });
    if scenarios.contains(&Scenario::Warm)
        || scenarios.contains(&Scenario::Instructions)
        || scenarios.contains(&Scenario::Gateway)
    {
        tools::ensure(!args.no_install)?;
    }
    let dir = std::env::temp_dir().join(format!("zeroscale-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let started = Instant::now();
    let mut report = Report {
        schema: 1,
        mode: mode.to_owned(),
        started_at: jiff::Timestamp::now().to_string(),
        duration_seconds: 0.0,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: machine(),
        sections: BTreeMap::new(),
        rows: Vec::new(),
        hard_errors: Vec::new(),
    };
    let scale_config = scale::ScaleConfig {
        operator_counts: or(
            args.operator_functions.clone(),
            &[0, 1000, 10_000],
            &[0, 1000, 10_000],
        ),
        activator_counts: or(
            args.activator_functions.clone(),
            &[1000, 10_000],
            &[1000, 10_000],
        ),
        idle_seconds: args.idle_seconds.max(1),
    };
    for scenario in scenarios {
        let result: anyhow::Result<Section> = match scenario {
            Scenario::Warm => {
                let config = warm::WarmConfig {
                    concurrencies: or(args.concurrency.clone(), &[16, 64, 256], &[16]),
                    seconds: args.seconds.unwrap_or(if smoke { 1 } else { 8 }),
                    rounds: args.rounds.unwrap_or(pick(3, 1)).max(1),
                };
                warm::run(&config, &dir).await
            }
            Scenario::Gateway => {
                let config = gateway::GatewayConfig {
                    concurrency: args.concurrency.first().copied().unwrap_or(pick(64, 16)),
                    seconds: args.seconds.unwrap_or(if smoke { 1 } else { 8 }),
                    rounds: args.rounds.unwrap_or(pick(3, 1)).max(1),
                };
                gateway::run(&config, &dir).await
            }
            Scenario::Cold => {
                let config = cold::ColdConfig {
                    runs: args.cold_runs.unwrap_or(pick(50, 3)).max(1),
                    delay_ms: args.pod_start_ms,
                    kubelet_period_ms: KUBELET_PERIOD_MS,
                    probe_period_ms: PROBE_PERIOD_MS,
                };
                cold::run(&config).await
            }
            Scenario::Burst => {
                let config = burst::BurstConfig {
                    sizes: or(args.bursts.clone(), &[100, 1000, 5000], &[100]),
                    delay_ms: args.pod_start_ms,
                    kubelet_period_ms: KUBELET_PERIOD_MS,
                };
                burst::run(&config).await
            }
            Scenario::Memory => {
                let config = memory::MemoryConfig {
                    functions: args.functions.unwrap_or(pick(1000, 100)),
                    held: args.held.unwrap_or(pick(10_000, 200)).max(2),
                };
                memory::run(&config).await
            }
            Scenario::Connections => {
                let config = connections::ConnectionsConfig {
                    connections: args.silent_connections.unwrap_or(pick(8000, 500)),
                };
                connections::run(&config).await
            }
            Scenario::Local => {
                let config = local::LocalConfig {
                    cold_runs: args.local_cold_runs.unwrap_or(pick(20, 2)).max(1),
                    step_clients: args.step_clients.unwrap_or(pick(4, 2)).max(2),
                };
                local::run(&config, &dir).await
            }
            Scenario::Calls => {
                let config = calls::CallsConfig {
                    requests: 5000,
                    concurrency: 16,
                    kill_calls: 10_000,
                };
                calls::run(&config).await
            }
            Scenario::ScaleOperator => scale::run_operator_scale(&scale_config, &dir).await,
            Scenario::ScaleActivator => scale::run_activator_scale(&scale_config, &dir).await,
            Scenario::Instructions => {
                match or(
                    args.instruction_requests.clone(),
                    &[2000, 8000],
                    &[200, 400],
                )[..]
                {
                    [few, many] if few < many => {
                        let config = instructions::InstructionsConfig {
                            requests: [few, many],
                            concurrency: 16,
                            routed: args.routed.unwrap_or(pick(10_000, 100)),
                        };
                        instructions::run(&config, &dir).await
                    }
                    _ => Err(anyhow::anyhow!(
                        "--instruction-requests takes two counts, fewer first"
                    )),
                }
            }
        };
        match result {
            Ok(section) => report.add(section),
            Err(error) => {
                eprintln!("{scenario:?} failed: {error:#}");
                report
                    .hard_errors
                    .push(format!("{scenario:?} failed: {error:#}"));
            }
        }
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    print!("{}", report.table());
    report.write_json(&output)?;
    println!("\nJSON report: {}", output.display());
    if !report.hard_errors.is_empty() {
        for error in &report.hard_errors {
            eprintln!("hard error: {error}");
        }
        bail!("{} hard error(s)", report.hard_errors.len());
    }
    Ok(())
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model: cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        wrk: tools::version("wrk"),
        nginx: tools::version("nginx"),
    }
}
