//! Cold start: a request to a Function at zero; the bench, playing the operator and the
//! kubelet, hears the wake, lists the new pod as not ready at once (as the EndpointSlice
//! does when the pod gets its IP), and the pod starts listening `delay` (plus 0..25 ms,
//! spread over the runs) after the wake. The kubelet's readiness probe runs at the wake
//! and then every `kubelet_period`; the first one after the pod listens marks the
//! endpoint Ready. What the activator adds is
//! the client's first byte minus the instant the pod listened: with active probing on
//! (the default, every 25 ms) and off (then only the kubelet's probe finds the pod).

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::activator::{self, ActivatorProcess, PodStart};
use crate::client;
use crate::report::{Goal, Row, Section, median, percentile};
use crate::upstream::Pod;

/// How cold starts are measured.
#[derive(Clone, Debug, Serialize)]
pub struct ColdConfig {
    pub runs: usize,
    pub delay_ms: u64,
    pub kubelet_period_ms: u64,
    pub probe_period_ms: u64,
}

/// One cold start.
#[derive(Clone, Debug, Serialize)]
struct Sample {
    /// First byte at the client minus the instant the pod listened.
    added_ms: f64,
    /// From sending the request until the bench heard the wake.
    wake_ms: f64,
    /// From sending the request to its first byte.
    total_ms: f64,
    /// Whether the kubelet's probe (rather than the activator's) let the request through.
    via_kubelet: bool,
}

pub async fn run(config: &ColdConfig) -> anyhow::Result<Section> {
    let mut modes = Vec::new();
    for probe_period_ms in [config.probe_period_ms, 0] {
        let mut activator =
            ActivatorProcess::start(None, Duration::from_millis(probe_period_ms)).await?;
        let mut samples = Vec::new();
        for n in 0..config.runs {
            let name = format!("cold-{n}");
            // Pod start times spread over one probe period, so the probes' phase
            // relative to the pod is not the same in every run.
            let spread = n as u64 % config.probe_period_ms.max(1);
            let delay = Duration::from_millis(config.delay_ms + spread);
            let sample = one(&mut activator, &name, delay, config.kubelet_period_ms)
                .await
                .with_context(|| format!("cold start {n}, probe period {probe_period_ms} ms"))?;
            samples.push(sample);
        }
        let added: Vec<f64> = samples.iter().map(|s| s.added_ms).collect();
        eprintln!(
            "cold start, probe period {probe_period_ms} ms: added median {:.1} ms, p95 {:.1} ms",
            median(&added),
            percentile(&added, 95.0)
        );
        modes.push((probe_period_ms, samples));
    }
    Ok(section(config, &modes))
}

async fn one(
    activator: &mut ActivatorProcess,
    name: &str,
    delay: Duration,
    kubelet_period_ms: u64,
) -> anyhow::Result<Sample> {
    activator.command(&format!("fn {name} 1000 60s")).await?;
    let mut pod = Pod::reserve()?;
    let (addr, host) = (activator.addr(), activator::host(name));
    let sent = Instant::now();
    let mut request = tokio::spawn(async move { client::get(addr, &host).await });
    let PodStart {
        woke,
        listening,
        kubelet_ready: kubelet,
    } = activator
        .start_pod(
            name,
            &mut pod,
            delay,
            Duration::from_millis(kubelet_period_ms),
        )
        .await?;
    let answer = tokio::select! {
        answer = &mut request => answer,
        () = tokio::time::sleep_until(kubelet) => {
            activator.command(&format!("ready {name} {}", pod.addr)).await?;
            request.await
        }
    }
    .context("the client task")??;
    if answer.status != 200 {
        bail!("the request was answered {}", answer.status);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Sample {
        added_ms: ms(answer.first_byte.saturating_duration_since(listening)),
        wake_ms: ms(woke - sent),
        total_ms: ms(answer.first_byte - sent),
        via_kubelet: answer.first_byte >= kubelet,
    })
}

fn section(config: &ColdConfig, modes: &[(u64, Vec<Sample>)]) -> Section {
    let section = "cold start";
    let mut rows = Vec::new();
    let mut data = Vec::new();
    let mut medians = Vec::new();
    for (probe_period_ms, samples) in modes {
        let added: Vec<f64> = samples.iter().map(|s| s.added_ms).collect();
        let (p50, p95) = (median(&added), percentile(&added, 95.0));
        let via_kubelet = samples.iter().filter(|s| s.via_kubelet).count();
        medians.push(p50);
        if *probe_period_ms > 0 {
            rows.push(Row::check(
                section,
                &format!("added delay median, probing every {probe_period_ms} ms"),
                p50,
                format!("{p50:.1} ms"),
                Goal::AtMost(50.0),
                "<= 50 ms",
            ));
            rows.push(Row::info(
                section,
                &format!("added delay p95, probing every {probe_period_ms} ms"),
                format!("{p95:.1} ms"),
            ));
        } else {
            rows.push(Row::info(
                section,
                "added delay median / p95, probing off",
                format!(
                    "{p50:.1} ms / {p95:.1} ms (kubelet readiness every {} ms)",
                    config.kubelet_period_ms
                ),
            ));
        }
        data.push(json!({
            "probe_period_ms": probe_period_ms,
            "added_ms_median": p50,
            "added_ms_p95": p95,
            "wake_ms_median": median(&samples.iter().map(|s| s.wake_ms).collect::<Vec<_>>()),
            "answered_via_kubelet": via_kubelet,
            "samples": samples,
        }));
    }
    if let [on, off] = medians[..] {
        rows.push(Row::info(
            section,
            "active probing saves (median)",
            format!("{:.1} ms", off - on),
        ));
    }
    rows.push(Row::info(
        section,
        "setup",
        format!(
            "{} runs per mode; pod listens {}-{} ms after the wake, listed not ready at the wake, Ready at the first kubelet probe after listening",
            config.runs,
            config.delay_ms,
            config.delay_ms + config.probe_period_ms.saturating_sub(1)
        ),
    ));
    Section {
        name: "cold_start",
        data: json!({ "config": config, "modes": data }),
        rows,
        hard_errors: Vec::new(),
    }
}
