//! Warm path: one upstream (its own process) reached directly, through the activator
//! and through nginx, with wrk at each concurrency, keep-alive. The three run in turn,
//! each for the same time, in rounds, so drift on a noisy machine hits all alike; each
//! figure is the median over rounds. CPU time per 1000 requests is the proxy process's
//! (nginx: master and workers), from `/proc`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::activator::{self, ActivatorProcess, Runtime};
use crate::auth;
use crate::procs;
use crate::report::{Goal, Row, Section, median, micros};
use crate::tools::{self, Nginx, WrkRun};

/// How the warm path is measured.
#[derive(Clone, Debug, Serialize)]
pub struct WarmConfig {
    pub concurrencies: Vec<usize>,
    pub seconds: u64,
    pub rounds: usize,
}

/// One wrk run with the CPU seconds the proxy and the upstream used meanwhile.
type Run = (WrkRun, f64, f64);

/// The ways to the upstream, in the order they run: `activator` is the layout
/// `activator/src/main.rs` has (one single-threaded runtime per core,
/// `server::serve_per_core`); `shared-runtime` is the activator on one work-stealing
/// runtime, the layout it had before, kept to show what per-core gains. `api-key` and
/// `jwt` are the activator with the warm Function behind `spec.auth` (crate::auth).
const TARGETS: [&str; 6] = [
    "direct",
    "activator",
    "api-key",
    "jwt",
    "shared-runtime",
    "nginx",
];

/// One target at one concurrency, over all rounds.
#[derive(Clone, Debug, Default, Serialize)]
struct Measured {
    requests_per_second: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// CPU seconds per 1000 requests of the proxy (of the upstream for `direct`).
    cpu_seconds_per_1k: f64,
    /// The upstream's, for every target: the same work each time.
    upstream_cpu_seconds_per_1k: f64,
    errors: u64,
    non_2xx: u64,
    runs: Vec<WrkRun>,
}

pub async fn run(config: &WarmConfig, dir: &Path) -> anyhow::Result<Section> {
    let upstream = procs::spawn_self(&["serve-upstream".to_owned()]).await?;
    let activator = ActivatorProcess::start(
        Some(upstream.addr),
        Duration::from_millis(crate::PROBE_PERIOD_MS),
    )
    .await?;
    let shared_runtime = ActivatorProcess::start_with(
        Some(upstream.addr),
        Duration::from_millis(crate::PROBE_PERIOD_MS),
        Runtime::MultiThread,
    )
    .await?;
    // nginx gets as many workers as the activator's runtime has threads (tokio's
    // default, one per core, as in activator/src/main.rs).
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let nginx = Nginx::start(upstream.addr, workers, &dir.join("nginx")).await?;
    let script = tools::write_wrk_script(dir)?;
    let jwt_header = auth::jwt_header()?;
    let api_key_header = auth::api_key_header();
    let host = |target: &str| match target {
        "api-key" => activator::host(auth::API_KEY_FUNCTION),
        "jwt" => activator::host(auth::JWT_FUNCTION),
        _ => activator::host(activator::WARM_FUNCTION),
    };
    let header = |target: &str| match target {
        "api-key" => Some(api_key_header.as_str()),
        "jwt" => Some(jwt_header.as_str()),
        _ => None,
    };
    let url = |target: &str| match target {
        "direct" => format!("http://{}/", upstream.addr),
        "activator" | "api-key" | "jwt" => format!("http://{}/", activator.addr()),
        "shared-runtime" => format!("http://{}/", shared_runtime.addr()),
        _ => format!("http://{}/", nginx.addr),
    };
    let proxy_pids = |target: &str| match target {
        "direct" => vec![upstream.pid],
        "activator" | "api-key" | "jwt" => vec![activator.pid()],
        "shared-runtime" => vec![shared_runtime.pid()],
        _ => nginx.pids(),
    };

    // Warm-up: connections, pools and caches, each target once.
    for target in TARGETS {
        let concurrency = config.concurrencies.iter().copied().max().unwrap_or(64);
        tools::wrk(
            &script,
            &url(target),
            &host(target),
            header(target),
            concurrency,
            Duration::from_secs(1),
        )
        .await?;
    }

    let mut results: BTreeMap<(usize, &str), Vec<Run>> = BTreeMap::new();
    for &concurrency in &config.concurrencies {
        for round in 0..config.rounds {
            for target in TARGETS {
                let pids = proxy_pids(target);
                let (cpu_before, upstream_before) = (
                    procs::cpu_seconds_of(&pids)?,
                    procs::cpu_seconds(upstream.pid)?,
                );
                let run = tools::wrk(
                    &script,
                    &url(target),
                    &host(target),
                    header(target),
                    concurrency,
                    Duration::from_secs(config.seconds),
                )
                .await?;
                let cpu = procs::cpu_seconds_of(&pids)? - cpu_before;
                let upstream_cpu = procs::cpu_seconds(upstream.pid)? - upstream_before;
                eprintln!(
                    "warm c={concurrency} round {} {target}: {:.0} req/s p50 {} p99 {}",
                    round + 1,
                    run.requests_per_second,
                    micros(run.p50_us),
                    micros(run.p99_us)
                );
                results
                    .entry((concurrency, target))
                    .or_default()
                    .push((run, cpu, upstream_cpu));
            }
        }
    }
    nginx.stop().await;

    let mut measured: BTreeMap<(usize, &str), Measured> = BTreeMap::new();
    for (key, runs) in results {
        let per_1k = |cpu: f64, run: &WrkRun| cpu / (run.requests.max(1) as f64) * 1000.0;
        let m = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        measured.insert(
            key,
            Measured {
                requests_per_second: m(&|(r, _, _)| r.requests_per_second),
                p50_us: m(&|(r, _, _)| r.p50_us),
                p99_us: m(&|(r, _, _)| r.p99_us),
                p999_us: m(&|(r, _, _)| r.p999_us),
                cpu_seconds_per_1k: m(&|(r, cpu, _)| per_1k(*cpu, r)),
                upstream_cpu_seconds_per_1k: m(&|(r, _, up)| per_1k(*up, r)),
                errors: runs.iter().map(|(r, _, _)| r.errors).sum(),
                non_2xx: runs.iter().map(|(r, _, _)| r.non_2xx).sum(),
                runs: runs.into_iter().map(|(r, _, _)| r).collect(),
            },
        );
    }
    Ok(section(config, workers, &measured))
}

