//! Burst at zero: N clients each send one request at once to a Function at zero; the
//! pod starts listening `delay` after the wake, as in the cold-start scenario. Every
//! request must be answered 200; reported are the errors, the time until the last
//! answer, and the activator's peak memory (`VmHWM`; a fresh activator per burst).

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::activator::{self, ActivatorProcess, PodStart};
use crate::client;
use crate::procs;
use crate::report::{Goal, Row, Section, kib};
use crate::upstream::Pod;

/// How bursts are measured.
#[derive(Clone, Debug, Serialize)]
pub struct BurstConfig {
    pub sizes: Vec<usize>,
    pub delay_ms: u64,
    pub kubelet_period_ms: u64,
}

/// Longest a whole burst may take.
const BOUND: Duration = Duration::from_secs(120);
/// The burst issue 19 sets a peak RSS target for, and the target.
const PEAK_TARGET_REQUESTS: usize = 5000;
const PEAK_TARGET_MIB: f64 = 100.0;

#[derive(Clone, Debug, Serialize)]
struct Outcome {
    requests: usize,
    ok: usize,
    errors: usize,
    /// A few of the errors, for the log.
    error_samples: Vec<String>,
    /// From the first request sent to the last answer read.
    all_answered_ms: f64,
    /// From the pod listening to the last answer read.
    after_listening_ms: f64,
    rss_before_kib: u64,
    peak_kib: u64,
}

pub async fn run(config: &BurstConfig) -> anyhow::Result<Section> {
    let mut outcomes = Vec::new();
    for &size in &config.sizes {
        let outcome = one(size, config)
            .await
            .with_context(|| format!("burst of {size}"))?;
        eprintln!(
            "burst {size}: {} errors, all answered in {:.0} ms, peak {}",
            outcome.errors,
            outcome.all_answered_ms,
            kib(outcome.peak_kib as f64)
        );
        outcomes.push(outcome);
    }
    Ok(section(config, &outcomes))
}

async fn one(size: usize, config: &BurstConfig) -> anyhow::Result<Outcome> {
    let mut activator =
        ActivatorProcess::start(None, Duration::from_millis(crate::PROBE_PERIOD_MS)).await?;
    let name = "burst";
    activator
        .command(&format!("fn {name} {} 60s", size.max(1000) * 2))
        .await?;
    let rss_before = procs::memory(activator.pid())?.rss_kib;
    let mut pod = Pod::reserve()?;
    let (addr, host) = (activator.addr(), activator::host(name));
    let started = Instant::now();
    let mut requests = JoinSet::new();
    for _ in 0..size {
        let host = host.clone();
        requests.spawn(async move { client::get(addr, &host).await });
    }
    let PodStart {
        listening,
        kubelet_ready: kubelet,
        ..
    } = activator
        .start_pod(
            name,
            &mut pod,
            Duration::from_millis(config.delay_ms),
            Duration::from_millis(config.kubelet_period_ms),
        )
        .await?;
    let mut kubelet_done = false;
    let (mut ok, mut errors, mut error_samples, mut last) = (0, 0, Vec::new(), started);
    let deadline = started + BOUND;
    loop {
        tokio::select! {
            joined = requests.join_next() => {
                let Some(joined) = joined else { break };
                match joined.context("a client task")? {
                    Ok(answer) if answer.status == 200 => {
                        ok += 1;
                        last = last.max(answer.done);
                    }
                    Ok(answer) => {
                        errors += 1;
                        last = last.max(answer.done);
                        if error_samples.len() < 5 {
                            error_samples.push(format!("status {}", answer.status));
                        }
                    }
                    Err(error) => {
                        errors += 1;
                        last = last.max(Instant::now());
                        if error_samples.len() < 5 {
                            error_samples.push(format!("{error:#}"));
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(kubelet), if !kubelet_done => {
                activator.command(&format!("ready {name} {}", pod.addr)).await?;
                kubelet_done = true;
            }
            () = tokio::time::sleep_until(deadline) => {
                errors += requests.len();
                error_samples.push(format!("{} requests unanswered after {BOUND:?}", requests.len()));
                break;
            }
        }
    }
    let peak = procs::memory(activator.pid())?.peak_kib;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Outcome {
        requests: size,
        ok,
        errors,
        error_samples,
        all_answered_ms: ms(last - started),
        after_listening_ms: ms(last.saturating_duration_since(listening)),
        rss_before_kib: rss_before,
        peak_kib: peak,
    })
}

fn section(config: &BurstConfig, outcomes: &[Outcome]) -> Section {
    let mut rows = Vec::new();
    let mut hard_errors = Vec::new();
    for outcome in outcomes {
        let section = format!("burst {}", outcome.requests);
        rows.push(Row::check(
            &section,
            "errors",
            outcome.errors as f64,
            outcome.errors.to_string(),
            Goal::AtMost(0.0),
            "0",
        ));
        rows.push(Row::info(
            &section,
            "all answered after",
            format!(
                "{:.0} ms ({:.0} ms after the pod listened)",
                outcome.all_answered_ms, outcome.after_listening_ms
            ),
        ));
        let peak = format!(
            "{} (+{} over idle)",
            kib(outcome.peak_kib as f64),
            kib(outcome.peak_kib.saturating_sub(outcome.rss_before_kib) as f64)
        );
        rows.push(if outcome.requests == PEAK_TARGET_REQUESTS {
            Row::check(
                &section,
                "activator peak RSS",
                outcome.peak_kib as f64,
                peak,
                Goal::AtMost(PEAK_TARGET_MIB * 1024.0),
                format!("<= {PEAK_TARGET_MIB} MiB"),
            )
        } else {
            Row::info(&section, "activator peak RSS", peak)
        });
        if outcome.errors > 0 {
            hard_errors.push(format!(
                "burst of {}: {} errors ({})",
                outcome.requests,
                outcome.errors,
                outcome.error_samples.join("; ")
            ));
        }
    }
    rows.push(Row::info(
        "burst",
        "setup",
        format!(
            "one connection per request, all sent at once; pod listens {} ms after the wake; fresh activator per burst",
            config.delay_ms
        ),
    ));
    Section {
        name: "burst",
        data: json!({ "config": config, "results": outcomes }),
        rows,
        hard_errors,
    }
}
