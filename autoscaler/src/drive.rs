//! The loop around the decision core: every tick it reads the activators' stats through
//! a [`StatsSource`] and the queue triggers' backlog through a [`BacklogSource`], advances the [`Fleet`] over a [`Runtime`]'s Functions, and applies
//! every changed replica count through that runtime. Which runtime it is (Kubernetes
//! Deployments, `zeroscale dev`'s local processes) it does not know.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use zeroscale_admin::process::{ErrorChain, every};
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::stats::StatsReport;

use crate::{BacklogSource, Decision, Fleet, LoadMeter, Metrics, Replicas, Result, Target, Usage};

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

/// Runs the loop until `shutdown` resolves: every `tick`, scrape `stats`, record them
/// and `runtime`'s replicas in `usage`, read the `backlog` of `runtime`'s targets,
/// advance the [`Fleet`] over them, and apply every decision that changes replicas.
///
/// Everything the loop uses is moved into it: a step that borrowed from the caller
/// would keep the loop's future from being `Send` (the compiler cannot prove it for a
/// borrowing `AsyncFnMut`), and then it could not be spawned.
pub async fn drive(
    tick: Duration,
    stats: impl StatsSource,
    backlog: impl BacklogSource,
    runtime: Arc<impl Runtime>,
    metrics: Metrics,
    usage: Usage,
    shutdown: impl Future<Output = ()>,
) {
    let mut meter = LoadMeter::default();
    let mut fleet = Fleet::default();
    every(tick, shutdown, async move || {
        step(
            &stats, &backlog, &*runtime, &metrics, &usage, &mut meter, &mut fleet,
        )
        .await;
    })
    .await;
}

/// One tick of [`drive`].
async fn step(
    stats: &impl StatsSource,
    backlog: &impl BacklogSource,
    runtime: &impl Runtime,
    metrics: &Metrics,
    usage: &Usage,
    meter: &mut LoadMeter,
    fleet: &mut Fleet,
) {
    let started = Instant::now();
    let scraped = stats.scrape().await;
    let targets = runtime.targets();
    let reports = scraped.as_ref().ok().map(Vec::as_slice);
    for (key, reserved) in usage.record(jiff::Timestamp::now(), reports, &targets) {
        metrics.count_reserved(&key, &reserved);
    }
    let observed = match scraped {
        Ok(reports) => Some(meter.observe(reports)),
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), "activator stats unavailable; holding every Function's scale");
            None
        }
    };
    let current: HashMap<FunctionKey, Replicas> = targets
        .iter()
        .map(|t| (t.key.clone(), t.replicas))
        .collect();
    let keys: Vec<FunctionKey> = targets.iter().map(|t| t.key.clone()).collect();
    let backlogs = backlog.backlog(&keys).await;
    let decisions = fleet.tick(Instant::now(), targets, observed.as_ref(), &backlogs);
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::sync::watch;
    use zeroscale_api::stats::FunctionStats;
    use zeroscale_api::{FunctionSpec, ScalingDefaults};

    use crate::{Error, NoBacklog, Reason, ScalingPolicy};

    /// No activator at the first scrape; from the second on, one that holds a request
    /// for `default/zeroed`.
    struct Stats {
        scrapes: AtomicU32,
    }

    impl StatsSource for Stats {
        async fn scrape(&self) -> Result<Vec<StatsReport>> {
            let scrape = self.scrapes.fetch_add(1, Ordering::Relaxed);
            if scrape == 0 {
                return Err(Error::NoActivator);
            }
            Ok(vec![StatsReport {
                instance: "activator-0".into(),
                uptime_seconds: f64::from(scrape),
                functions: vec![FunctionStats {
                    namespace: "default".into(),
                    name: "zeroed".into(),
                    queued: 1,
                    ..FunctionStats::default()
                }],
            }])
        }
    }

    /// `default/zeroed` at zero and `default/idle` at one pod; records every scale and
    /// counts them in `scaled`.
    struct Fixed {
        scales: Mutex<Vec<(FunctionKey, i32, i32, Reason)>>,
        scaled: watch::Sender<usize>,
    }

    impl Runtime for Fixed {
        fn targets(&self) -> Vec<Target> {
            let spec = FunctionSpec::with_image("example.com/hello:1");
            let durations = spec.validate().expect("valid spec");
            let policy =
                ScalingPolicy::from_spec(&spec.scaling, &durations, &ScalingDefaults::default());
            [("zeroed", 0), ("idle", 1)]
                .into_iter()
                .map(|(name, replicas)| Target {
                    key: FunctionKey::new("default", name),
                    policy: policy.clone(),
                    replicas: Replicas {
                        desired: replicas,
                        ready: replicas,
                    },
                    resources: Default::default(),
                })
                .collect()
        }

        async fn scale(&self, function: &FunctionKey, from: i32, decision: Decision) -> Result<()> {
            self.scales.lock().expect("not poisoned").push((
                function.clone(),
                from,
                decision.desired,
                decision.reason,
            ));
            self.scaled.send_modify(|scaled| *scaled += 1);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_holds_without_stats_then_applies_only_decisions_that_change_replicas() {
        let (scaled, mut scales) = watch::channel(0);
        let runtime = Arc::new(Fixed {
            scales: Mutex::new(Vec::new()),
            scaled,
        });
        let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics register");
        let stats = Stats {
            scrapes: AtomicU32::new(0),
        };
        let shutdown = async move {
            let _ = scales.wait_for(|scaled| *scaled > 0).await;
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            drive(
                Duration::from_secs(1),
                stats,
                NoBacklog,
                Arc::clone(&runtime),
                metrics.clone(),
                Usage::new(jiff::Timestamp::now(), None),
                shutdown,
            ),
        )
        .await
        .expect("the loop wakes `zeroed` and stops");

        let scales = runtime.scales.lock().expect("not poisoned").clone();
        assert_eq!(
            scales,
            [(FunctionKey::new("default", "zeroed"), 0, 1, Reason::Wake)],
            "`idle` keeps its pod within the grace period, so it is not written"
        );
        let decided = |reason: Reason| {
            metrics
                .scaling_decisions
                .with_label_values(&[reason.metric_label()])
                .get()
        };
        assert_eq!(decided(Reason::Wake), 1);
        assert_eq!(decided(Reason::HoldingForGracePeriod), 1);
        assert_eq!(
            metrics
                .desired_replicas
                .with_label_values(&["default", "zeroed"])
                .get(),
            1
        );
    }
}