fn section(
    config: &WarmConfig,
    workers: usize,
    measured: &BTreeMap<(usize, &str), Measured>,
) -> Section {
    let mut rows = Vec::new();
    let mut hard_errors = Vec::new();
    let mut by_concurrency = Vec::new();
    for &concurrency in &config.concurrencies {
        let section = format!("warm c={concurrency}");
        let get = |target: &str| {
            measured
                .get(&(concurrency, target))
                .cloned()
                .unwrap_or_default()
        };
        let (direct, activator, shared_runtime, nginx) = (
            get("direct"),
            get("activator"),
            get("shared-runtime"),
            get("nginx"),
        );
        let (api_key, jwt) = (get("api-key"), get("jwt"));
        let subjects = [
            ("direct", &direct),
            ("activator", &activator),
            ("activator, API-key auth", &api_key),
            ("activator, JWT auth (EdDSA)", &jwt),
            ("activator, one shared runtime", &shared_runtime),
            ("nginx", &nginx),
        ];
        for (target, m) in subjects {
            let cpu_owner = if target == "direct" { "upstream " } else { "" };
            rows.push(Row::info(
                &section,
                target,
                format!(
                    "{:.0} req/s, p50 {}, p99 {}, p99.9 {}, {cpu_owner}cpu {:.3} s/1k req",
                    m.requests_per_second,
                    micros(m.p50_us),
                    micros(m.p99_us),
                    micros(m.p999_us),
                    m.cpu_seconds_per_1k
                ),
            ));
            if m.errors > 0 || m.non_2xx > 0 {
                hard_errors.push(format!(
                    "warm c={concurrency} {target}: {} socket errors, {} non-2xx answers",
                    m.errors, m.non_2xx
                ));
            }
        }
        for (label, m) in [
            ("activator", &activator),
            ("shared-runtime", &shared_runtime),
        ] {
            rows.extend(checks(&section, concurrency, label, m, &direct, &nginx));
        }
        // What each auth check costs: throughput as a share of the plain activator's in
        // the same run (issue 16's target: each costs at most 10%).
        for (label, m) in [("api-key", &api_key), ("jwt", &jwt)] {
            let share = ratio(m.requests_per_second, activator.requests_per_second);
            rows.push(Row::check(
                &section,
                &format!("{label}/activator throughput"),
                share,
                format!("{share:.2}x"),
                Goal::AtLeast(0.9),
                ">= 0.90x",
            ));
        }
        by_concurrency.push(json!({
            "concurrency": concurrency,
            "direct": direct,
            "activator": activator,
            "activator_shared_runtime": shared_runtime,
            "activator_api_key": api_key,
            "activator_jwt": jwt,
            "api_key_vs_activator": ratio(api_key.requests_per_second, activator.requests_per_second),
            "jwt_vs_activator": ratio(jwt.requests_per_second, activator.requests_per_second),
            "nginx": nginx,
            "activator_vs_direct": ratio(activator.requests_per_second, direct.requests_per_second),
            "activator_vs_nginx": ratio(activator.requests_per_second, nginx.requests_per_second),
            "activator_vs_nginx_cpu": ratio(activator.cpu_seconds_per_1k, nginx.cpu_seconds_per_1k),
            "added_p50_us": activator.p50_us - direct.p50_us,
            "added_p99_us": activator.p99_us - direct.p99_us,
            "shared_runtime_vs_direct": ratio(shared_runtime.requests_per_second, direct.requests_per_second),
            "shared_runtime_vs_nginx": ratio(shared_runtime.requests_per_second, nginx.requests_per_second),
            "shared_runtime_vs_nginx_cpu": ratio(shared_runtime.cpu_seconds_per_1k, nginx.cpu_seconds_per_1k),
            "shared_runtime_added_p50_us": shared_runtime.p50_us - direct.p50_us,
            "shared_runtime_added_p99_us": shared_runtime.p99_us - direct.p99_us,
        }));
    }
    rows.push(Row::info(
        "warm",
        "setup",
        format!(
            "wrk -t2 keep-alive, {} s x {} rounds per target, activator {workers} single-threaded runtimes (shared-runtime: {workers} tokio workers), nginx {workers} workers",
            config.seconds, config.rounds
        ),
    ));
    Section {
        name: "warm",
        data: json!({
            "config": config,
            "proxy_workers": workers,
            "results": by_concurrency,
        }),
        rows,
        hard_errors,
    }
}

