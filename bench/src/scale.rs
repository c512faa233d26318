//! Growth with the number of Functions, against the mocked API server of
//! [`crate::apiserver`] with every Function at zero: the operator's RSS at each count,
//! its idle CPU once everything is reconciled, its autoscaler tick, the time from its
//! start to every Function reconciled, how soon a Function created during that
//! start-up backlog is reconciled; and how soon the activator is ready after its lists
//! arrive. Both run as the workspace's binaries (next to this one: build them first),
//! so the numbers are of their build profile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

use crate::apiserver::ApiServer;
use crate::procs;
use crate::report::{Goal, Row, Section};

/// What the scale scenario measures.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleConfig {
    /// Function counts for the operator, ascending: the baseline (0), the count the
    /// targets name (1,000) and the largest (10,000).
    pub operator_counts: Vec<usize>,
    /// Function counts for the activator, ascending (1,000 and 10,000).
    pub activator_counts: Vec<usize>,
    /// Seconds of idle CPU measured once everything is reconciled.
    pub idle_seconds: u64,
}

/// One operator run.
#[derive(Clone, Debug, Serialize)]
struct OperatorRun {
    functions: usize,
    rss_mib: f64,
    idle_cpu_percent: f64,
    mean_tick_ms: f64,
    /// API requests per second during the idle window.
    idle_requests_per_s: f64,
    /// The idle window's requests by method and resource.
    idle_requests: BTreeMap<String, u64>,
    start_to_reconciled_s: f64,
    late_function_s: Option<f64>,
}

/// One activator run.
#[derive(Clone, Debug, Serialize)]
struct ActivatorRun {
    functions: usize,
    ready_after_lists_s: f64,
    start_to_ready_s: f64,
    rss_mib: f64,
}

/// Longest the operator may take to reconcile everything.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(900);
/// Time given to the operator after it settled before the idle window.
const SETTLE: Duration = Duration::from_secs(1);
/// Longest wait for the operator to settle after the first reconciles: one that never
/// does is measured as it is then.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The operator's autoscaler tick (its default).
const TICK: Duration = Duration::from_secs(1);

/// The operator at each of `config.operator_counts`.
pub async fn run_operator_scale(config: &ScaleConfig, dir: &Path) -> anyhow::Result<Section> {
    let mut operator = Vec::new();
    for &functions in &config.operator_counts {
        let measured = run_operator(functions, config.idle_seconds, dir).await?;
        eprintln!("scale: operator {measured:?}");
        operator.push(measured);
    }
    Ok(Section {
        name: "scale_operator",
        data: json!({"config": config, "runs": operator}),
        rows: operator_rows(&operator),
        hard_errors: Vec::new(),
    })
}

/// The activator at each of `config.activator_counts`.
pub async fn run_activator_scale(config: &ScaleConfig, dir: &Path) -> anyhow::Result<Section> {
    let mut activator = Vec::new();
    for &functions in &config.activator_counts {
        let measured = run_activator(functions, dir).await?;
        eprintln!("scale: activator {measured:?}");
        activator.push(measured);
    }
    Ok(Section {
        name: "scale_activator",
        data: json!({"config": config, "runs": activator}),
        rows: activator_rows(&activator),
        hard_errors: Vec::new(),
    })
}

const SECTION: &str = "scale";

