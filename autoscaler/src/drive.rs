//! The loop around the decision core: every tick it reads the activators' stats through
//! a [`StatsSource`], advances the [`Fleet`] over a [`Runtime`]'s Functions, and applies
//! every changed replica count through that runtime. Which runtime it is (Kubernetes
//! Deployments, `zeroscale dev`'s local processes) it does not know.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use zeroscale_admin::process::{ErrorChain, every};
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::stats::StatsReport;

use crate::{Decision, Fleet, LoadMeter, Metrics, Replicas, Result, Target};

/// Where the loop gets the activators' reports. Any failure means "unknown": the loop
/// then holds every Function's scale.
pub trait StatsSource: Send + Sync {
    fn scrape(&self) -> impl Future<Output = Result<Vec<StatsReport>>> + Send;
}

/// Where Functions run, as the loop sees it: which Functions to decide for now, and how
/// to apply a changed replica count.
pub trait Runtime: Send + Sync {
    /// Every Function to decide for this tick, with its policy and current replicas.
    fn targets(&self) -> Vec<Target>;
    /// Moves `function` from `from` replicas to `decision.desired`.
    fn scale(
        &self,
        function: &FunctionKey,
        from: i32,
        decision: Decision,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Runs the loop until `shutdown` resolves: every `tick`, scrape `stats`, advance the
/// [`Fleet`] over `runtime`'s targets, and apply every decision that changes replicas.
///
/// Everything the loop uses is moved into it: a step that borrowed from the caller
/// would keep the loop's future from being `Send` (the compiler cannot prove it for a
/// borrowing `AsyncFnMut`), and then it could not be spawned.
pub async fn drive(
    tick: Duration,
    stats: impl StatsSource,
    runtime: Arc<impl Runtime>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let mut meter = LoadMeter::default();
    let mut fleet = Fleet::default();
    every(tick, shutdown, async move || {
        step(&stats, &*runtime, &metrics, &mut meter, &mut fleet).await;
    })
    .await;
}

/// One tick of [`drive`].
async fn step(
    stats: &impl StatsSource,
    runtime: &impl Runtime,
    metrics: &Metrics,
    meter: &mut LoadMeter,
    fleet: &mut Fleet,
) {
    let started = Instant::now();
    let observed = match stats.scrape().await {
        Ok(reports) => Some(meter.observe(reports)),
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), "activator stats unavailable; holding every Function's scale");
            None
        }
    };
    let targets = runtime.targets();
    let current: HashMap<FunctionKey, Replicas> = targets
        .iter()
        .map(|t| (t.key.clone(), t.replicas))
        .collect();
    let decisions = fleet.tick(Instant::now(), targets, observed.as_ref());
    for (key, decision) in decisions {
        let labels = [key.namespace.as_str(), key.name.as_str()];
        metrics
            .scaling_decisions
            .with_label_values(&[decision.reason.metric_label()])
            .inc();
        metrics
            .panic_mode
            .with_label_values(&labels)
            .set(i64::from(fleet.panicking(&key)));
        let Some(before) = current.get(&key).copied() else {
            continue;
        };
        metrics
            .actual_replicas
            .with_label_values(&labels)
            .set(i64::from(before.ready));
        metrics
            .desired_replicas
            .with_label_values(&labels)
            .set(i64::from(decision.desired));
        if decision.desired != before.desired
            && let Err(error) = runtime.scale(&key, before.desired, decision).await
        {
            tracing::warn!(function = %key, error = %ErrorChain(&error), "scaling failed");
        }
    }
    metrics
        .tick_duration
        .observe(started.elapsed().as_secs_f64());
}
