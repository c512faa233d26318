//! Prometheus metrics the autoscaler loop writes. Labels are fixed, bounded sets: the
//! decision's reason, or the Function's namespace and name. The names keep the
//! operator's prefix, under which the loop first ran; the usage counters are named
//! `zeroscale_function_*`, like the activator's.

use prometheus::{
    CounterVec, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use zeroscale_api::routing::FunctionKey;

use crate::Reserved;

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
    /// Replica-seconds, reserved and always-on resource-seconds, per Function.
    replica_seconds: CounterVec,
    reserved_vcpu_seconds: CounterVec,
    reserved_gib_seconds: CounterVec,
    always_on_vcpu_seconds: CounterVec,
    always_on_gib_seconds: CounterVec,
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
        let counter = |name: &str, help: &str| -> prometheus::Result<CounterVec> {
            let counter = CounterVec::new(Opts::new(name, help), function)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let replica_seconds = counter(
            "zeroscale_function_replica_seconds_total",
            "Seconds each pod of a Function existed, summed over its pods",
        )?;
        let reserved_vcpu_seconds = counter(
            "zeroscale_function_reserved_vcpu_seconds_total",
            "vCPU-seconds a Function's pods requested",
        )?;
        let reserved_gib_seconds = counter(
            "zeroscale_function_reserved_gib_seconds_total",
            "GiB-seconds of memory a Function's pods requested",
        )?;
        let always_on_vcpu_seconds = counter(
            "zeroscale_function_always_on_vcpu_seconds_total",
            "vCPU-seconds a Function would have requested with at least one pod",
        )?;
        let always_on_gib_seconds = counter(
            "zeroscale_function_always_on_gib_seconds_total",
            "GiB-seconds a Function would have requested with at least one pod",
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
            replica_seconds,
            reserved_vcpu_seconds,
            reserved_gib_seconds,
            always_on_vcpu_seconds,
            always_on_gib_seconds,
        })
    }

    /// Adds what one tick reserved for `key`.
    pub(crate) fn count_reserved(&self, key: &FunctionKey, reserved: &Reserved) {
        let labels = [key.namespace.as_str(), key.name.as_str()];
        let add = |counter: &CounterVec, value: f64| {
            if value > 0.0 {
                counter.with_label_values(&labels).inc_by(value);
            }
        };
        add(&self.replica_seconds, reserved.replica_seconds);
        add(&self.reserved_vcpu_seconds, reserved.reserved.vcpu_seconds);
        add(&self.reserved_gib_seconds, reserved.reserved.gib_seconds);
        add(
            &self.always_on_vcpu_seconds,
            reserved.always_on.vcpu_seconds,
        );
        add(&self.always_on_gib_seconds, reserved.always_on.gib_seconds);
    }
}