/// The target rows of one activator layout (`label`) at one concurrency.
fn checks(
    section: &str,
    concurrency: usize,
    label: &str,
    m: &Measured,
    direct: &Measured,
    nginx: &Measured,
) -> Vec<Row> {
    let vs_direct = ratio(m.requests_per_second, direct.requests_per_second);
    let vs_nginx = ratio(m.requests_per_second, nginx.requests_per_second);
    let cpu_vs_nginx = ratio(m.cpu_seconds_per_1k, nginx.cpu_seconds_per_1k);
    let (added_p50, added_p99) = (m.p50_us - direct.p50_us, m.p99_us - direct.p99_us);
    let mut rows = vec![
        Row::check(
            section,
            &format!("{label}/direct throughput"),
            vs_direct,
            format!("{vs_direct:.2}x"),
            Goal::AtLeast(0.6),
            ">= 0.60x",
        ),
        Row::check(
            section,
            &format!("{label}/nginx throughput"),
            vs_nginx,
            format!("{vs_nginx:.2}x"),
            Goal::AtLeast(1.0),
            ">= 1.00x",
        ),
        Row::check(
            section,
            &format!("{label}/nginx cpu per request"),
            cpu_vs_nginx,
            format!("{cpu_vs_nginx:.2}x"),
            Goal::AtMost(1.0),
            "<= 1.00x",
        ),
    ];
    if concurrency == 64 {
        rows.push(Row::check(
            section,
            &format!("{label} added p50 (vs direct)"),
            added_p50,
            micros(added_p50),
            Goal::AtMost(100.0),
            "<= 100 us",
        ));
        rows.push(Row::check(
            section,
            &format!("{label} added p99 (vs direct)"),
            added_p99,
            micros(added_p99),
            Goal::AtMost(1000.0),
            "<= 1 ms",
        ));
    } else {
        rows.push(Row::info(
            section,
            &format!("{label} added p50 / p99 (vs direct)"),
            format!("{} / {}", micros(added_p50), micros(added_p99)),
        ));
    }
    rows
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}