fn operator_rows(operator: &[OperatorRun]) -> Vec<Row> {
    let mut rows = Vec::new();
    for run in operator {
        let n = run.functions;
        let measurement = format!("operator RSS, {n} Functions");
        let value = format!("{:.1} MiB", run.rss_mib);
        rows.push(if n == 1000 {
            Row::check(
                SECTION,
                &measurement,
                run.rss_mib,
                value,
                Goal::AtMost(64.0),
                "<= 64 MiB",
            )
        } else {
            Row::info(SECTION, &measurement, value)
        });
    }
    // Growth per Function between the first two counts and from there to the last.
    if let [first, second, .., last] = operator
        && second.functions > first.functions
        && last.functions > second.functions
    {
        let early = (second.rss_mib - first.rss_mib) / (second.functions - first.functions) as f64;
        let late = (last.rss_mib - second.rss_mib) / (last.functions - second.functions) as f64;
        let ratio = if early > 0.0 { late / early } else { 0.0 };
        rows.push(Row::check(
            SECTION,
            &format!(
                "operator RSS per Function, {}->{} vs {}->{}",
                second.functions, last.functions, first.functions, second.functions
            ),
            ratio,
            format!(
                "{:.1} vs {:.1} KiB ({ratio:.2}x)",
                late * 1024.0,
                early * 1024.0
            ),
            Goal::AtMost(1.1),
            "<= 1.1x (linear)",
        ));
    }
    for run in operator.iter().filter(|run| run.functions > 0) {
        let n = run.functions;
        let cpu = format!(
            "{:.2}% of a core ({:.1} API requests/s)",
            run.idle_cpu_percent, run.idle_requests_per_s
        );
        rows.push(if n == 1000 {
            Row::check(
                SECTION,
                &format!("operator idle CPU, {n} idle Functions"),
                run.idle_cpu_percent,
                cpu,
                Goal::AtMost(1.0),
                "<= 1%",
            )
        } else {
            Row::info(
                SECTION,
                &format!("operator idle CPU, {n} idle Functions"),
                cpu,
            )
        });
        let tick_share = run.mean_tick_ms / TICK.as_secs_f64() / 10.0;
        let tick = format!("{:.2} ms ({tick_share:.2}% of {TICK:?})", run.mean_tick_ms);
        rows.push(if n == 10_000 {
            Row::check(
                SECTION,
                &format!("autoscaler tick, {n} Functions"),
                tick_share,
                tick,
                Goal::AtMost(10.0),
                "< 10% of the tick",
            )
        } else {
            Row::info(SECTION, &format!("autoscaler tick, {n} Functions"), tick)
        });
        rows.push(Row::info(
            SECTION,
            &format!("operator start to all reconciled and quiet, {n} Functions"),
            format!("{:.2} s", run.start_to_reconciled_s),
        ));
        if let Some(late) = run.late_function_s {
            rows.push(Row::check(
                SECTION,
                &format!("Function created in the start-up backlog of {n}"),
                late,
                format!("{late:.3} s"),
                Goal::AtMost(1.0),
                "<= 1 s",
            ));
        }
    }
    rows
}

fn activator_rows(activator: &[ActivatorRun]) -> Vec<Row> {
    let mut rows = Vec::new();
    for run in activator {
        let n = run.functions;
        let value = format!(
            "{:.3} s (start to ready {:.3} s, RSS {:.1} MiB)",
            run.ready_after_lists_s, run.start_to_ready_s, run.rss_mib
        );
        let measurement = format!("activator ready after its lists, {n} Functions");
        rows.push(if n == 1000 {
            Row::check(
                SECTION,
                &measurement,
                run.ready_after_lists_s,
                value,
                Goal::AtMost(1.0),
                "<= 1 s",
            )
        } else {
            Row::info(SECTION, &measurement, value)
        });
    }
    if let [first, .., last] = activator
        && last.functions > first.functions
    {
        let scale = last.functions as f64 / first.functions as f64;
        // Start to ready includes the lists, which grow linearly too.
        let ratio = last.start_to_ready_s / first.start_to_ready_s.max(1e-3) / scale;
        rows.push(Row::check(
            SECTION,
            &format!(
                "activator start to ready, {} vs {} Functions, per Function",
                last.functions, first.functions
            ),
            ratio,
            format!("{ratio:.2}x"),
            Goal::AtMost(1.1),
            "<= 1.1x (linear)",
        ));
    }
    rows
}

/// How long the operator must send no request to count as settled.
const QUIET: Duration = Duration::from_secs(2);

/// Waits until the API server has answered no request for [`QUIET`] (or `deadline`
/// passes); returns when the last request came.
async fn settle(api: &ApiServer, deadline: Instant) -> Instant {
    let total = || api.requests().values().sum::<u64>();
    let (mut seen, mut last_change) = (total(), Instant::now());
    while last_change.elapsed() < QUIET && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = total();
        if now != seen {
            (seen, last_change) = (now, Instant::now());
        }
    }
    last_change
}

/// A workspace binary next to this one.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first (cargo build -p {name})",
            path.display()
        );
    }
    Ok(path)
}

fn spawn(binary: &str, args: &[String], kubeconfig: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(sibling(binary)?)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {binary}"))
}

