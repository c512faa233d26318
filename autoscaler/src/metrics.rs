//! Prometheus metrics the autoscaler loop writes. Labels are fixed, bounded sets: the
//! decision's reason, or the Function's namespace and name. The names keep the
//! operator's prefix, under which the loop first ran.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The autoscaler loop's metrics, registered in one [`Registry`].
#[derive(Clone)]
pub struct Metrics {
    /// Replicas the autoscaler wants, per Function.
    pub desired_replicas: IntGaugeVec,
    /// Ready replicas, per Function.
    pub actual_replicas: IntGaugeVec,
    /// 1 while a Function is in panic mode.
    pub panic_mode: IntGaugeVec,
    /// Decisions by the rule that made them.
    pub scaling_decisions: IntCounterVec,
    /// Time one tick takes, scrape included.
    pub tick_duration: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let function = &["namespace", "function"];
        let desired_replicas = IntGaugeVec::new(
            Opts::new(
                "zeroscale_operator_desired_replicas",
                "Replicas the autoscaler wants for a Function",
            ),
            function,
        )?;
        let actual_replicas = IntGaugeVec::new(
            Opts::new(
                "zeroscale_operator_actual_replicas",
                "Ready replicas of a Function",
            ),
            function,
        )?;
        let panic_mode = IntGaugeVec::new(
            Opts::new(
                "zeroscale_operator_panic_mode",
                "1 while a Function is in panic mode",
            ),
            function,
        )?;
        let scaling_decisions = IntCounterVec::new(
            Opts::new(
                "zeroscale_operator_scaling_decisions_total",
                "Autoscaler decisions by the rule that made them",
            ),
            &["reason"],
        )?;
        let tick_duration = Histogram::with_opts(
            HistogramOpts::new(
                "zeroscale_operator_autoscaler_tick_duration_seconds",
                "Time one autoscaler tick takes, scrape included",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        registry.register(Box::new(desired_replicas.clone()))?;
        registry.register(Box::new(actual_replicas.clone()))?;
        registry.register(Box::new(panic_mode.clone()))?;
        registry.register(Box::new(scaling_decisions.clone()))?;
        registry.register(Box::new(tick_duration.clone()))?;
        Ok(Self {
            desired_replicas,
            actual_replicas,
            panic_mode,
            scaling_decisions,
            tick_duration,
        })
    }
}
