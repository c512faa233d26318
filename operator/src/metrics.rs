//! Prometheus metrics of the reconciler. Labels are fixed, bounded sets. The autoscaler
//! loop's are `zeroscale_autoscaler::Metrics`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The reconciler's metrics, registered in one [`Registry`].
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles by result (`ok`, `invalid_spec`, `not_owned`, `host_conflict`,
    /// `nats_not_configured`, `error`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by the operation that failed.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration in seconds, by result.
    pub reconcile_duration: HistogramVec,
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
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        Ok(Self {
            reconciles,
            reconcile_errors,
            reconcile_duration,
        })
    }
}