async fn run_operator(
    functions: usize,
    idle_seconds: u64,
    dir: &Path,
) -> anyhow::Result<OperatorRun> {
    let api = ApiServer::start(functions).await?;
    let kubeconfig = api.kubeconfig(dir)?;
    let admin = SocketAddr::from(([127, 0, 0, 1], procs::free_port()?));
    let args = [
        "run".to_owned(),
        "--leader-election=false".to_owned(),
        format!("--admin-addr={admin}"),
        "--activator-service=zeroscale-activator.zeroscale-system".to_owned(),
        format!("--activator-admin-port={}", api.addr.port()),
        format!("--autoscaler-tick={}ms", TICK.as_millis()),
    ];
    let log = dir.join(format!("operator-{functions}.log"));
    let started = Instant::now();
    let child = spawn("zeroscale-operator", &args, &kubeconfig, &log)?;
    let pid = child.id().context("the operator has a pid")?;
    let mut reconciled = api.reconciled();

    let mut late = None;
    if functions > 0 {
        // Created once the backlog is being worked through.
        tokio::time::timeout(RECONCILE_TIMEOUT, reconciled.wait_for(|count| *count >= 1))
            .await
            .context("no Function reconciled in time")?
            .context("the API server stopped")?;
        api.create_function("late")?;
        late = Some(Instant::now());
    }
    let expected = functions + usize::from(functions > 0);
    tokio::time::timeout(
        RECONCILE_TIMEOUT,
        reconciled.wait_for(|count| *count >= expected),
    )
    .await
    .with_context(|| {
        format!(
            "{functions} Functions not reconciled within {RECONCILE_TIMEOUT:?}; see {}",
            log.display()
        )
    })?
    .context("the API server stopped")?;
    // Then every reconcile that the first ones caused (their own writes come back as
    // watch events) until the API server has heard nothing for QUIET.
    let all_reconciled = settle(&api, Instant::now() + SETTLE_TIMEOUT).await;
    let late_function_s = match late {
        Some(created) => Some(
            api.reconciled_at("late")
                .context("late was reconciled")?
                .duration_since(created)
                .as_secs_f64(),
        ),
        None => None,
    };

    procs::wait_listening(admin, Duration::from_secs(10)).await?;
    tokio::time::sleep(SETTLE).await;
    let (sum_before, count_before) = tick_totals(admin).await?;
    let cpu_before = procs::cpu_seconds(pid)?;
    let requests_before = api.requests();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let cpu = procs::cpu_seconds(pid)? - cpu_before;
    let elapsed = window.elapsed().as_secs_f64();
    let idle_requests: BTreeMap<String, u64> = api
        .requests()
        .into_iter()
        .map(|(what, count)| {
            (
                count - requests_before.get(&what).copied().unwrap_or(0),
                what,
            )
        })
        .filter(|(count, _)| *count > 0)
        .map(|(count, what)| (what, count))
        .collect();
    let requests: u64 = idle_requests.values().sum();
    let (sum_after, count_after) = tick_totals(admin).await?;
    let rss_kib = procs::memory(pid)?.rss_kib;
    drop(child);
    let ticks = (count_after - count_before).max(1.0);
    Ok(OperatorRun {
        functions,
        rss_mib: rss_kib as f64 / 1024.0,
        idle_cpu_percent: cpu / elapsed * 100.0,
        mean_tick_ms: (sum_after - sum_before) / ticks * 1000.0,
        idle_requests_per_s: requests as f64 / elapsed,
        idle_requests,
        start_to_reconciled_s: all_reconciled.duration_since(started).as_secs_f64(),
        late_function_s,
    })
}

async fn run_activator(functions: usize, dir: &Path) -> anyhow::Result<ActivatorRun> {
    let api = ApiServer::start(functions).await?;
    let kubeconfig = api.kubeconfig(dir)?;
    let admin = SocketAddr::from(([127, 0, 0, 1], procs::free_port()?));
    let args = [
        "--listen=127.0.0.1:0".to_owned(),
        format!("--admin-addr={admin}"),
    ];
    let log = dir.join(format!("activator-{functions}.log"));
    let started = Instant::now();
    let child = spawn("zeroscale-activator", &args, &kubeconfig, &log)?;
    let pid = child.id().context("the activator has a pid")?;
    let deadline = started + RECONCILE_TIMEOUT;
    let ready = loop {
        if let Ok(text) = fetch(admin, "/readyz").await
            && text.starts_with("HTTP/1.1 200")
        {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the activator was not ready in time; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let lists = ["functions", "endpointslices"]
        .iter()
        .map(|resource| api.listed_at(resource))
        .collect::<Option<Vec<_>>>()
        .context("the activator listed Functions and EndpointSlices")?;
    let last_list = lists.into_iter().max().unwrap_or(started);
    let rss_kib = procs::memory(pid)?.rss_kib;
    drop(child);
    Ok(ActivatorRun {
        functions,
        ready_after_lists_s: ready.saturating_duration_since(last_list).as_secs_f64(),
        start_to_ready_s: ready.duration_since(started).as_secs_f64(),
        rss_mib: rss_kib as f64 / 1024.0,
    })
}

/// The autoscaler's tick duration sum (seconds) and count from the operator's metrics.
async fn tick_totals(admin: SocketAddr) -> anyhow::Result<(f64, f64)> {
    let text = fetch(admin, "/metrics").await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            .with_context(|| format!("{name} in the operator's metrics"))
    };
    Ok((
        value("zeroscale_operator_autoscaler_tick_duration_seconds_sum")?,
        value("zeroscale_operator_autoscaler_tick_duration_seconds_count")?,
    ))
}

/// `GET path` from `addr`, the whole answer as text.
async fn fetch(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
