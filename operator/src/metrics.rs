//! Prometheus metrics of the reconciler. Labels are fixed, bounded sets.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// The reconciler's metrics, registered in one [`Registry`].
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles by result (`ok`, `invalid_spec`, `not_owned`, `host_conflict`, `error`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by the operation that failed.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration in seconds, by result.
    pub reconcile_duration: HistogramVec,
    /// Replicas the autoscaler wants, per Function.
    pub desired_replicas: IntGaugeVec,
    /// Ready replicas, per Function.
    pub actual_replicas: IntGaugeVec,
    /// 1 while a Function is in panic mode.
    pub panic_mode: IntGaugeVec,
    /// Autoscaler decisions by the rule that made them.
    pub scaling_decisions: IntCounterVec,
    /// Time one autoscaler tick takes, scrape included.
    pub autoscaler_tick_duration: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "zeroscale_operator_reconciles_total",
                "Function reconciles by result",
            ),
            &["result"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "zeroscale_operator_reconcile_errors_total",
                "Failed Function reconciles by the operation that failed",
            ),
            &["operation"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "zeroscale_operator_reconcile_duration_seconds",
                "Time to reconcile one Function",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["result"],
        )?;
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
        let autoscaler_tick_duration = Histogram::with_opts(
            HistogramOpts::new(
                "zeroscale_operator_autoscaler_tick_duration_seconds",
                "Time one autoscaler tick takes, scrape included",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        for collector in [
            Box::new(desired_replicas.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(actual_replicas.clone()),
            Box::new(panic_mode.clone()),
            Box::new(scaling_decisions.clone()),
            Box::new(autoscaler_tick_duration.clone()),
        ] {
            registry.register(collector)?;
        }
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        Ok(Self {
            reconciles,
            reconcile_errors,
            reconcile_duration,
            desired_replicas,
            actual_replicas,
            panic_mode,
            scaling_decisions,
            autoscaler_tick_duration,
        })
    }
}
