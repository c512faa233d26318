//! Instructions per request, a count that does not move with machine noise: the
//! activator and nginx each run under valgrind's callgrind (user space only) and forward
//! `ab -k -c 16` to the upstream (a native process). Each runs twice in a fresh process,
//! for the small and the large request count; the difference of the two totals over the
//! difference of the counts is one request's cost without start-up and shutdown. The
//! activator is counted with a few and with many other Functions routed: its route
//! lookup and forward must cost the same.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::json;
use tokio::process::Command;

use crate::activator::{self, ActivatorProcess, Runtime};
use crate::procs;
use crate::report::{Goal, Row, Section};
use crate::tools::Nginx;

/// How instructions are counted.
#[derive(Clone, Debug, Serialize)]
pub struct InstructionsConfig {
    /// The request counts of the two runs, fewer first.
    pub requests: [usize; 2],
    /// ab's connections.
    pub concurrency: usize,
    /// Functions routed besides the warm one, in the run that checks growth.
    pub routed: usize,
}

/// Functions routed besides the warm one in the baseline runs.
const FEW_ROUTED: usize = 10;
/// Longest a process under valgrind may take to finish and write its counts.
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest routing the Functions may take under valgrind.
const ROUTING_TIMEOUT: Duration = Duration::from_secs(600);

/// What runs under callgrind.
#[derive(Clone, Copy, Debug)]
enum Subject {
    /// The activator with this many other Functions routed.
    Activator {
        routed: usize,
    },
    Nginx,
}

impl Subject {
    fn label(self) -> String {
        match self {
            Self::Activator { routed } => format!("activator-{routed}"),
            Self::Nginx => "nginx".to_owned(),
        }
    }
}

pub async fn run(config: &InstructionsConfig, dir: &Path) -> anyhow::Result<Section> {
    let upstream = procs::spawn_self(&["serve-upstream".to_owned()]).await?;
    let dir = dir.join("callgrind");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut per_request = Vec::new();
    for subject in [
        Subject::Activator { routed: FEW_ROUTED },
        Subject::Activator {
            routed: config.routed,
        },
        Subject::Nginx,
    ] {
        let mut totals = [0u64; 2];
        for (total, &requests) in totals.iter_mut().zip(&config.requests) {
            *total = count(subject, requests, upstream.addr, config, &dir).await?;
        }
        let extra_requests = config.requests[1].saturating_sub(config.requests[0]).max(1);
        let instructions = totals[1].saturating_sub(totals[0]) as f64 / extra_requests as f64;
        eprintln!(
            "instructions {}: {totals:?} total, {instructions:.0} per request",
            subject.label()
        );
        per_request.push((subject.label(), totals, instructions));
    }
    let [(_, _, activator), (_, _, activator_many), (_, _, nginx)] = per_request[..] else {
        bail!("three subjects were counted");
    };
    Ok(section(
        config,
        activator,
        activator_many,
        nginx,
        &per_request,
    ))
}

fn section(
    config: &InstructionsConfig,
    activator: f64,
    activator_many: f64,
    nginx: f64,
    per_request: &[(String, [u64; 2], f64)],
) -> Section {
    let section = "instructions";
    let growth = if activator > 0.0 {
        activator_many / activator
    } else {
        0.0
    };
    let rows = vec![
        Row::check(
            section,
            "activator instructions per request",
            activator,
            format!("{activator:.0}"),
            Goal::AtMost(nginx),
            format!("<= nginx ({nginx:.0})"),
        ),
        Row::info(
            section,
            "nginx instructions per request",
            format!("{nginx:.0}"),
        ),
        Row::check(
            section,
            &format!(
                "activator per request, {} vs {FEW_ROUTED} Functions routed",
                config.routed
            ),
            growth,
            format!("{growth:.3}x ({activator_many:.0})"),
            Goal::AtMost(1.05),
            "<= 1.05x",
        ),
        Row::info(
            section,
            "setup",
            format!(
                "valgrind --tool=callgrind, ab -k -c {} for {} and {} requests, fresh process each, (difference) / {}; activator {} runtimes, nginx one process",
                config.concurrency,
                config.requests[0],
                config.requests[1],
                config.requests[1].saturating_sub(config.requests[0]),
                std::thread::available_parallelism().map_or(1, usize::from),
            ),
        ),
    ];
    let runs: Vec<_> = per_request
        .iter()
        .map(|(label, totals, per_request)| {
            json!({ "subject": label, "totals": totals, "per_request": per_request })
        })
        .collect();
    Section {
        name: "instructions",
        data: json!({
            "config": config,
            "activator_per_request": activator,
            "activator_many_routed_per_request": activator_many,
            "nginx_per_request": nginx,
            "routed_growth": growth,
            "runs": runs,
        }),
        rows,
        hard_errors: Vec::new(),
    }
}

/// The instructions `subject` executed, in a fresh process, serving `requests` requests.
async fn count(
    subject: Subject,
    requests: usize,
    upstream: SocketAddr,
    config: &InstructionsConfig,
    dir: &Path,
) -> anyhow::Result<u64> {
    let out = dir.join(format!("{}-{requests}.out", subject.label()));
    let wrapper = vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    let host = activator::host(activator::WARM_FUNCTION);
    match subject {
        Subject::Activator { routed } => {
            let mut activator = ActivatorProcess::start_under(
                &wrapper,
                Some(upstream),
                Duration::from_millis(crate::PROBE_PERIOD_MS),
                Runtime::PerCore,
                &[],
            )
            .await?;
            activator
                .command_within(&format!("fns routed {routed}"), ROUTING_TIMEOUT)
                .await?;
            ab(activator.addr(), &host, config.concurrency, requests).await?;
            activator.finish(EXIT_TIMEOUT).await?;
        }
        Subject::Nginx => {
            let nginx = Nginx::start_under(&wrapper, upstream, None, &dir.join("nginx")).await?;
            ab(nginx.addr, &host, config.concurrency, requests).await?;
            nginx.stop_within(EXIT_TIMEOUT).await?;
        }
    }
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    totals(&text).with_context(|| format!("no totals in {}", out.display()))
}

/// The total of the first event (instructions) in a callgrind output file.
fn totals(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// `ab -k -c <concurrency> -n <requests>` against `addr` with `Host: host`; fails
/// unless every request was answered 2xx.
async fn ab(
    addr: SocketAddr,
    host: &str,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<()> {
    let output = Command::new("ab")
        .arg("-q")
        .arg("-k")
        .arg("-c")
        .arg(concurrency.to_string())
        .arg("-n")
        .arg(requests.to_string())
        .arg("-H")
        .arg(format!("Host: {host}"))
        .arg(format!("http://{addr}/"))
        .output()
        .await
        .context("running ab")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "ab failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
    };
    let complete = field("Complete requests:").unwrap_or(0);
    let failed = field("Failed requests:").unwrap_or(0);
    let non_2xx = field("Non-2xx responses:").unwrap_or(0);
    if complete != requests || failed > 0 || non_2xx > 0 {
        bail!("ab: {complete} of {requests} complete, {failed} failed, {non_2xx} non-2xx");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_totals_are_read() {
        let text = "version: 1\nevents: Ir\nfn=main\n0 5\nsummary: 123456\ntotals: 123456\n";
        assert_eq!(totals(text), Some(123456));
        assert_eq!(totals("events: Ir\n"), None);
    }
}
